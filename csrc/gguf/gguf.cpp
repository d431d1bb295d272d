// gguf.cpp: GGUF value types, typed metadata getters, tensor lookup, message-safe strings.
// (Parsing is in gguf_parse.cpp, the mapping in mapped_file.cpp.)
#include <limits>
#include <type_traits>

#include "gguf/gguf.h"

namespace lowbit {

// ---- value types ----------------------------------------------------------------------------

const char* gguf_type_name(GGUFType t) {
    static const char* const kNames[kGGUFTypeCount] = {
        "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
        "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
    const uint32_t id = static_cast<uint32_t>(t);
    return id < kGGUFTypeCount ? kNames[id] : "?";
}

size_t gguf_scalar_size(GGUFType t) {
    switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
    case GGUFType::UINT16: case GGUFType::INT16: return 2;
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
    case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
    default: return 0;
    }
}

bool gguf_is_integer(GGUFType t) {
    switch (t) {
    case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
    case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64: return true;
    default: return false;
    }
}

static bool is_signed_int(GGUFType t) {
    return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}

int64_t GGUFArray::int_at(uint64_t i) const {
    switch (elem_type) {
    case GGUFType::UINT8: return at<uint8_t>(i);
    case GGUFType::INT8: return at<int8_t>(i);
    case GGUFType::UINT16: return at<uint16_t>(i);
    case GGUFType::INT16: return at<int16_t>(i);
    case GGUFType::UINT32: return at<uint32_t>(i);
    case GGUFType::INT32: return at<int32_t>(i);
    case GGUFType::UINT64: return static_cast<int64_t>(at<uint64_t>(i));
    case GGUFType::INT64: return at<int64_t>(i);
    default: throw ValueError(str("GGUFArray::int_at on an array of ", gguf_type_name(elem_type)));
    }
}

uint64_t GGUFArray::uint_at(uint64_t i) const {
    if (elem_type == GGUFType::UINT64) return at<uint64_t>(i);
    return static_cast<uint64_t>(int_at(i));
}

double GGUFArray::float_at(uint64_t i) const {
    if (elem_type == GGUFType::FLOAT32) return at<float>(i);
    if (elem_type == GGUFType::FLOAT64) return at<double>(i);
    throw ValueError(str("GGUFArray::float_at on an array of ", gguf_type_name(elem_type)));
}

std::string gguf_array_label(const GGUFArray& a) {
    if (a.elem_type != GGUFType::ARRAY) return str("ARRAY[", gguf_type_name(a.elem_type), "]");
    if (a.arrays.empty()) return "ARRAY[ARRAY]";
    const std::string first = gguf_array_label(a.arrays[0]);
    for (size_t i = 1; i < a.arrays.size(); ++i)
        if (gguf_array_label(a.arrays[i]) != first) return "ARRAY[ARRAY]";
    return str("ARRAY[", first, "]");
}

std::string gguf_type_label(const GGUFValue& v) {
    if (v.type == GGUFType::ARRAY) return gguf_array_label(std::get<GGUFArray>(v.data));
    return gguf_type_name(v.type);
}

// ---- message-safe strings -------------------------------------------------------------------

// Length of the valid UTF-8 sequence at s[i], or 0 (overlongs, surrogates, > U+10FFFF rejected).
static size_t utf8_sequence_length(std::string_view s, size_t i) {
    const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
    const uint8_t c = b(i);
    const size_t left = s.size() - i;
    auto cont = [&](size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(i + 1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || !cont(i + 1) || !cont(i + 2)) return 0;
        if (c == 0xE0 && b(i + 1) < 0xA0) return 0;   // overlong
        if (c == 0xED && b(i + 1) > 0x9F) return 0;   // UTF-16 surrogates
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || !cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
        if (c == 0xF0 && b(i + 1) < 0x90) return 0;   // overlong
        if (c == 0xF4 && b(i + 1) > 0x8F) return 0;   // > U+10FFFF
        return 4;
    }
    return 0;
}

bool is_valid_utf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        const size_t n = utf8_sequence_length(s, i);
        if (n == 0) return false;
        i += n;
    }
    return true;
}

std::string printable(std::string_view s, size_t max_bytes) {
    static const char kHex[] = "0123456789abcdef";
    std::string out;
    size_t i = 0;
    while (i < s.size() && out.size() < max_bytes) {
        const uint8_t c = static_cast<uint8_t>(s[i]);
        const size_t n = utf8_sequence_length(s, i);
        if (n > 1 || (n == 1 && c >= 0x20 && c != 0x7F && c != '\\')) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out += c == '\\' ? "\\\\" : std::string{'\\', 'x', kHex[c >> 4], kHex[c & 15]};
            i += 1;
        }
    }
    if (i < s.size()) out += "...";
    return out;
}

// ---- typed getters --------------------------------------------------------------------------

const GGUFEntry* GGUFFile::find(std::string_view key) const {
    const auto it = entry_index_.find(key);
    return it == entry_index_.end() ? nullptr : &entries_[it->second];
}

const GGUFEntry& GGUFFile::require(std::string_view key) const {
    const GGUFEntry* e = find(key);
    if (!e) throw GGUFError(str(printable(path(), 4096), ": required key '", printable(key), "' is missing"));
    return *e;
}

namespace {

[[noreturn]] void type_error(const std::string& path, const GGUFEntry& e, const std::string& expected) {
    throw GGUFError(str(printable(path, 4096), ": key '", printable(e.key), "' (at byte ", e.offset, "): expected ", expected,
                        ", found ", gguf_type_label(e.value)));
}

// Integer conversion with a range check. The value is `s` when is_signed, else `u`;
// element >= 0 names the array element in the message (formatted only on failure).
template <typename T>
T int_to(const std::string& path, const GGUFEntry& e, bool is_signed, uint64_t u, int64_t s, const char* want,
         int64_t element) {
    constexpr auto lo = std::numeric_limits<T>::min();
    constexpr auto hi = std::numeric_limits<T>::max();
    bool fits = u <= uint64_t(hi);
    if (is_signed) {
        if (s >= 0) fits = uint64_t(s) <= uint64_t(hi);
        else if constexpr (std::is_signed_v<T>) fits = s >= int64_t(lo);
        else fits = false;
    }
    if (!fits)
        throw GGUFError(str(printable(path, 4096), ": key '", printable(e.key), "' (at byte ", e.offset, "): ",
                            element >= 0 ? str("element ", element, " ") : std::string(), "value ",
                            is_signed ? std::to_string(s) : std::to_string(u), " does not fit ", want));
    return is_signed ? static_cast<T>(s) : static_cast<T>(u);
}

template <typename T>
T scalar_int(const std::string& path, const GGUFEntry& e, const char* want) {
    if (!gguf_is_integer(e.value.type)) type_error(path, e, str(want, " (or another integer type)"));
    const bool sgn = std::holds_alternative<int64_t>(e.value.data);
    const uint64_t u = sgn ? 0 : std::get<uint64_t>(e.value.data);
    const int64_t s = sgn ? std::get<int64_t>(e.value.data) : 0;
    return int_to<T>(path, e, sgn, u, s, want, -1);
}

double scalar_float(const std::string& path, const GGUFEntry& e, const char* want) {
    if (e.value.type != GGUFType::FLOAT32 && e.value.type != GGUFType::FLOAT64)
        type_error(path, e, str(want, " (or FLOAT32/FLOAT64)"));
    return std::get<double>(e.value.data);
}

template <typename T>
std::vector<T> int_array(const std::string& path, const GGUFEntry& e, const char* want) {
    const GGUFArray* a = e.value.type == GGUFType::ARRAY ? &std::get<GGUFArray>(e.value.data) : nullptr;
    if (!a || !gguf_is_integer(a->elem_type)) type_error(path, e, str("ARRAY[", want, "] (or another integer array)"));
    const bool sgn = is_signed_int(a->elem_type);
    std::vector<T> out(a->count);
    for (uint64_t i = 0; i < a->count; ++i)
        out[i] = int_to<T>(path, e, sgn, sgn ? 0 : a->uint_at(i), sgn ? a->int_at(i) : 0, want, int64_t(i));
    return out;
}

}  // namespace

uint32_t GGUFFile::get_u32(std::string_view key) const { return scalar_int<uint32_t>(path(), require(key), "UINT32"); }
uint64_t GGUFFile::get_u64(std::string_view key) const { return scalar_int<uint64_t>(path(), require(key), "UINT64"); }
int32_t GGUFFile::get_i32(std::string_view key) const { return scalar_int<int32_t>(path(), require(key), "INT32"); }
int64_t GGUFFile::get_i64(std::string_view key) const { return scalar_int<int64_t>(path(), require(key), "INT64"); }
float GGUFFile::get_f32(std::string_view key) const { return float(scalar_float(path(), require(key), "FLOAT32")); }
double GGUFFile::get_f64(std::string_view key) const { return scalar_float(path(), require(key), "FLOAT64"); }

bool GGUFFile::get_bool(std::string_view key) const {
    const GGUFEntry& e = require(key);
    if (e.value.type != GGUFType::BOOL) type_error(path(), e, "BOOL");
    return std::get<bool>(e.value.data);
}

std::string_view GGUFFile::get_str(std::string_view key) const {
    const GGUFEntry& e = require(key);
    if (e.value.type != GGUFType::STRING) type_error(path(), e, "STRING");
    return std::get<std::string_view>(e.value.data);
}

#define LOWBIT_GGUF_OPT(T, name)                                              \
    std::optional<T> GGUFFile::name##_opt(std::string_view key) const {      \
        if (!find(key)) return std::nullopt;                                  \
        return name(key);                                                     \
    }
LOWBIT_GGUF_OPT(uint32_t, get_u32)
LOWBIT_GGUF_OPT(uint64_t, get_u64)
LOWBIT_GGUF_OPT(int32_t, get_i32)
LOWBIT_GGUF_OPT(int64_t, get_i64)
LOWBIT_GGUF_OPT(float, get_f32)
LOWBIT_GGUF_OPT(double, get_f64)
LOWBIT_GGUF_OPT(bool, get_bool)
LOWBIT_GGUF_OPT(std::string_view, get_str)
#undef LOWBIT_GGUF_OPT

const GGUFArray& GGUFFile::get_array(std::string_view key) const {
    const GGUFEntry& e = require(key);
    if (e.value.type != GGUFType::ARRAY) type_error(path(), e, "ARRAY");
    return std::get<GGUFArray>(e.value.data);
}

const GGUFArray& GGUFFile::get_array(std::string_view key, GGUFType elem_type) const {
    const GGUFEntry& e = require(key);
    const GGUFArray* a = e.value.type == GGUFType::ARRAY ? &std::get<GGUFArray>(e.value.data) : nullptr;
    if (!a || a->elem_type != elem_type) type_error(path(), e, str("ARRAY[", gguf_type_name(elem_type), "]"));
    return *a;
}

const GGUFArray* GGUFFile::get_array_opt(std::string_view key) const {
    return find(key) ? &get_array(key) : nullptr;
}

const std::vector<std::string_view>& GGUFFile::get_str_array(std::string_view key) const {
    return get_array(key, GGUFType::STRING).strings;
}

std::vector<float> GGUFFile::get_f32_array(std::string_view key) const {
    const GGUFEntry& e = require(key);
    const GGUFArray* a = e.value.type == GGUFType::ARRAY ? &std::get<GGUFArray>(e.value.data) : nullptr;
    if (!a || (a->elem_type != GGUFType::FLOAT32 && a->elem_type != GGUFType::FLOAT64))
        type_error(path(), e, "ARRAY[FLOAT32] (or ARRAY[FLOAT64])");
    std::vector<float> out(a->count);
    for (uint64_t i = 0; i < a->count; ++i) out[i] = float(a->float_at(i));
    return out;
}

std::vector<int32_t> GGUFFile::get_i32_array(std::string_view key) const {
    return int_array<int32_t>(path(), require(key), "INT32");
}

std::vector<uint32_t> GGUFFile::get_u32_array(std::string_view key) const {
    return int_array<uint32_t>(path(), require(key), "UINT32");
}

// ---- tensors --------------------------------------------------------------------------------

const TensorInfo* GGUFFile::find_tensor(std::string_view name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& GGUFFile::tensor(std::string_view name) const {
    const TensorInfo* t = find_tensor(name);
    if (!t) throw ModelError(str(printable(path(), 4096), ": tensor '", printable(name), "' not found"));
    return *t;
}

}  // namespace lowbit

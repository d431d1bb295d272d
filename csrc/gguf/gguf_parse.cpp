// gguf_parse.cpp: the hardened GGUF parser (header, metadata tree, tensor infos, data layout).
//
// Rule: a count or length read from the file is checked against a fixed cap AND against the
// bytes left before it drives any allocation or pointer arithmetic. Checks are written as
// `n > left / size` (never `n * size > left`) so they cannot overflow. Each failure names the
// entry (key or tensor, with the byte offset where it starts) and the offending field's offset.
#include <algorithm>
#include <limits>

#include "gguf/gguf.h"

namespace lowbit {

namespace {

constexpr uint64_t kMinEntryBytes = 8 + 1 + 4 + 1;   // key length, 1-byte key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 1 + 4 + 8 + 4 + 8;  // name len, name, n_dims, ne[0], type, offset
constexpr uint64_t kMinNestedArrayBytes = 4 + 8;   // element type + count of an inner array
constexpr uint64_t kStringLenBytes = 8;

// The entry being parsed, for error messages; formatted only when something fails.
struct Where {
    enum Kind { kHeader, kEntry, kTensor } kind;
    uint64_t index = 0;
    uint64_t at = 0;          // byte offset where the entry starts
    std::string_view name;    // key / tensor name, once read and validated
};

std::string describe(const Where& w) {
    switch (w.kind) {
    case Where::kHeader: return "header";
    case Where::kEntry:
        if (!w.name.empty()) return str("key '", printable(w.name), "' (at byte ", w.at, ")");
        return str("metadata entry ", w.index, " (at byte ", w.at, ")");
    case Where::kTensor:
        if (!w.name.empty()) return str("tensor '", printable(w.name), "' (info at byte ", w.at, ")");
        return str("tensor info ", w.index, " (at byte ", w.at, ")");
    }
    return "?";
}

template <typename... Args>
[[noreturn]] void fail(const Where& w, Args&&... args) {
    throw GGUFError(str(describe(w), ": ", std::forward<Args>(args)...));
}

// A field being read: a name plus, inside arrays, the element index and nesting depth.
struct Field {
    const char* what;
    int64_t index = -1;
    int depth = 0;
};

std::ostream& operator<<(std::ostream& os, const Field& f) {
    os << f.what;
    if (f.index >= 0) os << ' ' << f.index;
    if (f.depth > 0) os << " (array depth " << f.depth << ')';
    return os;
}

template <typename T> T load(const uint8_t* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }

class Cursor {
public:
    Cursor(const uint8_t* base, uint64_t size) : base_(base), size_(size) {}
    uint64_t pos() const { return pos_; }
    uint64_t left() const { return size_ - pos_; }

    const uint8_t* take(uint64_t n, const Where& w, const Field& f) {
        if (n > left())
            fail(w, f, " needs ", n, " bytes at byte ", pos_, " but only ", left(),
                 " are left in the file (truncated?)");
        const uint8_t* p = base_ + pos_;
        pos_ += n;
        return p;
    }
    template <typename T> T read(const Where& w, const Field& f) { return load<T>(take(sizeof(T), w, f)); }

private:
    const uint8_t* base_;
    uint64_t size_;
    uint64_t pos_ = 0;
};

uint64_t min_element_bytes(GGUFType t) {
    if (t == GGUFType::STRING) return kStringLenBytes;
    if (t == GGUFType::ARRAY) return kMinNestedArrayBytes;
    return gguf_scalar_size(t);
}

bool is_power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace

// Friend of GGUFFile: fills it in one pass over the mapping.
class GGUFParser {
public:
    explicit GGUFParser(GGUFFile& f) : f_(f), c_(f.map_->data(), f.map_->size()) {}

    void run() {
        try {
            parse_header();
            for (uint64_t i = 0; i < n_kv_; ++i) parse_entry(i);
            for (uint64_t i = 0; i < n_tensors_; ++i) parse_tensor_info(i);
            place_tensor_data();
        } catch (const GGUFError& e) {
            throw GGUFError(str(printable(f_.path(), 4096), ": ", e.what()));
        }
    }

private:
    void parse_header();
    void parse_entry(uint64_t index);
    GGUFType read_type(const Where& w, const Field& f);
    std::string_view read_string(const Where& w, const Field& f, uint64_t cap);
    GGUFValue parse_scalar(GGUFType t, const Where& w);
    GGUFArray parse_array(const Where& w, int depth);
    void set_alignment(const GGUFEntry& e, const Where& w);
    void parse_tensor_info(uint64_t index);
    void check_tensor_shape(TensorInfo& t, const Where& w);
    void place_tensor_data();

    GGUFFile& f_;
    Cursor c_;
    uint64_t n_kv_ = 0, n_tensors_ = 0;
    uint64_t array_strings_ = 0;   // strings inside arrays so far (against kMaxStringElements)
    uint64_t nested_arrays_ = 0;   // arrays inside arrays so far (against kMaxNestedArrays)
};

void GGUFParser::parse_header() {
    const Where w{Where::kHeader, 0, 0, {}};
    const uint64_t size = f_.map_->size();
    if (size < 4) fail(w, "file is ", size, " bytes, too short for the GGUF magic (not a GGUF file)");
    const uint8_t* magic = c_.take(4, w, {"magic"});
    if (std::memcmp(magic, "GGUF", 4) != 0)
        fail(w, "magic at byte 0 is '", printable(std::string_view(reinterpret_cast<const char*>(magic), 4)),
             "', expected 'GGUF' (not a GGUF file)");

    const uint32_t version = c_.read<uint32_t>(w, {"version"});
    if (version != 2 && version != 3) {
        const uint32_t swapped = __builtin_bswap32(version);
        if ((version & 0xFFFFu) == 0 && swapped >= 1 && swapped <= 3)
            fail(w, "version at byte 4 reads ", version, " (", swapped,
                 " byte-swapped): big-endian GGUF files are not supported");
        if (version == 1)
            fail(w, "GGUF version 1 (at byte 4) is not supported: it used 32-bit counts; lowbit reads versions 2 and 3");
        fail(w, "unsupported GGUF version ", version, " at byte 4: lowbit reads versions 2 and 3");
    }
    f_.version_ = version;

    n_tensors_ = c_.read<uint64_t>(w, {"n_tensors"});
    n_kv_ = c_.read<uint64_t>(w, {"n_kv"});
    const uint64_t left = c_.left();
    if (n_tensors_ > GGUFLimits::kMaxTensors)
        fail(w, "n_tensors ", n_tensors_, " at byte 8 exceeds the cap of ", GGUFLimits::kMaxTensors);
    if (n_tensors_ > left / kMinTensorInfoBytes)
        fail(w, "n_tensors ", n_tensors_, " at byte 8: tensor infos need at least ", kMinTensorInfoBytes,
             " bytes each but only ", left, " bytes follow the header");
    if (n_kv_ > GGUFLimits::kMaxKV)
        fail(w, "n_kv ", n_kv_, " at byte 16 exceeds the cap of ", GGUFLimits::kMaxKV);
    const uint64_t left_for_kv = left - n_tensors_ * kMinTensorInfoBytes;
    if (n_kv_ > left_for_kv / kMinEntryBytes)
        fail(w, "n_kv ", n_kv_, " at byte 16: metadata entries need at least ", kMinEntryBytes,
             " bytes each but only ", left_for_kv, " bytes are left after the minimal tensor infos");
    // Reserve only what real content must back (at most a few pages); vectors grow with content.
    f_.entries_.reserve(std::min<uint64_t>(n_kv_, 4096));
    f_.tensors_.reserve(std::min<uint64_t>(n_tensors_, 4096));
}

GGUFType GGUFParser::read_type(const Where& w, const Field& f) {
    const uint64_t at = c_.pos();
    const uint32_t id = c_.read<uint32_t>(w, f);
    if (id >= kGGUFTypeCount)
        fail(w, "unknown ", f, " ", id, " at byte ", at, " (GGUF value types are 0..12)");
    return static_cast<GGUFType>(id);
}

std::string_view GGUFParser::read_string(const Where& w, const Field& f, uint64_t cap) {
    const uint64_t at = c_.pos();
    const uint64_t len = c_.read<uint64_t>(w, f);
    if (len > cap) fail(w, f, " length ", len, " at byte ", at, " exceeds the cap of ", cap, " bytes");
    if (len > c_.left())
        fail(w, f, " length ", len, " at byte ", at, " exceeds the ", c_.left(), " bytes left in the file");
    return std::string_view(reinterpret_cast<const char*>(c_.take(len, w, f)), len);
}

GGUFValue GGUFParser::parse_scalar(GGUFType t, const Where& w) {
    const uint64_t at = c_.pos();
    const uint8_t* p = c_.take(gguf_scalar_size(t), w, {gguf_type_name(t)});
    GGUFValue v;
    v.type = t;
    switch (t) {
    case GGUFType::UINT8: v.data = uint64_t(load<uint8_t>(p)); break;
    case GGUFType::INT8: v.data = int64_t(load<int8_t>(p)); break;
    case GGUFType::UINT16: v.data = uint64_t(load<uint16_t>(p)); break;
    case GGUFType::INT16: v.data = int64_t(load<int16_t>(p)); break;
    case GGUFType::UINT32: v.data = uint64_t(load<uint32_t>(p)); break;
    case GGUFType::INT32: v.data = int64_t(load<int32_t>(p)); break;
    case GGUFType::UINT64: v.data = load<uint64_t>(p); break;
    case GGUFType::INT64: v.data = load<int64_t>(p); break;
    case GGUFType::FLOAT32: v.data = double(load<float>(p)); break;
    case GGUFType::FLOAT64: v.data = load<double>(p); break;
    case GGUFType::BOOL:
        if (p[0] > 1) fail(w, "BOOL value ", int(p[0]), " at byte ", at, " is not 0 or 1");
        v.data = p[0] == 1;
        break;
    default: fail(w, "internal: ", gguf_type_name(t), " is not a scalar type");
    }
    return v;
}

GGUFArray GGUFParser::parse_array(const Where& w, int depth) {
    GGUFArray a;
    a.elem_type = read_type(w, {"array element type", -1, depth});
    if (a.elem_type == GGUFType::ARRAY && depth + 1 >= GGUFLimits::kMaxArrayDepth)
        fail(w, "arrays nested deeper than ", GGUFLimits::kMaxArrayDepth, " levels at byte ", c_.pos() - 4);
    const uint64_t count_at = c_.pos();
    a.count = c_.read<uint64_t>(w, {"array count", -1, depth});
    const uint64_t min_bytes = min_element_bytes(a.elem_type);
    const char* type_name = gguf_type_name(a.elem_type);
    if (a.count > GGUFLimits::kMaxArrayCount)
        fail(w, "array count ", a.count, " at byte ", count_at, " exceeds the cap of ", GGUFLimits::kMaxArrayCount);
    if (a.count > c_.left() / min_bytes)
        fail(w, "array count ", a.count, " at byte ", count_at, ": ", type_name, " elements need at least ",
             min_bytes, " bytes each but only ", c_.left(), " bytes are left in the file");

    if (a.elem_type == GGUFType::STRING) {
        array_strings_ += a.count;
        if (array_strings_ > GGUFLimits::kMaxStringElements)
            fail(w, "array of ", a.count, " strings at byte ", count_at, " brings the file's array strings past the cap of ",
                 GGUFLimits::kMaxStringElements);
        a.strings.reserve(a.count);
        for (uint64_t i = 0; i < a.count; ++i)
            a.strings.push_back(read_string(w, {"string element", int64_t(i), depth}, GGUFLimits::kMaxStringBytes));
    } else if (a.elem_type == GGUFType::ARRAY) {
        nested_arrays_ += a.count;
        if (nested_arrays_ > GGUFLimits::kMaxNestedArrays)
            fail(w, "array of ", a.count, " arrays at byte ", count_at, " brings the file's nested arrays past the cap of ",
                 GGUFLimits::kMaxNestedArrays);
        a.arrays.reserve(a.count);
        for (uint64_t i = 0; i < a.count; ++i) a.arrays.push_back(parse_array(w, depth + 1));
    } else {
        const uint64_t at = c_.pos();
        a.raw = c_.take(a.count * min_bytes, w, {"array data", -1, depth});   // count*min_bytes <= left
        if (a.elem_type == GGUFType::BOOL)
            for (uint64_t i = 0; i < a.count; ++i)
                if (a.raw[i] > 1)
                    fail(w, "BOOL array element ", i, " at byte ", at + i, " is ", int(a.raw[i]), ", not 0 or 1");
    }
    return a;
}

void GGUFParser::set_alignment(const GGUFEntry& e, const Where& w) {
    const GGUFType t = e.value.type;
    if (!gguf_is_integer(t)) fail(w, "general.alignment must be an integer, found ", gguf_type_label(e.value));
    const bool negative = std::holds_alternative<int64_t>(e.value.data) && std::get<int64_t>(e.value.data) < 0;
    const uint64_t a = std::holds_alternative<uint64_t>(e.value.data)
                           ? std::get<uint64_t>(e.value.data)
                           : static_cast<uint64_t>(std::get<int64_t>(e.value.data));
    if (negative || !is_power_of_two(a) || a > GGUFLimits::kMaxAlignment)
        fail(w, "general.alignment ", negative ? std::to_string(std::get<int64_t>(e.value.data)) : std::to_string(a),
             " must be a nonzero power of two <= ", GGUFLimits::kMaxAlignment);
    f_.alignment_ = a;
}

void GGUFParser::parse_entry(uint64_t index) {
    Where w{Where::kEntry, index, c_.pos(), {}};
    const std::string_view key = read_string(w, {"key"}, GGUFLimits::kMaxKeyBytes);
    if (key.empty()) fail(w, "empty key");
    if (!is_valid_utf8(key)) fail(w, "key '", printable(key), "' is not valid UTF-8");
    w.name = key;
    const auto dup = f_.entry_index_.find(key);
    if (dup != f_.entry_index_.end())
        fail(w, "duplicate key (first defined at byte ", f_.entries_[dup->second].offset, ")");

    const GGUFType type = read_type(w, {"value type"});
    GGUFEntry e{key, {}, w.at};
    if (type == GGUFType::STRING) {
        e.value.type = type;
        e.value.data = read_string(w, {"string value"}, GGUFLimits::kMaxStringBytes);
    } else if (type == GGUFType::ARRAY) {
        e.value.type = type;
        e.value.data = parse_array(w, 0);
    } else {
        e.value = parse_scalar(type, w);
    }
    if (key == "general.alignment") set_alignment(e, w);
    f_.entry_index_.emplace(key, f_.entries_.size());
    f_.entries_.push_back(std::move(e));
}

void GGUFParser::parse_tensor_info(uint64_t index) {
    Where w{Where::kTensor, index, c_.pos(), {}};
    TensorInfo t{};
    t.info_offset = w.at;
    t.name = read_string(w, {"tensor name"}, kMaxTensorName);
    if (t.name.empty()) fail(w, "empty tensor name");
    if (!is_valid_utf8(t.name)) fail(w, "tensor name '", printable(t.name), "' is not valid UTF-8");
    w.name = t.name;
    const auto dup = f_.tensor_index_.find(t.name);
    if (dup != f_.tensor_index_.end())
        fail(w, "duplicate tensor name (first info at byte ", f_.tensors_[dup->second].info_offset, ")");

    const uint64_t dims_at = c_.pos();
    const uint32_t n_dims = c_.read<uint32_t>(w, {"n_dims"});
    if (n_dims < 1 || n_dims > kMaxDims) fail(w, "n_dims ", n_dims, " at byte ", dims_at, " is not in 1..", kMaxDims);
    t.n_dims = int(n_dims);
    t.ne.fill(1);
    for (int d = 0; d < t.n_dims; ++d) {
        const uint64_t at = c_.pos();
        const uint64_t ne = c_.read<uint64_t>(w, {"ne", d});
        if (ne < 1 || ne > uint64_t(std::numeric_limits<int64_t>::max()))
            fail(w, "ne[", d, "] = ", ne, " at byte ", at, " is not in 1..2^63-1");
        t.ne[d] = int64_t(ne);
    }
    const uint64_t type_at = c_.pos();
    const uint32_t type_id = c_.read<uint32_t>(w, {"tensor type"});
    t.type_size = ggml_type_size(type_id);
    if (!t.type_size) fail(w, "unknown tensor type id ", type_id, " at byte ", type_at);
    t.type = t.type_size->type;
    t.offset = c_.read<uint64_t>(w, {"tensor data offset"});
    check_tensor_shape(t, w);
    f_.tensor_index_.emplace(t.name, f_.tensors_.size());
    f_.tensors_.push_back(t);
}

// n_elements and n_bytes without overflow; ne[0] whole blocks.
void GGUFParser::check_tensor_shape(TensorInfo& t, const Where& w) {
    auto shape = [&t] {
        std::string s = "[";
        for (int d = 0; d < t.n_dims; ++d) s += (d ? ", " : "") + std::to_string(t.ne[d]);
        return s + "]";
    };
    int64_t n = 1;
    for (int d = 0; d < t.n_dims; ++d) {
        if (t.ne[d] > std::numeric_limits<int64_t>::max() / n)
            fail(w, "shape ", shape(), " has more than 2^63-1 elements");
        n *= t.ne[d];
    }
    t.n_elements = n;
    const uint64_t blk = t.type_size->block_elems, blk_bytes = t.type_size->block_bytes;
    if (uint64_t(t.ne[0]) % blk != 0)
        fail(w, "ne[0] = ", t.ne[0], " is not a multiple of the ", t.type_size->name, " block size ", blk);
    const uint64_t row_blocks = uint64_t(t.ne[0]) / blk;
    const uint64_t rows = uint64_t(n / t.ne[0]);
    const uint64_t kMax = std::numeric_limits<uint64_t>::max();
    if (row_blocks > kMax / blk_bytes || row_blocks * blk_bytes > kMax / rows)
        fail(w, "byte size of ", t.type_size->name, " tensor of shape ", shape(), " overflows 64 bits");
    t.n_bytes = row_blocks * blk_bytes * rows;
}

// Data section start, then every tensor: aligned offset, inside the file, no overlaps.
void GGUFParser::place_tensor_data() {
    const uint64_t header_end = c_.pos();
    const uint64_t align = f_.alignment_;
    f_.data_offset_ = (header_end + align - 1) / align * align;   // header_end < 2^63, align <= 2^30
    const uint64_t file_size = f_.map_->size();
    const uint64_t data_start = f_.data_offset_;
    for (const TensorInfo& t : f_.tensors_) {
        const Where w{Where::kTensor, 0, t.info_offset, t.name};
        if (t.offset % align != 0)
            fail(w, "offset ", t.offset, " is not a multiple of alignment ", align);
        if (data_start > file_size || t.offset > file_size - data_start ||
            t.n_bytes > file_size - data_start - t.offset)
            fail(w, t.n_bytes, " bytes of data at offset ", t.offset, " (data section starts at byte ",
                 data_start, ") run past the end of the file (", file_size, " bytes)");
    }
    std::vector<size_t> order(f_.tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [this](size_t a, size_t b) {   // ties: file order
        return f_.tensors_[a].offset < f_.tensors_[b].offset;
    });
    for (size_t k = 1; k < order.size(); ++k) {
        const TensorInfo& prev = f_.tensors_[order[k - 1]];
        const TensorInfo& t = f_.tensors_[order[k]];
        if (prev.offset + prev.n_bytes > t.offset)   // both end inside the file: no overflow
            fail(Where{Where::kTensor, 0, t.info_offset, t.name}, "data [", t.offset, ", ", t.offset + t.n_bytes,
                 ") overlaps tensor '", printable(prev.name), "' data [", prev.offset, ", ",
                 prev.offset + prev.n_bytes, ") (offsets relative to the data section at byte ", data_start, ")");
    }
}

GGUFFile::GGUFFile(std::shared_ptr<const MappedFile> mapping) : map_(std::move(mapping)) {
    LOWBIT_CHECK(map_ != nullptr, ValueError, "GGUFFile: null mapping");
    GGUFParser(*this).run();
}

GGUFFile GGUFFile::open(const std::string& path) { return GGUFFile(MappedFile::open(path)); }

}  // namespace lowbit

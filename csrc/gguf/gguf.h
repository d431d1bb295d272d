// gguf.h: read-only, hardened GGUF (v2/v3) reader over a memory mapping.
//
// File layout (all little-endian; v2 and v3 are identical, v1 used 32-bit counts and is rejected):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x      { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32) | data section (tensor offsets are relative to it)
// string = u64 byte length + bytes (no terminator); array = u32 elem_type + u64 count + elements.
//
// Every count, length, dimension, offset and type id is checked against the bytes left in the
// file and against fixed caps before anything is allocated; every failure throws GGUFError
// naming the field / key / tensor and the byte offset. Nothing here knows about models.
//
// Lifetime: metadata string views, array element bytes and tensor data all point into the
// mapping. They stay valid while the GGUFFile lives, or while a copy of mapping() is held.
// Tensor data pointers are aligned to alignment() (capped by the page size: the mapping starts
// on a page). A parsed GGUFFile is immutable, so concurrent readers need no locking. As with any
// mmap reader, truncating the file on disk while it is mapped makes later reads fault (SIGBUS).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "common.h"
#include "quant/blocks.h"

namespace lowbit {

// ---- the mapping ----------------------------------------------------------------------------

// The OS refused to open or map a file. Keeps errno so bindings can raise FileNotFoundError,
// IsADirectoryError, PermissionError... (not a GGUFError: the file's content was never seen).
struct FileOpenError : Error {
    int errno_value;
    FileOpenError(int err, const std::string& msg) : Error(msg), errno_value(err) {}
};

// A whole regular file mapped read-only (PROT_READ, MAP_PRIVATE). Unmapped by the destructor,
// so share it through shared_ptr with everything that hands out pointers into it.
class MappedFile {
public:
    static std::shared_ptr<const MappedFile> open(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    MappedFile(std::string path, const uint8_t* data, uint64_t size)
        : path_(std::move(path)), data_(data), size_(size) {}
    std::string path_;
    const uint8_t* data_;  // nullptr for an empty file (nothing mapped)
    uint64_t size_;
};

// ---- metadata values ------------------------------------------------------------------------

enum class GGUFType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
constexpr uint32_t kGGUFTypeCount = 13;

const char* gguf_type_name(GGUFType t);         // "UINT32", ...; "?" for an invalid id
size_t gguf_scalar_size(GGUFType t);            // bytes of a fixed-size type; 0 for STRING/ARRAY
bool gguf_is_integer(GGUFType t);               // UINT8..INT64 (not BOOL)

// One array value. Exactly one of raw / strings / arrays holds the elements, chosen by elem_type.
struct GGUFArray {
    GGUFType elem_type = GGUFType::UINT8;
    uint64_t count = 0;
    const uint8_t* raw = nullptr;            // numeric / BOOL: count * scalar_size bytes, unaligned
    std::vector<std::string_view> strings;   // STRING: views into the mapping
    std::vector<GGUFArray> arrays;           // ARRAY: nested arrays (each with its own elem_type)

    // Element i of a numeric array, read as T (T must be the element's C type; unaligned-safe).
    template <typename T> T at(uint64_t i) const {
        T v; std::memcpy(&v, raw + i * sizeof(T), sizeof(T)); return v;
    }
    // Element i of an integer array widened to int64 / uint64 (caller checks elem_type is integer).
    int64_t int_at(uint64_t i) const;
    uint64_t uint_at(uint64_t i) const;
    double float_at(uint64_t i) const;       // FLOAT32 / FLOAT64 element
};

// A metadata value: `type` is the exact GGUF type; `data` holds it widened:
// unsigned ints -> uint64_t, signed ints -> int64_t, FLOAT32/64 -> double, BOOL -> bool,
// STRING -> string_view (into the mapping; not NUL-terminated, not UTF-8-checked), ARRAY -> GGUFArray.
struct GGUFValue {
    GGUFType type = GGUFType::UINT8;
    std::variant<uint64_t, int64_t, double, bool, std::string_view, GGUFArray> data;
};

// "UINT32", "STRING", "ARRAY[FLOAT32]", "ARRAY[ARRAY[INT32]]" (nested arrays are labelled by
// their first element when all share one label, else "ARRAY[ARRAY]").
std::string gguf_type_label(const GGUFValue& v);
std::string gguf_array_label(const GGUFArray& a);

struct GGUFEntry {
    std::string_view key;   // valid UTF-8, non-empty
    GGUFValue value;
    uint64_t offset;        // byte offset of the entry (its key length field) in the file
};

// ---- tensors --------------------------------------------------------------------------------

constexpr int kMaxDims = 4;
constexpr size_t kMaxTensorName = 63;   // ggml's GGML_MAX_NAME (64) includes the terminator

struct TensorInfo {
    std::string_view name;                // valid UTF-8, 1..63 bytes
    GGMLType type;
    const GGMLTypeSize* type_size;        // block geometry from kGGMLTypeSizes
    int n_dims;                           // 1..4
    std::array<int64_t, kMaxDims> ne;     // ne[0] = contiguous (row length); unused dims are 1
    int64_t n_elements;
    uint64_t n_bytes;
    uint64_t offset;                      // relative to the data section, multiple of alignment
    uint64_t info_offset;                 // where this tensor's info starts in the file
};

// ---- the file -------------------------------------------------------------------------------

// Caps (besides "fits in the bytes left"), so hostile counts fail fast and never allocate.
struct GGUFLimits {
    static constexpr uint64_t kMaxTensors = 1u << 20;
    static constexpr uint64_t kMaxKV = 1u << 20;
    static constexpr uint64_t kMaxKeyBytes = 1u << 16;
    static constexpr uint64_t kMaxStringBytes = 1u << 30;
    static constexpr uint64_t kMaxArrayCount = 1u << 30;
    static constexpr int kMaxArrayDepth = 8;                  // array nesting levels
    static constexpr uint64_t kMaxStringElements = 1u << 24;  // strings inside arrays, whole file
    static constexpr uint64_t kMaxNestedArrays = 1u << 20;    // arrays inside arrays, whole file
    static constexpr uint64_t kMaxAlignment = 1u << 30;
    static constexpr uint64_t kDefaultAlignment = 32;
};

class GGUFFile {
public:
    // Maps and parses `path`. Throws FileOpenError (OS errors), GGUFError (content; the message
    // starts with the path).
    static GGUFFile open(const std::string& path);
    // Parses an existing mapping.
    explicit GGUFFile(std::shared_ptr<const MappedFile> mapping);

    const std::string& path() const { return map_->path(); }
    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }   // absolute byte offset of the data section
    uint64_t file_size() const { return map_->size(); }
    const std::shared_ptr<const MappedFile>& mapping() const { return map_; }

    // Metadata in file order.
    const std::vector<GGUFEntry>& metadata() const { return entries_; }
    const GGUFEntry* find(std::string_view key) const;      // nullptr when absent

    // Typed getters for config code. Missing key or wrong type -> GGUFError naming the key, the
    // expected and the found type. Integer getters accept any integer type whose value fits;
    // float getters accept FLOAT32 and FLOAT64. *_opt return nullopt only when the key is absent.
    uint32_t get_u32(std::string_view key) const;
    uint64_t get_u64(std::string_view key) const;
    int32_t get_i32(std::string_view key) const;
    int64_t get_i64(std::string_view key) const;
    float get_f32(std::string_view key) const;
    double get_f64(std::string_view key) const;
    bool get_bool(std::string_view key) const;
    std::string_view get_str(std::string_view key) const;
    std::optional<uint32_t> get_u32_opt(std::string_view key) const;
    std::optional<uint64_t> get_u64_opt(std::string_view key) const;
    std::optional<int32_t> get_i32_opt(std::string_view key) const;
    std::optional<int64_t> get_i64_opt(std::string_view key) const;
    std::optional<float> get_f32_opt(std::string_view key) const;
    std::optional<double> get_f64_opt(std::string_view key) const;
    std::optional<bool> get_bool_opt(std::string_view key) const;
    std::optional<std::string_view> get_str_opt(std::string_view key) const;

    // Arrays: any element type, or a required one. The copying variants convert element types
    // the way the scalar getters do (range-checked integers; FLOAT32/FLOAT64 for floats).
    const GGUFArray& get_array(std::string_view key) const;
    const GGUFArray& get_array(std::string_view key, GGUFType elem_type) const;
    const GGUFArray* get_array_opt(std::string_view key) const;
    const std::vector<std::string_view>& get_str_array(std::string_view key) const;
    std::vector<float> get_f32_array(std::string_view key) const;
    std::vector<int32_t> get_i32_array(std::string_view key) const;
    std::vector<uint32_t> get_u32_array(std::string_view key) const;

    // Tensors in file order.
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* find_tensor(std::string_view name) const;   // nullptr when absent
    const TensorInfo& tensor(std::string_view name) const;        // ModelError when absent
    // Zero-copy: n_bytes bytes of the tensor, valid while this file (or mapping()) lives.
    const uint8_t* tensor_data(const TensorInfo& t) const {
        return map_->data() + data_offset_ + t.offset;
    }

private:
    friend class GGUFParser;
    const GGUFEntry& require(std::string_view key) const;

    std::shared_ptr<const MappedFile> map_;
    uint32_t version_ = 0;
    uint64_t alignment_ = GGUFLimits::kDefaultAlignment;
    uint64_t data_offset_ = 0;
    std::vector<GGUFEntry> entries_;
    std::vector<TensorInfo> tensors_;
    std::unordered_map<std::string_view, size_t> entry_index_;    // key -> index in entries_
    std::unordered_map<std::string_view, size_t> tensor_index_;   // name -> index in tensors_
};

// Bytes as they may safely appear in an error message: valid UTF-8 kept, control and invalid
// bytes as \xNN, cut to `max_bytes` with "..." (file content must never break the message).
std::string printable(std::string_view s, size_t max_bytes = 96);
bool is_valid_utf8(std::string_view s);

}  // namespace lowbit

// common.h: error types and CHECK helpers, fp16/bf16 <-> fp32, aligned buffers.
// Shared by every part of the core; CUDA-free so .cu files can include it too.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lowbit {

// ---- errors ---------------------------------------------------------------------------------
// Each maps to a Python exception class in lowbit.errors (see bindings/module.cpp).
struct Error : std::runtime_error { using std::runtime_error::runtime_error; };
struct GGUFError : Error { using Error::Error; };      // malformed / unsupported GGUF -> lowbit.GGUFError
struct ModelError : Error { using Error::Error; };     // config / tensor mismatch -> lowbit.ModelError
struct ValueError : Error { using Error::Error; };     // bad argument -> ValueError
struct CudaError : Error { using Error::Error; };      // CUDA runtime failure -> lowbit.CudaError
struct Cancelled : Error { using Error::Error; };      // a cancel or progress callback stopped work
struct InsufficientMemory : Error { using Error::Error; };   // a plan exceeds free memory -> lowbit.InsufficientMemory

// str(a, b, c...) concatenates anything streamable: error messages without printf hazards.
template <typename... Args>
std::string str(Args&&... args) {
    std::ostringstream os;
    (os << ... << std::forward<Args>(args));
    return os.str();
}

#define LOWBIT_CHECK(cond, ExcType, ...)                                        \
    do {                                                                         \
        if (!(cond)) throw ::lowbit::ExcType(::lowbit::str(__VA_ARGS__));        \
    } while (0)

// ---- log sink -------------------------------------------------------------------------------
// Where the core's messages go (the C API's lowbit_set_log); nowhere by default. Thread-safe: the
// sink runs under a (recursive) mutex, so once set_log_sink returns the old sink is never called.
enum class LogLevel : int { Debug = 0, Info = 1, Warn = 2, Error = 3 };
using LogSinkFn = void (*)(int level, const char* message, void* user_data);

struct LogSink {
    std::recursive_mutex mu;
    LogSinkFn fn = nullptr;
    void* user_data = nullptr;
};

inline LogSink& log_sink() {
    static LogSink sink;
    return sink;
}

inline void set_log_sink(LogSinkFn fn, void* user_data) {
    LogSink& s = log_sink();
    std::lock_guard<std::recursive_mutex> lock(s.mu);
    s.fn = fn;
    s.user_data = user_data;
}

inline void log_message(LogLevel level, const std::string& message) {
    LogSink& s = log_sink();
    std::lock_guard<std::recursive_mutex> lock(s.mu);
    if (s.fn) s.fn(int(level), message.c_str(), s.user_data);
}

// ---- checked sizes -------------------------------------------------------------------------
// a * b (and a + b) for sizes computed from outside numbers (Python arguments, GGUF fields,
// hyper-parameters): throws ExcType naming `what` instead of wrapping around.
template <typename ExcType = ValueError>
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
    int64_t out;
    if (__builtin_mul_overflow(a, b, &out))
        throw ExcType(str(what, ": ", a, " x ", b, " overflows 64-bit sizes"));
    return out;
}

template <typename ExcType = ValueError>
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
    int64_t out;
    if (__builtin_add_overflow(a, b, &out))
        throw ExcType(str(what, ": ", a, " + ", b, " overflows 64-bit sizes"));
    return out;
}

// ---- half precision -------------------------------------------------------------------------
// IEEE binary16 <-> binary32 with round-to-nearest-even, as F16C and ggml do.
inline float fp32_from_bits(uint32_t w) { float f; std::memcpy(&f, &w, 4); return f; }
inline uint32_t fp32_to_bits(float f) { uint32_t w; std::memcpy(&w, &f, 4); return w; }

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t w = uint32_t(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = fp32_from_bits(0x7800000u);  // 2^-112
    const float normalized = fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized = fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denorm_cutoff = 1u << 27;
    const uint32_t result = sign | (two_w < denorm_cutoff ? fp32_to_bits(denormalized) : fp32_to_bits(normalized));
    return fp32_from_bits(result);
}

inline uint16_t fp32_to_fp16(float f) {
    const float scale_to_inf = fp32_from_bits(0x77800000u);   // 2^112
    const float scale_to_zero = fp32_from_bits(0x08800000u);  // 2^-110
    float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = fp32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

inline float bf16_to_fp32(uint16_t h) { return fp32_from_bits(uint32_t(h) << 16); }

// Round-to-nearest-even; NaN stays a (quiet) NaN. Same rule as gguf.quants / ggml.
inline uint16_t fp32_to_bf16(float f) {
    uint32_t u = fp32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 64);
    return uint16_t((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

// ---- aligned buffers ------------------------------------------------------------------------
// Owning, 64-byte aligned scratch (SIMD loads, no false sharing between worker chunks).
//
// Pages::Huge: the buffer lives in regions advised as transparent huge pages (huge_pages.cpp:
// large_alloc / large_free), for the large buffers a decode step reads end to end every token
// (packed weights, KV caches): 2 MB pages spare the weight stream a TLB miss every 4 KB.
enum class Pages { Small, Huge };
void* large_alloc(size_t bytes);              // 64-byte aligned; std::bad_alloc when the system has no memory
void large_free(void* p, size_t bytes);       // bytes: as given to large_alloc

struct AlignedFree {
    size_t huge_bytes = 0;   // > 0: from large_alloc
    void operator()(void* p) const {
        if (huge_bytes) large_free(p, huge_bytes);
        else std::free(p);
    }
};

template <typename T>
class AlignedBuffer {
public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(size_t n, Pages pages = Pages::Small) : pages_(pages) { resize(n); }
    void resize(size_t n) {
        if (n == size_) return;
        size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
        const bool huge = bytes && pages_ == Pages::Huge;
        void* p = !bytes ? nullptr : huge ? large_alloc(bytes) : std::aligned_alloc(64, bytes);
        if (bytes && !p) throw std::bad_alloc();
        ptr_ = std::unique_ptr<T, AlignedFree>(static_cast<T*>(p), AlignedFree{huge ? bytes : 0});
        size_ = n;
    }
    // Sets where the next resize places the buffer (an empty buffer: before its first resize).
    void set_pages(Pages pages) { pages_ = pages; }
    T* data() { return ptr_.get(); }
    const T* data() const { return ptr_.get(); }
    size_t size() const { return size_; }
    T& operator[](size_t i) { return ptr_.get()[i]; }
    const T& operator[](size_t i) const { return ptr_.get()[i]; }
private:
    std::unique_ptr<T, AlignedFree> ptr_;
    size_t size_ = 0;
    Pages pages_ = Pages::Small;
};

}  // namespace lowbit

// dispatch.cpp: cpuid/xgetbv feature detection, the kernel-set choice, per-type lookups.
#include "cpu/dispatch.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "common.h"
#include "cpu/weight_stream.h"

namespace lowbit::cpu {
namespace {

uint64_t read_xcr0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t(edx) << 32) | eax;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27);
    f.fma = c & (1u << 12);
    f.f16c = c & (1u << 29);
    const bool avx = c & (1u << 28);
    if (osxsave && avx) {
        const uint64_t xcr0 = read_xcr0();
        f.os_avx = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
        f.os_avx512 = (xcr0 & 0xE6) == 0xE6;       // + opmask, ZMM_Hi256, Hi16_ZMM
    }
    if (__get_cpuid_max(0, nullptr) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f.avx2 = b & (1u << 5);
        f.bmi2 = b & (1u << 8);
        f.avx512f = b & (1u << 16);
        f.avx512dq = b & (1u << 17);
        f.avx512bw = b & (1u << 30);
        f.avx512vl = b & (1u << 31);
        f.avx512vnni = c & (1u << 11);
        __cpuid_count(7, 1, a, b, c, d);
        f.avxvnni = a & (1u << 4);
        f.avx512bf16 = a & (1u << 5);
    }
    return f;
}

const KernelSet* set_named(const std::string& name) {
    const CpuFeatures& f = cpu_features();
    if (name == "scalar") return &scalar::kernel_set();
    if (name == "avx2" && f.has_avx2_level()) return &avx2::kernel_set();
    if (name == "avx512" && f.has_avx512_level()) return &avx512::kernel_set();
    const bool known = name == "avx2" || name == "avx512";
    throw ValueError(str("CPU kernel set '", name, "' ", known ? "is not supported by this CPU" : "is unknown",
                         "; valid choices are scalar, avx2, avx512; this CPU supports: ", supported_levels()));
}

std::atomic<const KernelSet*> g_current{nullptr};
std::mutex g_choose_mutex;

}  // namespace

bool CpuFeatures::has_avx2_level() const { return os_avx && avx2 && fma && f16c && bmi2; }

bool CpuFeatures::has_avx512_level() const {
    return has_avx2_level() && os_avx512 && avx512f && avx512bw && avx512vl && avx512dq && avx512vnni;
}

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

std::string supported_levels() {
    const CpuFeatures& f = cpu_features();
    std::string s = "scalar";
    if (f.has_avx2_level()) s += ", avx2";
    if (f.has_avx512_level()) s += ", avx512";
    return s;
}

namespace {
// weight_stream.h: non-temporal on AMD (and Hygon), T0 elsewhere.
int vendor_weight_hint() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return kHintT0;
    char vendor[13] = {};
    std::memcpy(vendor, &b, 4), std::memcpy(vendor + 4, &d, 4), std::memcpy(vendor + 8, &c, 4);
    return std::strcmp(vendor, "AuthenticAMD") == 0 || std::strcmp(vendor, "HygonGenuine") == 0 ? kHintNta : kHintT0;
}
int weight_hint_of(const std::string& name) {
    if (name == "nta") return kHintNta;
    if (name == "t0") return kHintT0;
    throw ValueError(str("weight request hint '", name, "' is not one of: nta, t0"));
}
}  // namespace
int g_weight_hint = vendor_weight_hint();

std::string weight_hint_name() { return g_weight_hint == kHintNta ? "nta" : "t0"; }
void set_weight_hint(const std::string& name) { g_weight_hint = weight_hint_of(name); }

const KernelSet& kernels() {
    const KernelSet* ks = g_current.load(std::memory_order_acquire);
    if (ks) return *ks;
    std::lock_guard<std::mutex> lock(g_choose_mutex);
    ks = g_current.load(std::memory_order_acquire);
    if (ks) return *ks;
    if (const char* hint = std::getenv("LOWBIT_WEIGHT_HINT"); hint && *hint) set_weight_hint(hint);   // ValueError as LOWBIT_CPU
    const char* env = std::getenv("LOWBIT_CPU");
    if (env && *env) {
        ks = set_named(env);  // throws for a bad value; nothing is cached, so it stays an error
    } else {
        const CpuFeatures& f = cpu_features();
        ks = f.has_avx512_level() ? &avx512::kernel_set() : f.has_avx2_level() ? &avx2::kernel_set() : &scalar::kernel_set();
    }
    g_current.store(ks, std::memory_order_release);
    return *ks;
}

void set_kernels(const std::string& name) { g_current.store(set_named(name), std::memory_order_release); }

namespace {
// One line per weight type lowbit computes with on the CPU; a type missing here has no kernel.
constexpr CpuTypeTraits kCpuTypeTraits[] = {
    {GGMLType::F32, ActFormat::F32, 0},     {GGMLType::F16, ActFormat::F32, 0},
    {GGMLType::BF16, ActFormat::F32, 0},
    {GGMLType::Q4_0, ActFormat::Q8_0, 8},   {GGMLType::Q4_1, ActFormat::Q8_0, 0},
    {GGMLType::Q5_0, ActFormat::Q8_0, 16},  {GGMLType::Q5_1, ActFormat::Q8_0, 0},
    {GGMLType::Q8_0, ActFormat::Q8_0, 128}, {GGMLType::IQ4_NL, ActFormat::Q8_0, 128},
    {GGMLType::Q2_K, ActFormat::Q8_K, 0},   {GGMLType::Q3_K, ActFormat::Q8_K, 0},
    {GGMLType::Q4_K, ActFormat::Q8_K, 0},   {GGMLType::Q5_K, ActFormat::Q8_K, 0},
    {GGMLType::Q6_K, ActFormat::Q8_K, 0},   {GGMLType::IQ4_XS, ActFormat::Q8_K, 0},
    {GGMLType::IQ2_XXS, ActFormat::Q8_K, 0}, {GGMLType::IQ2_XS, ActFormat::Q8_K, 0},
    {GGMLType::IQ2_S, ActFormat::Q8_K, 0},  {GGMLType::IQ3_XXS, ActFormat::Q8_K, 0},
    {GGMLType::IQ3_S, ActFormat::Q8_K, 0},  {GGMLType::IQ1_S, ActFormat::Q8_K, 0},
    {GGMLType::IQ1_M, ActFormat::Q8_K, 0},  {GGMLType::TQ1_0, ActFormat::Q8_K, 0},
    {GGMLType::TQ2_0, ActFormat::Q8_K, 0},  {GGMLType::MXFP4, ActFormat::Q8_0, 0},
    {GGMLType::NVFP4, ActFormat::Q8_0, 0},
};
}  // namespace

const CpuTypeTraits* cpu_type_traits(GGMLType type) {
    for (const CpuTypeTraits& t : kCpuTypeTraits)
        if (t.type == type) return &t;
    return nullptr;
}

int panel_bias(GGMLType type) {
    const CpuTypeTraits* t = cpu_type_traits(type);
    return t ? t->bias : 0;
}

void build_q8_panel_row(const block_q8_0* blocks, int64_t n, int bias, void* panel_row) {
    const Q8PanelLayout L(n);
    auto* base = static_cast<uint8_t*>(panel_row);
    auto* qs = reinterpret_cast<int8_t*>(base + L.qs);
    auto* corr = reinterpret_cast<int32_t*>(base + L.corr);
    auto* d = reinterpret_cast<float*>(base + L.d);
    auto* s = reinterpret_cast<float*>(base + L.s);
    std::memset(base, 0, size_t(L.bytes));
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        int32_t sum = 0;
        for (int j = 0; j < QK8_0; ++j) {
            qs[b * QK8_0 + j] = blocks[b].qs[j];
            sum += blocks[b].qs[j];
        }
        d[b] = fp16_to_fp32(blocks[b].d);
        s[b] = d[b] * float(sum);
        corr[(b / 2) * 16 + (b % 2) * 8] = -bias * sum;
    }
}

namespace {
// The sum of the `Block` quants of a strip block starting at element `off` of its source block
// (q8_K: its 16-element bsums, the same integer).
template <int Block>
int32_t block_sum(const block_q8_K& src, int64_t off) {
    static_assert(Block % 16 == 0, "strip blocks tile q8_K's 16-element bsums");
    int32_t sum = 0;
    for (int g = 0; g < Block / 16; ++g) sum += src.bsums[off / 16 + g];
    return sum;
}
template <int Block>
int32_t block_sum(const block_q8_0& src, int64_t off) {
    int32_t sum = 0;
    for (int j = 0; j < Block; ++j) sum += src.qs[off + j];
    return sum;
}

// Slot `slot` of a StripActLayout group from a row of activation blocks of QK elements;
// scale_of(block) is a block's scale. Block is a template argument so that the copy and the sum
// of each strip block compile to a few vector instructions (a prefill quantizes every activation
// row twice at the default precision: this ran at ~0.2 ns an element, more than the quantizer).
template <int QK, int Block, typename Src, typename ScaleOf>
void strip_act_row(const Src* blocks, int64_t n, int bias, void* group, int slot, ScaleOf scale_of) {
    constexpr int64_t bb = StripActLayout::block_bytes(Block);
    auto* base = static_cast<uint8_t*>(group);
    for (int64_t b = 0; b < n / Block; ++b) {
        const Src& src = blocks[b * Block / QK];
        const int64_t off = (b * Block) % QK;
        uint8_t* dst = base + b * bb;
        std::memcpy(dst + slot * Block, src.qs + off, size_t(Block));
        const int32_t sum = block_sum<Block>(src, off);
        const float d = scale_of(src), s = d * float(sum);
        const int32_t corr = -bias * sum;
        std::memcpy(dst + StripActLayout::corr(Block) + 4 * slot, &corr, 4);
        std::memcpy(dst + StripActLayout::d(Block) + 4 * slot, &d, 4);
        std::memcpy(dst + StripActLayout::s(Block) + 4 * slot, &s, 4);
    }
}

template <int QK, typename Src, typename ScaleOf>
void strip_act_row_any(const Src* blocks, int64_t n, int block, int bias, void* group, int slot, ScaleOf scale_of) {
    switch (block) {
        case 16: return strip_act_row<QK, 16>(blocks, n, bias, group, slot, scale_of);
        case 32: return strip_act_row<QK, 32>(blocks, n, bias, group, slot, scale_of);
        default: throw ValueError(str("strip GEMM block of ", block, " elements is not 16 or 32"));
    }
}
}  // namespace

void build_strip_act_row(const block_q8_0* blocks, int64_t n, int block, int bias, void* group, int slot) {
    strip_act_row_any<QK8_0>(blocks, n, block, bias, group, slot, [](const block_q8_0& b) { return fp16_to_fp32(b.d); });
}

void build_strip_act_row(const block_q8_K* blocks, int64_t n, int block, int bias, void* group, int slot) {
    strip_act_row_any<QK_K>(blocks, n, block, bias, group, slot, [](const block_q8_K& b) { return b.d; });
}

void quantize_act_row(const KernelSet& ks, ActFormat fmt, const float* x, void* dst, int64_t cols) {
    if (fmt == ActFormat::Q8_0) ks.quantize_q8_0(x, static_cast<block_q8_0*>(dst), int(cols));
    else ks.quantize_q8_K(x, static_cast<block_q8_K*>(dst), int(cols));
}

ActFormat act_format(GGMLType type) {
    const CpuTypeTraits* t = cpu_type_traits(type);
    return t ? t->act : ActFormat::F32;
}

size_t act_row_bytes(ActFormat fmt, int64_t n) {
    switch (fmt) {
        case ActFormat::Q8_0: return size_t(n / QK8_0) * sizeof(block_q8_0);
        case ActFormat::Q8_K: return size_t(n / QK_K) * sizeof(block_q8_K);
        default: return size_t(n) * sizeof(float);
    }
}

}  // namespace lowbit::cpu

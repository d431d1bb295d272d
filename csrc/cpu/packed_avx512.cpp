// packed_avx512.cpp: the strip GEMM on packed strips (kernels.h, PackedLayout) for the legacy
// types: the weights are read in place, 16 rows per zmm lane set, and turned into the strip GEMM's
// unsigned values in registers (nibble mask / shift, a masked OR for Q5's bit 4, an XOR for
// Q8_0's sign), so a call pays no strip decode, however few activation rows it has.
//
// Arithmetic: the strip GEMM's (dot_avx512.cpp, strip_gemm_n): per block and output lane an exact
// int32 sum started at the activation's corr, then acc = fma(float(isum) * d_a, dw, acc) and, with
// a min, acc = fma(mw, s_a, acc), blocks in order. dw and mw are the fp16 values (exact in f32),
// as the strip decoder stores them, so both give the same bits.
#include <immintrin.h>

#include "cpu/kernels.h"

namespace lowbit::cpu::avx512 {
namespace {

enum class Kind { Q4, Q5, Q8 };

// Int32 chains per activation row: enough independent dpbusd chains to cover its latency.
constexpr int chains_for(int nr) { return nr <= 2 ? 4 : nr <= 4 ? 2 : 1; }

template <Kind K, bool kMin, int NR>
__attribute__((hot)) void packed_gemm_n(int n, const void* strip, const void* act_group, float* out) {
    const int nb = n / 32;
    constexpr int kQs = K == Kind::Q8 ? 512 : 256;
    constexpr int C = chains_for(NR);
    constexpr int64_t kAct = StripActLayout::block_bytes(32), kCorr = StripActLayout::corr(32),
                      kAd = StripActLayout::d(32), kAs = StripActLayout::s(32);
    const auto* base = static_cast<const uint8_t*>(strip);
    // The same offsets as PackedLayout(type, n) (repack.cpp), computed inline.
    auto round64 = [](int64_t b) { return (b + 63) / 64 * 64; };
    const uint8_t* qs = base;
    const uint8_t* qh = base + round64(int64_t(nb) * kQs);
    const uint8_t* dp = qh + (K == Kind::Q5 ? int64_t(nb) * 64 : 0);
    const uint8_t* mp = base + round64(dp - base + int64_t(nb) * 32);
    const auto* pa0 = static_cast<const uint8_t*>(act_group);
    auto i32 = [](const uint8_t* p) { return *reinterpret_cast<const int32_t*>(p); };
    auto f32 = [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); };
    const __m512i low4 = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10), sign = _mm512_set1_epi8(char(0x80));
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* q = qs + size_t(b) * kQs;
        const uint8_t* pa = pa0 + size_t(b) * kAct;
        __m512i w[8];   // w[g]: elements 4g..4g+3 of the 16 rows, unsigned
        if constexpr (K == Kind::Q8) {
            for (int g = 0; g < 8; ++g) w[g] = _mm512_xor_si512(_mm512_load_si512(q + 64 * g), sign);
        } else {
            for (int k = 0; k < 4; ++k) {
                const __m512i v = _mm512_load_si512(q + 64 * k);
                w[k] = _mm512_and_si512(v, low4);
                w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            }
            if constexpr (K == Kind::Q5) {
                const auto* h = reinterpret_cast<const __mmask64*>(qh + size_t(b) * 64);
                for (int g = 0; g < 8; ++g) w[g] = _mm512_mask_add_epi8(w[g], h[g], w[g], bit4);   // bit 4 (nibble <= 15)
            }
        }
        __m512i isum[NR][C];
        for (int r = 0; r < NR; ++r) {
            isum[r][0] = _mm512_set1_epi32(i32(pa + kCorr + 4 * r));
            for (int c = 1; c < C; ++c) isum[r][c] = _mm512_setzero_si512();
        }
        for (int g = 0; g < 8; ++g)
            for (int r = 0; r < NR; ++r)
                isum[r][g % C] = _mm512_dpbusd_epi32(isum[r][g % C], w[g], _mm512_set1_epi32(i32(pa + r * 32 + 4 * g)));
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dp + size_t(b) * 32)));
        for (int r = 0; r < NR; ++r) {
            __m512i s = isum[r][0];
            for (int c = 1; c < C; ++c) s = _mm512_add_epi32(s, isum[r][c]);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(f32(pa + kAd + 4 * r))), dw, acc[r]);
        }
        if constexpr (kMin) {
            const __m512 mw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(mp + size_t(b) * 32)));
            for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32(pa + kAs + 4 * r)), acc[r]);
        }
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

template <Kind K, bool kMin>
void packed_gemm(int n, const void* strip, const void* act_group, int nact, float* out) {
    switch (nact) {
        case 1: packed_gemm_n<K, kMin, 1>(n, strip, act_group, out); break;
        case 2: packed_gemm_n<K, kMin, 2>(n, strip, act_group, out); break;
        case 3: packed_gemm_n<K, kMin, 3>(n, strip, act_group, out); break;
        case 4: packed_gemm_n<K, kMin, 4>(n, strip, act_group, out); break;
        case 5: packed_gemm_n<K, kMin, 5>(n, strip, act_group, out); break;
        case 6: packed_gemm_n<K, kMin, 6>(n, strip, act_group, out); break;
        case 7: packed_gemm_n<K, kMin, 7>(n, strip, act_group, out); break;
        default: packed_gemm_n<K, kMin, 8>(n, strip, act_group, out); break;
    }
}

}  // namespace

void add_packed_gemms(KernelSet& k) {
    k[GGMLType::Q4_0].strip.packed = packed_gemm<Kind::Q4, false>;
    k[GGMLType::Q4_1].strip.packed = packed_gemm<Kind::Q4, true>;
    k[GGMLType::Q5_0].strip.packed = packed_gemm<Kind::Q5, false>;
    k[GGMLType::Q5_1].strip.packed = packed_gemm<Kind::Q5, true>;
    k[GGMLType::Q8_0].strip.packed = packed_gemm<Kind::Q8, false>;
}

}  // namespace lowbit::cpu::avx512

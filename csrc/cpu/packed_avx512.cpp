// packed_avx512.cpp: the strip GEMM on packed strips (kernels.h, PackedLayout) for the legacy
// types: the weights are read in place, 16 rows per zmm lane set, and turned into the strip GEMM's
// unsigned values in registers (nibble mask / shift, a masked OR for Q5's bit 4, an XOR for
// Q8_0's sign), so a call pays no strip decode, however few activation rows it has.
//
// Loads are unaligned (a caller's buffer, e.g. a numpy array, need not be 64-aligned; the
// model's packed copies are).
//
// Arithmetic: the strip GEMM's (dot_avx512.cpp, strip_gemm_n): per block and output lane an exact
// int32 sum started at the activation's corr, then acc = fma(float(isum) * d_a, dw, acc) and, with
// a min, acc = fma(mw, s_a, acc), blocks in order. dw and mw are the fp16 values (exact in f32),
// as the strip decoder stores them, so both give the same bits.
#include <immintrin.h>

#include <algorithm>
#include <initializer_list>

#include "cpu/kernels.h"
#include "cpu/strip_iq.h"

namespace lowbit::cpu::avx512 {
namespace {

enum class Kind { Q4, Q5, Q8 };

// Chains per activation row: enough independent dpbusd chains to cover its latency.
constexpr int chains_for(int nr) { return nr <= 2 ? 4 : nr <= 4 ? 2 : 1; }

// The strip GEMM's unsigned values of one packed block: w[g] = elements 4g..4g+3 of the 16 rows
// (u = q for the 4-bit types, q | bit 4 for Q5, q + 128 for Q8_0). qh: the block's 8 mask words.
template <Kind K>
__attribute__((always_inline)) inline void unsigned_groups(const uint8_t* q, const uint8_t* qh, __m512i w[8]) {
    if constexpr (K == Kind::Q8) {
        for (int g = 0; g < 8; ++g) w[g] = _mm512_xor_si512(_mm512_loadu_si512(q + 64 * g), _mm512_set1_epi8(char(0x80)));
    } else {
        const __m512i low4 = _mm512_set1_epi8(0x0F);
        for (int k = 0; k < 4; ++k) {
            const __m512i v = _mm512_loadu_si512(q + 64 * k);
            w[k] = _mm512_and_si512(v, low4);
            w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
        if constexpr (K == Kind::Q5) {
            const auto* h = reinterpret_cast<const __mmask64*>(qh);
            for (int g = 0; g < 8; ++g) w[g] = _mm512_mask_add_epi8(w[g], h[g], w[g], _mm512_set1_epi8(0x10));   // bit 4 (nibble <= 15)
        }
    }
}

// Where a packed strip's arrays start (PackedLayout, repack.cpp), for n = 32 nb columns.
template <Kind K>
struct PackedPtrs {
    const uint8_t *qs, *qh, *d, *m;
    PackedPtrs(const void* strip, int nb) {
        constexpr int kQs = K == Kind::Q8 ? 512 : 256;
        auto round64 = [](int64_t b) { return (b + 63) / 64 * 64; };
        qs = static_cast<const uint8_t*>(strip);
        qh = qs + round64(int64_t(nb) * kQs);
        d = qh + (K == Kind::Q5 ? int64_t(nb) * 64 : 0);
        m = qs + round64(d - qs + int64_t(nb) * 32);
    }
};

// With `ahead` (the one-token gemv, StripGemvFn): block b also requests lines [b, b + 1) * step
// of `ahead` (up to ahead_end), step = the strip's bytes per block, so the whole request stream
// spans one strip's bytes while the strip is multiplied.
template <Kind K, bool kMin, int NR>
__attribute__((hot)) void packed_gemm_n(int n, const void* strip, const void* act_group, float* out,
                                        const uint8_t* ahead = nullptr, const uint8_t* ahead_end = nullptr) {
    const int nb = n / 32;
    constexpr int kQs = K == Kind::Q8 ? 512 : 256;
    constexpr int C = chains_for(NR);
    constexpr int64_t kAct = StripActLayout::block_bytes(32), kCorr = StripActLayout::corr(32),
                      kAd = StripActLayout::d(32), kAs = StripActLayout::s(32);
    const PackedPtrs<K> P(strip, nb);
    const uint8_t *qs = P.qs, *qh = P.qh, *dp = P.d, *mp = P.m;
    const int64_t step = ahead && nb ? ((mp - qs) + (kMin ? int64_t(nb) * 32 : 0) + nb - 1) / nb : 0;
    const auto* pa0 = static_cast<const uint8_t*>(act_group);
    auto i32 = [](const uint8_t* p) { return *reinterpret_cast<const int32_t*>(p); };
    auto f32 = [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); };
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        if (ahead)
            for (const uint8_t *p = ahead + b * step, *e = std::min(p + step, ahead_end); p < e; p += 64)
                __builtin_prefetch(p, 0, 3);
        const uint8_t* q = qs + size_t(b) * kQs;
        const uint8_t* pa = pa0 + size_t(b) * kAct;
        __m512i w[8];   // w[g]: elements 4g..4g+3 of the 16 rows, unsigned
        unsigned_groups<K>(q, qh + size_t(b) * 64, w);
        __m512i isum[NR][C];
        for (int r = 0; r < NR; ++r) {
            isum[r][0] = _mm512_set1_epi32(i32(pa + kCorr + 4 * r));
            for (int c = 1; c < C; ++c) isum[r][c] = _mm512_setzero_si512();
        }
        for (int g = 0; g < 8; ++g)
            for (int r = 0; r < NR; ++r)
                isum[r][g % C] = _mm512_dpbusd_epi32(isum[r][g % C], w[g], _mm512_set1_epi32(i32(pa + r * 32 + 4 * g)));
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dp + size_t(b) * 32)));
        for (int r = 0; r < NR; ++r) {
            __m512i s = isum[r][0];
            for (int c = 1; c < C; ++c) s = _mm512_add_epi32(s, isum[r][c]);
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(f32(pa + kAd + 4 * r))), dw, acc[r]);
        }
        if constexpr (kMin) {
            const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mp + size_t(b) * 32)));
            for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32(pa + kAs + 4 * r)), acc[r]);
        }
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

template <Kind K, bool kMin>
void packed_gemv(int n, const void* strip, const void* act_group, int nact, float* out, const void* ahead,
                 const void* ahead_end) {
    const auto *a = static_cast<const uint8_t*>(ahead), *e = static_cast<const uint8_t*>(ahead_end);
    if (nact == 1) packed_gemm_n<K, kMin, 1>(n, strip, act_group, out, a, e);
    else packed_gemm_n<K, kMin, 2>(n, strip, act_group, out, a, e);
}

// A packed strip -> a StripLayout strip (for calls with many activation rows: each strip is then
// turned into u bytes once, not once per GEMM call). The same u, dw, mw the packed GEMM uses, so
// the strip GEMM on it gives the packed GEMM's bits. row_bytes and nrows: unused (always 16 rows).
template <Kind K, bool kMin>
void packed_to_strip(int n, const void* packed, size_t, int, void* strip) {
    const int nb = n / 32;
    constexpr int kQs = K == Kind::Q8 ? 512 : 256;
    constexpr int64_t kBytes = StripLayout::block_bytes(32), kD = StripLayout::u_bytes(32), kM = kD + 4 * kStripRows;
    const PackedPtrs<K> P(packed, nb);
    auto* out = static_cast<uint8_t*>(strip);
    for (int b = 0; b < nb; ++b) {
        __m512i w[8];
        unsigned_groups<K>(P.qs + size_t(b) * kQs, P.qh + size_t(b) * 64, w);
        uint8_t* o = out + size_t(b) * kBytes;
        for (int g = 0; g < 8; ++g) _mm512_store_si512(o + 64 * g, w[g]);
        _mm512_store_ps(o + kD, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P.d + size_t(b) * 32))));
        if constexpr (kMin)
            _mm512_store_ps(o + kM, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P.m + size_t(b) * 32))));
    }
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

// The pair GEMM (kernels.h, StripKernels::packed_pair): two packed strips against up to 8
// activation rows. packed_gemm_n broadcasts one activation dword from memory per dpbusd; here each
// broadcast feeds both strips' weight groups, which leaves the loop less bound by loads: one
// Q4_1 3072 x 576 matmul of 16 activation rows, 1 thread, weights in cache: ~255 -> ~290 G
// MAC/s (four strips a call measured no better). Per output the same exact int32 sum and the same
// float steps as packed_gemm_n, so the same bits.
template <Kind K, bool kMin_>
struct PackedStrip {
    static constexpr int kBlock = 32;
    static constexpr bool kMin = kMin_;
    static constexpr int kQs = K == Kind::Q8 ? 512 : 256;
    PackedPtrs<K> P;
    PackedStrip(const void* strip, int nb) : P(strip, nb) {}
    // Groups k and k + 4 of block b (one load of nibbles for the 4-bit types).
    __attribute__((always_inline)) void pair(int b, int k, __m512i& lo, __m512i& hi) const {
        const uint8_t* q = P.qs + size_t(b) * kQs;
        if constexpr (K == Kind::Q8) {
            lo = _mm512_xor_si512(_mm512_loadu_si512(q + 64 * k), _mm512_set1_epi8(char(0x80)));
            hi = _mm512_xor_si512(_mm512_loadu_si512(q + 64 * (k + 4)), _mm512_set1_epi8(char(0x80)));
        } else {
            const __m512i low4 = _mm512_set1_epi8(0x0F), v = _mm512_loadu_si512(q + 64 * k);
            lo = _mm512_and_si512(v, low4);
            hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            if constexpr (K == Kind::Q5) {   // as unsigned_groups
                const auto* h = reinterpret_cast<const __mmask64*>(P.qh + size_t(b) * 64);
                lo = _mm512_mask_add_epi8(lo, h[k], lo, _mm512_set1_epi8(0x10));
                hi = _mm512_mask_add_epi8(hi, h[k + 4], hi, _mm512_set1_epi8(0x10));
            }
        }
    }
    __m512 dw(int b) const { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P.d + size_t(b) * 32))); }
    __m512 mw(int b) const { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P.m + size_t(b) * 32))); }
};

// A decoded strip (kernels.h, StripLayout: u bytes, f32 scales and mins) as the pair GEMM's
// Source: the strip GEMM of the types without a packed layout (k-quants, i-quants).
template <int Block, bool kMin_>
struct DecodedStrip {
    static constexpr int kBlock = Block;
    static constexpr bool kMin = kMin_;
    static constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block), kM = kD + 4 * kStripRows;
    const uint8_t* s;
    DecodedStrip(const void* strip, int) : s(static_cast<const uint8_t*>(strip)) {}
    // Groups k and k + Block / 8 of block b.
    __attribute__((always_inline)) void pair(int b, int k, __m512i& lo, __m512i& hi) const {
        lo = _mm512_load_si512(s + size_t(b) * kBytes + 64 * k);
        hi = _mm512_load_si512(s + size_t(b) * kBytes + 64 * (k + Block / 8));
    }
    __m512 dw(int b) const { return _mm512_load_ps(s + size_t(b) * kBytes + kD); }
    __m512 mw(int b) const { return _mm512_load_ps(s + size_t(b) * kBytes + kM); }
};

// Weights from a Source (PackedStrip or DecodedStrip): S = 2 strips strip_stride bytes apart; out + s * kOut: strip s's.
template <class Source, int NR>
__attribute__((hot)) void pair_gemm_n(int n, const void* strip, size_t strip_stride, const void* act_group, float* out,
                                      const uint8_t* prefetch, size_t prefetch_bytes) {
    static_assert(NR >= 1 && NR <= kStripAct, "the pair GEMM takes 1..8 rows");
    constexpr int S = 2, B = Source::kBlock, G = B / 4, kOut = kStripAct * kStripRows;
    constexpr int64_t kAct = StripActLayout::block_bytes(B), kCorr = StripActLayout::corr(B),
                      kAd = StripActLayout::d(B), kAs = StripActLayout::s(B);
    const int nb = n / B;
    const auto* w0 = static_cast<const uint8_t*>(strip);
    const auto* g0 = static_cast<const uint8_t*>(act_group);
    auto i32 = [](const uint8_t* p) { return *reinterpret_cast<const int32_t*>(p); };
    auto f32 = [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); };
    for (int s = 0; s < S; ++s)
        for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + s * kOut + r * kStripRows, _mm512_setzero_ps());
    // The lines of prefetch requested per block: a steady trickle, so the loads of the next call's
    // weights overlap this call's arithmetic instead of arriving in one burst.
    const size_t lines = prefetch_bytes / 64, per_block = (lines + nb - 1) / nb;
    size_t next_line = 0;
    for (int b = 0; b < nb; ++b) {
        const uint8_t* pa = g0 + size_t(b) * kAct;
        for (size_t e = std::min(lines, next_line + per_block); next_line < e; ++next_line)
            _mm_prefetch(reinterpret_cast<const char*>(prefetch + 64 * next_line), _MM_HINT_T0);
        __m512i isum[S][NR];
        for (int r = 0; r < NR; ++r) {
            const __m512i corr = _mm512_set1_epi32(i32(pa + kCorr + 4 * r));
            for (int s = 0; s < S; ++s) isum[s][r] = corr;
        }
#pragma GCC unroll 4
        for (int k = 0; k < G / 2; ++k) {
            __m512i lo[S], hi[S];
            for (int s = 0; s < S; ++s) Source(w0 + s * strip_stride, nb).pair(b, k, lo[s], hi[s]);
#pragma GCC unroll 8
            for (int r = 0; r < NR; ++r) {
                const __m512i alo = _mm512_set1_epi32(i32(pa + r * B + 4 * k)), ahi = _mm512_set1_epi32(i32(pa + r * B + 4 * (k + G / 2)));
                for (int s = 0; s < S; ++s) {
                    isum[s][r] = _mm512_dpbusd_epi32(isum[s][r], lo[s], alo);
                    isum[s][r] = _mm512_dpbusd_epi32(isum[s][r], hi[s], ahi);
                }
            }
        }
        for (int s = 0; s < S; ++s) {
            const Source src(w0 + s * strip_stride, nb);
            const __m512 dw = src.dw(b);
            __m512 mw;
            if constexpr (Source::kMin) mw = src.mw(b);
            for (int r = 0; r < NR; ++r) {
                float* o = out + s * kOut + r * kStripRows;
                __m512 acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[s][r]), _mm512_set1_ps(f32(pa + kAd + 4 * r))), dw,
                                             _mm512_loadu_ps(o));
                if constexpr (Source::kMin) acc = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32(pa + kAs + 4 * r)), acc);
                _mm512_storeu_ps(o, acc);
            }
        }
    }
}

template <class Source>
void pair_gemm(int n, const void* strip, size_t strip_stride, const void* act_group, int nact, float* out,
               const void* prefetch, size_t prefetch_bytes) {
    const auto* pf = static_cast<const uint8_t*>(prefetch);
    if (!pf) prefetch_bytes = 0;
    switch (nact) {
#define LOWBIT_PAIR_CASE(nr) case nr: return pair_gemm_n<Source, nr>(n, strip, strip_stride, act_group, out, pf, prefetch_bytes);
        LOWBIT_PAIR_CASE(1) LOWBIT_PAIR_CASE(2) LOWBIT_PAIR_CASE(3) LOWBIT_PAIR_CASE(4)
        LOWBIT_PAIR_CASE(5) LOWBIT_PAIR_CASE(6) LOWBIT_PAIR_CASE(7)
#undef LOWBIT_PAIR_CASE
        default: return pair_gemm_n<Source, 8>(n, strip, strip_stride, act_group, out, pf, prefetch_bytes);
    }
}

}  // namespace

void add_packed_gemms(KernelSet& k) {
    auto set = [&](GGMLType t, StripGemmFn gemm, StripDecodeFn to_strip, StripGemvFn gemv) {
        k[t].strip.packed = gemm;
        k[t].strip.packed_to_strip = to_strip;
        k[t].strip.packed_gemv = gemv;
    };
    set(GGMLType::Q4_0, packed_gemm<Kind::Q4, false>, packed_to_strip<Kind::Q4, false>, packed_gemv<Kind::Q4, false>);
    set(GGMLType::Q4_1, packed_gemm<Kind::Q4, true>, packed_to_strip<Kind::Q4, true>, packed_gemv<Kind::Q4, true>);
    set(GGMLType::Q5_0, packed_gemm<Kind::Q5, false>, packed_to_strip<Kind::Q5, false>, packed_gemv<Kind::Q5, false>);
    set(GGMLType::Q5_1, packed_gemm<Kind::Q5, true>, packed_to_strip<Kind::Q5, true>, packed_gemv<Kind::Q5, true>);
    set(GGMLType::Q8_0, packed_gemm<Kind::Q8, false>, packed_to_strip<Kind::Q8, false>, packed_gemv<Kind::Q8, false>);
    k[GGMLType::Q4_0].strip.packed_pair = pair_gemm<PackedStrip<Kind::Q4, false>>;
    k[GGMLType::Q4_1].strip.packed_pair = pair_gemm<PackedStrip<Kind::Q4, true>>;
    k[GGMLType::Q5_0].strip.packed_pair = pair_gemm<PackedStrip<Kind::Q5, false>>;
    k[GGMLType::Q5_1].strip.packed_pair = pair_gemm<PackedStrip<Kind::Q5, true>>;
    k[GGMLType::Q8_0].strip.packed_pair = pair_gemm<PackedStrip<Kind::Q8, false>>;
    // Decoded strips: every type whose strip GEMM is dot_avx512.cpp's strip_gemm<Block, kMin>
    // (legacy, k-quants; the i-quants through strip_gemm_b32 / b16, no min).
    for (GGMLType t : {GGMLType::Q4_1, GGMLType::Q5_1, GGMLType::Q4_K, GGMLType::Q5_K})
        if (k[t].strip.gemm) k[t].strip.gemm_pair = pair_gemm<DecodedStrip<32, true>>;
    for (GGMLType t : {GGMLType::Q4_0, GGMLType::Q5_0, GGMLType::Q8_0, GGMLType::IQ4_NL})
        if (k[t].strip.gemm) k[t].strip.gemm_pair = pair_gemm<DecodedStrip<32, false>>;
    if (k[GGMLType::Q6_K].strip.gemm) k[GGMLType::Q6_K].strip.gemm_pair = pair_gemm<DecodedStrip<16, false>>;
    for (TypeKernels& tk : k.types) {
        if (tk.strip.gemm_pair || !tk.strip.gemm) continue;
        if (tk.strip.gemm == strip_gemm_b32) tk.strip.gemm_pair = pair_gemm<DecodedStrip<32, false>>;
        else if (tk.strip.gemm == strip_gemm_b16) tk.strip.gemm_pair = pair_gemm<DecodedStrip<16, false>>;
    }
}

}  // namespace lowbit::cpu::avx512

// packed_avx512.cpp: the strip GEMM on packed strips (kernels.h, PackedLayout) for the legacy
// types and the k-quants Q4_K, Q5_K (below the legacy kernels; Q6_K's in packed_q6k_avx512.cpp): the weights are read in place, 16 rows per zmm lane set, and turned into the strip GEMM's
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

#include "cpu/dot_avx512_common.h"   // LOWBIT_HOT
#include "cpu/kernels.h"
#include "cpu/strip_iq.h"
#include "cpu/weight_stream.h"

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
        const SpreadRequests<> rq(ahead, ahead_end, b, step);
        const uint8_t* q = qs + size_t(b) * kQs;
        const uint8_t* pa = pa0 + size_t(b) * kAct;
        __m512i w[8];   // w[g]: elements 4g..4g+3 of the 16 rows, unsigned
        unsigned_groups<K>(q, qh + size_t(b) * 64, w);
        __m512i isum[NR][C];
        for (int r = 0; r < NR; ++r) {
            isum[r][0] = _mm512_set1_epi32(i32(pa + kCorr + 4 * r));
            for (int c = 1; c < C; ++c) isum[r][c] = _mm512_setzero_si512();
        }
        for (int g = 0; g < 8; ++g) {
            rq.slot(g);
            for (int r = 0; r < NR; ++r)
                isum[r][g % C] = _mm512_dpbusd_epi32(isum[r][g % C], w[g], _mm512_set1_epi32(i32(pa + r * 32 + 4 * g)));
        }
        rq.rest(8);
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
    with_act_rows(nact, [&]<int NR>() { packed_gemm_n<K, kMin, NR>(n, strip, act_group, out); });
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
            request_weight_line(prefetch + 64 * next_line);
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
    with_act_rows(nact, [&]<int NR>() { pair_gemm_n<Source, NR>(n, strip, strip_stride, act_group, out, pf, prefetch_bytes); });
}


// ---- k-quants (kernels.h, PackedLayout: one record per super-block, then d and dmin) ----------
// The strip GEMM's blocks are the sub-blocks (32 elements), and its
// dw / mw the exact f32 products d * sc and -dmin * m (11 + 8 significant bits at most), so
// decoding them here from the packed 6-bit (int8) scales with other instructions than the strip
// decoder gives the same floats, and the same integer sums and float steps give the same bits.
enum class KQ { Q4K, Q5K };   // Q6_K: packed_q6k_avx512.cpp
template <KQ T>
struct KqGeo {
    static constexpr int64_t kRec = T == KQ::Q4K ? 2240 : 2752;   // record bytes
    static constexpr int64_t kQh = 2048;                         // Q5_K
    static constexpr int64_t kSc = T == KQ::Q4K ? 2048 : 2560;
    static constexpr bool kMin = true;
    static constexpr int kBlock = 32;
    static constexpr int kSub = 256 / kBlock;   // strip blocks per super-block
    const uint8_t *rec0, *d, *m;
    KqGeo(const void* strip, int nsb)
        : rec0(static_cast<const uint8_t*>(strip)), d(rec0 + nsb * kRec), m(d + nsb * 32) {}
    const uint8_t* rec(int64_t sb) const { return rec0 + sb * kRec; }
    __m512 dw16(int64_t sb) const { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 32 * sb))); }
    // -dmin (the sign flipped, as the strip decoder's -h2f(dmin))
    __m512 neg_dmin16(int64_t sb) const {
        return _mm512_xor_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 32 * sb))),
                             _mm512_set1_ps(-0.0f));
    }
};

// Q4_K / Q5_K: the 6-bit scale and min of sub-block s of the 16 rows from the record's three
// scale dwords (sc3[i] = bytes 4i..4i+3 of each row's scales): GGML's get_scale_min_k4 per lane.
LOWBIT_HOT void k4_scale_min(const __m512i sc3[3], int s, __m512i& sc, __m512i& m) {
    const __m512i m63 = _mm512_set1_epi32(63), m15 = _mm512_set1_epi32(15), m48 = _mm512_set1_epi32(0x30);
    if (s < 4) {
        sc = _mm512_and_si512(_mm512_srli_epi32(sc3[0], 8 * s), m63);
        m = _mm512_and_si512(_mm512_srli_epi32(sc3[1], 8 * s), m63);
    } else {
        const int t = s - 4;
        sc = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(sc3[2], 8 * t), m15),
                             _mm512_and_si512(_mm512_srli_epi32(sc3[0], 8 * t + 2), m48));
        m = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(sc3[2], 8 * t + 4), m15),
                            _mm512_and_si512(_mm512_srli_epi32(sc3[1], 8 * t + 2), m48));
    }
}
template <KQ T>
LOWBIT_HOT void load_sc3(const uint8_t* rec, __m512i sc3[3]) {
    for (int i = 0; i < 3; ++i) sc3[i] = _mm512_loadu_si512(rec + KqGeo<T>::kSc + 64 * i);
}
// Q4_K / Q5_K: the unsigned values of groups (dword) g of chunk c: low nibbles -> sub-block 2c,
// high -> 2c + 1 (Q5_K: bit 4 from qh dword g, bit 2c / 2c + 1 of each byte).
template <KQ T>
LOWBIT_HOT void k4_group_pair(const uint8_t* rec, int c, int g, __m512i& lo, __m512i& hi) {
    const __m512i low4 = _mm512_set1_epi8(0x0F), v = _mm512_loadu_si512(rec + 64 * (8 * c + g));
    lo = _mm512_and_si512(v, low4);
    hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
    if constexpr (T == KQ::Q5K) {
        const __m512i h = _mm512_loadu_si512(rec + KqGeo<T>::kQh + 64 * g), b16 = _mm512_set1_epi8(0x10);
        lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(h, _mm512_set1_epi8(char(1 << (2 * c)))), lo, b16);
        hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(h, _mm512_set1_epi8(char(2 << (2 * c)))), hi, b16);
    }
}


// The float step of the strip GEMM for one block and NR rows (strip_gemm_n's, same order).
// Activation slots slot0 .. slot0 + NR - 1 of the block at pa.
template <int NR, bool kMin>
LOWBIT_HOT void block_float_step(__m512 acc[NR], const __m512i* isum, const uint8_t* pa, int block, __m512 dw, __m512 mw,
                                 int slot0 = 0) {
    const int64_t kAd = StripActLayout::d(block) + 4 * slot0, kAs = StripActLayout::s(block) + 4 * slot0;
    auto f32 = [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); };
    for (int r = 0; r < NR; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(f32(pa + kAd + 4 * r))), dw, acc[r]);
    if constexpr (kMin)
        for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32(pa + kAs + 4 * r)), acc[r]);
}


// Q4_K / Q5_K on a packed strip, NR activation rows: per chunk (64 elements: sub-blocks 2c and
// 2c + 1) 8 quant loads shared by all rows, two dpbusd chains per row and sub-block for one or two
// rows (latency), then the two blocks' float steps in order.
template <KQ T, int NR>
__attribute__((hot)) void packed_k4_n(int n, const void* strip, const void* act_group, float* out,
                                      const uint8_t* ahead = nullptr, const uint8_t* ahead_end = nullptr) {
    using G = KqGeo<T>;
    const int nsb = n / QK_K;
    constexpr int C = NR <= 2 ? 2 : 1;
    constexpr int64_t kAct = StripActLayout::block_bytes(32), kCorr = StripActLayout::corr(32);
    const G geo(strip, nsb);
    const auto* pa0 = static_cast<const uint8_t*>(act_group);
    const int64_t step = G::kRec + 64;   // strip bytes per super-block
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int sb = 0; sb < nsb; ++sb) {
        const SpreadRequests<> rq(ahead, ahead_end, sb, step);
        const uint8_t* rec = geo.rec(sb);
        __m512i sc3[3];
        load_sc3<T>(rec, sc3);
        const __m512 d = geo.dw16(sb), ndmin = geo.neg_dmin16(sb);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
            const uint8_t* pa[2] = {pa0 + (8 * sb + 2 * c) * kAct, pa0 + (8 * sb + 2 * c + 1) * kAct};
            __m512i isum[2][NR][C];
            for (int h = 0; h < 2; ++h)
                for (int r = 0; r < NR; ++r) {
                    isum[h][r][0] = _mm512_set1_epi32(act_i32(pa[h] + kCorr + 4 * r));
                    for (int k = 1; k < C; ++k) isum[h][r][k] = _mm512_setzero_si512();
                }
#pragma GCC unroll 8
            for (int g = 0; g < 8; ++g) {
                rq.slot(8 * c + g);
                __m512i w[2];
                k4_group_pair<T>(rec, c, g, w[0], w[1]);
                for (int h = 0; h < 2; ++h)
                    for (int r = 0; r < NR; ++r)
                        isum[h][r][g % C] = _mm512_dpbusd_epi32(isum[h][r][g % C], w[h], _mm512_set1_epi32(act_i32(pa[h] + r * 32 + 4 * g)));
            }
            for (int h = 0; h < 2; ++h) {
                __m512i sum[NR], sc, m;
                for (int r = 0; r < NR; ++r) {
                    sum[r] = isum[h][r][0];
                    for (int k = 1; k < C; ++k) sum[r] = _mm512_add_epi32(sum[r], isum[h][r][k]);
                }
                k4_scale_min(sc3, 2 * c + h, sc, m);
                block_float_step<NR, true>(acc, sum, pa[h], 32, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)),
                                           _mm512_mul_ps(ndmin, _mm512_cvtepi32_ps(m)));
            }
        }
        rq.rest(32);
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

template <KQ T, int NR>
void packed_kq_n(int n, const void* strip, const void* act_group, float* out, const uint8_t* ahead = nullptr,
                 const uint8_t* ahead_end = nullptr) {
    packed_k4_n<T, NR>(n, strip, act_group, out, ahead, ahead_end);
}

template <KQ T>
void packed_kq_gemm(int n, const void* strip, const void* act_group, int nact, float* out) {
    with_act_rows(nact, [&]<int NR>() { packed_kq_n<T, NR>(n, strip, act_group, out); });
}

template <KQ T>
void packed_kq_gemv(int n, const void* strip, const void* act_group, int nact, float* out, const void* ahead,
                    const void* ahead_end) {
    const auto *a = static_cast<const uint8_t*>(ahead), *e = static_cast<const uint8_t*>(ahead_end);
    if (nact == 1) packed_kq_n<T, 1>(n, strip, act_group, out, a, e);
    else packed_kq_n<T, 2>(n, strip, act_group, out, a, e);
}

// A packed k-quant strip -> a StripLayout strip: the same u, dw, mw the packed GEMM uses.
template <KQ T>
void packed_kq_to_strip(int n, const void* packed, size_t, int, void* strip) {
    using G = KqGeo<T>;
    const int nsb = n / QK_K;
    constexpr int64_t kBytes = StripLayout::block_bytes(G::kBlock), kD = StripLayout::u_bytes(G::kBlock), kM = kD + 4 * kStripRows;
    const G geo(packed, nsb);
    auto* out = static_cast<uint8_t*>(strip);
    for (int sb = 0; sb < nsb; ++sb) {
        const uint8_t* rec = geo.rec(sb);
        uint8_t* o = out + sb * G::kSub * kBytes;   // block s of the super-block at o + s * kBytes
        const __m512 d = geo.dw16(sb);
        __m512i sc3[3];
        load_sc3<T>(rec, sc3);
        const __m512 ndmin = geo.neg_dmin16(sb);
        for (int c = 0; c < 4; ++c)
            for (int g = 0; g < 8; ++g) {
                __m512i lo, hi;
                k4_group_pair<T>(rec, c, g, lo, hi);
                _mm512_store_si512(o + 2 * c * kBytes + 64 * g, lo);
                _mm512_store_si512(o + (2 * c + 1) * kBytes + 64 * g, hi);
            }
        for (int s = 0; s < 8; ++s) {
            __m512i sc, m;
            k4_scale_min(sc3, s, sc, m);
            _mm512_store_ps(o + s * kBytes + kD, _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc)));
            _mm512_store_ps(o + s * kBytes + kM, _mm512_mul_ps(ndmin, _mm512_cvtepi32_ps(m)));
        }
    }
}

// A packed k-quant strip as the pair GEMM's Source (blocks = sub-blocks; the scales of a block
// decoded per call of dw / mw, once per block and strip).
template <KQ T>
struct PackedKqStrip {
    using G = KqGeo<T>;
    static constexpr int kBlock = G::kBlock;
    static constexpr bool kMin = G::kMin;
    G geo;
    PackedKqStrip(const void* strip, int nb) : geo(strip, nb / G::kSub) {}
    // Groups k and k + kBlock / 8 of block b.
    __attribute__((always_inline)) void pair(int b, int k, __m512i& lo, __m512i& hi) const {
        const int sb = b / G::kSub, s = b % G::kSub;
        const uint8_t* rec = geo.rec(sb);
        __m512i l0, h0, l1, h1;
        k4_group_pair<T>(rec, s >> 1, k, l0, h0);
        k4_group_pair<T>(rec, s >> 1, k + 4, l1, h1);
        lo = s & 1 ? h0 : l0;
        hi = s & 1 ? h1 : l1;
    }
    // Block b's integer scale and min of the 16 rows (its sub-block of super-block b / kSub).
    __attribute__((always_inline)) void scale_min(int b, __m512i& sc, __m512i& m) const {
        __m512i sc3[3];
        load_sc3<T>(geo.rec(b / G::kSub), sc3);
        k4_scale_min(sc3, b % G::kSub, sc, m);
    }
    __m512 dw(int b) const {
        __m512i sc, m;
        scale_min(b, sc, m);
        return _mm512_mul_ps(geo.dw16(b / G::kSub), _mm512_cvtepi32_ps(sc));
    }
    __m512 mw(int b) const {
        __m512i sc, m;
        scale_min(b, sc, m);
        return _mm512_mul_ps(geo.neg_dmin16(b / G::kSub), _mm512_cvtepi32_ps(m));
    }
};

}  // namespace

void add_packed_q6k_gemms(KernelSet& k);   // packed_q6k_avx512.cpp: packed, packed_to_strip, packed_gemv, packed_pair of Q6_K

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
    set(GGMLType::Q4_K, packed_kq_gemm<KQ::Q4K>, packed_kq_to_strip<KQ::Q4K>, packed_kq_gemv<KQ::Q4K>);
    set(GGMLType::Q5_K, packed_kq_gemm<KQ::Q5K>, packed_kq_to_strip<KQ::Q5K>, packed_kq_gemv<KQ::Q5K>);
    add_packed_q6k_gemms(k);   // packed_q6k_avx512.cpp (its pair GEMM too)
    k[GGMLType::Q4_K].strip.packed_pair = pair_gemm<PackedKqStrip<KQ::Q4K>>;
    k[GGMLType::Q5_K].strip.packed_pair = pair_gemm<PackedKqStrip<KQ::Q5K>>;
    // Decoded strips: every type whose strip GEMM is dot_avx512.cpp's strip_gemm<Block, kMin>
    // (legacy, k-quants; the i-quants through strip_gemm_b32 / b16, no min).
    for (GGMLType t : {GGMLType::Q4_1, GGMLType::Q5_1, GGMLType::Q4_K, GGMLType::Q5_K})
        if (k[t].strip.gemm) k[t].strip.gemm_pair = pair_gemm<DecodedStrip<32, true>>;
    for (GGMLType t : {GGMLType::Q4_0, GGMLType::Q5_0, GGMLType::Q8_0, GGMLType::IQ4_NL})
        if (k[t].strip.gemm) k[t].strip.gemm_pair = pair_gemm<DecodedStrip<32, false>>;
    if (k[GGMLType::Q6_K].strip.gemm) k[GGMLType::Q6_K].strip.gemm_pair = pair_gemm<DecodedStrip<16, false>>;
    if (k[GGMLType::Q2_K].strip.gemm) k[GGMLType::Q2_K].strip.gemm_pair = pair_gemm<DecodedStrip<16, true>>;
    for (TypeKernels& tk : k.types) {
        if (tk.strip.gemm_pair || !tk.strip.gemm) continue;
        if (tk.strip.gemm == strip_gemm_b32) tk.strip.gemm_pair = pair_gemm<DecodedStrip<32, false>>;
        else if (tk.strip.gemm == strip_gemm_b16) tk.strip.gemm_pair = pair_gemm<DecodedStrip<16, false>>;
    }
}

}  // namespace lowbit::cpu::avx512

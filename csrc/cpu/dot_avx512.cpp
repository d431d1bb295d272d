// dot_avx512.cpp: the AVX-512 (F/BW/VL/DQ/VNNI) kernel set: 512-bit multi-row kernels for
// every type (one template per type, NR = 1..8 activation rows; the single-row dot is NR = 1, so
// mat-mat and mat-vec agree bit for bit; the legacy types' mat-vec also takes 1..4 weight rows per
// call with the same per-output operations), plus the strip GEMMs (kernels.h; legacy types, Q4_K,
// Q5_K, Q6_K) that matmul takes for >= 16 x rows. The 256-bit kernels of dot_x86_256.h (vpdpbusd build)
// serve the activation quantizers; legacy rows end in a masked partial batch (n % 256).
//
// Shapes: legacy dots take 8 blocks per batch, two blocks per zmm ([b lo|b hi|b+1 lo|b+1 hi]);
// k-quant dots decode a super-block into 4 zmm of 64 unsigned values plus int16 scale words (one
// sub-block per 128-bit lane or per 256-bit half), then per row maddubs (u8 x s8 -> s16 pairs) +
// dpwssd (x scale -> s32); Q4_K / Q5_K / Q6_K instead dpbusd (u8 x s8 -> s32 sums of 4, small
// enough for int16), two super-blocks' sums packed into words, one dpwssd by the scales (k4_group).
// Super-blocks go in groups of 4: their integer sums (and min sums) are reduced by one transpose-add
// tree, the scalar float step runs on 4 lanes with the same operations, and its results are added
// in super-block order, so the result is still the scalar spec's bit for bit (n % 1024 tail: one
// super-block at a time; Q4_K / Q5_K: one partial group of 1..3).
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx512
#define LOWBIT_VNNI 1
#define LOWBIT_FN(name) name##_256
#include "cpu/dot_x86_256.h"
#include "cpu/strip_iq.h"
#include "common.h"

#include <algorithm>
#include <cstring>
#include <cstddef>
#include <type_traits>
#include <vector>

namespace lowbit::cpu::avx512 {
namespace {

// Helpers of the hot loops: GCC otherwise outlines some of them (zmm arguments through memory).
#define LOWBIT_HOT inline __attribute__((always_inline))

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// 16-bit logical right shift by A in the low 256 bits and by B in the high 256 bits: an
// immediate shift plus a masked one (vpsrlvw is several uops on Zen).
template <int A, int B>
inline __m512i srli_halves(__m512i x) {
    static_assert(B >= A, "high half shifts at least as far");
    const __m512i lo = A ? _mm512_srli_epi16(x, A) : x;
    return B > A ? _mm512_mask_srli_epi16(lo, __mmask32(0xFFFF0000u), lo, B - A) : lo;
}

// Weights stream from memory once per mat-vec, and the hardware prefetchers alone left decode
// waiting on them: every kernel asks for the weight bytes kPrefetchAhead past the ones it is
// about to decode (rows are contiguous, so this runs into the next rows).
constexpr size_t kPrefetchAhead = 8192;
LOWBIT_HOT void prefetch_ahead(const void* p, size_t bytes, size_t ahead = kPrefetchAhead) {
    for (size_t off = 0; off < bytes; off += 64)
        _mm_prefetch(static_cast<const char*>(p) + ahead + off, _MM_HINT_T0);
}

// Two 32-byte runs (at p and p + stride) as one zmm.
LOWBIT_HOT __m512i load2x256(const uint8_t* p, size_t stride) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load256(p)), load256(p + stride), 1);
}

// Activation pair of blocks b, b+1 as one zmm (32 quants each).
LOWBIT_HOT __m512i act_pair(const block_q8_0* a) { return load2x256(reinterpret_cast<const uint8_t*>(a[0].qs), sizeof(block_q8_0)); }

// The same for the last pair of a partial batch: blocks at or past `left` (0..2 of the pair) read
// as 0 and are never touched.
LOWBIT_HOT __m512i act_pair_tail(const block_q8_0* a, int left) {
    const __mmask32 m0 = left > 0 ? ~__mmask32(0) : 0, m1 = left > 1 ? ~__mmask32(0) : 0;
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi8(m0, a[0].qs)),
                              _mm256_maskz_loadu_epi8(m1, a[1].qs), 1);
}

// Q4_0 / IQ4_NL nibbles of blocks b, b+1: [b lo | b hi | b+1 lo | b+1 hi] (16 bytes each).
inline __m512i nibble_pair(const uint8_t* qs0, const uint8_t* qs1) {
    const __m512i both = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(load128(qs0)), 0xFF00, load128(qs1));
    const __m512i hi = _mm512_mask_srli_epi16(both, __mmask32(0xFF00FF00u), both, 4);  // lanes 1, 3
    return _mm512_and_si512(hi, _mm512_set1_epi8(0x0F));
}

// Byte mask of the part of [lo, lo + 64) below `end`.
LOWBIT_HOT __mmask64 bytes_below(size_t end, size_t lo) {
    return end >= lo + 64 ? ~__mmask64(0) : end <= lo ? __mmask64(0) : (__mmask64(1) << (end - lo)) - 1;
}

// The fp16 fields at byte `Off` of 8 consecutive blocks of `Stride` bytes, as 8 words: up to four
// masked 64-byte loads (never past the 8 blocks, nor past byte `limit`: fields of blocks that do
// not lie wholly below it read as 0) and word permutes instead of 8 scalar inserts.
template <size_t Stride, size_t Off>
LOWBIT_HOT __m128i gather_h8(const void* base, size_t limit = 8 * Stride) {
    static_assert(Stride % 2 == 0 && Off % 2 == 0 && 7 * Stride + Off + 2 <= 256, "fields must be word aligned");
    constexpr size_t kBytes = 7 * Stride + Off + 2;  // bytes up to the last field's end
    constexpr bool kHigh = 7 * Stride + Off >= 128;  // some field lies in bytes 128..255
    struct Idx { int16_t lo[32], hi[32]; __mmask32 high_words; };
    constexpr Idx idx = [] {
        Idx t{};
        for (int k = 0; k < 8; ++k) {
            const int word = int((k * Stride + Off) / 2);
            if (word < 64) t.lo[k] = int16_t(word);
            else { t.hi[k] = int16_t(word - 64); t.high_words |= __mmask32(1u << k); }
        }
        return t;
    }();
    const auto* p = static_cast<const uint8_t*>(base);
    const size_t end = std::min(kBytes, limit);
    auto load = [p, end](size_t i) { return _mm512_maskz_loadu_epi8(bytes_below(end, 64 * i), p + 64 * i); };
    __m512i r = _mm512_permutex2var_epi16(load(0), _mm512_loadu_si512(idx.lo), load(1));
    if constexpr (kHigh)
        r = _mm512_mask_blend_epi16(idx.high_words, r, _mm512_permutex2var_epi16(load(2), _mm512_loadu_si512(idx.hi), load(3)));
    return _mm512_castsi512_si128(r);
}

template <typename Block>
LOWBIT_HOT __m128i gather_d8(const Block* x, int count = 8) {  // the fp16 scales of `count` blocks (0 beyond)
    return gather_h8<sizeof(Block), offsetof(Block, d)>(x, size_t(count) * sizeof(Block));
}

template <typename Block>
LOWBIT_HOT __m128i gather_m8(const Block* x, int count = 8) {  // the fp16 mins of `count` blocks (0 beyond)
    return gather_h8<sizeof(Block), offsetof(Block, m)>(x, size_t(count) * sizeof(Block));
}

// The 16-byte nibble fields of 8 consecutive blocks as the 4 nibble_pair vectors (pair k = blocks
// 2k, 2k+1): three masked 64-byte loads of the batch (never past its end) and one word permute
// per pair instead of two 16-byte broadcast loads (fields are word aligned in every legacy block).
// Only the first `count` blocks are read; the values of the others are unspecified.
template <typename Block>
LOWBIT_HOT void nibble_pairs8(const Block* x, __m512i out[4], int count = 8) {
    constexpr size_t kStride = sizeof(Block), kOff = offsetof(Block, qs), kBytes = 8 * kStride;
    static_assert(kBytes <= 192 && 2 * kStride <= 64 && kStride % 2 == 0 && kOff % 2 == 0, "word-aligned pairs in two adjacent loads");
    struct Idx { int16_t i[4][32]; int first[4]; };
    constexpr Idx idx = [] {
        Idx t{};
        for (int k = 0; k < 4; ++k) {
            const size_t s0 = 2 * k * kStride + kOff, first = s0 / 64 * 64;
            t.first[k] = int(first / 64);
            for (int i = 0; i < 32; ++i) t.i[k][i] = int16_t(((i < 16 ? s0 : s0 + kStride) + 2 * (i % 8) - first) / 2);
        }
        return t;
    }();
    const auto* p = reinterpret_cast<const uint8_t*>(x);
    const size_t end = std::min(kBytes, size_t(count) * kStride);
    __m512i l[4];
    for (size_t i = 0; i < 3; ++i) l[i] = _mm512_maskz_loadu_epi8(bytes_below(end, 64 * i), p + 64 * i);
    l[3] = l[2];
    for (int k = 0; k < 4; ++k) {
        const int f = idx.first[k];
        const __m512i both = _mm512_permutex2var_epi16(l[f], _mm512_loadu_si512(idx.i[k]), l[f + 1]);
        const __m512i hi = _mm512_mask_srli_epi16(both, __mmask32(0xFF00FF00u), both, 4);  // lanes 1, 3
        out[k] = _mm512_and_si512(hi, _mm512_set1_epi8(0x0F));
    }
}

// Q5 values of 8 blocks as 4 pairs: nibbles with the fifth bits (qh, bit j = element j) added as 16.
template <typename Block>
LOWBIT_HOT void q5_pairs8(const Block* x, __m512i out[4], int count = 8) {
    nibble_pairs8(x, out, count);
    for (int k = 0; k < 4; ++k) {
        uint32_t h0 = 0, h1 = 0;
        if (2 * k < count) std::memcpy(&h0, x[2 * k].qh, 4);
        if (2 * k + 1 < count) std::memcpy(&h1, x[2 * k + 1].qh, 4);
        const __mmask64 hi = __mmask64(h0) | (__mmask64(h1) << 32);
        out[k] = _mm512_mask_add_epi8(out[k], hi, out[k], _mm512_set1_epi8(16));
    }
}

inline const block_q8_0* act_row_q8_0(const void* act, size_t stride, int r) {
    return reinterpret_cast<const block_q8_0*>(static_cast<const uint8_t*>(act) + size_t(r) * stride);
}

// The sums of v[0..3], each over its 16 lanes in one fixed tree: within each 128-bit lane
// (l0 + l2) + (l1 + l3), then across the lanes (L0 + L2) + (L1 + L3). Only lanes of one vector
// are ever added together, so a vector's sum does not depend on which others share the call.
LOWBIT_HOT __m128 reduce4_ps(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));  // [a0+a2, b0+b2, a1+a3, b1+b3]
    const __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
    const __m512d p01 = _mm512_castps_pd(t01), p23 = _mm512_castps_pd(t23);
    const __m512 t = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p01, p23)),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(p01, p23)));   // lane: [a, b, c, d]
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// Legacy blocks: NW weight rows (row_bytes apart) x NR panel rows (kernels.h): batches of 8
// blocks; `decode(w + b, wq, count)` turns the batch's first `count` blocks of one weight row
// into 4 zmm of unsigned values u (weight = u - bias; wq[k] = blocks b+2k, b+2k+1 laid out as
// nibble_pair), shared by all panel rows; one f32 accumulator chain per (weight row, panel row).
// Everything that depends on the activations alone comes precomputed from the panel: one
// 512-bit load per pair of blocks, the bias term folded into the dpbusd accumulator (corr), the
// block scales as floats and, with kMin (Q4_1, Q5_1: weight = d*u + m), the min term as one 8-lane
// FMA per batch against d * sum(qs), added to the low lanes before the final sum. Per output and
// pair: two loads, one dpbusd, one convert, one permute, one FMA. The last batch of a row (nb % 8
// blocks) runs the same code with masked loads: blocks past the row's end read as scale 0 and
// quants 0 and are never touched, so they add exactly 0, and only the pairs holding real blocks
// are multiplied. Every output's operations are the same whatever NW and NR (reduce4_ps), so a
// mat-vec through NW weight rows equals the mat-mat's one-weight-row calls bit for bit; several
// weight rows per call share the panel loads and the call, and give the core independent chains.
template <int NW, int NR, bool kMin = false, typename WBlock, typename Decode>
LOWBIT_HOT void legacy_panel_512(int n, const WBlock* w0, size_t row_bytes, const void* panel, size_t stride, float* out,
                                 Decode decode) {
    const int nb = n / QK8_0;
    const Q8PanelLayout L(n);
    __m512 acc[NW][NR];
    __m256 macc[NW][NR];
    for (int i = 0; i < NW; ++i)
        for (int r = 0; r < NR; ++r) {
            acc[i][r] = _mm512_setzero_ps();
            macc[i][r] = _mm256_setzero_ps();
        }
    const auto* p0 = static_cast<const uint8_t*>(panel);
    // Each weight row asks for its own bytes `lead` ahead, past its end those of the same row of
    // the next call (a mat-vec's next NW rows): NW streams of kPrefetchAhead / NW bytes in flight,
    // as many as one row's stream (NW = 1: kPrefetchAhead ahead, running into the next rows).
    const size_t lead = kPrefetchAhead, row_end = NW == 1 ? ~size_t(0) : row_bytes;
    auto batch = [&](int b, int count, auto full) {
        constexpr bool kFull = decltype(full)::value;
        const int n_pairs = kFull ? 4 : (count + 1) / 2;
        for (int i = 0; i < NW; ++i) {
            const WBlock* w = reinterpret_cast<const WBlock*>(reinterpret_cast<const uint8_t*>(w0) + i * row_bytes) + b;
            const size_t at = size_t(b) * sizeof(WBlock) + lead;
            prefetch_ahead(w, 8 * sizeof(WBlock), at < row_end ? lead : lead + (NW - 1) * row_bytes);
            const __m256 wd8 = _mm256_cvtph_ps(gather_d8(w, count));
            __m256 wm8 = _mm256_setzero_ps();
            if constexpr (kMin) wm8 = _mm256_cvtph_ps(gather_m8(w, count));
            __m512i wq[4];
            decode(w, wq, count);
            for (int r = 0; r < NR; ++r) {
                const uint8_t* p = p0 + size_t(r) * stride;
                const auto* ad = reinterpret_cast<const float*>(p + L.d) + b;
                const __m512 d16 = _mm512_castps256_ps512(_mm256_mul_ps(wd8, _mm256_loadu_ps(ad)));
                if constexpr (kMin)
                    macc[i][r] = _mm256_fmadd_ps(wm8, _mm256_loadu_ps(reinterpret_cast<const float*>(p + L.s) + b), macc[i][r]);
                const uint8_t* qs = p + L.qs + size_t(b) * QK8_0;
                const uint8_t* corr = p + L.corr + size_t(b) * QK8_0;   // 64 bytes per pair, as qs
                for (int k = 0; k < n_pairs; ++k) {
                    const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi32(2 * k), _mm256_set1_epi32(2 * k + 1), 1);
                    const __m512i c = kMin ? _mm512_setzero_si512() : load512(corr + 64 * k);
                    const __m512i isum = _mm512_dpbusd_epi32(c, wq[k], load512(qs + 64 * k));
                    acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_permutexvar_ps(sel, d16), acc[i][r]);
                }
            }
        }
    };
    int b = 0;
    for (; b + 8 <= nb; b += 8) batch(b, 8, std::true_type{});
    if (b < nb) batch(b, nb - b, std::false_type{});
    constexpr int kOut = NW * NR;
    __m512 v[(kOut + 3) / 4 * 4];
    for (int i = 0; i < NW; ++i)
        for (int r = 0; r < NR; ++r)
            v[i * NR + r] = kMin ? _mm512_add_ps(acc[i][r], _mm512_zextps256_ps512(macc[i][r])) : acc[i][r];
    for (int o = kOut; o < (kOut + 3) / 4 * 4; ++o) v[o] = _mm512_setzero_ps();
    for (int o = 0; o < kOut; o += 4) {
        alignas(16) float s[4];
        _mm_store_ps(s, reduce4_ps(v[o], v[o + 1], v[o + 2], v[o + 3]));
        for (int j = 0; j < 4 && o + j < kOut; ++j) out[o + j] = s[j];
    }
}

// The legacy decoders (weight = u - bias, u unsigned; see legacy_panel_512), shared by all six types.
struct DecodeQ4 {
    template <typename B> LOWBIT_HOT void operator()(const B* x, __m512i* q, int count) const { nibble_pairs8(x, q, count); }
};
struct DecodeQ5 {
    template <typename B> LOWBIT_HOT void operator()(const B* x, __m512i* q, int count) const { q5_pairs8(x, q, count); }
};
struct DecodeQ8 {   // w + 128 is unsigned
    LOWBIT_HOT void operator()(const block_q8_0* x, __m512i* q, int count) const {
        for (int k = 0; k < 4; ++k)
            q[k] = _mm512_xor_si512(count == 8 ? act_pair(x + 2 * k) : act_pair_tail(x + 2 * k, count - 2 * k),
                                    _mm512_set1_epi8(char(0x80)));
    }
};
struct DecodeIQ4NL {   // table value + 128 is unsigned
    LOWBIT_HOT void operator()(const block_iq4_nl* x, __m512i* q, int count) const {
        const __m512i table = _mm512_xor_si512(_mm512_broadcast_i32x4(load128(kvalues_iq4nl)), _mm512_set1_epi8(char(0x80)));
        nibble_pairs8(x, q, count);
        for (int k = 0; k < 4; ++k) q[k] = _mm512_shuffle_epi8(table, q[k]);
    }
};

// Calls Kernel<NR>(args...) for a run-time nrows in [1, kMaxDotRows].
#define LOWBIT_ROWS_SWITCH(kernel, nrows, ...)            \
    switch (nrows) {                                      \
        case 1: kernel<1>(__VA_ARGS__); break;            \
        case 2: kernel<2>(__VA_ARGS__); break;            \
        case 3: kernel<3>(__VA_ARGS__); break;            \
        case 4: kernel<4>(__VA_ARGS__); break;            \
        case 5: kernel<5>(__VA_ARGS__); break;            \
        case 6: kernel<6>(__VA_ARGS__); break;            \
        case 7: kernel<7>(__VA_ARGS__); break;            \
        default: kernel<8>(__VA_ARGS__); break;           \
    }

// More than 4 rows: two passes (register pressure); the per-row arithmetic is unchanged.
#define LOWBIT_SPLIT_ROWS(NR, fn)                                                 \
    if constexpr (NR > 4) {                                                       \
        fn<4>(n, w, act, stride, out);                                            \
        fn<NR - 4>(n, w, static_cast<const uint8_t*>(act) + 4 * stride, stride, out + 4); \
        return;                                                                   \
    }

// Panel rows (kernels.h) of nrows block_q8_0 rows of n elements, stride bytes apart.
std::vector<uint8_t> panel_of(int n, const void* act, size_t stride, int nrows, int bias) {
    const size_t bytes = size_t(Q8PanelLayout::row_bytes(n));
    std::vector<uint8_t> panel(bytes * size_t(nrows));
    for (int r = 0; r < nrows; ++r)
        build_q8_panel_row(act_row_q8_0(act, stride, r), n, bias, panel.data() + size_t(r) * bytes);
    return panel;
}

constexpr int kPanelPass = 8;   // rows per pass over the weight row

#define LOWBIT_PANEL(name, Block, kMin, Decode)                                                       \
    template <int NR>                                                                              \
    void name##_panel_n(int n, const void* w, const void* act, size_t stride, float* out) {        \
        if constexpr (NR > kPanelPass) {                                                           \
            name##_panel_n<kPanelPass>(n, w, act, stride, out);                                    \
            name##_panel_n<NR - kPanelPass>(n, w, static_cast<const uint8_t*>(act) + kPanelPass * stride, stride, out + kPanelPass); \
            return;                                                                                \
        }                                                                                          \
        legacy_panel_512<1, NR, kMin>(n, static_cast<const Block*>(w), 0, act, stride, out, Decode{}); \
    }                                                                                              \
    void name##_panel(int n, const void* w, const void* act, size_t stride, int nrows, float* out) { \
        LOWBIT_ROWS_SWITCH(name##_panel_n, nrows, n, w, act, stride, out)                          \
    }                                                                                              \
    template <int NW>                                                                              \
    void name##_panel_w(int n, const void* w, size_t row_bytes, const void* act, size_t stride, int nrows, float* out) { \
        if (nrows == 1) legacy_panel_512<NW, 1, kMin>(n, static_cast<const Block*>(w), row_bytes, act, stride, out, Decode{}); \
        else legacy_panel_512<NW, 2, kMin>(n, static_cast<const Block*>(w), row_bytes, act, stride, out, Decode{}); \
    }                                                                                              \
    void name##_panel_wrows(int n, const void* w, size_t row_bytes, int nw, const void* act, size_t stride, \
                            int nrows, float* out) {                                              \
        switch (nw) {                                                                              \
            case 1: name##_panel_w<1>(n, w, row_bytes, act, stride, nrows, out); break;            \
            case 2: name##_panel_w<2>(n, w, row_bytes, act, stride, nrows, out); break;            \
            case 3: name##_panel_w<3>(n, w, row_bytes, act, stride, nrows, out); break;            \
            default: name##_panel_w<4>(n, w, row_bytes, act, stride, nrows, out); break;           \
        }                                                                                          \
    }

LOWBIT_PANEL(q4_0, block_q4_0, false, DecodeQ4)
LOWBIT_PANEL(q4_1, block_q4_1, true, DecodeQ4)
LOWBIT_PANEL(q5_0, block_q5_0, false, DecodeQ5)
LOWBIT_PANEL(q5_1, block_q5_1, true, DecodeQ5)
LOWBIT_PANEL(q8_0, block_q8_0, false, DecodeQ8)
LOWBIT_PANEL(iq4_nl, block_iq4_nl, false, DecodeIQ4NL)

inline const block_q8_K* act_row_q8_K(const void* act, size_t stride, int r) {
    return reinterpret_cast<const block_q8_K*>(static_cast<const uint8_t*>(act) + size_t(r) * stride);
}

// Q4_K: per super-block the 4 nibble vectors (64 weights each) and their scale-word vectors are
// decoded once; each row then needs 4 x (maddubs + dpwssd), its min sum and the float update.
// Word-permute index: 128-bit lane j (8 words) takes word s0 + j.
inline __m512i lane_index4(int s0) {
    const __m256i lo = _mm256_inserti128_si256(_mm256_set1_epi16(short(s0)), _mm_set1_epi16(short(s0 + 1)), 1);
    const __m256i hi = _mm256_inserti128_si256(_mm256_set1_epi16(short(s0 + 2)), _mm_set1_epi16(short(s0 + 3)), 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The 12 packed bytes of Q4_K / Q5_K scales of `count` (1..4) super-blocks, one per 128-bit
// lane -> per lane bytes 0..7 the 6-bit scales, 8..15 the mins (the values of unpack_k4_scales);
// lanes past `count` hold 0. Reads 16 bytes per super-block: the 4 after the scales are quant bytes.
template <typename Block>
inline __m512i unpack_k4_scales_x4(const Block* x, int count) {
    __m512i s = _mm512_zextsi128_si512(load128(x[0].scales));
    if (count == 4) {
        s = _mm512_inserti32x4(s, load128(x[1].scales), 1);
        s = _mm512_inserti64x4(s, _mm256_inserti128_si256(_mm256_castsi128_si256(load128(x[2].scales)), load128(x[3].scales), 1), 1);
    } else {
        if (count > 1) s = _mm512_inserti32x4(s, load128(x[1].scales), 1);
        if (count > 2) s = _mm512_inserti32x4(s, load128(x[2].scales), 2);
    }
    auto lanes = [](__m128i v) { return _mm512_broadcast_i32x4(v); };
    // low bits: sc j<4: s[j] & 63, sc j>=4: s[j+4] & 15, m j<4: s[j+4] & 63, m j>=4: s[j+4] >> 4
    const __m512i a = _mm512_shuffle_epi8(s, lanes(_mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11)));
    const __m512i a_hi = _mm512_and_si512(_mm512_srli_epi16(a, 4), _mm512_set1_epi8(0x0F));
    const __m512i lo_mask = lanes(_mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0));
    const __m512i lo = _mm512_ternarylogic_epi32(_mm512_and_si512(a, lo_mask), a_hi, lanes(_mm_setr_epi32(0, 0, 0, -1)), 0xF8);  // A | (B & C)
    // high bits (j >= 4): sc: (s[j-4] >> 6) << 4, m: (s[j] >> 6) << 4
    const __m512i bsrc = _mm512_shuffle_epi8(s, lanes(_mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7)));
    return _mm512_ternarylogic_epi32(lo, _mm512_srli_epi16(bsrc, 2), _mm512_set1_epi8(0x30), 0xF8);
}

// Chunk c (64 weights) of a Q4_K / Q5_K super-block: low nibbles of qs[32c..32c+32) (sub-block 2c)
// in the low 256 bits, high nibbles (sub-block 2c+1) in the high 256 bits, the order of the
// activation's 64 quants. kQ5: Q5_K, whose fifth bit of sub-block s is bit s of qh[l].
template <bool kQ5, typename Block>
LOWBIT_HOT __m512i k4_chunk(const Block& x, int c) {
    const __m512i q = _mm512_and_si512(srli_halves<0, 4>(_mm512_broadcast_i64x4(load256(x.qs + 32 * c))), _mm512_set1_epi8(0x0F));
    if constexpr (kQ5) {
        const __m512i t = _mm512_srli_epi16(_mm512_broadcast_i64x4(load256(x.qh)), unsigned(2 * c));  // bit 2c / 2c+1 of qh
        const __m512i h = _mm512_and_si512(_mm512_mask_srli_epi16(t, __mmask32(0xFFFF0000u), t, 1), _mm512_set1_epi8(1));
        return _mm512_or_si512(q, _mm512_slli_epi16(h, 4));
    } else {
        return q;
    }
}

template <bool kQ5, typename Block>
inline void k4_quants(const Block& x, __m512i q[4]) {
    for (int c = 0; c < 4; ++c) q[c] = k4_chunk<kQ5>(x, c);
}

// Per 128-bit lane sum pairs of sub-block products: 16 int32 whose total is the block's isum.
inline __m512i k4_products(const __m512i q[4], const __m512i scale[4], const int8_t* y) {
    __m512i acc = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q[c], load512(y + 64 * c)), scale[c]);
    return acc;
}

// The lane sums of four int32 vectors: [sum a[0], sum a[1], sum a[2], sum a[3]].
inline __m128i reduce4_epi32(const __m512i a[4]) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
    // every 128-bit lane: partial sums [a0, a1, a2, a3]
    const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// [sum of the low 256 bits of m01, of its high 256 bits, the same two of m23].
inline __m128i reduce_halves_epi32(__m512i m01, __m512i m23) {
    const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi32(m01, m23), _mm512_unpackhi_epi32(m01, m23));
    const __m512i s2 = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_ENUM(0x4E)));  // lane: [m01, m23, m01, m23]
    const __m512i h = _mm512_add_epi32(s2, _mm512_shuffle_i64x2(s2, s2, _MM_SHUFFLE(2, 3, 0, 1)));
    // lane 0: [m01 low, m23 low, ..], lane 2: [m01 high, m23 high, ..]
    return _mm_unpacklo_epi32(_mm512_castsi512_si128(h), _mm512_extracti32x4_epi32(h, 2));
}

// sum + t[0] + t[1] + t[2] + t[3], added in that order (the scalar spec's super-block order).
inline float add4_in_order(float sum, __m128 t) {
    __m128 s = _mm_set_ss(sum);
    s = _mm_add_ss(s, t);
    s = _mm_add_ss(s, _mm_movehdup_ps(t));
    s = _mm_add_ss(s, _mm_movehl_ps(t, t));
    s = _mm_add_ss(s, _mm_shuffle_ps(t, t, _MM_SHUFFLE(3, 3, 3, 3)));
    return _mm_cvtss_f32(s);
}

inline uint32_t load_u32(const void* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// sum + t[0] + .. + t[C-1], added in that order (the scalar spec's super-block order).
template <int C>
inline float add_in_order(float sum, __m128 t) {
    if constexpr (C == 4) return add4_in_order(sum, t);
    __m128 s = _mm_add_ss(_mm_set_ss(sum), t);
    if constexpr (C > 1) s = _mm_add_ss(s, _mm_movehdup_ps(t));
    if constexpr (C > 2) s = _mm_add_ss(s, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(s);
}

// The bsums of activation super-blocks j, j + 1 (32 words) as one zmm; those at or past C read as 0.
template <int C>
LOWBIT_HOT __m512i bsums_pair(const block_q8_K* a, int j) {
    const auto* bs = reinterpret_cast<const uint8_t*>(a[j].bsums);
    if (j + 1 < C) return load2x256(bs, sizeof(block_q8_K));
    if (j < C) return _mm512_zextsi256_si512(load256(bs));
    return _mm512_setzero_si512();
}

// fp16 (d, dmin) of C (1..4) super-blocks of a k-quant with mins -> [d0..d3 | dmin0..dmin3] (0 past C).
template <int C, typename Block>
LOWBIT_HOT __m256 min_k_wdd(const Block* w) {
    auto dd_of = [w](int j) { return j < C ? int(load_u32(&w[j].d)) : 0; };
    const __m128i dd = _mm_setr_epi32(dd_of(0), dd_of(1), dd_of(2), dd_of(3));
    return _mm256_permutexvar_ps(_mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7), _mm256_cvtph_ps(dd));
}

// One row's float step of C (1..4) super-blocks of a k-quant with mins (Q2_K, Q4_K, Q5_K): sums =
// [isum 0..3 | summs 0..3], a = the row's first activation super-block. Per super-block dall *
// isum - dmin * summs on 4 lanes (lanes past C: 0, nothing past the C super-blocks is read), then
// added in super-block order (the scalar spec's operations and order).
template <int C>
LOWBIT_HOT float min_k_float_row(float sum, __m256 wdd, const block_q8_K* a, __m256i sums) {
    auto ad_of = [a](int j) { return j < C ? a[j].d : 0.0f; };
    const __m128 ad = _mm_setr_ps(ad_of(0), ad_of(1), ad_of(2), ad_of(3));
    const __m256 p = _mm256_mul_ps(_mm256_mul_ps(_mm256_set_m128(ad, ad), wdd), _mm256_cvtepi32_ps(sums));  // [dall * isum | dmin * summs]
    return add_in_order<C>(sum, _mm_sub_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1)));
}

// The float step of 4 super-blocks (Q2_K) for NR rows: acc[r][j] totals isum of super-block j,
// mw01 / mw23 hold the 16 min words of super-blocks 0, 1 (2, 3) matching bsums.
template <int NR, typename Block>
LOWBIT_HOT void min_k_float4(const Block* w, const void* act, size_t stride, int b, const __m512i (*acc)[4], __m512i mw01,
                             __m512i mw23, float* sumf) {
    const __m256 wdd = min_k_wdd<4>(w);
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
        const __m128i isum = reduce4_epi32(acc[r]);
        const __m128i summs = reduce_halves_epi32(_mm512_madd_epi16(mw01, bsums_pair<4>(a, 0)),
                                                  _mm512_madd_epi16(mw23, bsums_pair<4>(a, 2)));
        sumf[r] = min_k_float_row<4>(sumf[r], wdd, a, _mm256_inserti128_si256(_mm256_castsi128_si256(isum), summs, 1));
    }
}

// Q4_K / Q5_K products of a pair of super-blocks (2p, 2p+1): per chunk c and row, dpbusd gives
// 16 dwords of 4 products each (|.| <= 4 * 31 * 128 < 2^15, so packs_epi32 keeps them exactly);
// the two super-blocks' dwords are packed into words (per 128-bit lane: 4 of 2p, then 4 of 2p+1)
// and dpwssd multiplies them by their sub-block scales (kK4ScaleIdx) into the pair's accumulator:
// per 128-bit lane dwords 0-1 total super-block 2p, 2-3 super-block 2p+1.
// Scale-word index of pair p, chunk c: lane k (sub-block 2c in lanes 0-1, 2c+1 in lanes 2-3), word i
// -> word 8 * (2p + i / 4) + sub-block of sc_words (128-bit lane j = super-block j's 8 scales).
struct K4ScaleIdx { int16_t w[2][4][32]; };
constexpr K4ScaleIdx kK4ScaleIdx = [] {
    K4ScaleIdx t{};
    for (int p = 0; p < 2; ++p)
        for (int c = 0; c < 4; ++c)
            for (int k = 0; k < 4; ++k)
                for (int i = 0; i < 8; ++i) t.w[p][c][8 * k + i] = int16_t(8 * (2 * p + i / 4) + 2 * c + k / 2);
    return t;
}();

// [isum 0..3 | summs 0..3] from the pair accumulators acc01, acc23 (above) and the min products
// m01 / m23 (dwords 0-7: super-block 0 / 2, 8-15: super-block 1 / 3): 128-bit shuffles and adds.
LOWBIT_HOT __m256i k4_sums8(__m512i acc01, __m512i acc23, __m512i m01, __m512i m23) {
    auto pick = [](__m512i x, __m512i y, auto imm) {
        return _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(y), decltype(imm)::value));
    };
    using Even = std::integral_constant<int, 0x88>;  // [x0, x2, y0, y2] per lane
    using Odd = std::integral_constant<int, 0xDD>;   // [x1, x3, y1, y3]
    const __m512i is = _mm512_add_epi32(pick(acc01, acc23, Even{}), pick(acc01, acc23, Odd{}));  // lane: [s0 s1 s2 s3]
    const __m512i ms = _mm512_add_epi32(pick(m01, m23, Even{}), pick(m01, m23, Odd{}));  // lanes 0-1: [m0 m0 m2 m2], 2-3: [m1 m1 m3 m3]
    const __m512i z = _mm512_add_epi32(_mm512_shuffle_i64x2(is, ms, _MM_SHUFFLE(2, 0, 1, 0)),
                                       _mm512_shuffle_i64x2(is, ms, _MM_SHUFFLE(3, 1, 3, 2)));
    // z: [is0 + is2, is1 + is3, ms0 + ms1 = [m0 m0 m2 m2], ms2 + ms3 = [m1 m1 m3 m3]]
    const __m512i lo = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 8, 12, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0), z);
    const __m512i hi = _mm512_permutexvar_epi32(_mm512_setr_epi32(4, 5, 6, 7, 9, 13, 11, 15, 0, 0, 0, 0, 0, 0, 0, 0), z);
    return _mm256_add_epi32(_mm512_castsi512_si256(lo), _mm512_castsi512_si256(hi));
}

// Super-blocks b .. b+C-1 (C = 1..4) of a Q4_K / Q5_K row for NR rows: chunk by chunk, each pair of
// super-blocks decoded once for all rows; the integer sums of the C super-blocks are reduced
// together and the float step runs on 4 lanes with the scalar spec's operations (dall * isum -
// dmin * summs per super-block), then adds into sumf in super-block order.
template <int NR, bool kQ5, int C, typename Block>
LOWBIT_HOT void k4_group(const Block* w, const void* act, size_t stride, int b, float* sumf) {
    const __m512i sm = unpack_k4_scales_x4(w, C);  // lane j: super-block j
    const __m512i sc_words = _mm512_unpacklo_epi8(sm, _mm512_setzero_si512());
    const __m512i zero = _mm512_setzero_si512();
    __m512i acc[NR][2];
    for (int p = 0; p < 2; ++p) {
        for (int r = 0; r < NR; ++r) acc[r][p] = zero;
        if (2 * p >= C) continue;
        const bool second = 2 * p + 1 < C;
        for (int c = 0; c < 4; ++c) {
            const __m512i q0 = k4_chunk<kQ5>(w[2 * p], c);
            const __m512i q1 = second ? k4_chunk<kQ5>(w[2 * p + 1], c) : zero;
            const __m512i scale = _mm512_permutexvar_epi16(_mm512_loadu_si512(kK4ScaleIdx.w[p][c]), sc_words);
            for (int r = 0; r < NR; ++r) {
                const block_q8_K* a = act_row_q8_K(act, stride, r) + b + 2 * p;
                const __m512i p0 = _mm512_dpbusd_epi32(zero, q0, load512(a[0].qs + 64 * c));
                const __m512i p1 = second ? _mm512_dpbusd_epi32(zero, q1, load512(a[1].qs + 64 * c)) : zero;
                acc[r][p] = _mm512_dpwssd_epi32(acc[r][p], _mm512_packs_epi32(p0, p1), scale);
            }
        }
    }
    // the mins of super-blocks 0, 1 (2, 3) as 2 x 16 words, each twice: min s pairs with bsums 2s, 2s+1
    const __m512i mins_dup = _mm512_unpackhi_epi8(sm, sm);
    const __m512i mw01 = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(mins_dup));
    const __m512i mw23 = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(mins_dup, 1));
    const __m256 wdd = min_k_wdd<C>(w);
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
        const __m256i sums = k4_sums8(acc[r][0], acc[r][1], _mm512_madd_epi16(mw01, bsums_pair<C>(a, 0)),
                                      _mm512_madd_epi16(mw23, bsums_pair<C>(a, 2)));
        sumf[r] = min_k_float_row<C>(sumf[r], wdd, a, sums);
    }
}

// The last count (1..3) super-blocks of a row as one group (kept out of line: inlined, it made the
// main loop of k4_rows slower).
template <int NR, bool kQ5, typename Block>
__attribute__((noinline)) void k4_partial_group(int count, const Block* w, const void* act, size_t stride, int b, float* sumf) {
    prefetch_ahead(w, count * sizeof(Block));
    switch (count) {
        case 1: k4_group<NR, kQ5, 1>(w, act, stride, b, sumf); break;
        case 2: k4_group<NR, kQ5, 2>(w, act, stride, b, sumf); break;
        default: k4_group<NR, kQ5, 3>(w, act, stride, b, sumf); break;
    }
}

// Groups of 4 super-blocks, then the last nsb % 4 as one partial group (short rows, such as a
// MoE expert's 768 columns = 3 super-blocks, take the 4-lane path too).
template <int NR, bool kQ5, typename Block>
void k4_rows(int n, const Block* w, const void* act, size_t stride, float* out) {
    const int nsb = n / QK_K, nsb4 = nsb / 4 * 4;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < nsb4; b += 4) {
        prefetch_ahead(w + b, 4 * sizeof(Block));
        k4_group<NR, kQ5, 4>(w + b, act, stride, b, sumf);
    }
    if (nsb4 < nsb) k4_partial_group<NR, kQ5>(nsb - nsb4, w + nsb4, act, stride, nsb4, sumf);
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

template <int NR>
void q4_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q4_K_rows_n)
    k4_rows<NR, false>(n, static_cast<const block_q4_K*>(w), act, stride, out);
}

template <int NR>
void q5_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q5_K_rows_n)
    k4_rows<NR, true>(n, static_cast<const block_q5_K*>(w), act, stride, out);
}

// Q2_K: per super-block four vectors of 64 two-bit values (half h, shifts j, j+1); one 16-weight
// sub-block per 128-bit lane, its 4-bit scale picked by a word permute; mins through bsums.
// Returns the 16 mins as words (min s pairs with bsums[s]).
inline __m256i q2_K_decode(const block_q2_K& x, __m512i q[4], __m512i scale[4]) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i sc8 = load128(x.scales);
    const __m512i sc_z = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(0x0F))));
    for (int g = 0; g < 4; ++g) {  // group g = 2h + j/2: elements 64g .. 64g+63 = sub-blocks 4g .. 4g+3
        const int h = g / 2, j = 2 * (g % 2);
        const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * j)), _mm256_set1_epi16(short(2 * j + 2)), 1);
        q[g] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(x.qs + 32 * h)), shift), m3);
        scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), sc_z);
    }
    return _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)));
}

template <int NR>
void q2_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q2_K_rows_n)
    const auto* x = static_cast<const block_q2_K*>(w);
    const int nsb = n / QK_K, nsb4 = nsb / 4 * 4;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < nsb4; b += 4) {  // groups of 4 super-blocks, as k4_group4
        prefetch_ahead(x + b, 4 * sizeof(block_q2_K));
        __m512i acc[NR][4];
        __m256i mins[4];
        for (int j = 0; j < 4; ++j) {
            __m512i q[4], scale[4];
            mins[j] = q2_K_decode(x[b + j], q, scale);
            for (int r = 0; r < NR; ++r) acc[r][j] = k4_products(q, scale, (act_row_q8_K(act, stride, r) + b + j)->qs);
        }
        const __m512i mw01 = _mm512_inserti64x4(_mm512_castsi256_si512(mins[0]), mins[1], 1);
        const __m512i mw23 = _mm512_inserti64x4(_mm512_castsi256_si512(mins[2]), mins[3], 1);
        min_k_float4<NR>(x + b, act, stride, b, acc, mw01, mw23, sumf);
    }
    for (int b = nsb4; b < nsb; ++b) {  // the last nsb % 4 super-blocks one at a time
        prefetch_ahead(x + b, sizeof(block_q2_K));
        __m512i q[4], scale[4];
        const __m256i mins16 = q2_K_decode(x[b], q, scale);
        const float wd = h2f(x[b].d), wdmin = h2f(x[b].dmin);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const int summs = hsum_i32(_mm256_madd_epi16(mins16, load256(a->bsums)));
            const int isum = _mm512_reduce_add_epi32(k4_products(q, scale, a->qs));
            const float dall = a->d * wd, dmin = a->d * wdmin;
            sumf[r] += dall * float(isum) - dmin * float(summs);
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// The 16 Q3_K sub-block scales (6-bit, bias 32 removed) as int8, vectorised from the 12 packed
// bytes s: scale j = low nibble (j < 8: s[j] & 15, else s[j-8] >> 4) | ((s[8 + j%4] >> 2*(j/4)) & 3) << 4.
// Reads 16 bytes (the 4 after the scales are the fp16 d and are ignored).
inline __m128i unpack_q3_K_scales_v(const uint8_t* packed) {
    const __m128i s = _mm_maskz_loadu_epi8(0x0FFF, packed);   // the 12 bytes only: d ends the block
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i l = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(l, m4), _mm_and_si128(_mm_srli_epi16(_mm_unpackhi_epi64(l, l), 4), m4));
    const __m128i h = _mm_shuffle_epi8(s, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11));
    const __m128i h2 = _mm_and_si128(_mm_srlv_epi16(h, _mm_setr_epi16(0, 0, 2, 2, 4, 4, 6, 6)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(h2, 4)), _mm_set1_epi8(32));
}

// Q3_K, Q6_K, IQ4_XS add (a.d * d) * isum per super-block. decode(x) runs once per super-block
// for all rows; products(decoded, a) gives 16 int32 lanes totalling that row's isum. Groups of 4
// super-blocks reduce their sums together and run the float step on 4 lanes, then add into
// sumf in super-block order: the scalar spec's operations and order (bit-exact).
template <int NR, typename Block, typename Decode, typename Products>
inline void scaled_k_rows(int n, const Block* x, const void* act, size_t stride, float* out, Decode decode,
                          Products products) {
    // more than 4 rows: 4 x NR accumulators would not fit the registers, one super-block at a time
    const int nsb = n / QK_K, nsb4 = NR <= 4 ? nsb / 4 * 4 : 0;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    if constexpr (NR <= 4) for (int b = 0; b < nsb4; b += 4) {
        prefetch_ahead(x + b, 4 * sizeof(Block));
        __m512i acc[NR][4];
        for (int j = 0; j < 4; ++j) {
            const auto dec = decode(x[b + j]);
            for (int r = 0; r < NR; ++r) acc[r][j] = products(dec, act_row_q8_K(act, stride, r) + b + j);
        }
        const __m128 wd = _mm_cvtph_ps(_mm_setr_epi16(short(x[b].d), short(x[b + 1].d), short(x[b + 2].d), short(x[b + 3].d), 0, 0, 0, 0));
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const __m128 ad = _mm_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d);
            sumf[r] = add4_in_order(sumf[r], _mm_mul_ps(_mm_mul_ps(ad, wd), _mm_cvtepi32_ps(reduce4_epi32(acc[r]))));
        }
    }
    for (int b = nsb4; b < nsb; ++b) {  // the last nsb % 4 super-blocks (all for NR > 4) one at a time
        prefetch_ahead(x + b, sizeof(Block));
        const auto dec = decode(x[b]);
        const float wd = h2f(x[b].d);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            sumf[r] += (a->d * wd) * float(_mm512_reduce_add_epi32(products(dec, a)));
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// Q3_K: values q' = q + 4 * hbit in [0, 7] (weight = q' - 4); the -4 goes through bsums.
struct Q3KDecoded { __m512i q[4], scale[4]; __m256i sc16; };

inline Q3KDecoded q3_K_decode(const block_q3_K& x) {
    const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
    Q3KDecoded d;
    d.sc16 = _mm256_cvtepi8_epi16(unpack_q3_K_scales_v(x.scales));
    const __m512i sc_z = _mm512_castsi256_si512(d.sc16);
    const __m512i hm = _mm512_broadcast_i64x4(load256(x.hmask));
    for (int g = 0; g < 4; ++g) {  // group g = 2h + sh/2: elements 128h + 32sh .. +63
        const int h = g / 2, sh = 2 * (g % 2);
        const __m512i qshift = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * sh)), _mm256_set1_epi16(short(2 * sh + 2)), 1);
        const __m512i hshift = _mm512_inserti64x4(_mm512_set1_epi16(short(4 * h + sh)), _mm256_set1_epi16(short(4 * h + sh + 1)), 1);
        const __m512i q2 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(x.qs + 32 * h)), qshift), m3);
        const __m512i hb = _mm512_and_si512(_mm512_srlv_epi16(hm, hshift), one);
        d.q[g] = _mm512_or_si512(q2, _mm512_slli_epi16(hb, 2));
        d.scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), sc_z);
    }
    return d;
}

// 16 int32 lanes totalling sum sc * q' * y - Shift-scaled sum sc * bsum (Q3_K: 4 = 1 << 2,
// Q6_K: 32 = 1 << 5): the offset joins the lanes instead of a reduction of its own.
template <int Shift, typename Decoded>
inline __m512i offset_products(const Decoded& d, const block_q8_K* a) {
    __m512i acc = _mm512_setzero_si512();
    for (int g = 0; g < 4; ++g) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(d.q[g], load512(a->qs + 64 * g)), d.scale[g]);
    const __m256i offset = _mm256_madd_epi16(d.sc16, load256(a->bsums));  // sc * bsum pairs
    return _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(offset, Shift)));
}

template <int NR>
void q3_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q3_K_rows_n)  // grouped super-blocks in both passes (faster than per super-block here)
    scaled_k_rows<NR>(n, static_cast<const block_q3_K*>(w), act, stride, out, q3_K_decode, offset_products<2, Q3KDecoded>);
}

// IQ4_XS: two 32-weight sub-blocks per vector; |value| and its sign mask are decoded once, each
// row negates its activations where the weight is negative (sign trick) and multiplies.
struct Iq4xsDecoded { __m512i mag[4], scale[4]; __mmask64 neg[4]; };

inline Iq4xsDecoded iq4_xs_decode(const block_iq4_xs& x) {
    const __m512i table = _mm512_broadcast_i32x4(load128(kvalues_iq4nl));
    // the 8 scales ls - 32 as words: low 4 bits from scales_l nibbles, high 2 from scales_h
    const __m128i l4 = _mm_cvtsi32_si128(int(load_u32(x.scales_l)));
    const __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(l4, _mm_set1_epi8(0x0F)),
                                         _mm_and_si128(_mm_srli_epi16(l4, 4), _mm_set1_epi8(0x0F)));
    const __m128i hi = _mm_and_si128(_mm_srlv_epi16(_mm_set1_epi16(short(x.scales_h)),
                                                    _mm_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14)), _mm_set1_epi16(3));
    const __m128i ls = _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(lo), _mm_slli_epi16(hi, 4)), _mm_set1_epi16(32));
    const __m512i sc_all = _mm512_broadcast_i32x4(ls);
    Iq4xsDecoded d;
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p, 2p+1 = elements 64p .. 64p+63
        const __m512i v = _mm512_shuffle_epi8(table, nibble_pair(x.qs + 32 * p, x.qs + 32 * p + 16));
        d.mag[p] = _mm512_abs_epi8(v);
        d.neg[p] = _mm512_movepi8_mask(v);
        const int lo_pick = 0x0100 * (4 * p + 1) + 4 * p, hi_pick = lo_pick + 0x0202;  // words 2p, 2p+1
        d.scale[p] = _mm512_shuffle_epi8(sc_all, _mm512_inserti64x4(_mm512_set1_epi16(short(lo_pick)), _mm256_set1_epi16(short(hi_pick)), 1));
    }
    return d;
}

// 16 int32 lanes whose total is the super-block's integer sum.
inline __m512i iq4_xs_products(const Iq4xsDecoded& d, const block_q8_K* a) {
    __m512i acc = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {
        const __m512i y = load512(a->qs + 64 * p);
        const __m512i ys = _mm512_mask_sub_epi8(y, d.neg[p], _mm512_setzero_si512(), y);
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(d.mag[p], ys), d.scale[p]);
    }
    return acc;
}

template <int NR>
void iq4_xs_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    // no row split: for NR > 4 one super-block at a time beats two grouped passes here
    scaled_k_rows<NR>(n, static_cast<const block_iq4_xs*>(w), act, stride, out, iq4_xs_decode, iq4_xs_products);
}

// Q6_K: per half super-block two vectors of 64 six-bit values q (weight = q - 32), chunk g =
// elements 64g .. 64g+63 = sub-blocks 4g .. 4g+3, one per 128-bit lane.
inline void q6_K_quants(const block_q6_K& x, __m512i q[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
    for (int half = 0; half < 2; ++half) {
        const __m512i ql = load512(x.ql + 64 * half);  // [ql0 | ql1]
        const __m512i hbits = srli_halves<0, 2>(_mm512_broadcast_i64x4(load256(x.qh + 32 * half)));
        q[2 * half] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_slli_epi16(hbits, 4), m2));
        q[2 * half + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(hbits, m2));
    }
}

// Q6_K groups of 4 super-blocks as Q4_K's (k4_group): per chunk and row dpbusd of the unsigned q (|sum of 4| <= 4 *
// 63 * 128 < 2^15: packs is exact), two super-blocks' sums packed into words and scaled by one
// dpwssd; the -32 offset (32 * sum sc * bsum) reduced beside the sums (k4_sums8's min lanes) and
// taken off the integer sums: the same isum, and the float step (a.d * d) * isum of the spec.
// Scale-word index of chunk g in a pair's 32 scale words (word 16 i + s: sub-block s of the
// pair's super-block i): lane k (sub-block 4g + k), words 0-3 super-block 0, 4-7 super-block 1.
struct Q6ScaleIdx { int16_t w[4][32]; };
constexpr Q6ScaleIdx kQ6ScaleIdx = [] {
    Q6ScaleIdx t{};
    for (int g = 0; g < 4; ++g)
        for (int k = 0; k < 4; ++k)
            for (int i = 0; i < 8; ++i) t.w[g][8 * k + i] = int16_t(16 * (i / 4) + 4 * g + k);
    return t;
}();

template <int NR>
LOWBIT_HOT void q6_K_group4(const block_q6_K* x, const void* act, size_t stride, int b, float* sumf) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i acc[NR][2], off[NR][2];
    for (int p = 0; p < 2; ++p) {
        __m512i q0[4], q1[4];
        q6_K_quants(x[2 * p], q0);
        q6_K_quants(x[2 * p + 1], q1);
        const __m512i scw = _mm512_cvtepi8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(load128(x[2 * p].scales)),
                                                                         load128(x[2 * p + 1].scales), 1));
        for (int r = 0; r < NR; ++r) {
            acc[r][p] = zero;
            off[r][p] = _mm512_madd_epi16(scw, bsums_pair<4>(act_row_q8_K(act, stride, r) + b, 2 * p));
        }
        for (int g = 0; g < 4; ++g) {
            const __m512i scale = _mm512_permutexvar_epi16(_mm512_loadu_si512(kQ6ScaleIdx.w[g]), scw);
            for (int r = 0; r < NR; ++r) {
                const block_q8_K* a = act_row_q8_K(act, stride, r) + b + 2 * p;
                const __m512i p0 = _mm512_dpbusd_epi32(zero, q0[g], load512(a[0].qs + 64 * g));
                const __m512i p1 = _mm512_dpbusd_epi32(zero, q1[g], load512(a[1].qs + 64 * g));
                acc[r][p] = _mm512_dpwssd_epi32(acc[r][p], _mm512_packs_epi32(p0, p1), scale);
            }
        }
    }
    const __m128 wd = _mm_cvtph_ps(_mm_setr_epi16(short(x[0].d), short(x[1].d), short(x[2].d), short(x[3].d), 0, 0, 0, 0));
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
        const __m256i sums = k4_sums8(acc[r][0], acc[r][1], off[r][0], off[r][1]);  // [sum sc q y | sum sc bsum]
        const __m128i isum = _mm_sub_epi32(_mm256_castsi256_si128(sums), _mm_slli_epi32(_mm256_extracti128_si256(sums, 1), 5));
        const __m128 ad = _mm_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d);
        sumf[r] = add4_in_order(sumf[r], _mm_mul_ps(_mm_mul_ps(ad, wd), _mm_cvtepi32_ps(isum)));
    }
}

// One Q6_K super-block for NR rows (a row's last n_sb % 4): maddubs + dpwssd per chunk and the
// -32 offset in the same lanes (offset_products), reduced alone. Faster here than a partial group
// (a MoE expert's down rows, 3 super-blocks: ~8% at NR 2), whose packs and dpwssd run half empty.
template <int NR>
inline void q6_K_one(const block_q6_K& x, const block_q8_K* a0, size_t stride, float* sumf) {
    struct { __m512i q[4], scale[4]; __m256i sc16; } dec;
    q6_K_quants(x, dec.q);
    dec.sc16 = _mm256_cvtepi8_epi16(load128(x.scales));
    for (int g = 0; g < 4; ++g) dec.scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), _mm512_castsi256_si512(dec.sc16));
    const float wd = h2f(x.d);
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(a0, stride, r);
        sumf[r] += (a->d * wd) * float(_mm512_reduce_add_epi32(offset_products<5>(dec, a)));
    }
}

template <int NR>
void q6_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q6_K_rows_n)
    const auto* x = static_cast<const block_q6_K*>(w);
    const int nsb = n / QK_K, nsb4 = nsb / 4 * 4;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < nsb4; b += 4) {
        prefetch_ahead(x + b, 4 * sizeof(block_q6_K));
        q6_K_group4<NR>(x + b, act, stride, b, sumf);
    }
    for (int b = nsb4; b < nsb; ++b) {
        prefetch_ahead(x + b, sizeof(block_q6_K));
        q6_K_one<NR>(x[b], act_row_q8_K(act, stride, 0) + b, stride, sumf);
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// Float weights x f32 activations: 2 accumulators of 16 lanes per row; masked tail.
template <int NR, typename Load16, typename LoadTail>
inline void float_rows_512(int n, const void* act, size_t stride, float* out, Load16 load16, LoadTail load_tail) {
    const float* a[NR];
    __m512 acc[NR][2];
    for (int r = 0; r < NR; ++r) {
        a[r] = reinterpret_cast<const float*>(static_cast<const uint8_t*>(act) + size_t(r) * stride);
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 w0 = load16(i), w1 = load16(i + 16);
        for (int r = 0; r < NR; ++r) {
            acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a[r] + i), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(a[r] + i + 16), acc[r][1]);
        }
    }
    if (i + 16 <= n) {
        const __m512 w0 = load16(i);
        for (int r = 0; r < NR; ++r) acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a[r] + i), acc[r][0]);
        i += 16;
    }
    if (i < n) {
        const __mmask16 m = __mmask16((1u << (n - i)) - 1);
        const __m512 w0 = load_tail(i, m);
        for (int r = 0; r < NR; ++r) acc[r][1] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, a[r] + i), acc[r][1]);
    }
    for (int r = 0; r < NR; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}

template <int NR>
void f32_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const float*>(vw);
    float_rows_512<NR>(n, act, stride, out, [w](int i) { return _mm512_loadu_ps(w + i); },
                       [w](int i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w + i); });
}

template <int NR>
void f16_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const uint16_t*>(vw);
    float_rows_512<NR>(n, act, stride, out, [w](int i) { return _mm512_cvtph_ps(load256(w + i)); },
                       [w](int i, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i)); });
}

inline __m512 bf16_to_f32(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

template <int NR>
void bf16_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const uint16_t*>(vw);
    float_rows_512<NR>(n, act, stride, out, [w](int i) { return bf16_to_f32(load256(w + i)); },
                       [w](int i, __mmask16 m) { return bf16_to_f32(_mm256_maskz_loadu_epi16(m, w + i)); });
}

// ---- strip GEMM (kernels.h, StripLayout) ------------------------------------------------------
// Decoding: per row, the values of a run of blocks (8 legacy blocks or one super-block) go
// through the dot kernels' decoders into a row of u bytes (natural element order, as the
// activation qs); the 16 rows x 64 dwords of the run are then transposed in registers so that
// dword g of block b of every row lands in one zmm (and the rows' scales and mins likewise).
// Runs once per strip and matmul call: for the small batches of a decode step (8-16 activation
// rows) it costs about a third of the GEMM, so it has to stay shuffles, not gathers.

// In-register transpose of 16 rows x 16 dwords: on return r[k] holds dword k of every input row
// (row j in lane j). Unpacks pair rows into 2x2, then 4x4 dword blocks inside 128-bit lanes;
// two lane shuffles gather each column's four 4-row pieces.
LOWBIT_HOT void transpose16x16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int k = 0; k < 8; ++k) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int q = 0; q < 4; ++q) {   // u[4q + m], lane l: dword 4l + m of rows 4q..4q+3
        u[4 * q + 0] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
        u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
    }
    for (int m = 0; m < 4; ++m) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xDD);
        const __m512i v2 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88), v3 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xDD);
        r[m] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[8 + m] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        r[4 + m] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[12 + m] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

// Scatter one run of `blocks` blocks of Block elements each, decoded for all 16 rows (u: rows 256
// bytes apart; dw, mw: per row the scale and min of each block, 16 floats a row), into strip
// blocks b0, b0 + 1, ...
template <int Block, bool kMins>
LOWBIT_HOT void strip_scatter(const uint8_t (*u)[256], const float (*dw)[16], const float (*mw)[16], int b0,
                              int blocks, uint8_t* strip) {
    constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block), kM = kD + 4 * kStripRows;
    constexpr int kGroups = Block / 4;   // dwords per block and row
    __m512i r[16];
    for (int tile = 0; tile < 4; ++tile) {   // dwords 16 tile .. 16 tile + 15 of the run
        if (16 * tile >= blocks * kGroups) break;
        for (int j = 0; j < kStripRows; ++j) r[j] = _mm512_load_si512(u[j] + 64 * tile);
        transpose16x16_epi32(r);
        for (int k = 0; k < 16; ++k) {
            const int c = 16 * tile + k, i = c / kGroups;   // dword c of the run: group c % kGroups of block i
            if (i < blocks) _mm512_store_si512(strip + size_t(b0 + i) * kBytes + 64 * (c % kGroups), r[k]);
        }
    }
    for (int part = 0; part < (kMins ? 2 : 1); ++part) {   // scales, then mins (never read without kMin)
        const float (*src)[16] = part == 0 ? dw : mw;
        for (int j = 0; j < kStripRows; ++j) r[j] = _mm512_castps_si512(_mm512_loadu_ps(src[j]));
        transpose16x16_epi32(r);
        for (int i = 0; i < blocks; ++i) _mm512_store_si512(strip + size_t(b0 + i) * kBytes + (part == 0 ? kD : kM), r[i]);
    }
}

// Decodes a strip in runs of 256 elements (kRun blocks of Block elements; the last run of a legacy
// row may hold fewer blocks): decode(row bytes, run, count, q, dw, mw) gives each row's run as 4 zmm
// (natural order) and the scale and min of its `count` blocks; strip_scatter interleaves them.
template <int Block, int kRun, bool kMins, typename DecodeRun>
void strip_decode_runs(int n, const void* w, size_t row_bytes, int nrows, void* strip, DecodeRun decode) {
    static_assert(Block * kRun == 256, "runs of 256 elements");
    const int nb = n / Block;
    static_assert(kRun <= 16, "a run's scales transpose as 16 x 16");
    alignas(64) uint8_t u[kStripRows][256] = {};
    alignas(64) float dw[kStripRows][16] = {}, mw[kStripRows][16] = {};
    for (int b = 0; b < nb; b += kRun) {
        const int count = std::min(kRun, nb - b);
        for (int j = 0; j < nrows; ++j) {
            __m512i q[4];
            decode(static_cast<const uint8_t*>(w) + size_t(j) * row_bytes, b / kRun, count, q, dw[j], mw[j]);
            for (int k = 0; k < 4; ++k) _mm512_store_si512(u[j] + 64 * k, q[k]);
        }
        strip_scatter<Block, kMins>(u, dw, mw, b, count, static_cast<uint8_t*>(strip));
    }
}

// Legacy types: runs of 8 blocks through the panel decoders.
template <bool kMin, typename LBlock, typename Decode>
void strip_decode(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    strip_decode_runs<QK8_0, 8, kMin>(n, w, row_bytes, nrows, strip,
                                [](const uint8_t* row, int run, int count, __m512i q[4], float* dw, float* mw) {
        const auto* x = reinterpret_cast<const LBlock*>(row) + 8 * run;
        Decode{}(x, q, count);
        _mm256_storeu_ps(dw, _mm256_cvtph_ps(gather_d8(x, count)));   // exact fp16 -> f32, 0 beyond count
        if constexpr (kMin) _mm256_storeu_ps(mw, _mm256_cvtph_ps(gather_m8(x, count)));
    });
}

// k-quants: one super-block per run; `decode(x, q, dw, mw)` gives its 4 zmm and the scale and min
// of each of its QK_K / Block blocks.
template <int Block, bool kMins, typename KBlock, typename Decode>
void strip_decode_k(int n, const void* w, size_t row_bytes, int nrows, void* strip, Decode decode) {
    strip_decode_runs<Block, QK_K / Block, kMins>(n, w, row_bytes, nrows, strip,
                                           [&](const uint8_t* row, int run, int, __m512i q[4], float* dw, float* mw) {
        decode(reinterpret_cast<const KBlock*>(row)[run], q, dw, mw);
    });
}

// Q4_K / Q5_K: w = d * sc_s * q - dmin * m_s per sub-block s of 32 (6-bit scales and mins).
template <bool kQ5, typename KBlock>
void strip_decode_k4(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    strip_decode_k<32, true, KBlock>(n, w, row_bytes, nrows, strip, [](const KBlock& x, __m512i q[4], float* dw, float* mw) {
        k4_quants<kQ5>(x, q);
        // the 8 scales and 8 mins (bytes 0..15) times d and -dmin, 16 lanes at once (the same products)
        const __m512 sm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_castsi512_si128(unpack_k4_scales_x4(&x, 1))));
        const __m512 dd = _mm512_insertf32x8(_mm512_set1_ps(h2f(x.d)), _mm256_set1_ps(-h2f(x.dmin)), 1);
        const __m512 p = _mm512_mul_ps(sm, dd);
        _mm256_storeu_ps(dw, _mm512_castps512_ps256(p));
        _mm256_storeu_ps(mw, _mm512_extractf32x8_ps(p, 1));
    });
}

// Q6_K: w = d * sc_s * (q - 32) per sub-block s of 16 (int8 scales).
void strip_decode_q6_K(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    strip_decode_k<16, false, block_q6_K>(n, w, row_bytes, nrows, strip, [](const block_q6_K& x, __m512i q[4], float* dw, float* mw) {
        q6_K_quants(x, q);
        const float d = h2f(x.d);
        for (int s = 0; s < 16; ++s) {
            dw[s] = d * float(x.scales[s]);
            mw[s] = 0.0f;
        }
    });
}

// NR activation rows x the strip's 16 weight rows. Per block and row: Block / 4 dpbusd (the
// activation dword broadcast from memory; the accumulator starts at corr = -bias * sum(qs)), one
// convert, one multiply by the activation scale, one FMA by the 16 weight scales (+ one FMA of the
// mins against d_a * sum(qs) with kMin): for 32-blocks ~4x fewer non-dpbusd operations per MAC
// than the panel kernel, whose lanes split blocks instead of outputs.
template <int Block, int NR, bool kMin>
LOWBIT_HOT void strip_gemm_n(int n, const void* strip, const void* act_group, float* out) {
    const int nb = n / Block;
    constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block), kM = kD + 4 * kStripRows;
    constexpr int64_t kAct = StripActLayout::block_bytes(Block), kCorr = StripActLayout::corr(Block),
                      kAd = StripActLayout::d(Block), kAs = StripActLayout::s(Block);
    const auto* s0 = static_cast<const uint8_t*>(strip);
    const auto* p0 = static_cast<const uint8_t*>(act_group);
    auto i32 = [](const uint8_t* p) { return *reinterpret_cast<const int32_t*>(p); };
    auto f32 = [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); };
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* sb = s0 + size_t(b) * kBytes;
        const uint8_t* pa = p0 + size_t(b) * kAct;
        __m512i isum[NR], isum2[NR];   // two chains per row (even / odd groups): dpbusd latency
        for (int r = 0; r < NR; ++r) {
            isum[r] = _mm512_set1_epi32(i32(pa + kCorr + 4 * r));
            isum2[r] = _mm512_setzero_si512();
        }
        for (int g = 0; g < Block / 4; g += 2) {
            const __m512i w0 = _mm512_load_si512(sb + 64 * g), w1 = _mm512_load_si512(sb + 64 * g + 64);
            for (int r = 0; r < NR; ++r) {
                isum[r] = _mm512_dpbusd_epi32(isum[r], w0, _mm512_set1_epi32(i32(pa + r * Block + 4 * g)));
                isum2[r] = _mm512_dpbusd_epi32(isum2[r], w1, _mm512_set1_epi32(i32(pa + r * Block + 4 * g + 4)));
            }
        }
        for (int r = 0; r < NR; ++r) isum[r] = _mm512_add_epi32(isum[r], isum2[r]);
        const __m512 dw = _mm512_load_ps(reinterpret_cast<const float*>(sb + kD));
        for (int r = 0; r < NR; ++r)
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(f32(pa + kAd + 4 * r))), dw, acc[r]);
        if constexpr (kMin) {
            const __m512 mw = _mm512_load_ps(reinterpret_cast<const float*>(sb + kM));
            for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32(pa + kAs + 4 * r)), acc[r]);
        }
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

template <int Block, bool kMin>
void strip_gemm(int n, const void* strip, const void* act_group, int nact, float* out) {
    switch (nact) {
        case 1: strip_gemm_n<Block, 1, kMin>(n, strip, act_group, out); break;
        case 2: strip_gemm_n<Block, 2, kMin>(n, strip, act_group, out); break;
        case 3: strip_gemm_n<Block, 3, kMin>(n, strip, act_group, out); break;
        case 4: strip_gemm_n<Block, 4, kMin>(n, strip, act_group, out); break;
        case 5: strip_gemm_n<Block, 5, kMin>(n, strip, act_group, out); break;
        case 6: strip_gemm_n<Block, 6, kMin>(n, strip, act_group, out); break;
        case 7: strip_gemm_n<Block, 7, kMin>(n, strip, act_group, out); break;
        default: strip_gemm_n<Block, 8, kMin>(n, strip, act_group, out); break;
    }
}

}  // namespace

// The block_q8_0 entry points of a legacy type: panel rows built here, so they equal the mat-mat bit
// for bit.
#define LOWBIT_PANEL_ENTRIES(name, type)                                                            \
    void name##_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out) {  \
        const std::vector<uint8_t> panel = panel_of(n, act, stride, nrows, panel_bias(type)); \
        name##_panel(n, w, panel.data(), size_t(Q8PanelLayout::row_bytes(n)), nrows, out);         \
    }                                                                                              \
    float vec_dot_##name(int n, const void* w, const void* a) {                                    \
        float out;                                                                                 \
        name##_rows(n, w, a, 0, 1, &out);                                                          \
        return out;                                                                                \
    }

LOWBIT_PANEL_ENTRIES(q4_0, GGMLType::Q4_0)
LOWBIT_PANEL_ENTRIES(q4_1, GGMLType::Q4_1)
LOWBIT_PANEL_ENTRIES(q5_0, GGMLType::Q5_0)
LOWBIT_PANEL_ENTRIES(q5_1, GGMLType::Q5_1)
LOWBIT_PANEL_ENTRIES(q8_0, GGMLType::Q8_0)
LOWBIT_PANEL_ENTRIES(iq4_nl, GGMLType::IQ4_NL)

#define LOWBIT_DOT_AND_ROWS(name)                                                                     \
    float vec_dot_##name(int n, const void* w, const void* a) {                                       \
        float out;                                                                                    \
        name##_rows_n<1>(n, w, a, 0, &out);                                                           \
        return out;                                                                                   \
    }                                                                                                 \
    void name##_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out) {   \
        LOWBIT_ROWS_SWITCH(name##_rows_n, nrows, n, w, act, stride, out)                              \
    }

LOWBIT_DOT_AND_ROWS(q4_K)
LOWBIT_DOT_AND_ROWS(q6_K)
LOWBIT_DOT_AND_ROWS(q5_K)
LOWBIT_DOT_AND_ROWS(f32)
LOWBIT_DOT_AND_ROWS(f16)
LOWBIT_DOT_AND_ROWS(bf16)
LOWBIT_DOT_AND_ROWS(q2_K)
LOWBIT_DOT_AND_ROWS(q3_K)
LOWBIT_DOT_AND_ROWS(iq4_xs)

// The strip pieces the i-quant strips reuse (strip_iq.h): a strip decoded run by run through
// a StripRunFn, and the no-min GEMMs.
void strip_decode_from_runs(int n, const void* w, size_t row_bytes, int nrows, void* strip, int block, StripRunFn run) {
    auto adapt = [run](const uint8_t* row, int r, int count, __m512i q[4], float* dw, float*) {
        alignas(64) uint8_t u[256];
        run(row, r, count, u, dw);
        for (int k = 0; k < 4; ++k) q[k] = _mm512_load_si512(u + 64 * k);
    };
    if (block == 16)
        strip_decode_runs<16, 16, false>(n, w, row_bytes, nrows, strip, adapt);
    else
        strip_decode_runs<32, 8, false>(n, w, row_bytes, nrows, strip, adapt);
}
void strip_gemm_b32(int n, const void* strip, const void* act, int nact, float* out) { strip_gemm<32, false>(n, strip, act, nact, out); }
void strip_gemm_b16(int n, const void* strip, const void* act, int nact, float* out) { strip_gemm<16, false>(n, strip, act, nact, out); }

// The activation quantizers stay 256-bit (a small share of a mat-vec).
void quantize_act_q8_0(const float* x, block_q8_0* y, int n) { quantize_act_q8_0_256(x, y, n); }
void quantize_act_q8_K(const float* x, block_q8_K* y, int n) { quantize_act_q8_K_256(x, y, n); }


namespace {
// Entries of the types with panel kernels (legacy 32-blocks) and strip GEMMs.
constexpr TypeKernels legacy(VecDotFn dot, VecDotRowsFn rows, PanelRowsFn panel, PanelWRowsFn wrows, StripKernels strip) {
    return {.dot = dot, .dot_rows = rows, .panel = panel, .panel_wrows = wrows, .strip = strip};
}

KernelSet make_kernels() {
    KernelSet k{"avx512", quantize_act_q8_0, quantize_act_q8_K};
    k[GGMLType::Q4_0] = legacy(vec_dot_q4_0, q4_0_rows, q4_0_panel, q4_0_panel_wrows,
                               {strip_decode<false, block_q4_0, DecodeQ4>, strip_gemm<32, false>, 32, 8});
    k[GGMLType::Q4_1] = legacy(vec_dot_q4_1, q4_1_rows, q4_1_panel, q4_1_panel_wrows,
                               {strip_decode<true, block_q4_1, DecodeQ4>, strip_gemm<32, true>, 32, 0});
    k[GGMLType::Q5_0] = legacy(vec_dot_q5_0, q5_0_rows, q5_0_panel, q5_0_panel_wrows,
                               {strip_decode<false, block_q5_0, DecodeQ5>, strip_gemm<32, false>, 32, 16});
    k[GGMLType::Q5_1] = legacy(vec_dot_q5_1, q5_1_rows, q5_1_panel, q5_1_panel_wrows,
                               {strip_decode<true, block_q5_1, DecodeQ5>, strip_gemm<32, true>, 32, 0});
    k[GGMLType::Q8_0] = legacy(vec_dot_q8_0, q8_0_rows, q8_0_panel, q8_0_panel_wrows,
                               {strip_decode<false, block_q8_0, DecodeQ8>, strip_gemm<32, false>, 32, 128});
    k[GGMLType::IQ4_NL] = legacy(vec_dot_iq4_nl, iq4_nl_rows, iq4_nl_panel, iq4_nl_panel_wrows,
                                 {strip_decode<false, block_iq4_nl, DecodeIQ4NL>, strip_gemm<32, false>, 32, 128});
    k[GGMLType::Q2_K] = {.dot = vec_dot_q2_K, .dot_rows = q2_K_rows};
    k[GGMLType::Q3_K] = {.dot = vec_dot_q3_K, .dot_rows = q3_K_rows};
    k[GGMLType::Q4_K] = {.dot = vec_dot_q4_K, .dot_rows = q4_K_rows,
                         .strip = {strip_decode_k4<false, block_q4_K>, strip_gemm<32, true>, 32, 0}};
    k[GGMLType::Q5_K] = {.dot = vec_dot_q5_K, .dot_rows = q5_K_rows,
                         .strip = {strip_decode_k4<true, block_q5_K>, strip_gemm<32, true>, 32, 0}};
    k[GGMLType::Q6_K] = {.dot = vec_dot_q6_K, .dot_rows = q6_K_rows,
                         .strip = {strip_decode_q6_K, strip_gemm<16, false>, 16, 32}};
    k[GGMLType::IQ4_XS] = {.dot = vec_dot_iq4_xs, .dot_rows = iq4_xs_rows};
    k[GGMLType::F32] = {.dot = vec_dot_f32, .dot_rows = f32_rows};
    k[GGMLType::F16] = {.dot = vec_dot_f16, .dot_rows = f16_rows};
    k[GGMLType::BF16] = {.dot = vec_dot_bf16, .dot_rows = bf16_rows};
    LOWBIT_IQ_DOT_ONLY_ENTRIES(k);
    add_iq_strips(k);   // strip_iq.cpp
    add_packed_gemms(k);
    add_strip_quantizers(k);
    return k;
}
}  // namespace

extern const KernelSet kKernels = make_kernels();

}  // namespace lowbit::cpu::avx512

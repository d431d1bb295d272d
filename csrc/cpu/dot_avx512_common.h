// dot_avx512_common.h: the inline helpers the AVX-512 kernel files share (dot_avx512.cpp: legacy
// panels, float rows, the set; dot_kq_avx512.cpp: k-quant / IQ4_XS rows; strip_avx512.cpp: the
// strip GEMM and its decoders; packed_avx512.cpp). Included only by *_avx512.cpp files (the ISA
// flags), after `#pragma GCC optimize("fp-contract=off")`. Everything has internal linkage.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"

#ifndef LOWBIT_SIMD_NS
#define LOWBIT_SIMD_NS avx512   // x86_basics.h's helpers go into this header's namespace
#endif
#include "cpu/x86_basics.h"   // h2f, load128, load256, hsum_i32, hsum_f32

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

// The row-count dispatch of the multi-row kernels (panels, strip GEMMs): f.template
// operator()<NR>() with NR = nact for 1..7 and 8 (kStripAct, kMaxDotRows) for more, so each
// kernel is instantiated per row count.
static_assert(kStripAct == 8 && kMaxDotRows == 8, "with_act_rows dispatches 1..8 rows");
template <class F>
inline void with_act_rows(int nact, F&& f) {
    switch (nact) {
        case 1: return f.template operator()<1>();
        case 2: return f.template operator()<2>();
        case 3: return f.template operator()<3>();
        case 4: return f.template operator()<4>();
        case 5: return f.template operator()<5>();
        case 6: return f.template operator()<6>();
        case 7: return f.template operator()<7>();
        default: return f.template operator()<kStripAct>();
    }
}

// A strip activation group's int32 (corr) and f32 (d, s) fields (StripActLayout).
inline int32_t act_i32(const uint8_t* p) { return *reinterpret_cast<const int32_t*>(p); }
inline float act_f32(const uint8_t* p) { return *reinterpret_cast<const float*>(p); }

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
// 128 + kvalues_iq4nl in every 128-bit lane (u8 1 .. 241): a nibble's unsigned value in one vpshufb.
LOWBIT_HOT __m512i iq4nl_u8_table() {
    return _mm512_xor_si512(_mm512_broadcast_i32x4(load128(kvalues_iq4nl)), _mm512_set1_epi8(char(0x80)));
}
struct DecodeIQ4NL {   // table value + 128 is unsigned
    LOWBIT_HOT void operator()(const block_iq4_nl* x, __m512i* q, int count) const {
        const __m512i table = iq4nl_u8_table();
        nibble_pairs8(x, q, count);
        for (int k = 0; k < 4; ++k) q[k] = _mm512_shuffle_epi8(table, q[k]);
    }
};

// More than 4 rows: two passes (register pressure); the per-row arithmetic is unchanged.
#define LOWBIT_SPLIT_ROWS(NR, fn)                                                 \
    if constexpr (NR > 4) {                                                       \
        fn<4>(n, w, act, stride, out);                                            \
        fn<NR - 4>(n, w, static_cast<const uint8_t*>(act) + 4 * stride, stride, out + 4); \
        return;                                                                   \
    }

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

}  // namespace

// The single-row dot and the multi-row entry of a type whose rows kernel is name##_rows_n<NR>.
#define LOWBIT_DOT_AND_ROWS(name)                                                                     \
    float vec_dot_##name(int n, const void* w, const void* a) {                                       \
        float out;                                                                                    \
        name##_rows_n<1>(n, w, a, 0, &out);                                                           \
        return out;                                                                                   \
    }                                                                                                 \
    void name##_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out) {   \
        with_act_rows(nrows, [&]<int NR>() { name##_rows_n<NR>(n, w, act, stride, out); });         \
    }

// dot_kq_avx512.cpp: the k-quant and IQ4_XS multi-row dots (kernels.h, VecDotRowsFn).
void q2_K_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out);
void q3_K_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out);
void q4_K_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out);
void q5_K_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out);
void q6_K_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out);
void iq4_xs_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out);
// strip_avx512.cpp: the strip entries (decode + GEMM) of the legacy types, Q4_K, Q5_K and Q6_K.
void add_strips(KernelSet& k);

}  // namespace lowbit::cpu::avx512

// dot_iq_x86_256.h: 256-bit dot kernels of the i-quants (IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S
// IQ3_XXS IQ3_S), ternary (TQ1_0 TQ2_0) and FP4 (MXFP4 NVFP4) formats, included by
// dot_iq_avx2.cpp (maddubs + madd) and dot_iq_avx512.cpp (vpdpbusd) only.
//
// The includer defines LOWBIT_SIMD_NS (the namespace the kernels land in) and LOWBIT_VNNI.
// As in dot_x86_256.h, nothing here calls an inline function of another header (an out-of-line
// copy compiled with these ISA flags could be linked into baseline code) but x86_basics.h's,
// which land in the includer's namespace with internal linkage; the codebooks of
// quant/iq_tables.h are data only.
//
// Exactness: each kernel computes the scalar spec's integers (dot_scalar_iq.cpp) exactly
// (maddubs pairs stay below 2^15: grid magnitudes <= 62 times |q8| <= 128, twice) and then the
// spec's float operations in its order, so every result equals the scalar one bit for bit;
// except FP4, TQ1_0 and TQ2_0, whose integer block sums stay exact but whose float steps run in
// vector lanes with one reduction per row (tier 1 to the spec: see vec_dot_tq1_0, vec_dot_mxfp4).
// Shape: one 32-weight group per ymm; grid points are gathered with scalar loads (the index
// bits are scattered); the 32 sign bits of a group (built for all 8 groups of a super-block at
// once where they are 7-bit ksigns) negate activation bytes: one masked subtract on AVX-512,
// shuffle + compare + xor/sub on AVX2.
#pragma once
#include <immintrin.h>

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"
#include "quant/iq_tables.h"

#if !defined(LOWBIT_SIMD_NS) || !defined(LOWBIT_VNNI)
#error "define LOWBIT_SIMD_NS and LOWBIT_VNNI before including dot_iq_x86_256.h"
#endif

#include "cpu/x86_basics.h"   // h2f, load256, hsum_i32, hsum_f32

namespace lowbit::cpu::LOWBIT_SIMD_NS {
namespace {

// 8 int32: sums of 4 adjacent u8 x s8 products.
inline __m256i iq_mul_sum_us8(__m256i u, __m256i s) {
#if LOWBIT_VNNI
    // the ymm form: EVEX-encoded as the build has no -mavxvnni (CMakeLists.txt); a zmm op on a
    // zero-extended ymm costs two 256-bit slots on Zen 4
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// u8 x s8 pair sums (int16), times int16 scales per pair lane -> 8 int32.
inline __m256i iq_scaled(__m256i u, __m256i s, __m256i scale16) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

// Two int16 scales from memory: the first for bytes 0..15, the second for 16..31.
inline __m256i iq_two_scales(const uint16_t* lo_hi) {
    return _mm256_set_m128i(_mm_set1_epi16(short(lo_hi[1])), _mm_set1_epi16(short(lo_hi[0])));
}

// y with byte i negated where bit i of `bits` is set (the 32 sign bits of one group of 32).
inline __m256i iq_apply_signs(__m256i y, uint32_t bits) {
#if LOWBIT_VNNI
    return _mm256_mask_sub_epi8(y, __mmask32(bits), _mm256_setzero_si256(), y);
#else
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    const __m256i m = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), spread), bit), bit);
    return _mm256_sub_epi8(_mm256_xor_si256(y, m), m);
#endif
}

// ksigns for 8 groups at once: each dword of f holds four 7-bit sign fields, field l in byte l
// (bit 7 clear); byte l becomes the field with bit 7 = the parity of its 7 bits (kSignsIq2xs).
inline __m256i iq_ksigns(__m256i f) {
    // bit 0 of each byte after the three steps is the xor of that byte's bits (shifts of 4, 2, 1
    // bring only the byte's own bits down to bit 0)
    __m256i p = _mm256_xor_si256(f, _mm256_srli_epi32(f, 4));
    p = _mm256_xor_si256(p, _mm256_srli_epi32(p, 2));
    p = _mm256_xor_si256(p, _mm256_srli_epi32(p, 1));
    return _mm256_or_si256(f, _mm256_slli_epi32(_mm256_and_si256(p, _mm256_set1_epi32(0x01010101)), 7));
}

// Four 7-bit fields at bits 0, 7, 14, 21 of each dword -> bytes 0..3.
inline __m256i iq_spread_7bit(__m256i a) {
    const __m256i m = _mm256_set1_epi32(0x7F);
    __m256i f = _mm256_and_si256(a, m);
    f = _mm256_or_si256(f, _mm256_and_si256(_mm256_slli_epi32(a, 1), _mm256_slli_epi32(m, 8)));
    f = _mm256_or_si256(f, _mm256_and_si256(_mm256_slli_epi32(a, 2), _mm256_slli_epi32(m, 16)));
    return _mm256_or_si256(f, _mm256_and_si256(_mm256_slli_epi32(a, 3), _mm256_slli_epi32(m, 24)));
}

// The odd dwords of 64 bytes (dword 2g + 1 for g = 0..7), in order.
inline __m256i iq_odd_dwords(const void* p) {
    const __m256 a = _mm256_castsi256_ps(load256(p));
    const __m256 b = _mm256_castsi256_ps(load256(static_cast<const uint8_t*>(p) + 32));
    const __m256i odd = _mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));   // g 0 1 4 5 | 2 3 6 7
    return _mm256_permute4x64_epi64(odd, _MM_SHUFFLE(3, 1, 2, 0));
}

// Odd group scales 2s + 1 of the IQ2_XS / IQ2_S scale bytes (low nibble: points 0-1, high: 2-3)
// as 16 words: word 2g, 2g + 1 for group g.
inline void iq_nibble_scales(const uint8_t* scales, uint16_t* out) {
    const __m128i x = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales));
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i nib = _mm_unpacklo_epi8(_mm_and_si128(x, m), _mm_and_si128(_mm_srli_epi16(x, 4), m));
    const __m256i w = _mm256_cvtepu8_epi16(nib);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi16(_mm256_add_epi16(w, w), _mm256_set1_epi16(1)));
}

// 4 table qwords: broadcast loads and blends (no inserts: shuffle ports are the scarce ones).
inline __m256i points8(const uint64_t* grid, int i0, int i1, int i2, int i3) {
    const auto bq = [&](int i) { return _mm256_castpd_si256(_mm256_broadcast_sd(reinterpret_cast<const double*>(grid + i))); };
    return _mm256_blend_epi32(_mm256_blend_epi32(bq(i0), bq(i1), 0x0C), _mm256_blend_epi32(bq(i2), bq(i3), 0xC0), 0xF0);
}

inline __m256i points4(const uint32_t* grid, const int* idx) {
    return _mm256_set_epi32(int(grid[idx[7]]), int(grid[idx[6]]), int(grid[idx[5]]), int(grid[idx[4]]),
                            int(grid[idx[3]]), int(grid[idx[2]]), int(grid[idx[1]]), int(grid[idx[0]]));
}

}  // namespace

// ---- IQ2 family: 8-weight points, magnitudes {8, 25, 43}, group scales 2s + 1 --------------------
// Per super-block the 32 sign words (4 sign bytes per group, ksigns parity included) are built at
// once in a ymm; per group: 4 grid loads, the signs applied to the activations, one maddubs and
// one madd by the group scale.

#if !defined(LOWBIT_IQ_WIDE)   // dot_iq_avx512.cpp has 512-bit bodies of these four and IQ3_S
float vec_dot_iq2_xxs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_xxs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m256i aux1 = iq_odd_dwords(w[b].qs);   // per group: 4 x 7 sign bits, scale in bits 28..31
        alignas(32) uint32_t signs[8], scales[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), iq_ksigns(iq_spread_7bit(aux1)));
        const __m256i sc = _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(aux1, 28), 1), _mm256_set1_epi32(1));
        _mm256_store_si256(reinterpret_cast<__m256i*>(scales), sc);
        const auto* idx = reinterpret_cast<const uint8_t*>(w[b].qs);
        __m256i acc = _mm256_setzero_si256();
        for (int g = 0; g < 8; ++g) {
            const uint8_t* i8 = idx + 8 * g;
            const __m256i q = points8(kIq2xxsGrid, i8[0], i8[1], i8[2], i8[3]);
            const __m256i y = iq_apply_signs(load256(a[b].qs + 32 * g), signs[g]);
            acc = _mm256_add_epi32(acc, iq_scaled(q, y, _mm256_set1_epi16(short(scales[g]))));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(hsum_i32(acc));
    }
    return 0.125f * sumf;
}

float vec_dot_iq2_xs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_xs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        // 7 sign bits in the top of each uint16: packed to bytes in point order (packus works per
        // 128-bit lane: groups 0 1 4 5 | 2 3 6 7, put back in order by the permute)
        const __m256i lo = _mm256_srli_epi16(load256(w[b].qs), 9), hi = _mm256_srli_epi16(load256(w[b].qs + 16), 9);
        const __m256i f = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
        alignas(32) uint32_t signs[8];
        alignas(32) uint16_t scales[16];
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), iq_ksigns(f));
        iq_nibble_scales(w[b].scales, scales);
        __m256i acc = _mm256_setzero_si256();
        for (int g = 0; g < 8; ++g) {
            const uint16_t* q2 = w[b].qs + 4 * g;
            const __m256i q = points8(kIq2xsGrid, q2[0] & 511, q2[1] & 511, q2[2] & 511, q2[3] & 511);
            const __m256i y = iq_apply_signs(load256(a[b].qs + 32 * g), signs[g]);
            acc = _mm256_add_epi32(acc, iq_scaled(q, y, iq_two_scales(scales + 2 * g)));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(hsum_i32(acc));
    }
    return 0.125f * sumf;
}

float vec_dot_iq2_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const uint8_t* signs = w[b].qs + QK_K / 8;   // plain sign bytes, 4 per group
        alignas(32) uint16_t scales[16];
        iq_nibble_scales(w[b].scales, scales);
        __m256i acc = _mm256_setzero_si256();
        for (int g = 0; g < 8; ++g) {
            const uint8_t* qs = w[b].qs + 4 * g;
            const int qh = w[b].qh[g];
            const __m256i q = points8(kIq2sGrid, qs[0] | ((qh << 8) & 0x300), qs[1] | ((qh << 6) & 0x300),
                                      qs[2] | ((qh << 4) & 0x300), qs[3] | ((qh << 2) & 0x300));
            uint32_t sg;
            std::memcpy(&sg, signs + 4 * g, 4);
            const __m256i y = iq_apply_signs(load256(a[b].qs + 32 * g), sg);
            acc = _mm256_add_epi32(acc, iq_scaled(q, y, iq_two_scales(scales + 2 * g)));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(hsum_i32(acc));
    }
    return 0.125f * sumf;
}

// ---- IQ3 family: 4-weight points (two per 8-weight sign byte) ------------------------------------

float vec_dot_iq3_xxs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq3_xxs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m256i aux = load256(w[b].qs + QK_K / 4);   // per group: 4 x 7 sign bits, scale in bits 28..31
        alignas(32) uint32_t signs[8], scales[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), iq_ksigns(iq_spread_7bit(aux)));
        const __m256i sc = _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(aux, 28), 1), _mm256_set1_epi32(1));
        _mm256_store_si256(reinterpret_cast<__m256i*>(scales), sc);
        __m256i acc = _mm256_setzero_si256();
        for (int g = 0; g < 8; ++g) {
            const uint8_t* q3 = w[b].qs + 8 * g;
            const int idx[8] = {q3[0], q3[1], q3[2], q3[3], q3[4], q3[5], q3[6], q3[7]};
            const __m256i q = points4(kIq3xxsGrid, idx);
            const __m256i y = iq_apply_signs(load256(a[b].qs + 32 * g), signs[g]);
            acc = _mm256_add_epi32(acc, iq_scaled(q, y, _mm256_set1_epi16(short(scales[g]))));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(hsum_i32(acc));
    }
    return 0.25f * sumf;
}

#endif  // LOWBIT_IQ_WIDE

#if !defined(LOWBIT_IQ_WIDE)
float vec_dot_iq3_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq3_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        __m256i acc = _mm256_setzero_si256();
        for (int g = 0; g < 8; ++g) {
            const uint8_t* qs = w[b].qs + 8 * g;
            const int qh = w[b].qh[g];
            int idx[8];
            for (int k = 0; k < 8; ++k) idx[k] = qs[k] | ((qh << (8 - k)) & 256);
            const __m256i q = points4(kIq3sGrid, idx);
            uint32_t sg;
            std::memcpy(&sg, w[b].signs + 4 * g, 4);
            const __m256i y = iq_apply_signs(load256(a[b].qs + 32 * g), sg);
            const int ls = 2 * ((w[b].scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1;
            acc = _mm256_add_epi32(acc, iq_scaled(q, y, _mm256_set1_epi16(short(ls))));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(hsum_i32(acc));
    }
    return sumf;
}

#endif  // LOWBIT_IQ_WIDE

// ---- IQ1: the integer weight 8g + delta (g in -1/0/1, delta = +-1: the +-1/8 grid shift) is
// multiplied as the unsigned byte u = 8 (g + 1) + (1 + delta) = 8g + delta + 9 in 0..18; the 9 comes
// back out as -9 * ls * (q8 sum) per 16 weights, from the activation bsums. ---------------------

namespace {
// IQ1 grid points as bytes 8 (g + 1) in {0, 8, 16}.
constexpr std::array<uint64_t, 2048> make_iq1_u8() {
    std::array<uint64_t, 2048> t{};
    for (int i = 0; i < 2048; ++i)
        for (int j = 0; j < 8; ++j) t[i] |= uint64_t(8 * (int8_t(uint8_t(kIq1sGrid[i] >> (8 * j))) + 1)) << (8 * j);
    return t;
}
constexpr std::array<uint64_t, 2048> kIq1U8 = make_iq1_u8();

// IQ1_M: the point's 1 + delta byte folded in, its delta bit (nibble bit 3, set: delta -1) as index
// bit 11: entry i = 8 (g + 1) + 2 for i < 2048, 8 (g + 1) for i >= 2048 (32 KiB).
constexpr std::array<uint64_t, 4096> make_iq1_u8_delta() {
    std::array<uint64_t, 4096> t{};
    for (int i = 0; i < 2048; ++i) {
        t[i] = kIq1U8[i] + 0x0202020202020202ull;
        t[i + 2048] = kIq1U8[i];
    }
    return t;
}
constexpr std::array<uint64_t, 4096> kIq1U8Delta = make_iq1_u8_delta();

}  // namespace

namespace {
// The 32 grid indices of an IQ1_S super-block in point order: qs[p] | 3 bits of qh[p / 4] at 3 (p % 4).
// (16-bit lanes; the variable shift is a multiply by 2^(13 - 3l) that lifts the 3 bits to 13..15.)
inline void iq1s_indices(const block_iq1_s& x, uint16_t* idx) {
    const __m256i qh = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.qh)));
    const __m256i lift = _mm256_set1_epi64x(0x0010008004002000);   // 2^13, 2^10, 2^7, 2^4 per point l
    for (int h = 0; h < 2; ++h) {   // points 16h .. 16h + 15 (groups 4h .. 4h + 3)
        const char w0 = char(8 * h), w1 = char(8 * h + 2), w2 = char(8 * h + 4), w3 = char(8 * h + 6);
        const __m256i rep = _mm256_setr_epi8(w0, w0 + 1, w0, w0 + 1, w0, w0 + 1, w0, w0 + 1, w1, w1 + 1, w1, w1 + 1, w1,
                                             w1 + 1, w1, w1 + 1, w2, w2 + 1, w2, w2 + 1, w2, w2 + 1, w2, w2 + 1, w3, w3 + 1,
                                             w3, w3 + 1, w3, w3 + 1, w3, w3 + 1);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(qh, rep), lift), 5),
                                            _mm256_set1_epi16(0x0700));
        const __m256i lo = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.qs + 16 * h)));
        _mm256_store_si256(reinterpret_cast<__m256i*>(idx + 16 * h), _mm256_or_si256(lo, hi));
    }
}

// The 32 indices into kIq1U8Delta of an IQ1_M super-block: qs[p] | nibble p % 2 of qh[p / 2] << 8
// (its 3 low bits: the grid index; bit 3: the delta).
inline void iq1m_indices(const block_iq1_m& x, uint16_t* idx) {
    const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.qh));
    const __m128i m15 = _mm_set1_epi8(15);
    const __m128i lo = _mm_and_si128(qh, m15), hi = _mm_and_si128(_mm_srli_epi16(qh, 4), m15);
    const __m128i hb[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};   // points 0..15, 16..31
    for (int h = 0; h < 2; ++h) {
        const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.qs + 16 * h));
        _mm_store_si128(reinterpret_cast<__m128i*>(idx + 16 * h), _mm_unpacklo_epi8(qs, hb[h]));
        _mm_store_si128(reinterpret_cast<__m128i*>(idx + 16 * h + 8), _mm_unpackhi_epi8(qs, hb[h]));
    }
}

}  // namespace

float vec_dot_iq1_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq1_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        alignas(32) uint16_t idx[32];
        iq1s_indices(w[b], idx);
        // ls = 2 ((qh >> 12) & 7) + 1 per group, twice per dword: the scale of each of the 16 bsums
        const __m256i qh = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qh)));
        const __m256i s = _mm256_and_si256(_mm256_srli_epi32(qh, 12), _mm256_set1_epi32(7));
        const __m256i ls = _mm256_add_epi32(_mm256_add_epi32(s, s), _mm256_set1_epi32(1));
        const __m256i ls16 = _mm256_or_si256(ls, _mm256_slli_epi32(ls, 16));
        // the group's 1 + delta - 9 = delta - 8 = -7 - 2 (qh >> 15) joins the bsums term, so the
        // grid bytes need no per-group add
        const __m256i neg = _mm256_srli_epi32(qh, 15), neg16 = _mm256_or_si256(neg, _mm256_slli_epi32(neg, 16));
        const __m256i coef = _mm256_mullo_epi16(ls16, _mm256_sub_epi16(_mm256_set1_epi16(-7), _mm256_add_epi16(neg16, neg16)));
        __m256i acc = _mm256_madd_epi16(load256(a[b].bsums), coef);
        alignas(32) uint32_t ls32[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(ls32), ls16);
        for (int g = 0; g < 8; ++g) {
            const uint16_t* i4 = idx + 4 * g;
            const __m256i q = points8(kIq1U8.data(), i4[0], i4[1], i4[2], i4[3]);
            // pairs u * q8 <= 2 * 16 * 128 fit int16; times ls <= 15 in the madd
            acc = _mm256_add_epi32(acc, iq_scaled(q, load256(a[b].qs + 32 * g), _mm256_set1_epi32(int(ls32[g]))));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(hsum_i32(acc));
    }
    return 0.125f * sumf;
}

float vec_dot_iq1_m(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq1_m*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        uint16_t sc[4];
        std::memcpy(sc, w[b].scales, 8);
        const uint16_t dbits = uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
        alignas(32) uint16_t idx[32];
        iq1m_indices(w[b], idx);
        // 3-bit scales ls[i] = 2 ((sc[i / 4] >> 3 (i % 4)) & 7) + 1 per 16 weights, in registers (a
        // vector load of 16 scalar stores would stall on store forwarding): word i / 4 in lane i,
        // its field lifted to bits 13..15 by a multiply
        const __m256i rep = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc))),
                                                _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
                                                                 4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7));
        const __m256i f = _mm256_srli_epi16(_mm256_mullo_epi16(rep, _mm256_set1_epi64x(0x0010008004002000)), 13);
        const __m256i ls16 = _mm256_add_epi16(_mm256_add_epi16(f, f), _mm256_set1_epi16(1));
        __m256i acc = _mm256_madd_epi16(load256(a[b].bsums), _mm256_mullo_epi16(ls16, _mm256_set1_epi16(-9)));
        // unscaled sums per group (dwords 0-3: its first 16 weights, 4-7: the second), folded by an
        // hadd tree into [g0 g1 g2 g3 | g0' g1' g2' g3'] (g: first half, g': second) for groups
        // 0-3 and 4-7, then multiplied by their scales ls[2g], ls[2g + 1] in that order
        __m256i p[8];
        for (int g = 0; g < 8; ++g) {
            const uint16_t* i4 = idx + 4 * g;
            p[g] = iq_mul_sum_us8(points8(kIq1U8Delta.data(), i4[0], i4[1], i4[2], i4[3]), load256(a[b].qs + 32 * g));
        }
        const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        for (int h = 0; h < 2; ++h) {
            const __m256i sums = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4 * h], p[4 * h + 1]), _mm256_hadd_epi32(p[4 * h + 2], p[4 * h + 3]));
            const __m128i ls8 = h ? _mm256_extracti128_si256(ls16, 1) : _mm256_castsi256_si128(ls16);
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(sums, _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(ls8), even_odd)));
        }
        sumf += (h2f(dbits) * a[b].d) * float(hsum_i32(acc));
    }
    return 0.125f * sumf;
}

// ---- ternary: trits t in {0,1,2} multiply as u8; the -1 comes out through the activation sum -----

namespace {
// Bytes times 3 mod 256 (byte adds wrap).
inline __m256i times3(__m256i x) { return _mm256_add_epi8(x, _mm256_add_epi8(x, x)); }

// The top base-3 digit of each byte: (y * 3) >> 8 = (y >= 86) + (y >= 171).
inline __m256i top_trit(__m256i y) {
#if LOWBIT_VNNI
    const __m256i one = _mm256_set1_epi8(1);
    const __m256i t = _mm256_maskz_mov_epi8(_mm256_cmpge_epu8_mask(y, _mm256_set1_epi8(char(86))), one);
    return _mm256_mask_add_epi8(t, _mm256_cmpge_epu8_mask(y, _mm256_set1_epi8(char(171))), t, one);
#else
    const __m256i flip = _mm256_set1_epi8(char(0x80));
    const __m256i ys = _mm256_xor_si256(y, flip);
    const __m256i ge86 = _mm256_cmpgt_epi8(ys, _mm256_set1_epi8(char(85 ^ 0x80)));
    const __m256i ge171 = _mm256_cmpgt_epi8(ys, _mm256_set1_epi8(char(170 ^ 0x80)));
    return _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(ge86, ge171));
#endif
}

// acc + the 8 int32 sums of 4 adjacent u8 x s8 products.
inline __m256i iq_dot_acc(__m256i acc, __m256i u, __m256i s) {
#if LOWBIT_VNNI
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

inline __m128i times3_128(__m128i x) { return _mm_add_epi8(x, _mm_add_epi8(x, x)); }

}  // namespace

// TQ1_0 in 8 steps of 32 weights. Digit k of byte q is top_trit(q * 3^k mod 256). qs[0..31] give
// weights 32k + m (k < 5); qs[32..47] weights 160 + 16k + m, two digits per step ([digit k |
// digit k + 1] against the 32 activations 160 + 32j), and the last step pairs digit 4 of qs[32..47]
// with the 4 digits of qh[0..3] (weights 240 + 4k + m: qh times 1, 3, 9, 27 in dwords 0..3).
// The integer sum of a super-block is exact; it is converted and scaled into float lanes with one
// horizontal sum per row (tier 1, as FP4 below).
float vec_dot_tq1_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_tq1_0*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    __m256 accf = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; ++b) {
        const int8_t* q8 = a[b].qs;
        // the -1 of every trit: minus the sum of the 256 activations
        __m256i acc = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(load256(a[b].bsums), _mm256_set1_epi16(1)));
        __m256i q = load256(w[b].qs);
        for (int k = 0; k < 5; ++k, q = times3(q)) acc = iq_dot_acc(acc, top_trit(q), load256(q8 + 32 * k));
        const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w[b].qs + 32));
        __m256i r = _mm256_inserti128_si256(_mm256_castsi128_si256(r0), times3_128(r0), 1);
        acc = iq_dot_acc(acc, top_trit(r), load256(q8 + 160));
        r = times3(times3(r));
        acc = iq_dot_acc(acc, top_trit(r), load256(q8 + 192));
        uint32_t qh4;
        std::memcpy(&qh4, w[b].qh, 4);
        const __m128i h1 = _mm_set1_epi32(int(qh4)), h3 = times3_128(h1), h9 = times3_128(h3), h27 = times3_128(h9);
        const __m128i h = _mm_blend_epi32(_mm_blend_epi32(h1, h3, 0x2), _mm_blend_epi32(h9, h27, 0x8), 0xC);
        r = _mm256_inserti128_si256(times3(times3(r)), h, 1);
        acc = iq_dot_acc(acc, top_trit(r), load256(q8 + 224));
        accf = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * a[b].d), _mm256_cvtepi32_ps(acc), accf);
    }
    return hsum_f32(accf);
}

// TQ2_0: 2-bit trits, digit k of byte m of each 32-byte half c is weight 128c + 32k + m; float
// steps as TQ1_0 (tier 1).
float vec_dot_tq2_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_tq2_0*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 accf = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; ++b) {
        __m256i acc = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(load256(a[b].bsums), _mm256_set1_epi16(1)));
        for (int c = 0; c < 2; ++c) {
            const __m256i q = load256(w[b].qs + 32 * c);
            for (int k = 0; k < 4; ++k)
                acc = iq_dot_acc(acc, _mm256_and_si256(_mm256_srli_epi16(q, 2 * k), m3), load256(a[b].qs + 128 * c + 32 * k));
        }
        accf = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[b].d) * a[b].d), _mm256_cvtepi32_ps(acc), accf);
    }
    return hsum_f32(accf);
}

// ---- FP4: nibble codes through a 16-entry table (pshufb), signs applied to the activations ------

namespace {
// ue4m3 / 2 by its bits: exp 1..15 -> 2^(exp - 8) * (1 + man/8); exp 0 -> man * 2^-10; 0 and 0x7F -> 0.
// As a table (a branch on exp == 0 mispredicts on real scales).
constexpr float ue4m3_half_of(int x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int exp = (x >> 3) & 0xF, man = x & 7;
    if (exp == 0) return float(man) * 0.0009765625f;
    return std::bit_cast<float>(uint32_t(exp + 119) << 23 | uint32_t(man) << 20);
}
constexpr std::array<float, 256> make_ue4m3_half() {
    std::array<float, 256> t{};
    for (int x = 0; x < 256; ++x) t[x] = ue4m3_half_of(x);
    return t;
}
constexpr std::array<float, 256> kUe4m3Half = make_ue4m3_half();
inline float ue4m3_half(uint8_t x) { return kUe4m3Half[x]; }

}  // namespace

// FP4 is tier 1 (kernels.h), not bit-exact: a block holds only 32 (NVFP4: 16) weights, so the
// spec's one scalar float step per block in strict order costs as much as the integer dot. Here
// the exact int32 lane sums of 4 blocks (NVFP4: 4 sub-blocks) are folded by one hadd tree into
// 8 lanes, converted, and multiplied by a vector of their scales into 8 float lanes; a row has
// one horizontal sum.
//
// Integer part per 16 bytes of codes x, 6 operations: S = [x << 4 | x] (the bytes broadcast to both
// halves, one 64-bit variable shift) holds each weight's nibble in the top 4 bits of its byte, so
// the byte's sign bit is the code's sign bit (bit 3) and the byte is non-zero wherever the nibble
// is (bytes whose nibble is 0 may be anything: the magnitude, hence the product, is 0). Index =
// (S >> 4) & 15 (16-bit shift, masked: each byte its own nibble), |value| by pshufb, the
// activation negated / zeroed by S (vpsignb), one u8 x s8 dot.
namespace {
alignas(16) constexpr int8_t kAbsMxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, 1, 2, 3, 4, 6, 8, 12};

// 8 int32 sums of code * y over 4-byte groups; s: 32 sign/index bytes as above.
inline __m256i fp4_dot(__m256i abs_table, __m256i s, __m256i y) {
    const __m256i idx = _mm256_and_si256(_mm256_srli_epi16(s, 4), _mm256_set1_epi8(0x0F));
    return iq_mul_sum_us8(_mm256_shuffle_epi8(abs_table, idx), _mm256_sign_epi8(y, s));
}

// MXFP4 block: low nibbles are weights 0..15, high nibbles 16..31.
inline __m256i mxfp4_block(__m256i abs_table, const block_mxfp4& w, const block_q8_0& a) {
    const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs)));
    return fp4_dot(abs_table, _mm256_sllv_epi64(x, _mm256_set_epi64x(0, 0, 4, 4)), load256(a.qs));
}

// 4 fp16 values, each 2 bytes at p + k * stride, as floats.
inline __m128 four_h2f(const uint8_t* p, size_t stride) {
    uint64_t h = 0;
    for (int k = 0; k < 4; ++k) {
        uint16_t v;
        std::memcpy(&v, p + k * stride, 2);
        h |= uint64_t(v) << (16 * k);
    }
    return _mm_cvtph_ps(_mm_cvtsi64_si128(int64_t(h)));
}

constexpr std::array<float, 256> make_e8m0_half() {
    std::array<float, 256> t{};
    for (int e = 0; e < 256; ++e)
        t[e] = std::bit_cast<float>(e < 2 ? uint32_t(0x00200000) << e : uint32_t(e - 1) << 23);
    return t;
}
constexpr std::array<float, 256> kE8m0Half = make_e8m0_half();
}  // namespace

float vec_dot_mxfp4(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_mxfp4*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    const __m256i abs_table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kAbsMxfp4)));
    const int nb = n / QK_MXFP4;
    __m256 acc = _mm256_setzero_ps();
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m256i p[4];
        for (int i = 0; i < 4; ++i) p[i] = mxfp4_block(abs_table, w[b + i], a[b + i]);
        // lanes k and 4 + k: block b + k (its two 128-bit halves)
        const __m256i q = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        const __m128 e = _mm_setr_ps(kE8m0Half[w[b].e], kE8m0Half[w[b + 1].e], kE8m0Half[w[b + 2].e], kE8m0Half[w[b + 3].e]);
        const __m128 d = _mm_mul_ps(four_h2f(reinterpret_cast<const uint8_t*>(&a[b].d), sizeof(block_q8_0)), e);
        acc = _mm256_fmadd_ps(_mm256_set_m128(d, d), _mm256_cvtepi32_ps(q), acc);
    }
    __m256 tail = _mm256_setzero_ps();
    for (; b < nb; ++b)
        tail = _mm256_fmadd_ps(_mm256_set1_ps(h2f(a[b].d) * kE8m0Half[w[b].e]),
                               _mm256_cvtepi32_ps(mxfp4_block(abs_table, w[b], a[b])), tail);
    return hsum_f32(_mm256_add_ps(acc, tail));
}

// NVFP4: per 16 bytes of codes (sub-blocks 2h, 2h + 1: bytes j -> weights j (low nibble), j + 8
// (high)) the 64-bit words q0 q0 q1 q1, shifted by 4, 0, 4, 0, give sub-block 2h in lanes 0-3 and
// 2h + 1 in lanes 4-7 of the product with q8_0 block 2b + h.
float vec_dot_nvfp4(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_nvfp4*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    const __m256i abs_table = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(kAbsMxfp4)));
    const __m256i shifts = _mm256_set_epi64x(0, 4, 0, 4);
    const __m256i lane_of = _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_NVFP4; ++b) {
        __m256i p[2];
        for (int h = 0; h < 2; ++h) {
            const __m256i x = _mm256_permute4x64_epi64(_mm256_castsi128_si256(_mm_loadu_si128(
                                  reinterpret_cast<const __m128i*>(w[b].qs + 16 * h))), _MM_SHUFFLE(1, 1, 0, 0));
            p[h] = fp4_dot(abs_table, _mm256_sllv_epi64(x, shifts), load256(a[2 * b + h].qs));
        }
        // lanes 0-1: sub-block 0, 2-3: 2, 4-5: 1, 6-7: 3
        const __m256i q = _mm256_hadd_epi32(p[0], p[1]);
        uint32_t dd;   // the two q8_0 scales
        std::memcpy(&dd, &a[2 * b].d, 2);
        std::memcpy(reinterpret_cast<uint8_t*>(&dd) + 2, &a[2 * b + 1].d, 2);
        const __m128 da = _mm_cvtph_ps(_mm_cvtsi32_si128(int(dd)));
        const __m128 u = _mm_setr_ps(ue4m3_half(w[b].d[0]), ue4m3_half(w[b].d[1]), ue4m3_half(w[b].d[2]), ue4m3_half(w[b].d[3]));
        const __m128 sc = _mm_mul_ps(u, _mm_unpacklo_ps(da, da));   // sub-block s: d_a[s / 2] * u[s]
        const __m256 scales = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), lane_of);
        acc = _mm256_fmadd_ps(scales, _mm256_cvtepi32_ps(q), acc);
    }
    return hsum_f32(acc);
}

}  // namespace lowbit::cpu::LOWBIT_SIMD_NS

// dot_iq_avx512.cpp: the AVX-512 VNNI (vpdpbusd) build of the i-quant / ternary / FP4 dot kernels
// (dot_iq_x86_256.h), with 512-bit bodies for the IQ2 family, IQ3_XXS and IQ3_S below: two 32-weight
// groups per zmm, their 64 sign bits one mask register (masked subtract), the group scales
// spread per 128-bit lane by one permute. Same integers and float steps as the spec, so still
// bit for bit equal to it. Contraction off: the float steps round as in the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx512
#define LOWBIT_VNNI 1
#define LOWBIT_IQ_WIDE 1
#include "cpu/dot_iq_x86_256.h"

namespace lowbit::cpu::avx512 {
namespace {

// 8 8-byte points (groups 2j and 2j + 1) in one zmm.
inline __m512i points8x2(const uint64_t* grid, const int* i) {
    return _mm512_set_epi64(int64_t(grid[i[7]]), int64_t(grid[i[6]]), int64_t(grid[i[5]]), int64_t(grid[i[4]]),
                            int64_t(grid[i[3]]), int64_t(grid[i[2]]), int64_t(grid[i[1]]), int64_t(grid[i[0]]));
}

// Dword k of v (k = 2j in the low 256 bits, 2j + 1 in the high) broadcast as the words of each half:
// one scale per group of 32 (v holds s | s << 16 per dword).
inline __m512i group_scales(__m256i v, int j) {
    const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * j), _mm256_set1_epi32(2 * j + 1), 1);
    return _mm512_permutexvar_epi32(idx, _mm512_zextsi256_si512(v));
}

// Words 4j .. 4j + 3 of 16 (one scale per 16 weights) broadcast to the 4 128-bit lanes in turn.
inline __m512i half_group_scales(__m256i words, int j) {
    const __m512i idx = _mm512_add_epi16(_mm512_set1_epi16(short(4 * j)),
                                         _mm512_inserti64x4(_mm512_zextsi256_si512(_mm256_set_m128i(_mm_set1_epi16(1), _mm_setzero_si128())),
                                                            _mm256_set_m128i(_mm_set1_epi16(3), _mm_set1_epi16(2)), 1));
    return _mm512_permutexvar_epi16(idx, _mm512_zextsi256_si512(words));
}

// acc += sum over pairs of (grid . signed q8) * scale, pairs of 64 activation bytes.
inline __m512i wide_step(__m512i acc, __m512i q, const int8_t* y64, uint64_t signs, __m512i scale) {
    __m512i y = _mm512_loadu_si512(y64);
    y = _mm512_mask_sub_epi8(y, __mmask64(signs), _mm512_setzero_si512(), y);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(q, y), scale));
}

// Odd scales 2s + 1 (s: bits 28..31 of each dword) as s | s << 16.
inline __m256i top_nibble_scales(__m256i aux) {
    const __m256i s = _mm256_add_epi32(_mm256_slli_epi32(_mm256_srli_epi32(aux, 28), 1), _mm256_set1_epi32(1));
    return _mm256_or_si256(s, _mm256_slli_epi32(s, 16));
}

}  // namespace

float vec_dot_iq2_xxs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_xxs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m256i aux1 = iq_odd_dwords(w[b].qs);
        alignas(32) uint64_t signs[4];   // sign bits of groups 2j, 2j + 1
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), iq_ksigns(iq_spread_7bit(aux1)));
        const __m256i scales = top_nibble_scales(aux1);
        const auto* idx = reinterpret_cast<const uint8_t*>(w[b].qs);
        __m512i acc = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            const uint8_t* i8 = idx + 16 * j;
            const int i[8] = {i8[0], i8[1], i8[2], i8[3], i8[8], i8[9], i8[10], i8[11]};
            acc = wide_step(acc, points8x2(kIq2xxsGrid, i), a[b].qs + 64 * j, signs[j], group_scales(scales, j));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(_mm512_reduce_add_epi32(acc));
    }
    return 0.125f * sumf;
}

float vec_dot_iq2_xs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_xs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m256i lo = _mm256_srli_epi16(load256(w[b].qs), 9), hi = _mm256_srli_epi16(load256(w[b].qs + 16), 9);
        const __m256i f = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
        alignas(32) uint64_t signs[4];
        alignas(32) uint16_t sc[16];
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), iq_ksigns(f));
        iq_nibble_scales(w[b].scales, sc);
        const __m256i scales = _mm256_load_si256(reinterpret_cast<const __m256i*>(sc));
        __m512i acc = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            const uint16_t* q2 = w[b].qs + 8 * j;
            const int i[8] = {q2[0] & 511, q2[1] & 511, q2[2] & 511, q2[3] & 511, q2[4] & 511, q2[5] & 511, q2[6] & 511, q2[7] & 511};
            acc = wide_step(acc, points8x2(kIq2xsGrid, i), a[b].qs + 64 * j, signs[j], half_group_scales(scales, j));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(_mm512_reduce_add_epi32(acc));
    }
    return 0.125f * sumf;
}

float vec_dot_iq2_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const uint8_t* sign_bytes = w[b].qs + QK_K / 8;   // plain sign bits, 8 bytes per pair of groups
        alignas(32) uint16_t sc[16];
        iq_nibble_scales(w[b].scales, sc);
        const __m256i scales = _mm256_load_si256(reinterpret_cast<const __m256i*>(sc));
        __m512i acc = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            // 10-bit indices qs[4g + l] | bits 2l, 2l + 1 of qh[g] << 8, four per 64-bit word
            uint64_t q8;
            std::memcpy(&q8, w[b].qs + 8 * j, 8);
            int i[8];
            for (int h = 0; h < 2; ++h) {
                const uint64_t idx = _pdep_u64(uint32_t(q8 >> (32 * h)), 0x00FF00FF00FF00FFull) |
                                     _pdep_u64(w[b].qh[2 * j + h], 0x0300030003000300ull);
                for (int l = 0; l < 4; ++l) i[4 * h + l] = int((idx >> (16 * l)) & 0xFFFF);
            }
            uint64_t sg;
            std::memcpy(&sg, sign_bytes + 8 * j, 8);
            acc = wide_step(acc, points8x2(kIq2sGrid, i), a[b].qs + 64 * j, sg, half_group_scales(scales, j));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(_mm512_reduce_add_epi32(acc));
    }
    return 0.125f * sumf;
}

float vec_dot_iq3_xxs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq3_xxs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m256i aux = load256(w[b].qs + QK_K / 4);
        alignas(32) uint64_t signs[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(signs), iq_ksigns(iq_spread_7bit(aux)));
        const __m256i scales = top_nibble_scales(aux);
        __m512i acc = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            const uint8_t* q3 = w[b].qs + 16 * j;   // 16 4-byte points, paired into 8-byte words
            int64_t p[8];
            for (int k = 0; k < 8; ++k) p[k] = int64_t(kIq3xxsGrid[q3[2 * k]] | uint64_t(kIq3xxsGrid[q3[2 * k + 1]]) << 32);
            const __m512i q = _mm512_set_epi64(p[7], p[6], p[5], p[4], p[3], p[2], p[1], p[0]);
            acc = wide_step(acc, q, a[b].qs + 64 * j, signs[j], group_scales(scales, j));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(_mm512_reduce_add_epi32(acc));
    }
    return 0.25f * sumf;
}

// IQ3_S: 9-bit indices qs[8g + k] | bit k of qh[g] << 8, four per 64-bit word (16-bit lanes) by
// two deposits, then paired 4-byte points as in IQ3_XXS.
namespace {
inline __m512i iq3s_points(const uint8_t* qs, const uint8_t* qh) {
    int64_t p[8];
    for (int h = 0; h < 2; ++h) {   // groups 2j + h
        uint64_t q8;
        std::memcpy(&q8, qs + 8 * h, 8);
        for (int k = 0; k < 2; ++k) {   // points 4k .. 4k + 3 of the group
            const uint64_t idx = _pdep_u64(uint32_t(q8 >> (32 * k)), 0x00FF00FF00FF00FFull) |
                                 _pdep_u64(uint32_t(qh[h] >> (4 * k)) & 0xF, 0x0100010001000100ull);
            p[4 * h + 2 * k] = int64_t(kIq3sGrid[idx & 0xFFFF] | uint64_t(kIq3sGrid[(idx >> 16) & 0xFFFF]) << 32);
            p[4 * h + 2 * k + 1] = int64_t(kIq3sGrid[(idx >> 32) & 0xFFFF] | uint64_t(kIq3sGrid[idx >> 48]) << 32);
        }
    }
    return _mm512_set_epi64(p[7], p[6], p[5], p[4], p[3], p[2], p[1], p[0]);
}
}  // namespace

float vec_dot_iq3_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq3_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        // odd scales 2s + 1, s the nibble g % 2 of scales[g / 2], as s | s << 16 per group
        uint32_t sc4;
        std::memcpy(&sc4, w[b].scales, 4);
        const __m128i x = _mm_cvtsi32_si128(int(sc4)), m = _mm_set1_epi8(0x0F);
        const __m256i s = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(_mm_and_si128(x, m), _mm_and_si128(_mm_srli_epi16(x, 4), m)));
        const __m256i ls = _mm256_add_epi32(_mm256_add_epi32(s, s), _mm256_set1_epi32(1));
        const __m256i scales = _mm256_or_si256(ls, _mm256_slli_epi32(ls, 16));
        __m512i acc = _mm512_setzero_si512();
        for (int j = 0; j < 4; ++j) {
            uint64_t sg;   // plain sign bits of groups 2j, 2j + 1
            std::memcpy(&sg, w[b].signs + 8 * j, 8);
            acc = wide_step(acc, iq3s_points(w[b].qs + 16 * j, w[b].qh + 2 * j), a[b].qs + 64 * j, sg, group_scales(scales, j));
        }
        sumf += (h2f(w[b].d) * a[b].d) * float(_mm512_reduce_add_epi32(acc));
    }
    return sumf;
}

}  // namespace lowbit::cpu::avx512

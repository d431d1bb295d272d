// dot_x86_256.h: 256-bit dot kernels and activation quantizers, included by dot_avx2.cpp
// and dot_avx512.cpp only (the files CMake compiles with the ISA flags).
//
// The includer defines LOWBIT_SIMD_NS (the namespace the functions land in, so the two copies
// never merge at link time), LOWBIT_VNNI (1: u8 x s8 dot via vpdpbusd, 0: maddubs + madd) and
// LOWBIT_FN(name), the name each public function gets (avx512 suffixes them and wraps or
// replaces them with 512-bit versions).
// Everything here has internal linkage or lives in that namespace, and uses no inline function
// from other headers (an out-of-line copy compiled with these flags could be picked by the
// linker for baseline code) except x86_basics.h's, which land in the same namespace the same way.
//
// Exactness (kernels.h): every block's integer sum is exact: maddubs never saturates here
// (u8 <= 127, or |products| <= 2*127*127 in the sign trick). k-quants reduce the integer sums
// of a super-block to one int and then repeat the scalar float expression; legacy types keep
// 8 float lanes.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

#if !defined(LOWBIT_SIMD_NS) || !defined(LOWBIT_VNNI) || !defined(LOWBIT_FN)
#error "define LOWBIT_SIMD_NS, LOWBIT_VNNI and LOWBIT_FN before including dot_x86_256.h"
#endif

#include "cpu/x86_basics.h"   // h2f, load128, load256, hsum_i32, hsum_f32

namespace lowbit::cpu::LOWBIT_SIMD_NS {
namespace {

// ---- integer helpers ------------------------------------------------------------------------

// 8 int32: each the sum of 4 adjacent u8 x s8 products.
inline __m256i mul_sum_us8(__m256i u, __m256i s) {
#if LOWBIT_VNNI
    // The zmm form: always EVEX. GCC emits the VEX (AVX-VNNI) form for the ymm intrinsic when
    // -mavxvnni is on, and that faults on AVX-512 VNNI CPUs without AVX-VNNI (Zen 4, Ice Lake).
    const __m512i r = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_castsi256_si512(u), _mm512_castsi256_si512(s));
    return _mm512_castsi512_si256(r);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// Signed x signed through the sign trick: |x| * (y with x's sign).
inline __m256i mul_sum_i8(__m256i x, __m256i y) {
    return mul_sum_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

// 16 int16 pair sums of u8 x s8, then times a per-lane int16 scale -> 8 int32.
inline __m256i scaled_pairs(__m256i u, __m256i s, __m256i scale16) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

// 16 packed bytes -> 32 bytes: low nibbles (elements 0..15), then high nibbles (16..31).
// IQ4_NL / IQ4_XS: 32 nibbles (0..15) -> their signed kvalues_iq4nl values.
inline __m256i iq4nl_values(__m256i nibbles) {
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(load128(kvalues_iq4nl)), nibbles);
}
inline __m256i nibbles_32(const uint8_t* qs) {
    const __m128i x = load128(qs);
    const __m128i m = _mm_set1_epi8(0x0F);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_and_si128(x, m)),
                                   _mm_and_si128(_mm_srli_epi16(x, 4), m), 1);
}

// 32 bits -> 32 bytes, 0xFF where bit j of the word is set.
inline __m256i bits_to_bytes_32(const uint8_t* p) {
    uint32_t x32;
    std::memcpy(&x32, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(x32)), shuf);
    const __m256i bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    return _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit), _mm256_set1_epi64x(-1));
}

// Scale vector for two consecutive 16-element sub-blocks: words of `lo` then of `hi`.
inline __m256i two_scales(int lo, int hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(short(lo))), _mm_set1_epi16(short(hi)), 1);
}

}  // namespace

// ---- activation quantizers (bit-identical to the scalar spec) --------------------------------

void LOWBIT_FN(quantize_act_q8_0)(const float* x, block_q8_0* y, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / QK8_0; ++b, x += QK8_0) {
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vid));  // nearest-even
        const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the per-lane packing
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs), _mm256_permutevar8x32_epi32(p16, order));
    }
}

void LOWBIT_FN(quantize_act_q8_K)(const float* x, block_q8_K* y, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / QK_K; ++b, x += QK_K) {
        __m256 amax8 = _mm256_setzero_ps();
        for (int k = 0; k < QK_K; k += 8) amax8 = _mm256_max_ps(amax8, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax8), _mm256_extractf128_ps(amax8, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        if (amax == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_K));
            continue;
        }
        int first = 0;  // first element of largest magnitude: its sign sets the scale's sign
        for (int k = 0; k < QK_K; k += 8) {
            const __m256 eq = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)), _mm256_set1_ps(amax), _CMP_EQ_OQ);
            const int mask = _mm256_movemask_ps(eq);
            if (mask) { first = k + __builtin_ctz(unsigned(mask)); break; }
        }
        const float iscale = -127.0f / x[first];
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int k = 0; k < QK_K; k += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; ++j)
                q[j] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, _mm256_loadu_ps(x + k + 8 * j))),
                                        _mm256_set1_epi32(127));
            const __m256i p16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            const __m256i q8 = _mm256_permutevar8x32_epi32(p16, order);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[b].qs + k), q8);
            // bsums of the two 16-element groups: widen to int16 and add pairwise
            const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), q8);   // 16 x (2 elems)
            const __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));     // 8 x (4 elems)
            const __m128i a = _mm_hadd_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
            const __m128i b2 = _mm_hadd_epi32(a, a);   // 2 x (16 elems)
            y[b].bsums[k / 16] = int16_t(_mm_cvtsi128_si32(b2));
            y[b].bsums[k / 16 + 1] = int16_t(_mm_extract_epi32(b2, 1));
        }
        y[b].d = 1.0f / iscale;
    }
}

// ---- legacy 32-blocks x q8_0 ----------------------------------------------------------------
// One template per pass of R activation rows: the block's weights are loaded and unpacked once,
// and each row gets the single-row dot's integer sums and float steps in its order, so a row of
// the multi-row dot equals vec_dot's bits (matmul's batched rows equal its mat-vec's).
namespace {

// A type's 32 weights of one block as the bytes its dot multiplies: signed (times the q8 row
// through the sign trick), or unsigned with a min (kMin: d * q + m).
struct Q4_0W {
    using Block = block_q4_0;
    static constexpr bool kMin = false;
    static __m256i bytes(const Block& b) { return _mm256_sub_epi8(nibbles_32(b.qs), _mm256_set1_epi8(8)); }
};
struct Q4_1W {
    using Block = block_q4_1;
    static constexpr bool kMin = true;
    static __m256i bytes(const Block& b) { return nibbles_32(b.qs); }
};
struct Q5_0W {   // q - 16 as int8: the nibble with 0xF0 or-ed in where the fifth bit is clear
    using Block = block_q5_0;
    static constexpr bool kMin = false;
    static __m256i bytes(const Block& b) {
        return _mm256_or_si256(nibbles_32(b.qs), _mm256_andnot_si256(bits_to_bytes_32(b.qh), _mm256_set1_epi8(char(0xF0))));
    }
};
struct Q5_1W {
    using Block = block_q5_1;
    static constexpr bool kMin = true;
    static __m256i bytes(const Block& b) {
        return _mm256_or_si256(nibbles_32(b.qs), _mm256_and_si256(bits_to_bytes_32(b.qh), _mm256_set1_epi8(0x10)));
    }
};
struct Q8_0W {
    using Block = block_q8_0;
    static constexpr bool kMin = false;
    static __m256i bytes(const Block& b) { return load256(b.qs); }
};
struct IQ4_NLW {
    using Block = block_iq4_nl;
    static constexpr bool kMin = false;
    static __m256i bytes(const Block& b) {
        return iq4nl_values(nibbles_32(b.qs));
    }
};

// Weight row w against R q8_0 rows at act, stride bytes apart: out[0..R).
template <class W, int R>
inline void legacy_dot_pass(int n, const void* vw, const uint8_t* act, size_t stride, float* out) {
    const auto* w = static_cast<const typename W::Block*>(vw);
    auto a_of = [&](int r, int b) { return reinterpret_cast<const block_q8_0*>(act + size_t(r) * stride) + b; };
    __m256 acc[R], acc_m[R];
    for (int r = 0; r < R; ++r) acc[r] = acc_m[r] = _mm256_setzero_ps();
    for (int b = 0; b < n / QK8_0; ++b) {
        const __m256i qx = W::bytes(w[b]);
        const float dw = h2f(w[b].d);
        if constexpr (W::kMin) {
            const float mw = h2f(w[b].m);
            for (int r = 0; r < R; ++r) {
                const float da = h2f(a_of(r, b)->d);
                const __m256i qy = load256(a_of(r, b)->qs);
                const __m256i p = mul_sum_us8(qx, qy), sy = mul_sum_us8(_mm256_set1_epi8(1), qy);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * da), acc[r]);
                acc_m[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sy), _mm256_set1_ps(mw * da), acc_m[r]);
            }
        } else {
            const __m256i ax = _mm256_sign_epi8(qx, qx);   // mul_sum_i8's sign trick, |x| once for the R rows
            for (int r = 0; r < R; ++r) {
                const __m256i p = mul_sum_us8(ax, _mm256_sign_epi8(load256(a_of(r, b)->qs), qx));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * h2f(a_of(r, b)->d)), acc[r]);
            }
        }
    }
    for (int r = 0; r < R; ++r) out[r] = hsum_f32(W::kMin ? _mm256_add_ps(acc[r], acc_m[r]) : acc[r]);
}

// A pass template as VecDotFn (R = 1) and VecDotRowsFn (four rows a pass, then one by one); the
// k-quants below use them too.
template <void (*Pass1)(int, const void*, const uint8_t*, size_t, float*)>
float dot_of_pass(int n, const void* w, const void* a) {
    float out;
    Pass1(n, w, static_cast<const uint8_t*>(a), 0, &out);
    return out;
}
template <void (*Pass4)(int, const void*, const uint8_t*, size_t, float*),
          void (*Pass1)(int, const void*, const uint8_t*, size_t, float*)>
void rows_of_passes(int n, const void* w, const void* act, size_t stride, int nrows, float* out) {
    const auto* a = static_cast<const uint8_t*>(act);
    int i = 0;
    for (; i + 4 <= nrows; i += 4) Pass4(n, w, a + size_t(i) * stride, stride, out + i);
    for (; i < nrows; ++i) Pass1(n, w, a + size_t(i) * stride, stride, out + i);
}

}  // namespace

float LOWBIT_FN(vec_dot_q4_0)(int n, const void* w, const void* a) { return dot_of_pass<legacy_dot_pass<Q4_0W, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_q4_1)(int n, const void* w, const void* a) { return dot_of_pass<legacy_dot_pass<Q4_1W, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_q5_0)(int n, const void* w, const void* a) { return dot_of_pass<legacy_dot_pass<Q5_0W, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_q5_1)(int n, const void* w, const void* a) { return dot_of_pass<legacy_dot_pass<Q5_1W, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_q8_0)(int n, const void* w, const void* a) { return dot_of_pass<legacy_dot_pass<Q8_0W, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_iq4_nl)(int n, const void* w, const void* a) { return dot_of_pass<legacy_dot_pass<IQ4_NLW, 1>>(n, w, a); }

#if !LOWBIT_VNNI
// The multi-row dots of the legacy types (the AVX2 set; AVX-512 has its own, dot_avx512.cpp).
void legacy_rows_avx2(KernelSet& k) {
    k[GGMLType::Q4_0].dot_rows = rows_of_passes<legacy_dot_pass<Q4_0W, 4>, legacy_dot_pass<Q4_0W, 1>>;
    k[GGMLType::Q4_1].dot_rows = rows_of_passes<legacy_dot_pass<Q4_1W, 4>, legacy_dot_pass<Q4_1W, 1>>;
    k[GGMLType::Q5_0].dot_rows = rows_of_passes<legacy_dot_pass<Q5_0W, 4>, legacy_dot_pass<Q5_0W, 1>>;
    k[GGMLType::Q5_1].dot_rows = rows_of_passes<legacy_dot_pass<Q5_1W, 4>, legacy_dot_pass<Q5_1W, 1>>;
    k[GGMLType::Q8_0].dot_rows = rows_of_passes<legacy_dot_pass<Q8_0W, 4>, legacy_dot_pass<Q8_0W, 1>>;
    k[GGMLType::IQ4_NL].dot_rows = rows_of_passes<legacy_dot_pass<IQ4_NLW, 4>, legacy_dot_pass<IQ4_NLW, 1>>;
}
#endif

// ---- k-quants x q8_K: exact int per super-block, then the scalar float expression ------------

float LOWBIT_FN(vec_dot_q2_K)(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q2_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    const __m256i m3 = _mm256_set1_epi8(3);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m128i sc8 = load128(w[b].scales);
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)));
        const int summs = hsum_i32(_mm256_madd_epi16(mins16, load256(a[b].bsums)));
        __m256i acc = _mm256_setzero_si256();
        for (int half = 0; half < 2; ++half) {
            const __m256i q2 = load256(w[b].qs + 32 * half);
            for (int j = 0; j < 4; ++j) {  // elements 128*half + 32*j .. +31 = sub-blocks 8*half+2j, +1
                const int s = 8 * half + 2 * j;
                const __m256i qx = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), m3);
                const __m256i scale = two_scales(w[b].scales[s] & 0xF, w[b].scales[s + 1] & 0xF);
                acc = _mm256_add_epi32(acc, scaled_pairs(qx, load256(a[b].qs + 16 * s), scale));
            }
        }
        const int isum = hsum_i32(acc);
        const float dall = a[b].d * h2f(w[b].d), dmin = a[b].d * h2f(w[b].dmin);
        sumf += dall * float(isum) - dmin * float(summs);
    }
    return sumf;
}

float LOWBIT_FN(vec_dot_q3_K)(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_q3_K*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        uint32_t aux[4];  // unpack the 16 6-bit scales (bias 32) as the scalar spec
        std::memcpy(aux, w[b].scales, 12);
        const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f, tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        int8_t scales[16];
        std::memcpy(scales, aux, 16);
        const __m256i hm_not = _mm256_xor_si256(load256(w[b].hmask), _mm256_set1_epi8(-1));
        __m256i acc = _mm256_setzero_si256();
        for (int half = 0; half < 2; ++half) {
            const __m256i q3 = load256(w[b].qs + 32 * half);
            for (int sh = 0; sh < 4; ++sh) {  // elements 128*half + 32*sh .. +31
                const int s = 8 * half + 2 * sh;
                const __m256i qx = _mm256_and_si256(_mm256_srli_epi16(q3, 2 * sh), m3);
                const __m256i h4 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm_not, 4 * half + sh), one), 2);
                const __m256i qy = load256(a[b].qs + 16 * s);
                const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(qx, qy), _mm256_maddubs_epi16(h4, qy));
                const __m256i scale = two_scales(scales[s] - 32, scales[s + 1] - 32);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, scale));
            }
        }
        sumf += (a[b].d * h2f(w[b].d)) * float(hsum_i32(acc));
    }
    return sumf;
}

namespace {
// Q4_K / Q5_K: 8 six-bit scales (bytes 0..7) and mins (bytes 8..15) from the 12 packed bytes.
inline void unpack_k4_scales(const uint8_t* packed, uint8_t* out16) {
    uint32_t u[4];
    std::memcpy(u, packed, 12);
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t uaux = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = uaux;
    u[0] &= kmask1;
    std::memcpy(out16, u, 16);
}

// sum over the 8 sub-blocks of mins[s] * (bsums[2s] + bsums[2s+1]).
inline int k4_min_sum(const uint8_t* mins8, const int16_t* bsums) {
    const __m256i b = load256(bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mins8)));
    __m128i s = _mm_madd_epi16(mins, pairs);
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}
}  // namespace

// Q4_K / Q5_K / Q6_K as the legacy types above: one template per pass of R q8_K rows, the
// super-block's weights unpacked once, each row's exact integer sums and scalar float expression
// the single-row dot's.
namespace {

// Q4_K (kQ5 false) / Q5_K: weight row w against R rows at act, stride bytes apart.
template <bool kQ5, int R>
inline void k4_dot_pass(int n, const void* vw, const uint8_t* act, size_t stride, float* out) {
    using Block = std::conditional_t<kQ5, block_q5_K, block_q4_K>;
    const auto* w = static_cast<const Block*>(vw);
    auto a_of = [&](int r, int b) { return reinterpret_cast<const block_q8_K*>(act + size_t(r) * stride) + b; };
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    float sumf[R] = {};
    for (int b = 0; b < n / QK_K; ++b) {
        uint8_t sm[16];
        unpack_k4_scales(w[b].scales, sm);
        __m256i acc[R];
        for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
        for (int c = 0; c < 4; ++c) {  // 64 elements: sub-blocks 2c (low nibbles), 2c+1 (high)
            const __m256i q4 = load256(w[b].qs + 32 * c);
            __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            if constexpr (kQ5) {
                const __m256i qh = load256(w[b].qh);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
            }
            const __m256i s_lo = _mm256_set1_epi16(sm[2 * c]), s_hi = _mm256_set1_epi16(sm[2 * c + 1]);
            for (int r = 0; r < R; ++r) {
                acc[r] = _mm256_add_epi32(acc[r], scaled_pairs(lo, load256(a_of(r, b)->qs + 64 * c), s_lo));
                acc[r] = _mm256_add_epi32(acc[r], scaled_pairs(hi, load256(a_of(r, b)->qs + 64 * c + 32), s_hi));
            }
        }
        for (int r = 0; r < R; ++r) {
            const block_q8_K* a = a_of(r, b);
            const int summs = k4_min_sum(sm + 8, a->bsums);
            const int isum = hsum_i32(acc[r]);
            const float dall = a->d * h2f(w[b].d), dmin = a->d * h2f(w[b].dmin);
            sumf[r] += dall * float(isum) - dmin * float(summs);
        }
    }
    for (int r = 0; r < R; ++r) out[r] = sumf[r];
}

template <int R>
inline void q6k_dot_pass(int n, const void* vw, const uint8_t* act, size_t stride, float* out) {
    const auto* w = static_cast<const block_q6_K*>(vw);
    auto a_of = [&](int r, int b) { return reinterpret_cast<const block_q8_K*>(act + size_t(r) * stride) + b; };
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
    float sumf[R] = {};
    for (int b = 0; b < n / QK_K; ++b) {
        __m256i acc[R];
        for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
        for (int half = 0; half < 2; ++half) {
            const __m256i ql0 = load256(w[b].ql + 64 * half), ql1 = load256(w[b].ql + 64 * half + 32);
            const __m256i qh = load256(w[b].qh + 32 * half);
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2)),
            };
            for (int k = 0; k < 4; ++k) {  // elements 128*half + 32k: sub-blocks s, s+1
                const int s = 8 * half + 2 * k;
                const __m256i scale = two_scales(w[b].scales[s], w[b].scales[s + 1]);
                for (int r = 0; r < R; ++r)
                    acc[r] = _mm256_add_epi32(acc[r], scaled_pairs(q[k], load256(a_of(r, b)->qs + 16 * s), scale));
            }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(load128(w[b].scales));
        for (int r = 0; r < R; ++r) {
            const block_q8_K* a = a_of(r, b);
            const int offset = hsum_i32(_mm256_madd_epi16(sc16, load256(a->bsums)));  // sum sc * bsum
            const int isum = hsum_i32(acc[r]) - 32 * offset;
            sumf[r] += (a->d * h2f(w[b].d)) * float(isum);
        }
    }
    for (int r = 0; r < R; ++r) out[r] = sumf[r];
}

}  // namespace

float LOWBIT_FN(vec_dot_q4_K)(int n, const void* w, const void* a) { return dot_of_pass<k4_dot_pass<false, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_q5_K)(int n, const void* w, const void* a) { return dot_of_pass<k4_dot_pass<true, 1>>(n, w, a); }
float LOWBIT_FN(vec_dot_q6_K)(int n, const void* w, const void* a) { return dot_of_pass<q6k_dot_pass<1>>(n, w, a); }

#if !LOWBIT_VNNI
// The multi-row dots of Q4_K, Q5_K, Q6_K (the AVX2 set; AVX-512 has its own).
void kquant_rows_avx2(KernelSet& k) {
    k[GGMLType::Q4_K].dot_rows = rows_of_passes<k4_dot_pass<false, 4>, k4_dot_pass<false, 1>>;
    k[GGMLType::Q5_K].dot_rows = rows_of_passes<k4_dot_pass<true, 4>, k4_dot_pass<true, 1>>;
    k[GGMLType::Q6_K].dot_rows = rows_of_passes<q6k_dot_pass<4>, q6k_dot_pass<1>>;
}
#endif

float LOWBIT_FN(vec_dot_iq4_xs)(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq4_xs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    const __m256i table = _mm256_broadcastsi128_si256(load128(kvalues_iq4nl));
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        __m256i acc = _mm256_setzero_si256();
        for (int s = 0; s < 8; ++s) {
            const int ls = ((w[b].scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((w[b].scales_h >> (2 * s)) & 3) << 4);
            const __m256i qx = _mm256_shuffle_epi8(table, nibbles_32(w[b].qs + 16 * s));
            const __m256i qy = load256(a[b].qs + 32 * s);
            const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(short(ls - 32))));
        }
        sumf += (a[b].d * h2f(w[b].d)) * float(hsum_i32(acc));
    }
    return sumf;
}

// ---- float weights x float activations: 4 x 8 f32 lanes, tail in scalar f32 ------------------


float LOWBIT_FN(vec_dot_f32)(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const float*>(vw);
    const auto* a = static_cast<const float*>(va);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(a + i + 8 * k), acc[k]);
    float sum = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; ++i) sum += w[i] * a[i];
    return sum;
}

float LOWBIT_FN(vec_dot_f16)(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* a = static_cast<const float*>(va);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k)
            acc[k] = _mm256_fmadd_ps(_mm256_cvtph_ps(load128(w + i + 8 * k)), _mm256_loadu_ps(a + i + 8 * k), acc[k]);
    float sum = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; ++i) sum += h2f(w[i]) * a[i];
    return sum;
}

float LOWBIT_FN(vec_dot_bf16)(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const uint16_t*>(vw);
    const auto* a = static_cast<const float*>(va);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; ++k) {
            const __m256i wi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(load128(w + i + 8 * k)), 16);
            acc[k] = _mm256_fmadd_ps(_mm256_castsi256_ps(wi), _mm256_loadu_ps(a + i + 8 * k), acc[k]);
        }
    float sum = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; ++i) {
        const uint32_t bits = uint32_t(w[i]) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        sum += f * a[i];
    }
    return sum;
}

}  // namespace lowbit::cpu::LOWBIT_SIMD_NS

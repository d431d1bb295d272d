// ops_avx512.cpp: the attention loops of ops.h for AVX-512 (F16C conversions, 512-bit FMAs),
// several queries per pass over the cached rows. Compiled with AVX-512 flags; ops.cpp calls
// these only when cpu_features().has_avx512_level().
#include <immintrin.h>

#include <algorithm>

#include "cpu/ops.h"

namespace lowbit::cpu::avx512 {
namespace {

// 16 halves from x (the first `m` lanes; the rest 0) as floats.
inline __m512 half16(const uint16_t* x, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x)); }

// [sum a[0], sum a[1], sum a[2], sum a[3]] of four 16-lane vectors.
inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    // per 128-bit lane: [a0 a0 a1 a1]-style partials -> [a0 a1 a2 a3]
    const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(t01, t23, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// NQ queries x NK (<= 4) rows: scores[i * ld + k] = scale * dot(q_i, row k). The accumulators
// are separate variables (an array of them was kept in memory across the loop by GCC).
template <int NQ, int NK>
void scores_block(const float* q, int64_t q_stride, const uint16_t* rows, int64_t stride, int64_t d, float scale,
                  float* scores, int64_t ld) {
    static_assert(NQ >= 1 && NQ <= 4 && NK >= 1 && NK <= 4, "at most 4 x 4");
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    auto step = [&](int64_t c, __mmask16 m) {
        const __m512 k0 = half16(rows + c, m);
        const __m512 k1 = NK > 1 ? half16(rows + stride + c, m) : k0;
        const __m512 k2 = NK > 2 ? half16(rows + 2 * stride + c, m) : k0;
        const __m512 k3 = NK > 3 ? half16(rows + 3 * stride + c, m) : k0;
        auto row = [&](const float* qi, __m512& b0, __m512& b1, __m512& b2, __m512& b3) {
            const __m512 qz = _mm512_maskz_loadu_ps(m, qi + c);
            b0 = _mm512_fmadd_ps(qz, k0, b0);
            if (NK > 1) b1 = _mm512_fmadd_ps(qz, k1, b1);
            if (NK > 2) b2 = _mm512_fmadd_ps(qz, k2, b2);
            if (NK > 3) b3 = _mm512_fmadd_ps(qz, k3, b3);
        };
        row(q, a00, a01, a02, a03);
        if (NQ > 1) row(q + q_stride, a10, a11, a12, a13);
        if (NQ > 2) row(q + 2 * q_stride, a20, a21, a22, a23);
        if (NQ > 3) row(q + 3 * q_stride, a30, a31, a32, a33);
    };
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) step(c, __mmask16(0xFFFF));
    if (c < d) step(c, __mmask16((1u << (d - c)) - 1));
    const __m128 vs = _mm_set1_ps(scale);
    auto put = [&](int i, __m512 b0, __m512 b1, __m512 b2, __m512 b3) {
        alignas(16) float tmp[4];
        _mm_store_ps(tmp, _mm_mul_ps(reduce4(b0, b1, b2, b3), vs));
        for (int k = 0; k < NK; ++k) scores[i * ld + k] = tmp[k];
    };
    put(0, a00, a01, a02, a03);
    if (NQ > 1) put(1, a10, a11, a12, a13);
    if (NQ > 2) put(2, a20, a21, a22, a23);
    if (NQ > 3) put(3, a30, a31, a32, a33);
}

template <int NQ>
void scores_nq(const float* q, int64_t q_stride, const uint16_t* rows, int64_t stride, int64_t n, int64_t d,
               float scale, float* scores, int64_t ld) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) scores_block<NQ, 4>(q, q_stride, rows + j * stride, stride, d, scale, scores + j, ld);
    switch (n - j) {
        case 3: scores_block<NQ, 3>(q, q_stride, rows + j * stride, stride, d, scale, scores + j, ld); break;
        case 2: scores_block<NQ, 2>(q, q_stride, rows + j * stride, stride, d, scale, scores + j, ld); break;
        case 1: scores_block<NQ, 1>(q, q_stride, rows + j * stride, stride, d, scale, scores + j, ld); break;
        default: break;
    }
}

// NQ queries, 64 output values (4 zmm each, the first `width` of them real) across all n rows,
// each output element updated in row order (as axpy row after row). Separate accumulator
// variables, as in scores_block.
template <int NQ>
void values_nq(const float* p, int64_t ld, const uint16_t* rows, int64_t stride, int64_t n, int64_t c, int64_t width,
               float* out, int64_t out_stride) {
    static_assert(NQ >= 1 && NQ <= 4, "at most 4 queries");
    __mmask16 m[4];
    for (int k = 0; k < 4; ++k) {
        const int64_t left = std::clamp<int64_t>(width - 16 * k, 0, 16);
        m[k] = left == 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    }
    const __m512 z = _mm512_setzero_ps();
    __m512 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
    __m512 a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
    auto load = [&](int i, __m512& b0, __m512& b1, __m512& b2, __m512& b3) {
        float* o = out + i * out_stride + c;
        b0 = _mm512_maskz_loadu_ps(m[0], o);
        b1 = _mm512_maskz_loadu_ps(m[1], o + 16);
        b2 = _mm512_maskz_loadu_ps(m[2], o + 32);
        b3 = _mm512_maskz_loadu_ps(m[3], o + 48);
    };
    load(0, a00, a01, a02, a03);
    if (NQ > 1) load(1, a10, a11, a12, a13);
    if (NQ > 2) load(2, a20, a21, a22, a23);
    if (NQ > 3) load(3, a30, a31, a32, a33);
    const __mmask16 m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3];
    for (int64_t j = 0; j < n; ++j) {
        const uint16_t* x = rows + j * stride + c;
        const __m512 v0 = half16(x, m0), v1 = half16(x + 16, m1), v2 = half16(x + 32, m2), v3 = half16(x + 48, m3);
        auto row = [&](int i, __m512& b0, __m512& b1, __m512& b2, __m512& b3) {
            const __m512 a = _mm512_set1_ps(p[i * ld + j]);
            b0 = _mm512_fmadd_ps(a, v0, b0);
            b1 = _mm512_fmadd_ps(a, v1, b1);
            b2 = _mm512_fmadd_ps(a, v2, b2);
            b3 = _mm512_fmadd_ps(a, v3, b3);
        };
        row(0, a00, a01, a02, a03);
        if (NQ > 1) row(1, a10, a11, a12, a13);
        if (NQ > 2) row(2, a20, a21, a22, a23);
        if (NQ > 3) row(3, a30, a31, a32, a33);
    }
    auto store = [&](int i, __m512 b0, __m512 b1, __m512 b2, __m512 b3) {
        float* o = out + i * out_stride + c;
        _mm512_mask_storeu_ps(o, m0, b0);
        _mm512_mask_storeu_ps(o + 16, m1, b1);
        _mm512_mask_storeu_ps(o + 32, m2, b2);
        _mm512_mask_storeu_ps(o + 48, m3, b3);
    };
    store(0, a00, a01, a02, a03);
    if (NQ > 1) store(1, a10, a11, a12, a13);
    if (NQ > 2) store(2, a20, a21, a22, a23);
    if (NQ > 3) store(3, a30, a31, a32, a33);
}

}  // namespace

void attn_scores_f16(const float* q, int64_t q_stride, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float scale, float* scores, int64_t ld) {
    for (int64_t i = 0; i < nq; i += 4) {
        const float* qi = q + i * q_stride;
        float* si = scores + i * ld;
        switch (std::min<int64_t>(4, nq - i)) {
            case 4: scores_nq<4>(qi, q_stride, rows, stride, n, d, scale, si, ld); break;
            case 3: scores_nq<3>(qi, q_stride, rows, stride, n, d, scale, si, ld); break;
            case 2: scores_nq<2>(qi, q_stride, rows, stride, n, d, scale, si, ld); break;
            default: scores_nq<1>(qi, q_stride, rows, stride, n, d, scale, si, ld); break;
        }
    }
}

void attn_values_f16(const float* p, int64_t ld, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float* out, int64_t out_stride) {
    for (int64_t i = 0; i < nq; i += 4) {
        const float* pi = p + i * ld;
        float* oi = out + i * out_stride;
        for (int64_t c = 0; c < d; c += 64) {
            const int64_t width = std::min<int64_t>(64, d - c);
            switch (std::min<int64_t>(4, nq - i)) {
                case 4: values_nq<4>(pi, ld, rows, stride, n, c, width, oi, out_stride); break;
                case 3: values_nq<3>(pi, ld, rows, stride, n, c, width, oi, out_stride); break;
                case 2: values_nq<2>(pi, ld, rows, stride, n, c, width, oi, out_stride); break;
                default: values_nq<1>(pi, ld, rows, stride, n, c, width, oi, out_stride); break;
            }
        }
    }
}

}  // namespace lowbit::cpu::avx512

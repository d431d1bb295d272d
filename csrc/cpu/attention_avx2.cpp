// attention_avx2.cpp: the attention kernels of attention.h for AVX2 + FMA + F16C: up to 4 query
// rows x 2 keys per pass for the scores, 2 rows x 32 output values in registers across a block's
// keys for the values (16 ymm registers).
#include <immintrin.h>

#include <algorithm>

#include "common.h"
#include "cpu/attention.h"
#include "cpu/simd_exp.h"

namespace lowbit::cpu::avx2 {
namespace {

inline __m256 load8(const uint16_t* x) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))); }
inline __m256 load8(const float* x) { return _mm256_loadu_ps(x); }
inline float load1(const uint16_t* x) { return fp16_to_fp32(*x); }
inline float load1(const float* x) { return *x; }

inline float hsum(__m256 s) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_add_ss(r, _mm_movehdup_ps(r)));
}

// NQ rows x NK (<= 2) keys, one 8-lane accumulator per pair (its bits do not depend on the
// blocking); the d % 8 tail in scalar, after the lanes are summed.
template <int NQ, int NK, typename Row>
void scores_block(const float* const* q, const Row* k, int64_t stride, int64_t d, float scale, float* s, int64_t ld) {
    static_assert(NQ >= 1 && NQ <= 4 && NK >= 1 && NK <= 2, "at most 4 x 2");
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    int64_t c = 0;
    for (; c + 8 <= d; c += 8) {
        const __m256 k0 = load8(k + c);
        const __m256 k1 = NK > 1 ? load8(k + stride + c) : k0;
        auto row = [&](const float* qi, __m256& b0, __m256& b1) {
            const __m256 qv = _mm256_loadu_ps(qi + c);
            b0 = _mm256_fmadd_ps(qv, k0, b0);
            if (NK > 1) b1 = _mm256_fmadd_ps(qv, k1, b1);
        };
        row(q[0], a00, a01);
        if (NQ > 1) row(q[1], a10, a11);
        if (NQ > 2) row(q[2], a20, a21);
        if (NQ > 3) row(q[3], a30, a31);
    }
    auto put = [&](int i, __m256 b0, __m256 b1) {
        const __m256 acc[2] = {b0, b1};
        for (int j = 0; j < NK; ++j) {
            float t = hsum(acc[j]);
            for (int64_t e = c; e < d; ++e) t += q[i][e] * load1(k + j * stride + e);
            s[i * ld + j] = t * scale;
        }
    };
    put(0, a00, a01);
    if (NQ > 1) put(1, a10, a11);
    if (NQ > 2) put(2, a20, a21);
    if (NQ > 3) put(3, a30, a31);
}

template <int NQ, typename Row>
void scores_rows(const float* const* q, const Row* k, int64_t stride, int64_t nk, int64_t d, float scale, float* s,
                 int64_t ld) {
    int64_t j = 0;
    for (; j + 2 <= nk; j += 2) scores_block<NQ, 2>(q, k + j * stride, stride, d, scale, s + j, ld);
    if (j < nk) scores_block<NQ, 1>(q, k + j * stride, stride, d, scale, s + j, ld);
}

template <typename Row>
void scores(const float* const* q, int64_t nq, const Row* k, int64_t stride, int64_t nk, int64_t d, float scale,
            float* s, int64_t ld) {
    for (int64_t i = 0; i < nq; i += 4) {
        switch (std::min<int64_t>(4, nq - i)) {
            case 4: scores_rows<4>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
            case 3: scores_rows<3>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
            case 2: scores_rows<2>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
            default: scores_rows<1>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
        }
    }
}

// NQ (<= 2) rows, output values [c, c + 32) across all nk keys in key order (as one axpy per key).
template <int NQ, typename Row>
void values_rows32(const float* p, int64_t ld, const Row* v, int64_t stride, int64_t nk, int64_t c, float* const* out) {
    __m256 a[NQ][4];
    for (int i = 0; i < NQ; ++i)
        for (int k = 0; k < 4; ++k) a[i][k] = _mm256_loadu_ps(out[i] + c + 8 * k);
    for (int64_t j = 0; j < nk; ++j) {
        const Row* x = v + j * stride + c;
        const __m256 v0 = load8(x), v1 = load8(x + 8), v2 = load8(x + 16), v3 = load8(x + 24);
        for (int i = 0; i < NQ; ++i) {
            const __m256 pj = _mm256_set1_ps(p[i * ld + j]);
            a[i][0] = _mm256_fmadd_ps(pj, v0, a[i][0]);
            a[i][1] = _mm256_fmadd_ps(pj, v1, a[i][1]);
            a[i][2] = _mm256_fmadd_ps(pj, v2, a[i][2]);
            a[i][3] = _mm256_fmadd_ps(pj, v3, a[i][3]);
        }
    }
    for (int i = 0; i < NQ; ++i)
        for (int k = 0; k < 4; ++k) _mm256_storeu_ps(out[i] + c + 8 * k, a[i][k]);
}

// One row, output values [c, d) (fewer than 32): 8 at a time, then scalar, each in key order.
template <typename Row>
void values_tail(const float* p, const Row* v, int64_t stride, int64_t nk, int64_t c, int64_t d, float* out) {
    for (; c + 8 <= d; c += 8) {
        __m256 acc = _mm256_loadu_ps(out + c);
        for (int64_t j = 0; j < nk; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(v + j * stride + c), acc);
        _mm256_storeu_ps(out + c, acc);
    }
    for (; c < d; ++c)
        for (int64_t j = 0; j < nk; ++j) out[c] += p[j] * load1(v + j * stride + c);
}

template <typename Row>
void values(const float* p, int64_t ld, int64_t nq, const Row* v, int64_t stride, int64_t nk, int64_t d,
            float* const* out) {
    const int64_t d32 = d - d % 32;
    for (int64_t i = 0; i < nq; i += 2) {
        for (int64_t c = 0; c < d32; c += 32) {
            if (i + 1 < nq) values_rows32<2>(p + i * ld, ld, v, stride, nk, c, out + i);
            else values_rows32<1>(p + i * ld, ld, v, stride, nk, c, out + i);
        }
        for (int64_t r = i; r < std::min(nq, i + 2); ++r) values_tail(p + r * ld, v, stride, nk, d32, d, out[r]);
    }
}

float row_max(const float* s, int64_t n) {
    __m256 m = _mm256_loadu_ps(s);
    for (int64_t j = 8; j < n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    return _mm_cvtss_f32(_mm_max_ss(r, _mm_movehdup_ps(r)));
}

// Lanes as the 16-lane set: columns j % 16 < 8 in lo, the others in hi, lo + hi, then halves.
float exp_sum(float* s, int64_t n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t j = 0; j < n; j += 16) {
        const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j + 8), vm));
        _mm256_storeu_ps(s + j, e0);
        _mm256_storeu_ps(s + j + 8, e1);
        lo = _mm256_add_ps(lo, e0);
        hi = _mm256_add_ps(hi, e1);
    }
    return hsum(_mm256_add_ps(lo, hi));
}

}  // namespace

const AttnKernels kAttnKernels{"avx2",          scores<uint16_t>, scores<float>, values<uint16_t>, values<float>,
                               row_max, exp_sum};

}  // namespace lowbit::cpu::avx2

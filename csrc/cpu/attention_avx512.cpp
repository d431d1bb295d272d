// attention_avx512.cpp: the attention kernels of attention.h for AVX-512 (F16C conversions,
// 512-bit FMAs): up to 4 query rows x 4 keys per pass for the scores, 4 rows x 64 output values
// in registers across a block's keys for the values. Compiled with AVX-512 flags; attention.cpp
// uses these only when the CPU has the avx512 kernel level.
#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "cpu/attention.h"
#include "cpu/simd_exp.h"

namespace lowbit::cpu::avx512 {
namespace {

// 16 values of a row from x (the first lanes of mask m; the rest 0) as floats.
inline __m512 load16(const uint16_t* x, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x)); }
inline __m512 load16(const float* x, __mmask16 m) { return _mm512_maskz_loadu_ps(m, x); }

inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << std::max<int64_t>(left, 0)) - 1);
}

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

// NQ rows x NK (<= 4) keys: s[i * ld + k] = scale * dot(q_i, key k). Each pair has its own
// accumulator (separate variables: an array of them was kept in memory across the loop by GCC),
// so its bits do not depend on the blocking.
template <int NQ, int NK, typename Row>
void scores_block(const float* const* q, const Row* k, int64_t stride, int64_t d, float scale, float* s, int64_t ld) {
    static_assert(NQ >= 1 && NQ <= 4 && NK >= 1 && NK <= 4, "at most 4 x 4");
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    auto step = [&](int64_t c, __mmask16 m) {
        const __m512 k0 = load16(k + c, m);
        const __m512 k1 = NK > 1 ? load16(k + stride + c, m) : k0;
        const __m512 k2 = NK > 2 ? load16(k + 2 * stride + c, m) : k0;
        const __m512 k3 = NK > 3 ? load16(k + 3 * stride + c, m) : k0;
        auto row = [&](const float* qi, __m512& b0, __m512& b1, __m512& b2, __m512& b3) {
            const __m512 qz = _mm512_maskz_loadu_ps(m, qi + c);
            b0 = _mm512_fmadd_ps(qz, k0, b0);
            if (NK > 1) b1 = _mm512_fmadd_ps(qz, k1, b1);
            if (NK > 2) b2 = _mm512_fmadd_ps(qz, k2, b2);
            if (NK > 3) b3 = _mm512_fmadd_ps(qz, k3, b3);
        };
        row(q[0], a00, a01, a02, a03);
        if (NQ > 1) row(q[1], a10, a11, a12, a13);
        if (NQ > 2) row(q[2], a20, a21, a22, a23);
        if (NQ > 3) row(q[3], a30, a31, a32, a33);
    };
    int64_t c = 0;
    for (; c + 16 <= d; c += 16) step(c, __mmask16(0xFFFF));
    if (c < d) step(c, tail_mask(d - c));
    const __m128 vs = _mm_set1_ps(scale);
    auto put = [&](int i, __m512 b0, __m512 b1, __m512 b2, __m512 b3) {
        alignas(16) float tmp[4];
        _mm_store_ps(tmp, _mm_mul_ps(reduce4(b0, b1, b2, b3), vs));
        for (int j = 0; j < NK; ++j) s[i * ld + j] = tmp[j];
    };
    put(0, a00, a01, a02, a03);
    if (NQ > 1) put(1, a10, a11, a12, a13);
    if (NQ > 2) put(2, a20, a21, a22, a23);
    if (NQ > 3) put(3, a30, a31, a32, a33);
}

template <int NQ, typename Row>
void scores_rows(const float* const* q, const Row* k, int64_t stride, int64_t nk, int64_t d, float scale, float* s,
                 int64_t ld) {
    int64_t j = 0;
    for (; j + 4 <= nk; j += 4) scores_block<NQ, 4>(q, k + j * stride, stride, d, scale, s + j, ld);
    switch (nk - j) {
        case 3: scores_block<NQ, 3>(q, k + j * stride, stride, d, scale, s + j, ld); break;
        case 2: scores_block<NQ, 2>(q, k + j * stride, stride, d, scale, s + j, ld); break;
        case 1: scores_block<NQ, 1>(q, k + j * stride, stride, d, scale, s + j, ld); break;
        default: break;
    }
}

// Up to 4 rows x n halves (at x, `stride` apart) -> floats at y (n apart): exact conversions.
inline void rows_to_f32(const uint16_t* x, int64_t stride, int64_t rows, int64_t n, float* y) {
    for (int64_t j = 0; j < rows; ++j)
        for (int64_t c = 0; c < n; c += 16) {
            const __mmask16 m = tail_mask(n - c);
            _mm512_mask_storeu_ps(y + j * n + c, m, load16(x + j * stride + c, m));
        }
}

// The f16 rows of a block converted once, not once per group of 4 query rows: with more than
// kConvMinRows rows (a prefill's tiles) each key group of 4 rows, then each value column panel of
// 64, is converted into a float buffer the rows' groups then share (the conversions are exact and
// every sum keeps its order, so the bits are the per-group kernels'). d up to kConvMaxD (the
// buffers are on the stack); beyond, the per-group kernels. Two groups (a decode step of 7 query
// heads a KV head) measured 1.03-1.07x slower attention through the buffer, so from three.
constexpr int64_t kConvMinRows = 8, kConvMaxD = 1024;

template <typename Row>
void scores(const float* const* q, int64_t nq, const Row* k, int64_t stride, int64_t nk, int64_t d, float scale,
            float* s, int64_t ld);

// Each group of up to 4 keys converted, then every row group's scores on it (scores<float>).
__attribute__((noinline)) void scores_f16_shared(const float* const* q, int64_t nq, const uint16_t* k, int64_t stride,
                                                 int64_t nk, int64_t d, float scale, float* s, int64_t ld) {
    alignas(64) float buf[4 * kConvMaxD];
    for (int64_t j = 0; j < nk; j += 4) {
        const int64_t n = std::min<int64_t>(4, nk - j);
        rows_to_f32(k + j * stride, stride, n, d, buf);
        scores<float>(q, nq, buf, d, n, d, scale, s + j, ld);
    }
}

template <typename Row>
void scores(const float* const* q, int64_t nq, const Row* k, int64_t stride, int64_t nk, int64_t d, float scale,
            float* s, int64_t ld) {
    if constexpr (std::is_same_v<Row, uint16_t>) {
        if (nq > kConvMinRows && d <= kConvMaxD) return scores_f16_shared(q, nq, k, stride, nk, d, scale, s, ld);
    }
    for (int64_t i = 0; i < nq; i += 4) {
        switch (std::min<int64_t>(4, nq - i)) {
            case 4: scores_rows<4>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
            case 3: scores_rows<3>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
            case 2: scores_rows<2>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
            default: scores_rows<1>(q + i, k, stride, nk, d, scale, s + i * ld, ld); break;
        }
    }
}

// NQ rows, output values [c, c + width) (width <= 64: 4 zmm each) across all nk keys, each
// output element updated in key order (as one axpy per key). Separate accumulator variables, as
// in scores_block.
template <int NQ, typename Row>
void values_rows(const float* p, int64_t ld, const Row* v, int64_t stride, int64_t nk, int64_t c, int64_t width,
                 float* const* out) {
    static_assert(NQ >= 1 && NQ <= 4, "at most 4 rows");
    const __mmask16 m0 = tail_mask(width), m1 = tail_mask(width - 16), m2 = tail_mask(width - 32),
                    m3 = tail_mask(width - 48);
    const __m512 z = _mm512_setzero_ps();
    __m512 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
    __m512 a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
    auto load = [&](int i, __m512& b0, __m512& b1, __m512& b2, __m512& b3) {
        const float* o = out[i] + c;
        b0 = _mm512_maskz_loadu_ps(m0, o);
        b1 = _mm512_maskz_loadu_ps(m1, o + 16);
        b2 = _mm512_maskz_loadu_ps(m2, o + 32);
        b3 = _mm512_maskz_loadu_ps(m3, o + 48);
    };
    load(0, a00, a01, a02, a03);
    if (NQ > 1) load(1, a10, a11, a12, a13);
    if (NQ > 2) load(2, a20, a21, a22, a23);
    if (NQ > 3) load(3, a30, a31, a32, a33);
    for (int64_t j = 0; j < nk; ++j) {
        const Row* x = v + j * stride + c;
        const __m512 v0 = load16(x, m0), v1 = load16(x + 16, m1), v2 = load16(x + 32, m2), v3 = load16(x + 48, m3);
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
        float* o = out[i] + c;
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

template <typename Row>
void values(const float* p, int64_t ld, int64_t nq, const Row* v, int64_t stride, int64_t nk, int64_t d,
            float* const* out);

// Each 64-column panel of the nk value rows converted once, then every row group on it
// (values<float>, the rows' outputs offset to the panel).
__attribute__((noinline)) void values_f16_shared(const float* p, int64_t ld, int64_t nq, const uint16_t* v, int64_t stride,
                                                 int64_t nk, int64_t d, float* const* out) {
    alignas(64) float buf[kAttnBlock * 64];
    float* panel_out[kAttnMaxRows];
    for (int64_t c = 0; c < d; c += 64) {
        const int64_t width = std::min<int64_t>(64, d - c);
        for (int64_t j0 = 0; j0 < nk; j0 += 4)
            rows_to_f32(v + j0 * stride + c, stride, std::min<int64_t>(4, nk - j0), width, buf + j0 * width);
        for (int64_t i = 0; i < nq; ++i) panel_out[i] = out[i] + c;
        values<float>(p, ld, nq, buf, width, nk, width, panel_out);
    }
}

template <typename Row>
void values(const float* p, int64_t ld, int64_t nq, const Row* v, int64_t stride, int64_t nk, int64_t d,
            float* const* out) {
    if constexpr (std::is_same_v<Row, uint16_t>) {
        if (nq > kConvMinRows) return values_f16_shared(p, ld, nq, v, stride, nk, d, out);   // scores' comment
    }
    for (int64_t i = 0; i < nq; i += 4)
        for (int64_t c = 0; c < d; c += 64) {
            const int64_t width = std::min<int64_t>(64, d - c);
            switch (std::min<int64_t>(4, nq - i)) {
                case 4: values_rows<4>(p + i * ld, ld, v, stride, nk, c, width, out + i); break;
                case 3: values_rows<3>(p + i * ld, ld, v, stride, nk, c, width, out + i); break;
                case 2: values_rows<2>(p + i * ld, ld, v, stride, nk, c, width, out + i); break;
                default: values_rows<1>(p + i * ld, ld, v, stride, nk, c, width, out + i); break;
            }
        }
}

float row_max(const float* s, int64_t n) {
    __m512 m = _mm512_loadu_ps(s);
    for (int64_t j = 16; j < n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + j));
    return _mm512_reduce_max_ps(m);
}

// Lane j % 16 sums column j; then halves (lane k + lane k + 8, ...), as the other sets do.
float exp_sum(float* s, int64_t n, float m) {
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
        _mm512_storeu_ps(s + j, e);
        acc = _mm512_add_ps(acc, e);
    }
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

}  // namespace

const AttnKernels kAttnKernels{"avx512",         scores<uint16_t>, scores<float>, values<uint16_t>, values<float>,
                               row_max, exp_sum};

}  // namespace lowbit::cpu::avx512

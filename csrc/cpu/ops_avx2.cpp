// ops_avx2.cpp: AVX2 + FMA + F16C versions of the attention hot loops (see ops.h).
#include <immintrin.h>

#include <cmath>

#include "common.h"
#include "cpu/ops.h"

namespace lowbit::cpu::avx2 {

float dot_f32(const float* a, const float* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    const __m256 s = _mm256_add_ps(s0, s1);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    float total = _mm_cvtss_f32(r);
    for (; i < n; ++i) total += a[i] * b[i];
    return total;
}

void axpy_f32(float* y, float a, const float* x, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += a * x[i];
}

void f16_to_f32_row(const uint16_t* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
    for (; i < n; ++i) y[i] = fp16_to_fp32(x[i]);
}

void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

float dot_f16(const float* a, const uint16_t* b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    auto half8 = [&](int64_t j) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + j))); };
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), half8(i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), half8(i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), half8(i), s0);
    const __m256 s = _mm256_add_ps(s0, s1);
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    float total = _mm_cvtss_f32(r);
    for (; i < n; ++i) total += a[i] * fp16_to_fp32(b[i]);
    return total;
}

void axpy_f16(float* y, float a, const uint16_t* x, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(y + i)));
    }
    for (; i < n; ++i) y[i] += a * fp16_to_fp32(x[i]);
}

// e^x for 8 floats: Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial),
// about 1 ulp; inputs clamped to [-87.3, 88.7] (the result saturates like expf's).
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// out = gate * sigmoid(k * gate') * up:  SiLU: sigmoid(gate); GELU(tanh): 0.5 g (1 + tanh(z)) =
// g * sigmoid(2 z), z = sqrt(2/pi) (g + 0.044715 g^3).
void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(0.044715f);
    const __m256 m2k = _mm256_set1_ps(-2.0f * 0.79788456080286535588f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(c, g), _mm256_mul_ps(g, g), g);   // g + c g^3
        const __m256 e = exp8(_mm256_mul_ps(m2k, inner));                                   // e^(-2z)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; ++i) {
        const float g = gate[i];
        out[i] = 0.5f * g * (1.0f + std::tanh(0.79788456080286535588f * (g + 0.044715f * g * g * g))) * up[i];
    }
}

void attn_scores_f16(const float* q, int64_t q_stride, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float scale, float* scores, int64_t ld) {
    for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < n; ++j) scores[i * ld + j] = dot_f16(q + i * q_stride, rows + j * stride, d) * scale;
}

// Each element gets the same operations in the same order as axpy_f16 row after row (j ascending),
// but 64 output values stay in registers across all n rows instead of a load and a store per row.
static void values_one(const float* p, const uint16_t* rows, int64_t stride, int64_t n, int64_t d, float* out) {
    auto half8 = [](const uint16_t* x) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x))); };
    int64_t i = 0;
    for (; i + 64 <= d; i += 64) {
        __m256 acc[8];
        for (int k = 0; k < 8; ++k) acc[k] = _mm256_loadu_ps(out + i + 8 * k);
        for (int64_t j = 0; j < n; ++j) {
            const __m256 a = _mm256_set1_ps(p[j]);
            const uint16_t* x = rows + j * stride + i;
            for (int k = 0; k < 8; ++k) acc[k] = _mm256_fmadd_ps(a, half8(x + 8 * k), acc[k]);
        }
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(out + i + 8 * k, acc[k]);
    }
    for (; i + 8 <= d; i += 8) {
        __m256 acc = _mm256_loadu_ps(out + i);
        for (int64_t j = 0; j < n; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), half8(rows + j * stride + i), acc);
        _mm256_storeu_ps(out + i, acc);
    }
    for (; i < d; ++i)
        for (int64_t j = 0; j < n; ++j) out[i] += p[j] * fp16_to_fp32(rows[j * stride + i]);
}

void attn_values_f16(const float* p, int64_t ld, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float* out, int64_t out_stride) {
    for (int64_t i = 0; i < nq; ++i) values_one(p + i * ld, rows, stride, n, d, out + i * out_stride);
}

}  // namespace lowbit::cpu::avx2

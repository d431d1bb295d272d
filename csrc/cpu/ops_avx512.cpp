// ops_avx512.cpp: AVX-512 versions of ops.h's prefill-heavy loops: the gated activations and
// rmsnorm. Each does what its AVX2 / generic counterpart does, element by element, in the same
// float operations (so the same bits; tests/test_ops_simd.py):
//   silu_mul, gelu_tanh_mul  ops_avx2.cpp's formulas, 16 lanes at a time (exp16 is exp8's
//     polynomial), then ops_avx2.cpp's own loop for the last n % 16 elements.
//   rmsnorm  the generic one's 8 double lanes in one zmm (lane k sums elements k, k + 8, ... in
//     order; a float's square is exact in double, so the fused multiply-add rounds as the
//     generic multiply then add do), the same tree over the lanes, y = x * scale * w.
// A 512-token gemma3 prefill spent ~3 % of its time in gelu_tanh_mul (a 256-bit divide per 8
// elements) and ~2 % in rmsnorm (SSE2 doubles, 2 a step).
#include <immintrin.h>

#include <cmath>

#include "cpu/ops.h"
#include "cpu/simd_exp.h"

namespace lowbit::cpu::avx512 {
namespace {

// out[i] = g / (1 + e(g)) * up[i] for i < n, e = exp of the activation's argument (arg16), 16
// lanes at a time; the last n % 16 elements go through the AVX2 loop (rest), the same formula.
template <typename Arg16>
void gated(const float* gate, const float* up, float* out, int64_t n, Arg16 arg16,
           void (*rest)(const float*, const float*, float*, int64_t)) {
    const __m512 one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(gate + i);
        const __m512 e = exp16(arg16(g));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
    rest(gate + i, up + i, out + i, n - i);
}

}  // namespace

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
    gated(gate, up, out, n, [](__m512 g) { return _mm512_sub_ps(_mm512_setzero_ps(), g); }, avx2::silu_mul);
}

void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n) {
    gated(
        gate, up, out, n,
        [](__m512 g) {   // -2 z = -2 sqrt(2/pi) (g + c g^3), as ops_avx2.cpp
            const __m512 c = _mm512_set1_ps(0.044715f), m2k = _mm512_set1_ps(-2.0f * 0.79788456080286535588f);
            const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(c, g), _mm512_mul_ps(g, g), g);
            return _mm512_mul_ps(m2k, inner);
        },
        avx2::gelu_tanh_mul);
}

void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps) {
    __m512d acc = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        acc = _mm512_fmadd_pd(v, v, acc);
    }
    alignas(64) double part[8];
    _mm512_store_pd(part, acc);
    double ss = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
    for (; i < n; ++i) ss += double(x[i]) * double(x[i]);
    const float scale = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    const __m512 vs = _mm512_set1_ps(scale);
    int64_t j = 0;
    if (w) {
        for (; j + 16 <= n; j += 16)
            _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j), vs), _mm512_loadu_ps(w + j)));
        for (; j < n; ++j) y[j] = x[j] * scale * w[j];
    } else {
        for (; j + 16 <= n; j += 16) _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(x + j), vs));
        for (; j < n; ++j) y[j] = x[j] * scale;
    }
}

}  // namespace lowbit::cpu::avx512

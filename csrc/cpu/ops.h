// ops.h: the float operations of a transformer forward besides the weight matmuls.
//
// Everything is f32 in memory; reductions that decide accuracy (norm sums, softmax sums)
// accumulate in double. Plain loops that the compiler vectorizes for baseline SSE2; the few hot
// inner loops of attention (dot, axpy, f16 row conversion) have AVX2/F16C versions in
// ops_avx2.cpp (the multi-query attention loops also AVX-512 ones, ops_avx512.cpp), picked once
// from the CPU features (LOWBIT_CPU=scalar forces the portable loops).
#pragma once
#include <cstdint>

namespace lowbit::cpu {

// y = x / sqrt(mean(x^2) + eps) * w        x, y, w: (n,)   (y may alias x; w nullptr = no weight)
void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps);

// Rotary embedding of one token's heads in place.   x: (n_heads, head_dim)
// cos_sin: (n_rot/2, 2) cos and sin of the token's angle per frequency pair.
// neox=false rotates pairs (2i, 2i+1); neox=true rotates (i, i + n_rot/2). Dims >= n_rot are kept.
void rope(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, bool neox, const float* cos_sin);

// cos_sin (n_rot/2, 2) for angle pos * inv_freq[i], computed in double, both times mscale (YaRN).
void rope_cos_sin(double pos, const double* inv_freq, int64_t half, float* cos_sin, float mscale = 1.0f);

// out = act(gate) * up, act = SiLU or GELU (tanh approximation).   (n,) each; out may alias gate
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n);

// y += x   (n,)
void add_inplace(float* y, const float* x, int64_t n);

// Hot loops of attention, dispatched to AVX2/FMA/F16C when the CPU has them.
float dot_f32(const float* a, const float* b, int64_t n);                 // sum a[i] * b[i]
void axpy_f32(float* y, float a, const float* x, int64_t n);              // y += a * x
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n);              // IEEE half -> float
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n);              // round to nearest even
float dot_f16(const float* a, const uint16_t* b, int64_t n);              // sum a[i] * half(b[i])
void axpy_f16(float* y, float a, const uint16_t* x, int64_t n);           // y += a * half(x)

// Attention of nq queries over the same n cached f16 rows of d values, row j at rows + j * stride
// (in halves); query i at q + i * q_stride, its scores / probabilities at + i * ld, its output at
// out + i * out_stride (each row is loaded and converted once for all nq queries):
//   scores_i[j] = scale * dot(q_i, row j)              q_i: (d,)  scores_i: (n,)
//   out_i += sum_j p_i[j] * row j  (j ascending)       p_i: (n,)  out_i: (d,)
void attn_scores_f16(const float* q, int64_t q_stride, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float scale, float* scores, int64_t ld);
void attn_values_f16(const float* p, int64_t ld, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float* out, int64_t out_stride);

namespace avx2 {   // ops_avx2.cpp; only called when cpu_features().has_avx2_level()
float dot_f32(const float* a, const float* b, int64_t n);
void axpy_f32(float* y, float a, const float* x, int64_t n);
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n);
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n);
float dot_f16(const float* a, const uint16_t* b, int64_t n);
void axpy_f16(float* y, float a, const uint16_t* x, int64_t n);
void attn_scores_f16(const float* q, int64_t q_stride, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float scale, float* scores, int64_t ld);
void attn_values_f16(const float* p, int64_t ld, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float* out, int64_t out_stride);
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n);
}  // namespace avx2

namespace avx512 {   // ops_avx512.cpp; only called when cpu_features().has_avx512_level()
void attn_scores_f16(const float* q, int64_t q_stride, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float scale, float* scores, int64_t ld);
void attn_values_f16(const float* p, int64_t ld, int64_t nq, const uint16_t* rows, int64_t stride, int64_t n,
                     int64_t d, float* out, int64_t out_stride);
}  // namespace avx512

}  // namespace lowbit::cpu

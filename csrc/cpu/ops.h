// ops.h: the float operations of a transformer forward besides the weight matmuls.
//
// Everything is f32 in memory; reductions that decide accuracy (norm sums) accumulate in double.
// Plain loops that the compiler vectorizes for baseline SSE2; a few hot loops (axpy, f16 row
// conversion, the gated activations) have AVX2/F16C versions in ops_avx2.cpp, and the gated
// activations and rmsnorm AVX-512 ones in ops_avx512.cpp (the same bits as the AVX2 / portable
// loops), picked once from the CPU features (LOWBIT_CPU=scalar forces the portable loops,
// LOWBIT_CPU=avx2 the AVX2 ones). Attention: cpu/attention.h.
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

// Hot loops dispatched to AVX2/FMA/F16C when the CPU has them.
void axpy_f32(float* y, float a, const float* x, int64_t n);              // y += a * x
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n);              // IEEE half -> float
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n);              // round to nearest even

namespace avx2 {   // ops_avx2.cpp; only called when cpu_features().has_avx2_level()
void axpy_f32(float* y, float a, const float* x, int64_t n);
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n);
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n);
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n);
}  // namespace avx2

namespace avx512 {   // ops_avx512.cpp; only called when cpu_features().has_avx512_level()
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n);
void rmsnorm(const float* x, const float* w, float* y, int64_t n, float eps);
}  // namespace avx512

// The gated activation ("silu" / "gelu") and rmsnorm of one implementation ("generic", "avx2",
// "avx512"; ValueError for one this CPU lacks), for the tests that hold them to each other.
void gated_act_with(const char* impl, const char* act, const float* gate, const float* up, float* out, int64_t n);
void rmsnorm_with(const char* impl, const float* x, const float* w, float* y, int64_t n, float eps);

}  // namespace lowbit::cpu

// dot_avx512.cpp: the AVX-512 (F/BW/VL/DQ/VNNI) kernel set. The 256-bit kernels of
// dot_x86_256.h with vpdpbusd for the u8 x s8 dots, and 512-bit versions of the hot types.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx512
#define LOWBIT_VNNI 1
#define LOWBIT_FN(name) name##_256
#include "cpu/dot_x86_256.h"

namespace lowbit::cpu::avx512 {

void quantize_act_q8_0(const float* x, block_q8_0* y, int n) { quantize_act_q8_0_256(x, y, n); }
void quantize_act_q8_K(const float* x, block_q8_K* y, int n) { quantize_act_q8_K_256(x, y, n); }
float vec_dot_q4_0(int n, const void* w, const void* a) { return vec_dot_q4_0_256(n, w, a); }
float vec_dot_q4_1(int n, const void* w, const void* a) { return vec_dot_q4_1_256(n, w, a); }
float vec_dot_q5_0(int n, const void* w, const void* a) { return vec_dot_q5_0_256(n, w, a); }
float vec_dot_q5_1(int n, const void* w, const void* a) { return vec_dot_q5_1_256(n, w, a); }
float vec_dot_q8_0(int n, const void* w, const void* a) { return vec_dot_q8_0_256(n, w, a); }
float vec_dot_iq4_nl(int n, const void* w, const void* a) { return vec_dot_iq4_nl_256(n, w, a); }
float vec_dot_q2_K(int n, const void* w, const void* a) { return vec_dot_q2_K_256(n, w, a); }
float vec_dot_q3_K(int n, const void* w, const void* a) { return vec_dot_q3_K_256(n, w, a); }
float vec_dot_q4_K(int n, const void* w, const void* a) { return vec_dot_q4_K_256(n, w, a); }
float vec_dot_q5_K(int n, const void* w, const void* a) { return vec_dot_q5_K_256(n, w, a); }
float vec_dot_q6_K(int n, const void* w, const void* a) { return vec_dot_q6_K_256(n, w, a); }
float vec_dot_iq4_xs(int n, const void* w, const void* a) { return vec_dot_iq4_xs_256(n, w, a); }
float vec_dot_f32(int n, const void* w, const void* a) { return vec_dot_f32_256(n, w, a); }
float vec_dot_f16(int n, const void* w, const void* a) { return vec_dot_f16_256(n, w, a); }
float vec_dot_bf16(int n, const void* w, const void* a) { return vec_dot_bf16_256(n, w, a); }

extern const KernelSet kKernels = {
    "avx512",
    vec_dot_q4_0, vec_dot_q4_1, vec_dot_q5_0, vec_dot_q5_1, vec_dot_q8_0, vec_dot_iq4_nl,
    vec_dot_q2_K, vec_dot_q3_K, vec_dot_q4_K, vec_dot_q5_K, vec_dot_q6_K, vec_dot_iq4_xs,
    vec_dot_f32, vec_dot_f16, vec_dot_bf16,
    quantize_act_q8_0, quantize_act_q8_K,
};

}  // namespace lowbit::cpu::avx512

// dot_avx2.cpp: the AVX2 + FMA + F16C kernel set (maddubs/madd integer dots, 256-bit).
// Contraction stays off so the k-quant float expressions round exactly as the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx2
#define LOWBIT_VNNI 0
#define LOWBIT_FN(name) name
#include "cpu/dot_x86_256.h"

namespace lowbit::cpu::avx2 {

extern const KernelSet kKernels = {
    "avx2",
    vec_dot_q4_0, vec_dot_q4_1, vec_dot_q5_0, vec_dot_q5_1, vec_dot_q8_0, vec_dot_iq4_nl,
    vec_dot_q2_K, vec_dot_q3_K, vec_dot_q4_K, vec_dot_q5_K, vec_dot_q6_K, vec_dot_iq4_xs,
    vec_dot_f32, vec_dot_f16, vec_dot_bf16,
    quantize_act_q8_0, quantize_act_q8_K,
    LOWBIT_ROW_LOOPS(avx2),
};

}  // namespace lowbit::cpu::avx2

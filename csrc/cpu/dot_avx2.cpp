// dot_avx2.cpp: the AVX2 + FMA + F16C kernel set (maddubs/madd integer dots, 256-bit).
// Contraction stays off so the k-quant float expressions round exactly as the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx2
#define LOWBIT_VNNI 0
#define LOWBIT_FN(name) name
#include "cpu/dot_x86_256.h"

namespace lowbit::cpu::avx2 {

// i-quant / ternary / FP4 dots without an AVX2 kernel yet take the scalar spec.
using scalar::vec_dot_iq2_xxs, scalar::vec_dot_iq2_xs, scalar::vec_dot_iq2_s, scalar::vec_dot_iq3_xxs,
    scalar::vec_dot_iq3_s, scalar::vec_dot_iq1_s, scalar::vec_dot_iq1_m, scalar::vec_dot_tq1_0,
    scalar::vec_dot_tq2_0, scalar::vec_dot_mxfp4, scalar::vec_dot_nvfp4;

extern const KernelSet kKernels = LOWBIT_DOT_ONLY_SET("avx2");

}  // namespace lowbit::cpu::avx2

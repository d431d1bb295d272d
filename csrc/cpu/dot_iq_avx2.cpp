// dot_iq_avx2.cpp: the AVX2 (maddubs + madd) build of the i-quant / ternary / FP4 dot kernels
// (dot_iq_x86_256.h). Contraction off: the float steps round as in the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx2
#define LOWBIT_VNNI 0
#include "cpu/dot_iq_x86_256.h"

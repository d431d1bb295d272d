// dot_iq_avx512.cpp: the AVX-512 VNNI (vpdpbusd) build of the i-quant / ternary / FP4 dot kernels
// (dot_iq_x86_256.h). Contraction off: the float steps round as in the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx512
#define LOWBIT_VNNI 1
#include "cpu/dot_iq_x86_256.h"

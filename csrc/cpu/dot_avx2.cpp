// dot_avx2.cpp: the AVX2 + FMA + F16C kernel set (maddubs/madd integer dots, 256-bit).
// Contraction stays off so the k-quant float expressions round exactly as the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx2
#define LOWBIT_VNNI 0
#define LOWBIT_FN(name) name
#include "cpu/dot_x86_256.h"

namespace lowbit::cpu::avx2 {


extern const KernelSet kKernels = LOWBIT_DOT_ONLY_SET("avx2");

}  // namespace lowbit::cpu::avx2

// dot_avx2.cpp: the AVX2 + FMA + F16C kernel set (maddubs/madd integer dots, 256-bit).
// Contraction stays off so the k-quant float expressions round exactly as the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx2
#define LOWBIT_VNNI 0
#define LOWBIT_FN(name) name
#include "cpu/dot_x86_256.h"
#include "cpu/strip_avx2.h"

namespace lowbit::cpu::avx2 {

// Built on the first call (dispatch.cpp makes it only where the CPU has AVX2): code of this file
// may use AVX2 anywhere, a namespace-scope initializer included, and those run at load on any CPU.
const KernelSet& kernel_set() {
    static const KernelSet k = [] {
        KernelSet set = LOWBIT_DOT_ONLY_SET("avx2");
        legacy_rows_avx2(set);   // dot_x86_256.h: one weight block unpacked for four activation rows
        kquant_rows_avx2(set);
        add_strips_avx2(set);   // strip_avx2.h: the strip GEMM of prefill
        return set;
    }();
    return k;
}

}  // namespace lowbit::cpu::avx2

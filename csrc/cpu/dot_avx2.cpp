// dot_avx2.cpp: the AVX2 + FMA + F16C kernel set (maddubs/madd integer dots, 256-bit).
// Contraction stays off so the k-quant float expressions round exactly as the scalar spec.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx2
#define LOWBIT_VNNI 0
#define LOWBIT_FN(name) name
#include "cpu/dot_x86_256.h"

namespace lowbit::cpu::avx2 {

namespace {
KernelSet make_kernels() {
    KernelSet k{"avx2", quantize_act_q8_0, quantize_act_q8_K};
    k[GGMLType::Q4_0] = dot_only<vec_dot_q4_0>();
    k[GGMLType::Q4_1] = dot_only<vec_dot_q4_1>();
    k[GGMLType::Q5_0] = dot_only<vec_dot_q5_0>();
    k[GGMLType::Q5_1] = dot_only<vec_dot_q5_1>();
    k[GGMLType::Q8_0] = dot_only<vec_dot_q8_0>();
    k[GGMLType::IQ4_NL] = dot_only<vec_dot_iq4_nl>();
    k[GGMLType::Q2_K] = dot_only<vec_dot_q2_K>();
    k[GGMLType::Q3_K] = dot_only<vec_dot_q3_K>();
    k[GGMLType::Q4_K] = dot_only<vec_dot_q4_K>();
    k[GGMLType::Q5_K] = dot_only<vec_dot_q5_K>();
    k[GGMLType::Q6_K] = dot_only<vec_dot_q6_K>();
    k[GGMLType::IQ4_XS] = dot_only<vec_dot_iq4_xs>();
    k[GGMLType::F32] = dot_only<vec_dot_f32>();
    k[GGMLType::F16] = dot_only<vec_dot_f16>();
    k[GGMLType::BF16] = dot_only<vec_dot_bf16>();
    return k;
}
}  // namespace

extern const KernelSet kKernels = make_kernels();

}  // namespace lowbit::cpu::avx2

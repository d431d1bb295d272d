// strip_iq.h: the AVX-512 strip GEMM (kernels.h, StripLayout) for the i-quant, ternary and FP4
// types (and the entry point of the packed-source strips below). Their weights are decoded, once per strip and matmul call, into the u bytes
// the legacy / k-quant strip GEMM of dot_avx512.cpp consumes (weight = dw * (u - bias), no min),
// so prefill runs the same int8 GEMM as Q4_K; only the decoders are per type (strip_iq.cpp).
#pragma once
#include <cstddef>
#include <cstdint>

#include "cpu/kernels.h"

namespace lowbit::cpu {

// A run decoder: run `run` of one weight row (256 elements: one super-block, or 8 MXFP4 blocks /
// 16 NVFP4 sub-blocks, of which only `count` blocks of the strip's block size exist at a row's
// tail) into u[0 .. count * block) in natural element order and dw[0 .. count) per strip block.
// Reads only those blocks' bytes.
using StripRunFn = void (*)(const uint8_t* row, int run, int count, uint8_t* u, float* dw);

namespace avx512 {
// From dot_avx512.cpp: a strip of nrows rows decoded run by run (block 16 or 32; runs of 256
// elements), and its strip GEMMs (no min; with a min for block 16).
void strip_decode_from_runs(int n, const void* w, size_t row_bytes, int nrows, void* strip, int block, StripRunFn run);
void strip_gemm_b32(int n, const void* strip, const void* act_group, int nact, float* out);
void strip_gemm_b16(int n, const void* strip, const void* act_group, int nact, float* out);
void strip_gemm_b16_min(int n, const void* strip, const void* act_group, int nact, float* out);   // with mins (Q2_K)
// strip_iq.cpp: sets the strip entry of every type above in the AVX-512 set.
void add_iq_strips(KernelSet& k);
// packed_src_avx512.cpp: the strip entries (decoder, strip GEMM, packed GEMMs) of IQ4_NL, IQ4_XS,
// Q2_K and Q3_K.
void add_packed_src_strips(KernelSet& k);
}  // namespace avx512

}  // namespace lowbit::cpu

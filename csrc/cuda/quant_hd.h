// quant_hd.h: block decoding and block dot products of every weight format, as inline functions
// compiled both by nvcc for the device (kernels in csrc/cuda/) and by the host C++ compiler
// (bindings/bind_cuda_host.cpp checks them against the scalar spec in every CI job, GPU or not).
//
// Unit of work: a chunk of 32 consecutive weights of one block (one activation block). A block of
// kElems weights has kElems / 32 chunks; the float formats count 32 values as one "block".
//   decode(blk, c, y, t)    y[0..31] = weights 32c .. 32c+31 of the block: bit for bit the scalar
//                           dequantizers of quant/reference.h (same float operations in the same
//                           order; nvcc builds with -fmad=false so no product is fused).
//   dot(blk, c, a, t)       that chunk . one block_q8a of activations (formats with kFloatAct false):
//                           the integer sums (with the integer sub-block scales and the min terms)
//                           are exactly the scalar spec's (cpu/dot_scalar*.cpp); the float
//                           combination is the spec's per-block formula applied per chunk, so a
//                           row sum agrees with the spec within tier 1 (bit for bit for the 32-blocks).
//   dotf(blk, c, x)         F32 / F16 / BF16 weights: the chunk . 32 float activations.
//
// Codebooks (quant/iq_tables.h and the 16-entry grids of blocks.h) are reached through GridTables:
// on the host it points at the tables themselves, on the device at copies the CUDA context uploads
// once from those same arrays (cuda/context.cu), so there is one definition of every table.
#pragma once
#include <cstdint>

#include "quant/blocks.h"
#include "quant/scale_codes.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define LOWBIT_HD __host__ __device__ __forceinline__
#else
#define LOWBIT_HD inline
#endif
// Unrolled on the device so that the activation block stays in registers (constant indices).
#if defined(__CUDA_ARCH__)
#define LOWBIT_UNROLL _Pragma("unroll")
#else
#define LOWBIT_UNROLL
#endif
#if !defined(__CUDA_ARCH__)
#include "common.h"
#endif

namespace lowbit::cuda {

// Activations of the integer dots, q8_1-style (llama.cpp's mmvq): 32 int8 values, their float
// scale and their exact integer sum (the min terms of Q4_1, Q5_1, Q2_K, Q4_K, Q5_K, IQ1_S use it).
// d is a float, not a half: a q8_0 row (fp16 d) and a q8_K row (float d per 256) both convert into
// it without loss, which is what lets the host test compare with the CPU spec exactly.
struct block_q8a {
    float d;
    int32_t sum;
    int8_t qs[32];
};
static_assert(sizeof(block_q8a) == 40, "block_q8a size");

// Pointers to the codebooks: host tables (host_grid_tables) or their device copies.
struct GridTables {
    const uint64_t* iq2xxs;   // kIq2xxsGrid[256]
    const uint64_t* iq2xs;    // kIq2xsGrid[512]
    const uint64_t* iq2s;     // kIq2sGrid[1024]
    const uint32_t* iq3xxs;   // kIq3xxsGrid[256]
    const uint32_t* iq3s;     // kIq3sGrid[512]
    const uint64_t* iq1s;     // kIq1sGrid[2048]
    const uint8_t* ksigns;    // kSignsIq2xs[128]
    const int8_t* iq4nl;      // kvalues_iq4nl[16]
    const int8_t* fp4;        // kValuesMxfp4[16]
};

// ---- scalar helpers (byte reads: blocks of 17, 22, 50 ... bytes are not word aligned) ----------

LOWBIT_HD uint32_t ld16(const uint8_t* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8); }
LOWBIT_HD uint32_t ld32(const uint8_t* p) { return ld16(p) | (ld16(p + 2) << 16); }

LOWBIT_HD float f32_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    return fp32_from_bits(u);
#endif
}

LOWBIT_HD float h2f(uint32_t h) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
#else
    return fp16_to_fp32(static_cast<uint16_t>(h));
#endif
}

LOWBIT_HD float bf2f(uint32_t h) { return f32_bits(h << 16); }

using codes::e8m0_half;    // the scale codes and TQ1_0's digit rule: quant/scale_codes.h
using codes::tq1_digit;
using codes::ue4m3_half;

LOWBIT_HD uint32_t grid_byte(uint64_t g, int j) { return uint32_t(g >> (8 * j)) & 0xFF; }
LOWBIT_HD int sign_bit(uint32_t signs, int j) { return (signs >> j) & 1; }
LOWBIT_HD float fsign(uint32_t signs, int j) { return sign_bit(signs, j) ? -1.0f : 1.0f; }

LOWBIT_HD int sum_i8(const int8_t* q, int len) {
    int s = 0;
    for (int j = 0; j < len; ++j) s += q[j];
    return s;
}

// Q4_K / Q5_K 6-bit scale and min of sub-block j.
LOWBIT_HD void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q3_K signed scale s (0..15) from the 12 packed bytes: low nibble of byte s%8 (high nibble for
// s >= 8), high 2 bits from byte 8 + s%4 at bit pair s/4; bias 32.
LOWBIT_HD int q3k_scale(const uint8_t* p, int s) {
    const int low = (p[s % 8] >> (4 * (s / 8))) & 0xF;
    const int high = (p[8 + s % 4] >> (2 * (s / 4))) & 3;
    return (low | (high << 4)) - 32;
}

}  // namespace lowbit::cuda

#include "cuda/quant_hd_formats.h"

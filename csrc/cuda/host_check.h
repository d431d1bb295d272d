// host_check.h: the CUDA block arithmetic (cuda/quant_hd.h) checked on the host against the
// scalar spec, for every device format, on fresh random valid blocks (host_check.cpp). Compiled
// by the host compiler in every build, so every CI run checks it, GPU or not.
//   decode_mismatches   values whose f32 bits differ from quant/reference.h's dequantizer (want 0)
//   dot_int_mismatches  of 4 rows with unit scales and activations in [-4, 4] (every partial sum an
//                       exact float), rows whose chunk dots differ from cpu::scalar's dot (want 0)
//   dot_rel_err         |row dot - cpu::scalar dot| / sum |w_i a_i| with random scales (tier 1)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cuda/quant_hd.h"

namespace lowbit::cuda {

struct FormatCheck {
    std::string name;
    int64_t values = 0;
    int64_t decode_mismatches = 0;
    int64_t dot_int_mismatches = 0;
    double dot_rel_err = 0;
};

// Every device format, `blocks` blocks per row (1..4096), random stream from `seed`.
std::vector<FormatCheck> host_check(uint64_t seed, int blocks);

// `nblocks` random valid blocks of `type` (a device format; float formats: 32 values per block).
std::vector<uint8_t> random_blocks(GGMLType type, int64_t nblocks, uint64_t seed);

// The activation quantization of the device (quantize_act.cu) on the host: d = amax / 127,
// q = nearest-even(x * (1 / d)), exact sum.
void quantize_act_host(const float* x, block_q8a* out, int64_t cols);

// What the device mat-vec computes, with the same Fmt<T> functions on the host (chunk dots summed
// in order): y[r] for r < rows; mag[r] = sum_i |w_ri x_i| (decoded weights), the error scale.
void emulate_matvec(GGMLType type, const uint8_t* w, int64_t rows, int64_t cols, const float* x, float* y,
                    double* mag);

// The device KV cache's row arithmetic (cuda/kv_hd.h) against the CPU cache's on `rows` random
// head rows of 128 values (magnitudes 1e-6 .. 1e3, one all-zero block, one of exact .5 ties): bytes of KvQ8's blocks
// that differ from the CPU's q8_0 rows, values KvQ8::at decodes differently from the CPU's
// dequantizer, and f16 values (f2h_bits, KvF16::at) that differ from cpu::f32_to_f16_row's.
struct KvCheck {
    int64_t values = 0;
    int64_t q8_quantize_mismatches = 0;
    int64_t q8_decode_mismatches = 0;
    int64_t f16_mismatches = 0;
};
KvCheck kv_host_check(uint64_t seed, int64_t rows);

}  // namespace lowbit::cuda

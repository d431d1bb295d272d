// matmul.h: threaded quantized mat-vec (decode) and tiled mat-mat (prefill) on the CPU.
//
// Weights: `rows` rows of `cols` elements in GGML block layout (row r starts at byte
// r * row_bytes). Activations are float and quantized here, once per call, to the weight type's
// activation format (kernels.h). Both use the kernel set chosen by dispatch at call time.
#pragma once
#include <cstdint>

#include "cpu/threadpool.h"
#include "quant/blocks.h"

namespace lowbit::cpu {

// Throws ValueError unless `type` has a CPU kernel and cols is a positive multiple of its block.
void check_matmul_shape(GGMLType type, int64_t rows, int64_t cols);
// Bytes of one weight row of `cols` elements of `type` (shape must be valid).
int64_t weight_row_bytes(GGMLType type, int64_t cols);

// y[r] = dot(weight row r, x) for r < rows.   x: (cols,) f32   y: (rows,) f32
void matvec(const void* weights, GGMLType type, int64_t rows, int64_t cols, const float* x, float* y,
            ThreadPool& pool);

// y[i][r] = dot(weight row r, x row i).   x: (n, cols) f32 row-major   y: (n, rows) f32 row-major
// Every y element equals what matvec gives for that x row, bit for bit.
void matmul(const void* weights, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n,
            float* y, ThreadPool& pool);

// Measured read bandwidth in GB/s: every pool thread sums its share of a `bytes` buffer,
// best of `iters` passes (after one warm-up pass that also faults the pages in).
double read_bandwidth_gbs(ThreadPool& pool, int64_t bytes, int iters);

}  // namespace lowbit::cpu

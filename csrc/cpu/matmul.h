// matmul.h: threaded quantized mat-vec (decode) and tiled mat-mat (prefill) on the CPU.
//
// Weights: `rows` rows of `cols` elements in GGML block layout (row r starts at byte
// r * row_bytes). Activations are float and quantized here, once per call, to the weight type's
// activation format (kernels.h). Both use the kernel set chosen by dispatch at call time.
//
// Activation precision (quantized weight types; float weight types always dot exact f32):
//   Q8    x is quantized once to q8_0 / q8_K, as llama.cpp does: each element off by up to half a
//         step of its block's scale (amax / 127), relative error ~2^-8.
//   Q8X2  x = hi + lo / 256, both in the same q8 format: hi = q8(x), lo = q8(256 (x - dequant(hi)))
//         (the residual's own block scale, ~1/250 of hi's, is what sets the error), and
//         y = dot(w, hi) + dot(w, lo) / 256. The two activation
//         rows go through the multi-row kernel together, so each weight block is read and decoded
//         once for both: ~16-bit activations with the same integer kernels, about 2x the integer
//         work (decode is memory-bound, so it mostly costs prefill).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/threadpool.h"
#include "quant/blocks.h"

namespace lowbit::cpu {

// Q8: activations rounded to 8 bits per block (llama.cpp's arithmetic). Q8X2: a q8 row plus a q8
// row of what it missed (two-pass, ~16-bit). Auto: Q8X2, except Q8 for a matmul of >= 16 rows of
// a type the kernel set has no strip GEMM for (kernels.h): decode is memory-bound, so the second
// pass is nearly free, and the strip GEMMs leave prefill fast enough to afford it (~25% of pp on
// Zen; on an Intel Xeon with AVX-512 q8 prefilled 1.6x faster, bench/RESULTS.md);
// the multi-row dots would pay 2x. The scalar and AVX2 sets (KernelSet::auto_two_pass false) are
// Q8 everywhere: without VNNI the second pass is not nearly free at one token either. On AVX2
// the types with a packed layout run one token, small batches and prefill through the same strip
// arithmetic (packed weights), so a token's logits do not depend on how its prompt was split.
enum class ActPrecision { Q8, Q8X2, Auto };

// "q8" -> Q8, "high" -> Q8X2, "auto" -> Auto; ValueError names the valid ones otherwise.
ActPrecision parse_act_precision(const std::string& name);
const char* act_precision_name(ActPrecision p);   // "q8" / "high" / "auto"

// Throws ValueError unless `type` has a CPU kernel and cols is a positive multiple of its block.
void check_matmul_shape(GGMLType type, int64_t rows, int64_t cols);
// Bytes of one weight row of `cols` elements of `type` (shape must be valid).
int64_t weight_row_bytes(GGMLType type, int64_t cols);

// y[r] = dot(weight row r, x) for r < rows.   x: (cols,) f32   y: (rows,) f32
void matvec(const void* weights, GGMLType type, int64_t rows, int64_t cols, const float* x, float* y,
            ThreadPool& pool, ActPrecision precision = ActPrecision::Q8);

// y[i][r] = dot(weight row r, x row i).   x: (n, cols) f32 row-major   y: (n, rows) f32 row-major
// Every y element equals what matvec gives for that x row (same precision), bit for bit, except
// where the strip GEMM runs (AVX-512: legacy types, Q4_K, Q5_K, Q6_K, the i-quants; AVX2: Q4_0 Q4_1
// Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K; n >= 16): there it
// is within tier 1 of it, and still the same bits for that x row in any call of >= 16 rows.
//
// small_batches: the strip GEMM also takes calls of fewer rows, from kStripMinActRows activation
// rows (x rows, times 2 at Q8X2: 8 x rows at high precision, 16 at q8), where it beats the
// multi-row dots (its strip decode is paid once per call, theirs once per tile of 4-8 rows).
// One matmul, Q4_1 1536x576, 2 threads: 8 rows 137 vs 182 us, 12 rows 164 vs 272 us, 4 rows
// 112 vs 93 us; a whole decode step of n sessions (SmolLM2, gemma3; the output head and the
// per-call overheads included) breaks even at 8 and gains ~20% at 12, loses ~25% at 5-6.
// The model's forward passes (batched decoding of several sessions) set it; the bit-for-bit
// contract above then holds below that size.
//
// packed: the same matrix as packed strips (kernels.h, PackedLayout; weights.cpp packs at load),
// taken instead of `weights` for every n (matmul_packed below).
constexpr int64_t kStripMinActRows = 16;
void matmul(const void* weights, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n,
            float* y, ThreadPool& pool, ActPrecision precision = ActPrecision::Q8, bool small_batches = false,
            const void* packed = nullptr);

// Activation rows made on demand: make(ctx, i, row) writes x row i (cols floats) into `row`, from
// any thread of the pool, each i once. The matmul overload below calls it where the rows are
// needed: on the fused strip quantizer's path (kernels.h, QuantizeStripFn) into a thread's
// scratch just before that row is quantized into its strip slots, so a prefill's rows are never
// stored as floats (the FFN's gated hidden rows: (512, 4864) floats, ~10 MB written and read back
// per layer for the 0.5B shape's prefill); on every other path all rows into scratch first. Either
// way each output is what matmul gives for the rows it made, bit for bit.
struct RowMaker {
    void (*make)(const void* ctx, int64_t i, float* row);
    const void* ctx;
};
void matmul(const void* weights, GGMLType type, int64_t rows, int64_t cols, const RowMaker& x, int64_t n, float* y,
            ThreadPool& pool, ActPrecision precision = ActPrecision::Q8, bool small_batches = false,
            const void* packed = nullptr);

// y[i][r] = dot(weight row r, act[i]) for n activation rows quantized beforehand to the weight
// type's activation format (act_format(type), not F32: q8_0 / q8_K rows as quantize_act_row writes
// them, i.e. 8-bit activations), each anywhere in memory: a gather, such as the tokens routed to
// one expert, whose rows are quantized once and shared by the matrices that take them. The strip
// GEMM from strip_min_rows rows where the kernel set has one for `type`, else the multi-row dots:
// matmul's kernels and loops, so each output is what matmul gives that x row at Q8 in that path.
//
// packed: the same matrix packed by pack_rows (kernels.h; a model's experts), taken instead of
// `weights`: the packed GEMM read in place for every n (one row: the one-token gemv; k-quants: up to
// 16 rows, then strips decoded from the packed ones, the same bits), the same bits per row whatever
// n; under a set without the packed GEMM, strips unpacked and the set's dots
// (exactly the result on the unpacked rows). In place beats turning each strip into a decoded
// strip first (matmul_packed's choice above kPackedInPlaceRows) up to an expert item's 64 rows:
// Q4_0 768 x 2048 from memory, 1 thread, CPU time, in place vs unpacked rows (moe.cpp's strip
// thresholds): 4 rows 42 vs 63 us, 16: 89 vs 126, 32: 157 vs 194, 64: 303 vs 334; decoded strips
// from 40 rows on: 265 vs 231 at 40, 380 vs 340 at 64.
void matmul_quantized(const void* weights, GGMLType type, int64_t rows, int64_t cols, const void* const* act,
                      int64_t n, float* y, ThreadPool& pool, int64_t strip_min_rows = kStripMinActRows,
                      const void* packed = nullptr);

// y[i][r] = dot(weight row r, x row i) for weights packed by pack_rows (kernels.h). On AVX-512 the
// packed strip GEMM runs for every n, one token included (Auto: two-pass activations): within tier
// 1 of the scalar spec, the same bits as the strip GEMM on the unpacked rows, and the same bits
// for an x row whatever n and its place in x (so batched decode equals unbatched bit for bit).
// Other kernel sets unpack strip by strip and give exactly what matvec / matmul give unpacked.
void matmul_packed(const void* packed, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n,
                   float* y, ThreadPool& pool, ActPrecision precision = ActPrecision::Q8);

// The activation bytes the strip GEMM of `type` takes for x (n, cols) at `precision` (Auto: Q8X2):
// StripActLayout groups, (hi, lo) slots per x row at Q8X2, quantized with the current kernel set
// (its fused strip quantizer where it has one, kernels.h); block and bias are the AVX-512 set's
// strip kernels' for `type` (ValueError where it has none). n times the rows per token must fill
// whole groups (a multiple of kStripAct), so that every byte is defined. For tests: every kernel
// set gives the same bytes.
std::vector<uint8_t> strip_activations(GGMLType type, int64_t cols, const float* x, int64_t n, ActPrecision precision,
                                       ThreadPool& pool);

// Measured read bandwidth in GB/s: every pool thread sums its share of a `bytes` buffer,
// best of `iters` passes (after one warm-up pass that also faults the pages in).
double read_bandwidth_gbs(ThreadPool& pool, int64_t bytes, int iters);

}  // namespace lowbit::cpu

// ops.cuh: host-callable launchers of the CUDA kernels (one .cu per role, as ggml's CUDA backend).
// Pointers are device pointers; every launcher checks the launch and throws CudaError / ValueError,
// and runs on `stream` without synchronizing. Weights: `rows` rows of `cols` elements in GGML block
// layout, row r at byte r * row_bytes, the allocation padded by >= 16 bytes (DeviceBuffer does).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_common.cuh"
#include "cuda/kv_hd.h"

namespace lowbit::cuda {

// Whether `type` has a device path (LOWBIT_CUDA_FORMATS), and its geometry for device rows.
bool has_format(GGMLType type);
int64_t device_row_bytes(GGMLType type, int64_t cols);   // ValueError unless cols % 32 == 0 etc.

// quantize_act.cu: x (n, cols) f32 -> n rows of cols/32 block_q8a (cols % 32 == 0).
void quantize_act(const float* x, block_q8a* out, int64_t n, int64_t cols, cudaStream_t stream);

// dequantize.cu: weights -> (rows, cols) f32 or f16.
void dequantize(const void* w, GGMLType type, int64_t rows, int64_t cols, float* out, cudaStream_t stream);
void dequantize(const void* w, GGMLType type, int64_t rows, int64_t cols, __half* out, cudaStream_t stream);

// mmvq.cu: y[r] = dot(weight row r, x) for decode. Quantized types take q8 (x quantized on the
// device into `act_scratch`, cols/32 blocks); float types dot x directly (act_scratch unused).
void matvec(const void* w, GGMLType type, int64_t rows, int64_t cols, const float* x, block_q8a* act_scratch,
            float* y, cudaStream_t stream);

// mmm.cu: y (n, rows) = x (n, cols) . W^T for prefill: weights dequantized to f16 and multiplied
// by cuBLAS (LOWBIT_WITH_CUBLAS) or a tiled kernel with f32 accumulation. Scratch is allocated
// per call (prefill-sized calls amortize it).
void matmul(const void* w, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n, float* y,
            cudaStream_t stream);
bool matmul_uses_cublas();

// norm.cu: y = x / sqrt(mean(x^2) + eps) * w per row (w may be null), rows x n; sums in double.
void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, cudaStream_t stream);
// In place, per row of n: x = softmax(scale * x) (max subtracted, sums in double).
void softmax(float* x, int64_t rows, int64_t n, float scale, cudaStream_t stream);

// rope.cu: x (n_tok, n_heads, head_dim) in place; token t at position pos[t]; angle pos * inv_freq[i]
// in double (inv_freq: n_rot/2 values, YaRN / LongRoPE already folded in as the CPU's
// make_inv_freq does), cos / sin times mscale. neox: pairs (i, i + n_rot/2), else (2i, 2i+1).
void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot, bool neox, const int32_t* pos,
          const double* inv_freq, float mscale, cudaStream_t stream);

// act.cu: out = act(gate) * up (n values); act SiLU or GELU (tanh approximation).
void silu_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream);
void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream);
// The FFN's gating over rows: out (rows, width) = act(gate row) * (up row), gate and up rows at
// r * stride (fused [gate | up] rows: up = gate + width, stride 2 width); act GELU or SiLU.
void gated_rows(const float* gate, const float* up, float* out, int64_t rows, int64_t width, int64_t stride, bool gelu,
                cudaStream_t stream);

// attention.cu: KV-cache write, f32 rows (n_tok, width) -> cache rows pos[0] .. pos[n_tok-1] (pos:
// device array) in `format` (cuda/kv_hd.h: f16 round to nearest even, or q8_0 blocks as the CPU
// cache writes them; width % 32 == 0 for q8_0). A position's row is width values.
void kv_write(KvFormat format, const float* src, void* cache, int64_t n_tok, int64_t width, const int32_t* pos,
              cudaStream_t stream);
// Moves `count` positions of one layer's K or V rows (n_kv_head heads of d values in `format`)
// from position src0 on to dst0 on (dst0 < src0: a context shift), in launches that never read a
// row another has written. cos_sin (device, n_rot / 2 (cos, sin) pairs, as cpu::rope_cos_sin
// makes them): the rows are decoded, rotated as cpu::rope does and re-encoded (keys); nullptr:
// moved as bytes (values, keys of layers without RoPE).
void kv_move(KvFormat format, void* cache, int64_t n_kv_head, int64_t d, int64_t src0, int64_t dst0, int64_t count,
             const float* cos_sin, int64_t n_rot, bool neox, cudaStream_t stream);
// Causal attention of n_tok query tokens q (n_tok, n_head, d) at positions pos[t] (device array,
// read by the kernels: a captured decode step replays at new positions) over a cache in `format`
// whose row j (n_head_kv heads of d values) holds position j, rows up to each token's own already
// written; token p sees positions max(0, p - window + 1) .. p (window 0: all). max_pos (host)
// bounds every pos[t] and sizes the grid (attention_splits): the piece's last position, or
// n_ctx - 1 for a captured step (splits past a token's keys cost one early-out block each). Head
// h reads kv head h / (n_head / n_head_kv). out (n_tok, n_head, d) = softmax(scale * q.K^T
// [softcap c: c tanh(./c)]) V, split over the keys (partials combined in a second pass). scratch:
// attention_scratch_floats(n_head, n_tok, n_kv_max, d) floats, n_kv_max >= min(max_pos + 1,
// window or max_pos + 1) (cuda/device_plan.h).
void attention(KvFormat format, const float* q, const void* k, const void* v, float* out, int64_t n_head,
               int64_t n_head_kv, int64_t d, int64_t n_tok, const int32_t* pos, int64_t max_pos, int64_t window,
               float scale, float softcap, float* scratch, cudaStream_t stream);
// The key splits (blocks per query head and token) attention launches for max_pos and window.
int64_t attention_splits(int64_t max_pos, int64_t window);

// elementwise.cu: the residual stream's small steps.
// x (rows, width) += b per row (a bias).
void add_rows(float* x, const float* b, int64_t rows, int64_t width, cudaStream_t stream);
// x += a * p (n values): the residual add (granite scales the branch).
void axpy(float* x, float a, const float* p, int64_t n, cudaStream_t stream);
// Logits: x = x / scale, then c tanh(x / c) when softcap c > 0 (n values).
void scale_softcap(float* x, int64_t n, float scale, float softcap, cudaStream_t stream);

}  // namespace lowbit::cuda

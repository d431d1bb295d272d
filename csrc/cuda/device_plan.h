// device_plan.h: what a model takes on the CUDA device, planned on the host before anything is
// allocated (cuda/forward.cu allocates exactly this), and the check against free device memory.
// Host code only: the CPU tests check it in every build, GPU or not.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cuda/kv_hd.h"
#include "model/forward.h"

namespace lowbit::cuda {

constexpr int64_t kAttnSplit = 256;      // cache positions per attention block (attention.cu)
constexpr int64_t kLogitRows = 32;       // logits computed (and downloaded) this many rows at a time
constexpr int64_t kDeviceAlign = 256;    // every device tensor starts at a multiple of this
constexpr int64_t kRowPad = 16;          // bytes past a matrix's last row (16-byte loads may overrun)
constexpr int64_t kQ8aBytes = 40;        // sizeof(block_q8a), 32 activations (cuda/quant_hd.h)

// Floats of attention scratch for n_tok query tokens that see at most n_kv_max keys each.
inline int64_t attention_scratch_floats(int64_t n_head, int64_t n_tok, int64_t n_kv_max, int64_t d) {
    return n_tok * n_head * ((n_kv_max + kAttnSplit - 1) / kAttnSplit) * (d + 2);
}

// One tensor the device holds: a matrix (GGML rows, as the file stores them) or an f32 vector,
// at `offset` bytes into the weight arena.
struct DeviceTensor {
    std::string name;
    const model::Matrix* matrix = nullptr;
    const model::Vec* vec = nullptr;
    int64_t bytes = 0;     // matrix: rows x row_bytes + kRowPad; vector: 4 x size
    int64_t offset = 0;    // multiple of kDeviceAlign
};

// Every tensor of the device forward pass, in upload order: per layer from first_layer on (the
// layers below run on the CPU: layer offload) its norms, biases and matrices (fused [q|k|v] and
// [gate|up] where the CPU has them), then output_norm and the output head (token_embd when tied).
// token_embd itself stays on the host: rows are looked up there. ModelError for what the device
// pass does not run (mixture of experts, attention sinks, a matrix type without a CUDA kernel,
// head_dim > 512), naming it; ValueError for first_layer outside [0, n_layers).
std::vector<DeviceTensor> device_tensors(const model::Model& m, int64_t first_layer = 0);

// The resident scratch buffer's parts, in order (each a multiple of kDeviceAlign bytes).
enum ScratchPart { kX, kXn, kQkv, kQ, kK, kV, kAttn, kProj, kGate, kUp, kAttnPartials, kQ8, kLogits, kPos,
                   kInvFreqGlobal, kInvFreqSwa, kScratchParts };

struct DevicePlan {
    int64_t n_ctx = 0, n_batch = 0;
    int64_t first_layer = 0;   // layers [first_layer, n_layers) and the head are on the device
    KvFormat kv_format = KvFormat::F16;
    int64_t weights = 0;     // the arena: device_tensors' last offset + bytes
    int64_t kv = 0;          // K and V: 2 x device layers x n_ctx x n_head_kv x kv_row_bytes(format, head_dim)
    int64_t scratch = 0;     // resident: activations of n_batch rows (x, xn, qkv, q, k, v, attn,
                             // proj, gate (2 n_ff), up), attention partials, q8 activations of a
                             // decode row, kLogitRows logits rows, positions, RoPE tables
    int64_t scratch_parts[kScratchParts] = {};   // their bytes, summing to scratch
    int64_t transient = 0;   // per prefill matmul (mmm.cu): its matrix in f16 and x in f16, the largest
    std::map<std::string, int64_t> weights_by_type;   // the arena's matrices by GGML type name (+ "f32" vectors)
    int64_t total() const { return weights + kv + scratch + transient; }
};

// ValueError for a q8_0 cache when head_dim % 32 != 0.
DevicePlan plan_device(const model::Model& m, int64_t n_ctx, int64_t n_batch, int64_t first_layer = 0,
                       KvFormat kv = KvFormat::F16);

// Bytes kept free beyond the plan (the CUDA context is already outside `free`; this covers
// cuBLAS's workspace and allocator rounding): 64 MiB + 1 % of the plan.
int64_t device_reserve(const DevicePlan& p);

// The largest n_ctx (<= n_ctx_limit) whose plan fits in free_bytes with the reserve, 0 if none.
int64_t largest_fitting_n_ctx(const model::Model& m, int64_t n_batch, int64_t free_bytes, int64_t n_ctx_limit,
                              int64_t first_layer = 0, KvFormat kv = KvFormat::F16);

// The most layers (the last ones, as n_gpu_layers counts them) whose plan at n_ctx fits in
// free_bytes with the reserve, 0 if not even one does.
int64_t largest_fitting_gpu_layers(const model::Model& m, int64_t n_ctx, int64_t n_batch, int64_t free_bytes,
                                   KvFormat kv = KvFormat::F16);

// InsufficientMemory when plan + reserve exceeds free_bytes: names the weights, KV cache, scratch
// and free figures, the largest n_ctx that would fit with these layers and the most layers
// (n_gpu_layers) that would fit at this n_ctx (or that nothing fits).
void check_device_fit(const model::Model& m, const DevicePlan& p, int64_t free_bytes);

}  // namespace lowbit::cuda

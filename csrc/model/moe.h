// moe.h: the mixture-of-experts feed-forward block (config.is_moe()).
//
// For each token t of the batch (xn: the normed input, E = n_embd, X = n_expert, k = n_expert_used,
// F = n_ff_exp):
//   logits = xn Wrouter^T (+ router bias)                          (X,)
//   Softmax:      p = softmax(logits); top-k of p; w = p[top]     [/ sum(w) when expert_weights_norm]
//   SoftmaxTopK:  top-k of logits; w = softmax(logits[top])       (gpt-oss)
//   out = sum over the k selected e of w_e * down_e(act(gate_e(xn)) * up_e(xn))   (+ expert biases)
//   qwen2moe, then: out += sigmoid(xn . gate_inp_shexp) * down_sh(silu(gate_sh(xn)) * up_sh(xn))
//   (the shared expert: a dense FFN over every token, on the whole pool)
// Experts are matrices of the stacked GGUF tensors (weights.h ExpertMatrices). The batch is
// grouped by expert: each selected expert multiplies the rows of its tokens (up to kExpertRows at
// a time) in one matmul, so its bytes are read once per batch (per kExpertRows tokens); in decode
// only the k selected experts are read. The work items (expert, rows) run in parallel, one pool
// thread each, every matmul single-threaded (one barrier per layer instead of three per expert;
// with fewer items than threads, one by one on the whole pool);
// each slot's output lands in its own row, and each token's sum then runs over its experts in
// ascending expert id, so a prefill and the same tokens decoded one at a time add the same terms
// in the same order. Experts of a type with a packed layout (cpu/kernels.h) are packed at load
// (weights.h ExpertMatrices) and every expert matmul then reads the packed strips in place: a
// decode step's one-token gemv, batches of any size through the packed GEMM (so a token's row has
// the same bits whatever the batch). With 8-bit activations (every expert matmul under "auto")
// each token's row is quantized once per layer and the items multiply the quantized rows in place
// (moe.cpp, "8-bit path"), the largest items first.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"
#include "cpu/matmul.h"
#include "cpu/threadpool.h"
#include "model/config.h"
#include "model/observer.h"
#include "model/weights.h"

namespace lowbit::model {

constexpr int64_t kExpertRows = 64;   // token rows of one work item at most

// Scratch for up to n_batch tokens and n_threads threads, allocated once per engine (empty for a
// dense model).
struct MoeScratch {
    MoeScratch() = default;
    MoeScratch(const ModelConfig& c, int64_t n_batch, int n_threads);
    int64_t bytes() const;

    struct Item { int64_t expert, first, count; };   // order[first .. first + count) of one expert
    struct Worker {                    // one per pool thread
        explicit Worker(const ModelConfig& c);
        cpu::ThreadPool pool{1};       // the caller alone: a single-threaded matmul
        AlignedBuffer<float> x;        // (kExpertRows, n_embd)   the item's token rows
        AlignedBuffer<float> gate, up; // (kExpertRows, n_ff_exp)
        AlignedBuffer<float> down;     // (kExpertRows, n_embd)
        // the 8-bit path (moe.cpp run_item_q8; cpu::matmul_quantized keeps the rest):
        AlignedBuffer<uint8_t> hq;     // (kExpertRows) q8 rows of the gated activations, q8_0 or q8_K
    };

    AlignedBuffer<float> logits;       // (n_batch, n_expert)  router logits, then probabilities
    std::vector<int32_t> selected;     // (n_batch, k)  expert ids of each token, ascending
    std::vector<float> weight;         // (n_batch, k)  their weights
    std::vector<int64_t> first;        // (n_expert + 1)  slots of expert e: order[first[e] .. first[e+1])
    std::vector<int64_t> order;        // (n_batch * k)  slot indices t * k + j grouped by expert
    std::vector<int64_t> cursor;       // (n_expert)  next free place of each expert in order
    std::vector<int32_t> ids;          // (n_threads, n_expert)  scratch of the top-k selection, a row per thread
    std::vector<Item> items;           // this batch's work items (capacity reserved)
    AlignedBuffer<float> slot_out;     // (n_batch * k, n_embd)  each slot's expert output, biased
    AlignedBuffer<uint8_t> xq;         // (n_batch) q8 rows of xn: each token quantized once (8-bit path)
    std::vector<std::unique_ptr<Worker>> workers;   // (n_threads,)
    AlignedBuffer<float> sh_gate, sh_up;   // qwen2moe's shared expert: (n_batch, n_ff_shexp)
    AlignedBuffer<float> sh_out;           // (n_batch, n_embd)
};

// out (n, n_embd) = the MoE block of layer il on xn (n, n_embd). observer: nullptr, or it sees the
// router's input ("ffn_gate_inp") and each expert's input rows under the stacked tensors' names
// (all experts of a tensor under one name: llama.cpp's imatrix keeps a row of sums per expert,
// which this interface cannot name).
void moe_feed_forward(const ModelConfig& c, const LayerWeights& l, int64_t il, const float* xn, int64_t n,
                      float* out, MoeScratch& s, cpu::ThreadPool& pool, cpu::ActPrecision prec,
                      MatmulObserver* observer);

// The k (expert, weight) pairs of one token from its router logits (X,), as described above; the
// pairs are returned sorted by expert id. logits is overwritten (probabilities); ids: (X,) scratch.
void route_token(const ModelConfig& c, float* logits, int32_t* ids, int32_t* selected, float* weight);

}  // namespace lowbit::model

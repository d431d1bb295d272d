// forward.h: the model (file + config + weights), the activation state, and one forward pass.
//
// A Model is read-only after load and shared by every session on it (runtime/engine.h); each
// session owns its KVCache and ForwardState. One pass may run rows of several sequences at once
// (SeqSpan): the weight matmuls see all rows, attention and the cache writes go per sequence.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/matmul.h"
#include "cpu/threadpool.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/moe.h"
#include "model/observer.h"
#include "model/weights.h"

namespace lowbit::model {

// A loaded model: the mapping stays alive as long as the weights that point into it.
struct Model {
    std::unique_ptr<GGUFFile> file;
    ModelConfig config;
    ModelWeights weights;
    std::vector<double> inv_freq_global;   // (n_rot/2,) RoPE angle per position, full-attention layers
    std::vector<double> inv_freq_swa;      // (n_rot/2,) the same for sliding-window layers
    int64_t load_n_ctx = 0;                // the n_ctx that picked LongRoPE's factors

    // n_ctx picks LongRoPE's factors (phi3 rope_factors_long/short, as llama.cpp: long when the
    // context exceeds rope.scaling.original_context_length).
    static std::unique_ptr<Model> load(const std::string& path, int64_t n_ctx);
    const std::vector<double>& inv_freq(int64_t il) const {
        return config.layer_is_swa[size_t(il)] ? inv_freq_swa : inv_freq_global;
    }
};

// Activations for up to n_batch tokens, allocated once per engine (no per-token allocation).
struct ForwardState {
    ForwardState(const ModelConfig& c, int64_t n_batch, int64_t n_ctx, int n_threads);
    int64_t bytes() const;

    int64_t n_batch, n_ctx;
    AlignedBuffer<float> x;          // (n_batch, n_embd)   residual stream
    AlignedBuffer<float> xn;         // (n_batch, n_embd)   normed input of a sub-block
    AlignedBuffer<float> qkv;        // (n_batch, q_dim + 2 kv_dim)  fused projection [q | k | v]
    AlignedBuffer<float> q;          // (n_batch, q_dim)    queries, per head
    AlignedBuffer<float> k, v;       // (n_batch, kv_dim)   this batch's keys / values
    AlignedBuffer<float> attn;       // (n_batch, q_dim)    attention output, per head
    AlignedBuffer<float> proj;       // (n_batch, n_embd)   output of attn_output / ffn_down
    AlignedBuffer<float> gate;       // (n_batch, 2 n_ff)   [gate | up] when fused, else (n_batch, n_ff) gate
    AlignedBuffer<float> up;         // (n_batch, n_ff)
    AlignedBuffer<float> rope_global;  // (n_batch, n_rot/2, 2) cos, sin per token
    AlignedBuffer<float> rope_swa;     // (n_batch, n_rot/2, 2)
    AlignedBuffer<float> scores;     // (n_threads, cpu::attn_scratch_floats(head_dim))  attention scratch
    std::vector<int64_t> work_idx;   // scratch for row selections
    MoeScratch moe;                  // the expert FFN's scratch (moe.h); empty for dense models

    std::vector<int64_t> row_pos;    // (n_batch,) position of each batch row in its own sequence
    std::vector<int32_t> row_seq;    // (n_batch,) index of the row's SeqSpan
    AlignedBuffer<float> out_tmp;    // (rows, n_vocab) logits gathered before scattering, grown on demand
    cpu::ActPrecision act_precision = cpu::ActPrecision::Q8;   // of every weight matmul (engine option)
    MatmulObserver* observer = nullptr;   // sees the input of every weight matmul when set (observer.h)
};

// Runs tokens[0..n) (n <= n_batch) at positions pos0.. through the model, writing their keys and
// values into the cache. logits: nullptr, or (n_out, n_vocab) with n_out = all_logits ? n : 1
// (the last token); hidden: nullptr, or (n, n_embd) every token's output-normed hidden state.
// check_cancel runs between layers (it throws Cancelled to stop the pass).
void forward(const Model& m, KVCache& cache, ForwardState& s, cpu::ThreadPool& pool, const int32_t* tokens,
             int64_t n, int64_t pos0, float* logits, bool all_logits, const std::function<void()>& check_cancel,
             float* hidden = nullptr);

// Batch rows [row0, row0 + n) are one sequence's tokens at positions pos0.. of its own cache
// (which must hold every position it attends to, and at most its own n_batch of new rows).
struct SeqSpan {
    KVCache* cache = nullptr;
    int64_t pos0 = 0, row0 = 0, n = 0;
};

// An output wanted from a pass: batch row `row`'s logits (n_vocab,) and / or its hidden state
// after the output norm (n_embd,: what embeddings pool). nullptr: not wanted.
struct RowOutput {
    int64_t row = 0;
    float* logits = nullptr;
    float* hidden = nullptr;
};

// The outputs of a pass over n rows of one sequence: logits as forward() takes them, hidden
// states of every row into hidden ((n, n_embd)); rows with neither are left out.
std::vector<RowOutput> row_outputs(const ModelConfig& c, int64_t n, bool all_logits, float* logits, float* hidden);

// One pass over the rows of several sequences (spans cover rows 0..n_rows without gaps, n_rows
// <= s.n_batch, each span's keys fit s.n_ctx): the weight matmuls run once over all rows, so each
// row gets the bits it would get in any pass of the same row count class (cpu/matmul.h).
// check_cancel() is called before the pass and between layers; it throws to stop.
void forward_batch(const Model& m, const std::vector<SeqSpan>& spans, ForwardState& s, cpu::ThreadPool& pool,
                   const int32_t* tokens, const std::vector<RowOutput>& outputs,
                   const std::function<void()>& check_cancel);

// forward_batch over layers [il0, il1) only (what a pass split between the CPU and a device runs
// on each side). il0 > 0: tokens are not read; s.x holds each row's residual stream after layer
// il0 - 1 (as a pass over [0, il0) leaves it). il1 < n_layers: outputs must be empty and s.x is
// left holding the residual stream after layer il1 - 1. The caches get the keys and values of
// layers [il0, il1) only. forward_batch is forward_layers(..., 0, n_layers, ...).
void forward_layers(const Model& m, const std::vector<SeqSpan>& spans, ForwardState& s, cpu::ThreadPool& pool,
                    const int32_t* tokens, int64_t il0, int64_t il1, const std::vector<RowOutput>& outputs,
                    const std::function<void()>& check_cancel);

// Re-applies RoPE to one token's cached keys for a position change of `delta`.   k: (n_head_kv, head_dim)
void rerotate_keys(const Model& m, int64_t il, float* k, int64_t delta);
// rerotate_keys bound to m: what KVCache::shift takes.
inline KVCache::Rerotate key_rerotation(const Model& m) {
    return [&m](int64_t il, float* k, int64_t delta) { rerotate_keys(m, il, k, delta); };
}

}  // namespace lowbit::model

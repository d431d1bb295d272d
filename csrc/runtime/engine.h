// engine.h: a decoding session over a shared model: KV cache, activations, thread pool, cancel
// flag and memory accounting. What lowbit._core.Engine exposes to Python.
//
// Model and sessions: the weights (model::Model: mapping, fused copies, RoPE tables) are
// read-only after load and held by shared_ptr; every Engine on them (the one that loaded them,
// and each new_session()) keeps them alive, so they are unmapped when the last one closes.
//
// Threading: every Engine owns its KV cache, state, pool and position (no global state), so
// engines of one model run in different threads at once. One engine is not re-entrant: eval /
// truncate / shift / copy_prefix_from / eval_batch / close take its mutex, so a second
// concurrent call waits (eval_batch and copy_prefix_from lock several, in address order).
// cancel() is lock-free and may be called from any thread; the flag stays set until
// reset_cancel() (eval_batch clears it when it reports the cancel).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <vector>

#include "cpu/threadpool.h"
#include "model/forward.h"
#include "sampling/sampler.h"

namespace lowbit::runtime {

struct MemoryReport {
    std::map<std::string, uint64_t> weights_by_type;   // bytes of the file's tensors by GGML type
    uint64_t weights_bytes = 0;         // shared by every session on the model: count them once
    uint64_t weights_copied_bytes = 0;  // part of weights_bytes held as fused copies (q|k|v, gate|up),
                                        // whose mapped originals were released
    uint64_t kv_bytes = 0;
    int64_t kv_cells = 0;        // summed over layers (sliding layers hold fewer)
    int64_t kv_layers = 0;
    std::string kv_type;
    uint64_t scratch_bytes = 0;  // activations of one batch + attention scratch (+ eval_batch's, when this led one)
    uint64_t total_bytes = 0;
    std::string device;                             // the forward backend's name ("" on the CPU)
    std::map<std::string, int64_t> device_bytes;    // its bytes by part (weights, kv, scratch, ...)
};

// A forward pass run elsewhere (the CUDA device model, bindings/bind_cuda_model.cpp) for an engine
// that keeps its own bookkeeping: positions, chunks of n_batch, sampling, cancel.
class ForwardBackend {
public:
    virtual ~ForwardBackend() = default;
    // The layers below this one run on the CPU first, in the engine's own pass and cache (layer
    // offload: llama.cpp's n_gpu_layers below the layer count); 0: the backend runs every layer.
    virtual int64_t first_layer() const { return 0; }
    // tokens at positions pos0.. (the engine's n_past, <= n_ctx - n); logits as Engine::eval;
    // check() is called between layers and throws Cancelled to stop. With first_layer() > 0, x
    // holds the n rows' residual stream after layer first_layer() - 1 ((n, n_embd) floats, host
    // memory), else it is nullptr.
    // hidden: nullptr, or (n, n_embd) every token's output-normed hidden state (what embeddings pool).
    virtual void eval(const int32_t* tokens, const float* x, int64_t n, int64_t pos0, bool all_logits, float* out,
                      float* hidden, const std::function<void()>& check) = 0;
    virtual std::string name() const = 0;
    virtual std::map<std::string, int64_t> memory() const = 0;
    // Makes this backend's cache hold the first n positions of `src`'s (the backend of another
    // session of the same model, holding src_n_past positions): ValueError, nothing changed,
    // when src is another kind of backend or differs in layers or cache format. check_only:
    // only that check (the engine checks both halves of a split before copying either).
    virtual void copy_prefix_from(const ForwardBackend& src, int64_t src_n_past, int64_t n, bool check_only) = 0;
    // Engine::shift for the backend's layers: positions [n_keep + n_discard, n_past) move down by
    // n_discard, keys re-rotated (the host half has shifted already).
    virtual void shift(int64_t n_past, int64_t n_keep, int64_t n_discard) = 0;
};

class Engine;

// One sequence of an eval_batch: tokens appended at that engine's own n_past. Outputs (nullptr:
// not wanted): logits (n_vocab,) of the last token; hidden (n, n_embd) the output-normed hidden
// state of every token (what embeddings pool).
// Sampling in the core (a server's decode step: no vocabulary-sized row per item leaves the
// core): with `sampler` set, the last token's logits go to the engine's own row (or to `logits`
// when that is set too) and `sampler` draws from them once every pass is done (history: the
// tokens so far, or the penalty window's tail); `token` gets the id, or `error` the message of
// the sampler's ValueError (NaN logits...), which fails this item only. The draw is
// Sampler::sample on the same row: the same id as sampling the returned logits.
struct BatchItem {
    Engine* engine = nullptr;
    const int32_t* tokens = nullptr;
    int64_t n = 0;
    float* logits = nullptr;
    float* hidden = nullptr;
    sampling::Sampler* sampler = nullptr;
    const int64_t* history = nullptr;
    size_t n_history = 0;
    int64_t* token = nullptr;          // required with sampler
    std::string* error = nullptr;      // required with sampler; left empty on success
};

class Engine {
public:
    // n_ctx: cache capacity in tokens; n_threads >= 1; n_batch: tokens per prefill pass
    // (clamped to n_ctx); kv_type "f16" or "q8_0"; act_precision "q8" or "high" (activations of
    // the quantized matmuls, cpu/matmul.h). Throws ValueError for bad arguments, ModelError /
    // GGUFError for a bad file.
    Engine(const std::string& path, int64_t n_ctx, int n_threads, int64_t n_batch, const std::string& kv_type,
           const std::string& act_precision = "auto");
    // A session on an already loaded model (shared, read-only). ValueError when n_ctx would need
    // the other LongRoPE factor set than the one the model was loaded with (phi3).
    Engine(std::shared_ptr<const model::Model> model, int64_t n_ctx, int n_threads, int64_t n_batch,
           const std::string& kv_type, const std::string& act_precision = "auto");
    std::shared_ptr<const model::Model> shared_model() const;

    // Runs the items' tokens as passes of at most max(n_batch of the items) rows, each pass one
    // forward over rows of all its sequences (every item takes at most its own n_batch rows per
    // pass; decodes and prefill chunks mix: continuous batching). The first item's engine lends
    // its pool. Before any work: ValueError naming the item for a closed engine, another model, a
    // repeated engine, no tokens, a bad token id or a context overflow; Cancelled naming it when
    // its flag is set. A cancel during a pass throws Cancelled naming the item and drops that pass
    // (each engine's n_past counts the passes that completed: one pass when the rows fit).
    // Items with a sampler are sampled after the last pass, side by side on the first item's
    // pool (each sampler is its own; one sampler in two items is a ValueError).
    static void eval_batch(const std::vector<BatchItem>& items);

    // Makes this engine's cache hold the first n positions of `other`'s (same model and kv_type):
    // K/V rows are copied, nothing is recomputed; n_past becomes n. ValueError when other holds
    // fewer than n positions, or a sliding-window ring of it no longer holds the window that
    // position n needs (this cache is unchanged then).
    void copy_prefix_from(Engine& other, int64_t n);

    // Appends tokens at positions n_past.. in n_batch chunks. out: (n, n_vocab) when all_logits,
    // else (n_vocab,) for the last token. On Cancelled, the batch that was running is dropped
    // (n_past counts the batches that completed).
    void eval(const int32_t* tokens, int64_t n, bool all_logits, float* out);
    // The decode step of a generation: appends `token` at n_past (as eval) and returns the id
    // `sampler` draws from its logits, which stay in this engine's own row: no vocabulary-sized
    // array per token leaves the core. history: the tokens so far (the sampler takes its penalty
    // window from their end). Same errors as eval.
    int64_t eval_sample(int32_t token, sampling::Sampler& sampler, const int64_t* history, size_t n_history);
    // Drops cached positions >= n; returns the new n_past (see KVCache::truncate).
    int64_t truncate(int64_t n);
    // Drops [n_keep, n_keep + n_discard), moves later positions down; returns the new n_past.
    int64_t shift(int64_t n_keep, int64_t n_discard);
    void cancel() { cancel_.store(true, std::memory_order_relaxed); }
    void reset_cancel() { cancel_.store(false, std::memory_order_relaxed); }
    // Polled with the cancel flag before each pass and between layers of eval(); returning true
    // cancels like cancel() (the C API's abort callback). Set it while no eval runs; {} removes it.
    void set_abort_check(std::function<bool()> check);
    // Runs every later eval through `backend` (the CUDA device model) instead of the CPU pass.
    // ValueError unless the engine is empty (n_past 0) and has no observer. Observers stay
    // CPU-only (ValueError on such an engine); copy_prefix_from copies between engines of the
    // same backend kind; shift moves the host's layers and then the backend's;
    // eval_batch with such an engine runs its items one after another, each through its engine.
    void set_backend(std::unique_ptr<ForwardBackend> backend);
    std::string backend_name() const;   // "" on the CPU
    MemoryReport memory() const;
    // Reports the input of every weight matmul of later evals to `observer` (model/observer.h);
    // nullptr detaches. Waits for a running eval.
    void set_observer(std::shared_ptr<model::MatmulObserver> observer);
    void close();   // frees everything; later calls throw ValueError("engine is closed")

    const model::ModelConfig& config() const;
    int64_t n_past() const;
    int64_t n_ctx() const { check_open(); return n_ctx_; }
    int64_t n_batch() const { check_open(); return n_batch_; }
    int n_threads() const { check_open(); return n_threads_; }
    std::string kv_type() const;
    std::string kernels() const;
    std::string act_precision() const;

private:
    void check_open() const;
    // hidden: nullptr, or (n, n_embd) output-normed hidden states of every token (eval_batch's).
    void eval_locked(const int32_t* tokens, int64_t n, bool all_logits, float* out, float* hidden = nullptr);
    void init_session(int64_t n_ctx, int n_threads, int64_t n_batch, const std::string& kv_type,
                      const std::string& act_precision);
    void check_fits_in_memory(const model::ModelConfig& c, model::KVType kvt) const;

    mutable std::mutex mutex_;
    std::atomic<bool> cancel_{false};
    std::atomic<bool> closed_{false};
    std::shared_ptr<const model::Model> model_;
    std::unique_ptr<model::KVCache> cache_;
    std::unique_ptr<model::ForwardState> state_;
    std::unique_ptr<cpu::ThreadPool> pool_;
    std::shared_ptr<model::MatmulObserver> observer_;   // kept alive while attached
    std::function<bool()> abort_check_;                  // set_abort_check's, or empty
    std::unique_ptr<ForwardBackend> backend_;            // set_backend's, or null (the CPU pass)
    std::unique_ptr<model::ForwardState> batch_state_;  // eval_batch's rows when this engine leads one
    std::vector<float> sample_logits_;                  // eval_sample's / eval_batch's sampled row (n_vocab),
                                                        // made on first use
    int64_t n_ctx_ = 0, n_batch_ = 0, n_past_ = 0;
    int n_threads_ = 0;
};

}  // namespace lowbit::runtime

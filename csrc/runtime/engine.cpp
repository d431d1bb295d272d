// engine.cpp: see engine.h.
#include "runtime/engine.h"

#include <unistd.h>

#include <algorithm>

#include "cpu/attention.h"
#include "cpu/dispatch.h"

namespace lowbit::runtime {

namespace {
constexpr int64_t kMaxCtx = int64_t(1) << 28;
using cpu::kMaxThreads;
}  // namespace

Engine::Engine(const std::string& path, int64_t n_ctx, int n_threads, int64_t n_batch, const std::string& kv_type,
               const std::string& act_precision) {
    LOWBIT_CHECK(n_ctx >= 1 && n_ctx <= kMaxCtx, ValueError, "n_ctx ", n_ctx, " must be in [1, ", kMaxCtx, "]");
    cpu::parse_act_precision(act_precision);   // bad arguments fail before the file is read
    LOWBIT_CHECK(n_threads >= 1 && n_threads <= kMaxThreads, ValueError, "n_threads ", n_threads,
                 " must be in [1, ", kMaxThreads, "]");
    LOWBIT_CHECK(n_batch >= 1, ValueError, "n_batch ", n_batch, " must be >= 1");
    model_ = model::Model::load(path, n_ctx);
    init_session(n_ctx, n_threads, n_batch, kv_type, act_precision);
}

Engine::Engine(std::shared_ptr<const model::Model> model, int64_t n_ctx, int n_threads, int64_t n_batch,
               const std::string& kv_type, const std::string& act_precision) {
    LOWBIT_CHECK(model, ValueError, "a session needs a loaded model");
    model_ = std::move(model);
    init_session(n_ctx, n_threads, n_batch, kv_type, act_precision);
}

std::shared_ptr<const model::Model> Engine::shared_model() const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    return model_;
}

void Engine::init_session(int64_t n_ctx, int n_threads, int64_t n_batch, const std::string& kv_type,
                          const std::string& act_precision) {
    LOWBIT_CHECK(n_ctx >= 1 && n_ctx <= kMaxCtx, ValueError, "n_ctx ", n_ctx, " must be in [1, ", kMaxCtx, "]");
    LOWBIT_CHECK(n_threads >= 1 && n_threads <= kMaxThreads, ValueError, "n_threads ", n_threads,
                 " must be in [1, ", kMaxThreads, "]");
    LOWBIT_CHECK(n_batch >= 1, ValueError, "n_batch ", n_batch, " must be >= 1");
    const cpu::ActPrecision precision = cpu::parse_act_precision(act_precision);
    const model::ModelConfig& c = model_->config;
    const int64_t orig = c.rope_global.n_ctx_orig;
    LOWBIT_CHECK(model_->weights.rope_factors_long.empty() || (n_ctx > orig) == (model_->load_n_ctx > orig),
                 ValueError, "n_ctx ", n_ctx, " needs the other LongRoPE factor set than the model was loaded with (n_ctx ",
                 model_->load_n_ctx, ", original context ", orig, "): load the model again with this n_ctx");
    const model::KVType kvt = model::parse_kv_type(kv_type, c.head_dim);
    n_ctx_ = n_ctx;
    n_batch_ = std::min(n_batch, n_ctx);
    n_threads_ = n_threads;
    check_fits_in_memory(c, kvt);
    cache_ = std::make_unique<model::KVCache>(c, n_ctx_, n_batch_, kvt);
    state_ = std::make_unique<model::ForwardState>(c, n_batch_, n_ctx_, n_threads_);
    state_->act_precision = precision;
    pool_ = std::make_unique<cpu::ThreadPool>(n_threads_);
}

// KV cache + attention scratch must fit in physical memory: refuse up front rather than be
// killed by the OOM killer when a large n_ctx fills up.
void Engine::check_fits_in_memory(const model::ModelConfig& c, model::KVType kvt) const {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return;
    const double phys = double(pages) * double(page);
    const double kv = double(model::kv_cache_bytes(c, n_ctx_, n_batch_, kvt));
    const double scratch = double(n_threads_) * double(cpu::attn_scratch_floats(c.head_dim)) * 4.0;
    LOWBIT_CHECK(kv + scratch < phys, ValueError, "n_ctx ", n_ctx_, " needs a ", uint64_t(kv), "-byte KV cache (",
                 model::kv_type_name(kvt), ") plus ", uint64_t(scratch), " bytes of attention scratch, more than the ",
                 uint64_t(phys), " bytes of physical memory");
}

void Engine::set_observer(std::shared_ptr<model::MatmulObserver> observer) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    LOWBIT_CHECK(!backend_ || !observer, ValueError, "observers are CPU-only; this session runs on ", backend_->name());
    observer_ = std::move(observer);
    state_->observer = observer_.get();
}

void Engine::check_open() const {
    LOWBIT_CHECK(!closed_.load(), ValueError, "engine is closed");
}

void Engine::eval(const int32_t* tokens, int64_t n, bool all_logits, float* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    eval_locked(tokens, n, all_logits, out);
}

int64_t Engine::eval_sample(int32_t token, sampling::Sampler& sampler, const int64_t* history, size_t n_history) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    sample_logits_.resize(size_t(model_->config.n_vocab));
    eval_locked(&token, 1, false, sample_logits_.data());
    return sampler.sample(sample_logits_.data(), sample_logits_.size(), history, n_history);
}

void Engine::eval_locked(const int32_t* tokens, int64_t n, bool all_logits, float* out, float* hidden) {
    check_open();
    const model::ModelConfig& c = model_->config;
    LOWBIT_CHECK(n >= 1, ValueError, "eval needs at least one token");
    for (int64_t i = 0; i < n; ++i)
        LOWBIT_CHECK(tokens[i] >= 0 && tokens[i] < c.n_vocab, ValueError, "token id ", tokens[i], " at index ", i,
                     " is out of range for vocabulary size ", c.n_vocab);
    LOWBIT_CHECK(n_past_ + n <= n_ctx_, ValueError, "context overflow: ", n_past_, " cached + ", n,
                 " new tokens > n_ctx ", n_ctx_);
    // between layers: the cancel flag, and set_abort_check's callback when there is one
    const auto check_cancel = [this]() {
        if (cancel_.load(std::memory_order_relaxed) || (abort_check_ && abort_check_()))
            throw Cancelled("eval cancelled");
    };
    for (int64_t i0 = 0; i0 < n; i0 += n_batch_) {
        const int64_t nb = std::min(n_batch_, n - i0);
        const bool last = i0 + nb == n;
        float* logits = !out ? nullptr : all_logits ? out + i0 * c.n_vocab : (last ? out : nullptr);
        float* hid = hidden ? hidden + i0 * c.n_embd : nullptr;
        if (backend_) {
            check_cancel();
            const float* x = nullptr;
            if (const int64_t l0 = backend_->first_layer(); l0 > 0) {   // the CPU's layers first, then the backend's
                model::forward_layers(*model_, {model::SeqSpan{cache_.get(), n_past_, 0, nb}}, *state_, *pool_,
                                      tokens + i0, 0, l0, {}, check_cancel);
                x = state_->x.data();
            }
            backend_->eval(tokens + i0, x, nb, n_past_, all_logits, logits, hid, check_cancel);
        } else {
            model::forward(*model_, *cache_, *state_, *pool_, tokens + i0, nb, n_past_, logits, all_logits, check_cancel,
                           hid);
        }
        n_past_ += nb;
    }
}

void Engine::set_backend(std::unique_ptr<ForwardBackend> backend) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    LOWBIT_CHECK(n_past_ == 0, ValueError, "set_backend: the session already holds ", n_past_, " positions");
    LOWBIT_CHECK(!observer_, ValueError, "set_backend: an observer is attached (observers are CPU-only)");
    backend_ = std::move(backend);
}

std::string Engine::backend_name() const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    return backend_ ? backend_->name() : std::string();
}

void Engine::set_abort_check(std::function<bool()> check) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    abort_check_ = std::move(check);
}

int64_t Engine::truncate(int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    LOWBIT_CHECK(n >= 0, ValueError, "truncate(", n, "): position must be >= 0");
    n_past_ = cache_->truncate(n_past_, n);
    return n_past_;
}

int64_t Engine::shift(int64_t n_keep, int64_t n_discard) {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    LOWBIT_CHECK(n_keep >= 0 && n_discard >= 0 && n_keep + n_discard <= n_past_, ValueError, "shift(n_keep=",
                 n_keep, ", n_discard=", n_discard, ") needs 0 <= n_keep, 0 <= n_discard and n_keep + n_discard <= n_past (",
                 n_past_, ")");
    if (n_discard == 0) return n_past_;
    const model::KVCache::Rerotate rerotate = model::key_rerotation(*model_);
    if (backend_) {   // the host's layers first (their ring check may refuse: nothing moved), then the backend's
        cache_->shift(n_past_, n_keep, n_discard, rerotate, backend_->first_layer());
        backend_->shift(n_past_, n_keep, n_discard);
        n_past_ -= n_discard;
        return n_past_;
    }
    n_past_ = cache_->shift(n_past_, n_keep, n_discard, rerotate);
    return n_past_;
}

MemoryReport Engine::memory() const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    MemoryReport r;
    r.weights_by_type = model_->weights.bytes_by_type;
    for (const auto& [type, bytes] : r.weights_by_type) r.weights_bytes += bytes;
    r.weights_copied_bytes = model_->weights.fused_bytes;
    // With a backend the host cache serves only the layers below its first (the rest of it is
    // never written, so its pages are never touched): those are what the host holds.
    const int64_t host_layers = backend_ ? backend_->first_layer() : cache_->n_layers();
    r.kv_bytes = uint64_t(cache_->bytes(host_layers));
    r.kv_cells = cache_->total_cells(host_layers);
    r.kv_layers = host_layers;
    r.kv_type = model::kv_type_name(cache_->type());
    r.scratch_bytes = uint64_t(state_->bytes() + (batch_state_ ? batch_state_->bytes() : 0));
    r.total_bytes = r.weights_bytes + r.kv_bytes + r.scratch_bytes;
    if (backend_) {
        r.device = backend_->name();
        r.device_bytes = backend_->memory();
    }
    return r;
}

void Engine::close() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_.exchange(true)) return;
    pool_.reset();
    batch_state_.reset();
    observer_.reset();
    backend_.reset();
    std::vector<float>().swap(sample_logits_);
    state_.reset();
    cache_.reset();
    model_.reset();
}

const model::ModelConfig& Engine::config() const { check_open(); return model_->config; }

int64_t Engine::n_past() const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    return n_past_;
}

std::string Engine::kv_type() const { check_open(); return model::kv_type_name(cache_->type()); }

std::string Engine::kernels() const { check_open(); return cpu::kernels().name; }

std::string Engine::act_precision() const { check_open(); return cpu::act_precision_name(state_->act_precision); }

}  // namespace lowbit::runtime

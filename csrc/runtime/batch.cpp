// batch.cpp: Engine::eval_batch and Engine::copy_prefix_from, the calls that span several
// sessions of one model (engine.h).
//
// A pass of eval_batch (rows of several sequences, one forward_batch):
//   rows  [ item a: decode token | item b: decode token | item c: prefill chunk ... ]
//   spans   one per item in the pass, each at its engine's n_past in its engine's cache
// Items are taken in order; each gives at most its own n_batch rows to a pass (its sliding-window
// ring holds window + n_batch cells) and a pass holds at most max(n_batch) rows, so decodes listed
// before a long prompt always run in the first pass. After the last pass the items that carry a
// sampler draw their next token from their last row (logits that never leave the core).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/batch.h"
#include "runtime/engine.h"

namespace lowbit::runtime {
namespace {

// Locks the engines' mutexes in address order (one order for every caller: no deadlock).
std::vector<std::unique_lock<std::mutex>> lock_all(std::vector<std::mutex*> mutexes) {
    std::sort(mutexes.begin(), mutexes.end());
    std::vector<std::unique_lock<std::mutex>> locks;
    for (std::mutex* m : mutexes) locks.emplace_back(*m);
    return locks;
}

// The draws of the sampled items after the step, one item per chunk on the pool (a vocabulary
// scan each: 8 rows of gemma3's 262k logits are ~0.5 ms on one thread). A sampler's ValueError
// goes to that item's error; anything else fails the call.
void sample_items(const std::vector<BatchItem>& items, const std::vector<float*>& last_logits, cpu::ThreadPool& pool) {
    std::vector<size_t> sampled;
    for (size_t i = 0; i < items.size(); ++i)
        if (items[i].sampler) sampled.push_back(i);
    if (sampled.empty()) return;
    pool.parallel_for(int64_t(sampled.size()), [&](int64_t chunk, int) {
        const BatchItem& it = items[sampled[size_t(chunk)]];
        const size_t n_vocab = size_t(it.engine->config().n_vocab);
        try {
            *it.token = it.sampler->sample(last_logits[sampled[size_t(chunk)]], n_vocab, it.history, it.n_history);
        } catch (const ValueError& e) {
            *it.token = -1;
            *it.error = e.what();
        }
    });
}

}  // namespace

void Engine::eval_batch(const std::vector<BatchItem>& items) {
    LOWBIT_CHECK(!items.empty(), ValueError, "eval_batch needs at least one item");
    std::vector<std::mutex*> mutexes;
    for (size_t i = 0; i < items.size(); ++i) {
        LOWBIT_CHECK(items[i].engine, ValueError, "eval_batch item ", i, ": no session");
        for (size_t j = 0; j < i; ++j)
            LOWBIT_CHECK(items[j].engine != items[i].engine, ValueError, "eval_batch items ", j, " and ", i,
                         " are the same session (give each session one item)");
        mutexes.push_back(&items[i].engine->mutex_);
        if (items[i].sampler) {
            LOWBIT_CHECK(items[i].token && items[i].error, ValueError, "eval_batch item ", i,
                         ": a sampled item needs its token and error outputs");
            for (size_t j = 0; j < i; ++j)
                LOWBIT_CHECK(items[j].sampler != items[i].sampler, ValueError, "eval_batch items ", j, " and ", i,
                             " share one sampler (each sequence draws with its own)");
        }
    }
    const auto locks = lock_all(mutexes);
    Engine& lead = *items[0].engine;
    int64_t max_batch = 1, max_ctx = 1, total = 0;
    for (size_t i = 0; i < items.size(); ++i) {
        const BatchItem& it = items[i];
        Engine& e = *it.engine;
        LOWBIT_CHECK(!e.closed_.load(), ValueError, "eval_batch item ", i, ": the session is closed");
        LOWBIT_CHECK(e.model_ == lead.model_, ValueError, "eval_batch item ", i,
                     ": a session of another model than item 0's (one batch runs one model's weights)");
        LOWBIT_CHECK(it.n >= 1, ValueError, "eval_batch item ", i, ": no tokens");
        const int64_t n_vocab = e.model_->config.n_vocab;
        for (int64_t t = 0; t < it.n; ++t)
            LOWBIT_CHECK(it.tokens[t] >= 0 && it.tokens[t] < n_vocab, ValueError, "eval_batch item ", i, ": token id ",
                         it.tokens[t], " at index ", t, " is out of range for vocabulary size ", n_vocab);
        LOWBIT_CHECK(e.n_past_ + it.n <= e.n_ctx_, ValueError, "eval_batch item ", i, ": context overflow: ", e.n_past_,
                     " cached + ", it.n, " new tokens > n_ctx ", e.n_ctx_);
        if (e.cancel_.exchange(false)) throw Cancelled(str("eval_batch item ", i, ": cancelled"));
        max_batch = std::max(max_batch, e.n_batch_);
        max_ctx = std::max(max_ctx, e.n_ctx_);
        total += it.n;
    }
    const model::Model& m = *lead.model_;
    // the last token's logits of each item: the caller's row, or for a sampled item without one
    // its engine's own
    std::vector<float*> last_logits(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
        Engine& e = *items[i].engine;
        last_logits[i] = items[i].logits;
        if (items[i].sampler && !last_logits[i]) {
            e.sample_logits_.resize(size_t(m.config.n_vocab));
            last_logits[i] = e.sample_logits_.data();
        }
    }
    bool any_backend = false;
    for (const BatchItem& it : items) any_backend = any_backend || it.engine->backend_;
    if (any_backend) {   // a session on the device: every item in turn through its own engine (not batched yet)
        for (size_t i = 0; i < items.size(); ++i) {
            Engine& e = *items[i].engine;
            try {
                e.eval_locked(items[i].tokens, items[i].n, false, last_logits[i], items[i].hidden);
            } catch (const Cancelled&) {
                e.cancel_.store(false);
                throw Cancelled(str("eval_batch item ", i, ": cancelled"));
            }
        }
        sample_items(items, last_logits, *lead.pool_);
        return;
    }
    const int64_t pass_rows = std::min(max_batch, total);
    if (!lead.batch_state_ || lead.batch_state_->n_batch < pass_rows || lead.batch_state_->n_ctx < max_ctx)
        lead.batch_state_ = std::make_unique<model::ForwardState>(
            m.config, std::max(pass_rows, lead.batch_state_ ? lead.batch_state_->n_batch : 0),
            std::max(max_ctx, lead.batch_state_ ? lead.batch_state_->n_ctx : 0), lead.pool_->size());
    model::ForwardState& s = *lead.batch_state_;
    s.act_precision = lead.state_->act_precision;
    s.observer = lead.state_->observer;

    std::vector<int64_t> done(items.size(), 0);   // tokens of each item evaluated so far
    std::vector<int32_t> tokens;
    std::vector<model::SeqSpan> spans;
    std::vector<size_t> span_item;
    std::vector<model::RowOutput> outputs;
    const int64_t n_embd = m.config.n_embd;
    for (int64_t left = total; left > 0;) {
        tokens.clear(); spans.clear(); span_item.clear(); outputs.clear();
        int64_t rows = 0;
        for (size_t i = 0; i < items.size() && rows < pass_rows; ++i) {
            const BatchItem& it = items[i];
            const int64_t take = std::min({it.n - done[i], it.engine->n_batch_, pass_rows - rows});
            if (take <= 0) continue;
            spans.push_back(model::SeqSpan{it.engine->cache_.get(), it.engine->n_past_, rows, take});
            span_item.push_back(i);
            tokens.insert(tokens.end(), it.tokens + done[i], it.tokens + done[i] + take);
            for (int64_t t = 0; t < take; ++t) {
                const bool last = done[i] + t == it.n - 1;
                float* hidden = it.hidden ? it.hidden + (done[i] + t) * n_embd : nullptr;
                float* logits = last ? last_logits[i] : nullptr;
                if (logits || hidden) outputs.push_back(model::RowOutput{rows + t, logits, hidden});
            }
            rows += take;
        }
        auto check_cancel = [&]() {
            for (size_t si = 0; si < spans.size(); ++si)
                if (items[span_item[si]].engine->cancel_.exchange(false))
                    throw Cancelled(str("eval_batch item ", span_item[si], ": cancelled"));
        };
        model::forward_batch(m, spans, s, *lead.pool_, tokens.data(), outputs, check_cancel);
        for (size_t si = 0; si < spans.size(); ++si) {
            items[span_item[si]].engine->n_past_ += spans[si].n;
            done[span_item[si]] += spans[si].n;
        }
        left -= rows;
    }
    sample_items(items, last_logits, *lead.pool_);
}

void Engine::copy_prefix_from(Engine& other, int64_t n) {
    LOWBIT_CHECK(&other != this, ValueError, "copy_prefix_from: a session cannot copy from itself");
    const auto locks = lock_all({&mutex_, &other.mutex_});
    check_open();
    LOWBIT_CHECK(!other.closed_.load(), ValueError, "copy_prefix_from: the source session is closed");
    LOWBIT_CHECK(other.model_ == model_, ValueError, "copy_prefix_from: the source is a session of another model");
    LOWBIT_CHECK(!backend_ == !other.backend_, ValueError, "copy_prefix_from: one session runs on ",
                 backend_ ? backend_->name() : other.backend_->name(), ", the other on the CPU");
    LOWBIT_CHECK(n >= 0 && n <= other.n_past_, ValueError, "copy_prefix_from: ", n, " tokens asked, the source holds ",
                 other.n_past_);
    LOWBIT_CHECK(n <= n_ctx_, ValueError, "copy_prefix_from: ", n, " tokens do not fit n_ctx ", n_ctx_);
    // Below a backend the host cache holds only the layers the host runs. Both halves are checked
    // before either is copied (KVCache::copy_prefix checks before it writes).
    if (backend_) backend_->copy_prefix_from(*other.backend_, other.n_past_, n, true);
    cache_->copy_prefix(*other.cache_, other.n_past_, n, backend_ ? backend_->first_layer() : -1);
    if (backend_) backend_->copy_prefix_from(*other.backend_, other.n_past_, n, false);
    n_past_ = n;
}

DecodeRun decode_run(Engine& engine, int32_t token, sampling::Sampler& sampler, std::vector<int64_t> history,
                     int64_t max_steps, const std::vector<int64_t>& stop_ids, double seconds,
                     const RunSignal* signal) {
    LOWBIT_CHECK(max_steps >= 1, ValueError, "decode_run: max_steps must be >= 1, got ", max_steps);
    LOWBIT_CHECK(seconds >= 0, ValueError, "decode_run: seconds must be >= 0, got ", seconds);
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                      std::chrono::duration<double>(seconds));
    const size_t n_vocab = size_t(engine.config().n_vocab);
    const std::unique_ptr<float[]> logits(new float[n_vocab]);   // written by each step: no zeroing
    DecodeRun run;
    for (int64_t step = 0; step < max_steps; ++step) {
        engine.eval(&token, 1, false, logits.get());   // the same step as Engine::eval_sample
        int64_t next;
        try {
            next = sampler.sample(logits.get(), n_vocab, history.data(), history.size());
        } catch (const ValueError& e) {
            run.error = e.what();
            break;
        }
        run.drawn.push_back(next);
        if (std::find(stop_ids.begin(), stop_ids.end(), next) != stop_ids.end()) break;
        if (std::chrono::steady_clock::now() >= deadline) break;
        if (signal && signal->set.load(std::memory_order_relaxed)) break;
        history.push_back(next);
        token = int32_t(next);
    }
    return run;
}

}  // namespace lowbit::runtime

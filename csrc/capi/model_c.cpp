// model_c.cpp: the C API's models, sessions, generation, memory report and log sink (include/lowbit.h).
//
// A lowbit_model holds a ModelShared (weights + vocabulary); each lowbit_session holds an Engine on
// the same weights plus the token ids its KV cache holds (so generate reuses the common prefix,
// as Python's generate does). Generation follows lowbit.runtime.generate.stream_generate step for
// step (same sampler, same end-of-generation ids, same UTF-8 hold-back), so greedy output equals
// Python's.
#include "capi/capi_internal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "model/config.h"
#include "tokenizer/vocab.h"

using lowbit::capi::fail;
using lowbit::capi::guarded;
using lowbit::capi::ModelShared;


struct lowbit_session {
    std::shared_ptr<ModelShared> shared;
    std::unique_ptr<lowbit::runtime::Engine> engine;
    std::vector<int32_t> cached;          // the ids the KV cache holds, position by position
    lowbit_abort_fn abort_cb = nullptr;
    void* abort_data = nullptr;
};

namespace {
using lowbit::str;
constexpr int64_t kDefaultCtx = 4096;
constexpr int64_t kDefaultBatch = 512;
constexpr size_t kReadChunk = size_t(4) << 20;

// Reads the file once (page cache warm, as Python's load does), reporting progress up to `span`.
void prefault(const std::string& path, const lowbit_model_params& p, float span) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;   // GGUFFile::open says why (a FIFO
    std::ifstream f(path, std::ios::binary);                            // would block an open here)
    if (!f) return;
    f.seekg(0, std::ios::end);
    const double size = double(std::max<std::streamoff>(f.tellg(), 1));
    f.seekg(0);
    std::vector<char> buf(kReadChunk);
    double done = 0;
    while (f.read(buf.data(), std::streamsize(buf.size())) || f.gcount() > 0) {
        done += double(f.gcount());
        if (p.progress && !p.progress(float(span * std::min(done / size, 1.0)), p.progress_data))
            throw lowbit::Cancelled(str("load of ", path, " cancelled by the progress callback"));
    }
}

// Python's eval interface in one place: eval, keeping `cached` equal to what the cache holds.
void eval_tracked(lowbit_session* s, const int32_t* tokens, size_t n, float* logits) {
    try {
        s->engine->eval(tokens, int64_t(n), false, logits);
    } catch (...) {
        s->cached.clear();   // what the cache holds is unknown: reuse nothing next time
        throw;
    }
    s->cached.insert(s->cached.end(), tokens, tokens + n);
}

// Token bytes in, whole UTF-8 characters out (Python's incremental decoder with errors="replace":
// each maximal invalid subpart becomes U+FFFD; an incomplete tail waits for the next token).
class Utf8Stream {
public:
    std::string feed(std::string_view bytes, bool final) {
        pending_.append(bytes);
        std::string out;
        size_t i = 0;
        while (i < pending_.size()) {
            const size_t n = valid_prefix(i);
            if (n > 0) { out.append(pending_, i, n); i += n; continue; }
            const size_t part = partial_length(i);
            if (part == pending_.size() - i && !final) break;   // may still complete
            out += "\xEF\xBF\xBD";
            i += std::max<size_t>(part, 1);
        }
        pending_.erase(0, i);
        return out;
    }

private:
    // Length of the well-formed character at i, 0 if none.
    size_t valid_prefix(size_t i) const {
        const size_t len = expected_length(uint8_t(pending_[i]));
        if (len == 0 || i + len > pending_.size()) return 0;
        return partial_length(i) == len ? len : 0;
    }
    static size_t expected_length(uint8_t b) {
        return b < 0x80 ? 1 : (b >= 0xC2 && b <= 0xDF) ? 2 : (b >= 0xE0 && b <= 0xEF) ? 3 : (b >= 0xF0 && b <= 0xF4) ? 4 : 0;
    }
    // How many bytes from i form a valid prefix of a character (Unicode's "maximal subpart").
    size_t partial_length(size_t i) const {
        const uint8_t b0 = uint8_t(pending_[i]);
        const size_t len = expected_length(b0);
        if (len <= 1) return len;
        size_t k = 1;
        for (; k < len && i + k < pending_.size(); ++k) {
            const uint8_t b = uint8_t(pending_[i + k]);
            uint8_t lo = 0x80, hi = 0xBF;
            if (k == 1) {
                if (b0 == 0xE0) lo = 0xA0;
                else if (b0 == 0xED) hi = 0x9F;
                else if (b0 == 0xF0) lo = 0x90;
                else if (b0 == 0xF4) hi = 0x8F;
            }
            if (b < lo || b > hi) break;
        }
        return k;
    }
    std::string pending_;
};

bool is_eog(const lowbit::tokenizer::Tokenizer& tok, int32_t id) {
    const auto& eog = tok.vocab().eog_ids;
    return std::find(eog.begin(), eog.end(), id) != eog.end();
}

uint64_t peak_rss_bytes() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmHWM:", 0) == 0) return uint64_t(std::strtoull(line.c_str() + 6, nullptr, 10)) * 1024;
    return 0;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Phase 1 of Python's stream_generate: evaluate the prompt past the prefix the cache holds.
// Returns false when cancelled.
bool prefill(lowbit_session* s, const int32_t* prompt, size_t n, float* logits, lowbit_generation& r) {
    size_t keep = 0;
    while (keep < std::min(n - 1, s->cached.size()) && s->cached[keep] == prompt[keep]) ++keep;
    keep = std::min(keep, size_t(s->engine->truncate(int64_t(keep))));   // a sliding window may keep fewer
    s->cached.resize(keep);
    r.prompt_tokens = int32_t(n);
    r.cached_prompt_tokens = int32_t(keep);
    const auto t0 = std::chrono::steady_clock::now();
    try {
        eval_tracked(s, prompt + keep, n - keep, logits);
    } catch (const lowbit::Cancelled&) {
        return false;
    }
    r.prefill_seconds = seconds_since(t0);
    return true;
}

lowbit_status generate(lowbit_session* s, const int32_t* prompt, size_t n, const lowbit_generate_params& p,
                       lowbit_generation& r) {
    LOWBIT_CHECK(p.max_tokens >= 0, ValueError, "max_tokens must be >= 0, got ", p.max_tokens);
    LOWBIT_CHECK(n > 0, ValueError, "the prompt is empty (no tokens); pass some text or enable BOS");
    const int64_t n_ctx = s->engine->n_ctx();
    LOWBIT_CHECK(int64_t(n) < n_ctx, ValueError, "the prompt has ", n, " tokens but the context holds ", n_ctx,
                 "; use a larger n_ctx or a shorter prompt");
    lowbit_sampler* raw = nullptr;
    if (lowbit_status st = lowbit_sampler_new(&p.sampling, &raw); st != LOWBIT_OK) return st;
    std::unique_ptr<lowbit_sampler, void (*)(lowbit_sampler*)> sampler(raw, lowbit_sampler_free);
    const lowbit::tokenizer::Tokenizer& tok = *s->shared->tokenizer.impl;
    std::vector<float> logits(size_t(s->shared->model->config.n_vocab));
    r = lowbit_generation{LOWBIT_FINISH_CANCELLED, 0, 0, 0, 0.0, 0.0};
    s->engine->reset_cancel();
    if (!prefill(s, prompt, n, logits.data(), r)) return LOWBIT_OK;

    std::vector<int32_t> history(prompt, prompt + n);
    Utf8Stream utf8;
    const auto t1 = std::chrono::steady_clock::now();
    r.finish = LOWBIT_FINISH_LENGTH;
    auto emit = [&](int32_t token, const std::string& text) {
        return p.on_token && p.on_token(token, text.data(), text.size(), p.user_data) != 0;
    };
    while (r.generated_tokens < p.max_tokens) {
        if (s->abort_cb && s->abort_cb(s->abort_data)) { r.finish = LOWBIT_FINISH_CANCELLED; break; }
        int32_t token = -1;
        if (lowbit_status st = lowbit_sample(sampler.get(), logits.data(), logits.size(), history.data(),
                                             history.size(), &token); st != LOWBIT_OK)
            return st;
        if (is_eog(tok, token)) { r.finish = LOWBIT_FINISH_EOS; break; }
        ++r.generated_tokens;
        history.push_back(token);
        if (emit(token, utf8.feed(tok.token_to_bytes(token, false), false))) { r.finish = LOWBIT_FINISH_STOPPED; break; }
        if (r.generated_tokens >= p.max_tokens) break;
        if (s->engine->n_past() >= n_ctx) { r.finish = LOWBIT_FINISH_CONTEXT; break; }
        try {
            eval_tracked(s, &token, 1, logits.data());
        } catch (const lowbit::Cancelled&) {
            r.finish = LOWBIT_FINISH_CANCELLED;
            break;
        }
    }
    r.decode_seconds = seconds_since(t1);
    if (const std::string tail = utf8.feed({}, true); !tail.empty()) emit(-1, tail);
    return LOWBIT_OK;
}
}  // namespace

extern "C" {

void lowbit_set_log(lowbit_log_fn sink, void* user_data) {
    try {
        lowbit::set_log_sink(sink, user_data);
    } catch (...) {   // std::system_error from the lock: nothing else can fail here
    }
}

lowbit_model_params lowbit_model_default(void) { return lowbit_model_params{0, nullptr, nullptr}; }

lowbit_status lowbit_model_load(const char* gguf_path, const lowbit_model_params* params, lowbit_model** out) {
    LOWBIT_REQUIRE(gguf_path && out, "lowbit_model_load: NULL argument");
    *out = nullptr;
    return guarded([&] {
        const lowbit_model_params p = params ? *params : lowbit_model_default();
        LOWBIT_CHECK(p.n_ctx >= 0, ValueError, "n_ctx must be >= 0, got ", p.n_ctx);
        if (p.progress && !p.progress(0.0f, p.progress_data))
            throw lowbit::Cancelled("load cancelled by the progress callback");
        prefault(gguf_path, p, 0.9f);
        // The config first (no weights): the sessions' default n_ctx picks phi3's LongRoPE set.
        const lowbit::GGUFFile file = lowbit::GGUFFile::open(gguf_path);
        const lowbit::model::ModelConfig config = lowbit::model::load_config(file);
        auto shared = std::make_shared<ModelShared>();
        shared->n_ctx = p.n_ctx ? p.n_ctx : std::min(config.n_ctx_train > 0 ? config.n_ctx_train : kDefaultCtx, kDefaultCtx);
        shared->model = lowbit::model::Model::load(gguf_path, shared->n_ctx);
        shared->architecture = lowbit::model::arch_name(shared->model->config.arch);
        std::vector<std::string> warnings;   // what llama.cpp only logs
        shared->tokenizer.impl = std::make_unique<lowbit::tokenizer::Tokenizer>(
            lowbit::tokenizer::load_vocab(lowbit::tokenizer::vocab_fields_from_gguf(*shared->model->file), warnings));
        for (const std::string& w : warnings) lowbit::log_message(lowbit::LogLevel::Warn, str(gguf_path, ": ", w));
        if (p.progress && !p.progress(1.0f, p.progress_data))
            throw lowbit::Cancelled("load cancelled by the progress callback");
        lowbit::log_message(lowbit::LogLevel::Info,
                            str("loaded ", gguf_path, ": ", shared->architecture, ", ", shared->model->config.n_layers,
                                " layers, vocabulary of ", shared->tokenizer.impl->n_tokens()));
        *out = new lowbit_model{std::move(shared)};
        return LOWBIT_OK;
    });
}

void lowbit_model_free(lowbit_model* model) { delete model; }

const lowbit_tokenizer* lowbit_model_tokenizer(const lowbit_model* model) {
    return model ? &model->shared->tokenizer : nullptr;
}
int32_t lowbit_model_n_vocab(const lowbit_model* model) {
    return model ? int32_t(model->shared->model->config.n_vocab) : 0;
}
int64_t lowbit_model_n_ctx_train(const lowbit_model* model) {
    return model ? model->shared->model->config.n_ctx_train : 0;
}
const char* lowbit_model_architecture(const lowbit_model* model) {
    return model ? model->shared->architecture.c_str() : "";
}

lowbit_session_params lowbit_session_default(void) { return lowbit_session_params{0, 0, 0, nullptr}; }

lowbit_status lowbit_session_new(lowbit_model* model, const lowbit_session_params* params, lowbit_session** out) {
    LOWBIT_REQUIRE(model && out, "lowbit_session_new: NULL argument");
    *out = nullptr;
    return guarded([&] {
        const lowbit_session_params p = params ? *params : lowbit_session_default();
        LOWBIT_CHECK(p.n_ctx >= 0 && p.n_threads >= 0 && p.n_batch >= 0, ValueError,
                     "n_ctx, n_threads and n_batch must be >= 0 (0: default), got ", p.n_ctx, ", ", p.n_threads, ", ",
                     p.n_batch);
        const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        auto s = std::make_unique<lowbit_session>();
        s->shared = model->shared;
        s->engine = std::make_unique<lowbit::runtime::Engine>(
            model->shared->model, p.n_ctx ? p.n_ctx : model->shared->n_ctx,
            p.n_threads ? int(p.n_threads) : int(std::max(1L, cpus)), p.n_batch ? p.n_batch : kDefaultBatch,
            p.kv_type ? p.kv_type : "f16");
        *out = s.release();
        return LOWBIT_OK;
    });
}

void lowbit_session_free(lowbit_session* session) { delete session; }

int64_t lowbit_session_n_ctx(const lowbit_session* s) { return s ? s->engine->n_ctx() : 0; }

int64_t lowbit_session_n_past(const lowbit_session* s) {
    try {
        return s ? s->engine->n_past() : 0;
    } catch (...) {   // std::system_error from the session's lock
        return -1;
    }
}

lowbit_status lowbit_session_eval(lowbit_session* s, const int32_t* tokens, size_t n_tokens, float* logits) {
    LOWBIT_REQUIRE(s && tokens, "lowbit_session_eval: NULL argument");
    return guarded([&] {
        s->engine->reset_cancel();
        eval_tracked(s, tokens, n_tokens, logits);
        return LOWBIT_OK;
    });
}

lowbit_status lowbit_session_truncate(lowbit_session* s, int64_t n_keep) {
    LOWBIT_REQUIRE(s, "lowbit_session_truncate: NULL argument");
    return guarded([&] {
        const int64_t kept = s->engine->truncate(n_keep);
        s->cached.resize(std::min(s->cached.size(), size_t(kept)));
        return LOWBIT_OK;
    });
}

void lowbit_session_set_abort(lowbit_session* s, lowbit_abort_fn abort_cb, void* user_data) {
    if (!s) return;
    s->abort_cb = abort_cb;
    s->abort_data = user_data;
    try {
        if (abort_cb) s->engine->set_abort_check([abort_cb, user_data]() { return abort_cb(user_data) != 0; });
        else s->engine->set_abort_check({});
    } catch (...) {   // only bad_alloc of the std::function: the per-token check still runs
        lowbit::log_message(lowbit::LogLevel::Error, "lowbit_session_set_abort: could not install the layer check");
    }
}

void lowbit_session_cancel(lowbit_session* s) {
    if (s) s->engine->cancel();
}

lowbit_generate_params lowbit_generate_default(void) {
    lowbit_generate_params p{};
    p.sampling = lowbit_sampling_default();
    p.sampling.temperature = 0.0;
    p.max_tokens = 256;
    return p;
}

lowbit_status lowbit_session_generate(lowbit_session* s, const int32_t* prompt, size_t n_prompt,
                                      const lowbit_generate_params* params, lowbit_generation* result) {
    LOWBIT_REQUIRE(s && (prompt || n_prompt == 0) && params, "lowbit_session_generate: NULL argument");
    return guarded([&] {
        lowbit_generation r{};
        const lowbit_status st = generate(s, prompt, n_prompt, *params, r);
        if (result) *result = r;
        return st;
    });
}

lowbit_status lowbit_session_generate_text(lowbit_session* s, const char* prompt, const lowbit_generate_params* params,
                                           lowbit_generation* result) {
    LOWBIT_REQUIRE(s && prompt && params, "lowbit_session_generate_text: NULL argument");
    return guarded([&] {
        const std::vector<int32_t> ids = s->shared->tokenizer.impl->encode(prompt, true, false);
        lowbit_generation r{};
        const lowbit_status st = generate(s, ids.data(), ids.size(), *params, r);
        if (result) *result = r;
        return st;
    });
}

lowbit_status lowbit_session_memory(const lowbit_session* s, lowbit_memory* out) {
    LOWBIT_REQUIRE(s && out, "lowbit_session_memory: NULL argument");
    return guarded([&] {
        const lowbit::runtime::MemoryReport m = s->engine->memory();
        lowbit_memory r{};
        r.weights_bytes = m.weights_bytes;
        r.weights_copied_bytes = m.weights_copied_bytes;
        r.kv_bytes = m.kv_bytes;
        r.scratch_bytes = m.scratch_bytes;
        r.total_bytes = m.total_bytes;
        r.process_peak_rss_bytes = peak_rss_bytes();
        r.kv_cells = m.kv_cells;
        r.n_ctx = s->engine->n_ctx();
        r.n_past = s->engine->n_past();
        std::snprintf(r.kv_type, sizeof r.kv_type, "%s", m.kv_type.c_str());
        *out = r;
        return LOWBIT_OK;
    });
}

}  // extern "C"

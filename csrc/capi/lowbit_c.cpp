// lowbit_c.cpp: the C API (include/lowbit.h): errors, tokenizer and sampler. Models and sessions
// are in model_c.cpp, chat templates in chat_c.cpp. Every entry point runs inside guarded().
#include "capi/capi_internal.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "common.h"
#include "gguf/gguf.h"
#include "sampling/sampler.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

struct lowbit_sampler {
    std::unique_ptr<lowbit::sampling::Sampler> impl;
    std::vector<uint32_t> seed_words;   // to rebuild impl with the OpenAI fields (before a draw)
    bool drawn = false;
};

using lowbit::capi::fail;
using lowbit::capi::guarded;

namespace {
thread_local std::string g_last_error;

// The range rules of lowbit.runtime.sampling.SamplingParams.validate, with its messages.
void check_params(const lowbit_sampling_params& p) {
    using lowbit::str;
    LOWBIT_CHECK(std::isfinite(p.temperature), ValueError, "temperature must be a finite number, got ", p.temperature);
    LOWBIT_CHECK(p.top_k >= 0, ValueError, "top_k must be >= 0, got ", p.top_k);
    LOWBIT_CHECK(p.top_p > 0.0 && p.top_p <= 1.0, ValueError, "top_p must be in (0, 1], got ", p.top_p);
    LOWBIT_CHECK(p.min_p >= 0.0 && p.min_p <= 1.0, ValueError, "min_p must be in [0, 1], got ", p.min_p);
    LOWBIT_CHECK(p.repetition_penalty > 0.0 && std::isfinite(p.repetition_penalty), ValueError,
                 "repetition_penalty must be in (0, inf), got ", p.repetition_penalty);
    LOWBIT_CHECK(p.repeat_last_n >= -1, ValueError, "repeat_last_n must be >= -1, got ", p.repeat_last_n);
    LOWBIT_CHECK(p.seed >= -1, ValueError, "seed must be >= -1, got ", p.seed);
}
}  // namespace

namespace lowbit::capi {
void set_last_error(const std::string& message) { g_last_error = message; }
void clear_last_error() { g_last_error.clear(); }
}  // namespace lowbit::capi

extern "C" {

const char* lowbit_last_error(void) { return g_last_error.c_str(); }

lowbit_status lowbit_tokenizer_open(const char* gguf_path, lowbit_tokenizer** out) {
    LOWBIT_REQUIRE(gguf_path != nullptr && out != nullptr, "lowbit_tokenizer_open: NULL argument");
    *out = nullptr;
    return guarded([&] {
        const lowbit::GGUFFile file = lowbit::GGUFFile::open(gguf_path);
        std::vector<std::string> warnings;   // what llama.cpp only logs
        auto tok = std::make_unique<lowbit_tokenizer>();
        tok->impl = std::make_unique<lowbit::tokenizer::Tokenizer>(
            lowbit::tokenizer::load_vocab(lowbit::tokenizer::vocab_fields_from_gguf(file), warnings));
        *out = tok.release();
        return LOWBIT_OK;
    });
}

void lowbit_tokenizer_free(lowbit_tokenizer* tok) { delete tok; }

int32_t lowbit_tokenizer_n_tokens(const lowbit_tokenizer* tok) { return tok ? int32_t(tok->impl->n_tokens()) : 0; }
int32_t lowbit_tokenizer_bos(const lowbit_tokenizer* tok) { return tok ? tok->impl->vocab().bos : -1; }
int32_t lowbit_tokenizer_eos(const lowbit_tokenizer* tok) { return tok ? tok->impl->vocab().eos : -1; }

int lowbit_tokenizer_is_eog(const lowbit_tokenizer* tok, int32_t id) {
    if (!tok) return 0;
    for (int32_t e : tok->impl->vocab().eog_ids)
        if (e == id) return 1;
    return 0;
}

lowbit_status lowbit_tokenize(const lowbit_tokenizer* tok, const char* text, size_t text_len, int add_special,
                              int parse_special, int32_t* ids, size_t capacity, size_t* n_ids) {
    LOWBIT_REQUIRE(tok && (text || text_len == 0) && n_ids && (ids || capacity == 0), "lowbit_tokenize: NULL argument");
    return guarded([&] {
        const std::vector<int32_t> out =
            tok->impl->encode(std::string_view(text ? text : "", text_len), add_special != 0, parse_special != 0);
        *n_ids = out.size();
        if (out.size() > capacity)
            return fail(LOWBIT_ERR_BUFFER, lowbit::str("lowbit_tokenize: ", out.size(), " ids do not fit in ", capacity));
        std::copy(out.begin(), out.end(), ids);
        return LOWBIT_OK;
    });
}

lowbit_status lowbit_detokenize(const lowbit_tokenizer* tok, const int32_t* ids, size_t n_ids, int special, char* buf,
                                size_t capacity, size_t* n_bytes) {
    LOWBIT_REQUIRE(tok && (ids || n_ids == 0) && n_bytes && (buf || capacity == 0), "lowbit_detokenize: NULL argument");
    return guarded([&] {
        for (size_t i = 0; i < n_ids; ++i)
            LOWBIT_CHECK(ids[i] >= 0 && size_t(ids[i]) < tok->impl->n_tokens(), ValueError, "token id ", ids[i],
                         " (at ", i, ") is out of range for a vocabulary of ", tok->impl->n_tokens());
        const std::string out = tok->impl->detokenize(ids, n_ids, special != 0);
        *n_bytes = out.size();
        if (out.size() > capacity)
            return fail(LOWBIT_ERR_BUFFER, lowbit::str("lowbit_detokenize: ", out.size(), " bytes do not fit in ", capacity));
        std::copy(out.begin(), out.end(), buf);
        return LOWBIT_OK;
    });
}

lowbit_sampling_params lowbit_sampling_default(void) {
    return lowbit_sampling_params{0.8, 40, 0.95, 0.05, 1.0, 64, -1};
}

lowbit_status lowbit_sampler_new(const lowbit_sampling_params* params, lowbit_sampler** out) {
    LOWBIT_REQUIRE(params && out, "lowbit_sampler_new: NULL argument");
    *out = nullptr;
    return guarded([&] {
        check_params(*params);
        lowbit::sampling::SamplerParams p;        // presence / frequency / bias: off (not in the C struct)
        p.temperature = params->temperature;
        p.top_k = params->top_k;
        p.top_p = params->top_p;
        p.min_p = params->min_p;
        p.repetition_penalty = params->repetition_penalty;
        p.repeat_last_n = params->repeat_last_n;
        const std::vector<uint32_t> words =
            params->seed < 0 ? std::vector<uint32_t>{} : lowbit::sampling::seed_words(uint64_t(params->seed));
        auto s = std::make_unique<lowbit_sampler>();
        s->impl = std::make_unique<lowbit::sampling::Sampler>(p, words);
        s->seed_words = words;
        *out = s.release();
        return LOWBIT_OK;
    });
}

void lowbit_sampler_free(lowbit_sampler* sampler) { delete sampler; }

lowbit_status lowbit_sampler_set_openai(lowbit_sampler* sampler, double presence_penalty, double frequency_penalty,
                                        const int32_t* bias_ids, const double* bias_values, size_t n_bias) {
    LOWBIT_REQUIRE(sampler && (n_bias == 0 || (bias_ids && bias_values)), "lowbit_sampler_set_openai: NULL argument");
    return guarded([&] {
        LOWBIT_CHECK(!sampler->drawn, ValueError, "lowbit_sampler_set_openai: call it before the first lowbit_sample");
        // the range rules of lowbit.runtime.sampling, with its messages
        LOWBIT_CHECK(std::isfinite(presence_penalty) && std::fabs(presence_penalty) <= 2.0, ValueError,
                     "presence_penalty must be in [-2, 2], got ", presence_penalty);
        LOWBIT_CHECK(std::isfinite(frequency_penalty) && std::fabs(frequency_penalty) <= 2.0, ValueError,
                     "frequency_penalty must be in [-2, 2], got ", frequency_penalty);
        lowbit::sampling::SamplerParams p = sampler->impl->params();
        p.presence_penalty = presence_penalty;
        p.frequency_penalty = frequency_penalty;
        p.logit_bias.clear();
        for (size_t i = 0; i < n_bias; ++i) {
            LOWBIT_CHECK(bias_ids[i] >= 0, ValueError, "logit_bias keys must be token ids (integers >= 0), got ",
                         bias_ids[i]);
            LOWBIT_CHECK(std::isfinite(bias_values[i]) && std::fabs(bias_values[i]) <= 100.0, ValueError,
                         "logit_bias[", bias_ids[i], "] must be in [-100, 100], got ", bias_values[i]);
            p.logit_bias.emplace_back(bias_ids[i], bias_values[i]);
        }
        sampler->impl = std::make_unique<lowbit::sampling::Sampler>(p, sampler->seed_words);
        return LOWBIT_OK;
    });
}

lowbit_status lowbit_sample(lowbit_sampler* sampler, const float* logits, size_t n_vocab, const int32_t* history,
                            size_t n_history, int32_t* token) {
    LOWBIT_REQUIRE(sampler && logits && token && (history || n_history == 0), "lowbit_sample: NULL argument");
    LOWBIT_REQUIRE(n_vocab > 0, "lowbit_sample: n_vocab is 0");
    return guarded([&] {
        // only the window the penalty sees crosses over (not the whole history each token)
        const int64_t last_n = sampler->impl->params().repeat_last_n;
        const size_t take = last_n < 0 ? n_history : std::min(n_history, size_t(last_n));
        const std::vector<int64_t> recent(history + (n_history - take), history + n_history);
        sampler->drawn = true;
        *token = int32_t(sampler->impl->sample(logits, n_vocab, recent.data(), recent.size()));
        return LOWBIT_OK;
    });
}

}  // extern "C"

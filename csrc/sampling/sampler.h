// sampler.h: the token sampler (one implementation; Python's lowbit.runtime.sampling and the C API
// call it). Chain, as llama.cpp's default order (llama.cpp's server and vLLM both add the logit
// bias first and apply the penalties to the biased logits; vLLM then scales by the temperature
// before truncating, llama.cpp and lowbit truncate first):
//   logit bias -> repetition penalty (last n tokens) -> presence / frequency penalties
//   (the tokens this sampler drew) -> top-k -> top-p -> min-p -> temperature -> draw
// temperature <= 0 is greedy: the first index of the largest adjusted logit.
//
// Exact rules (each filter sets removed tokens to -inf and never touches its input's kept values):
//   bias      x[id] += bias for each (id, bias) of logit_bias (OpenAI's: -100..100, the caller
//             checks the range); an id outside the row is a ValueError.
//   penalty   each distinct id of the window in [0, n): x > 0 -> x / penalty, else x * penalty.
//   presence / frequency   OpenAI's (and vLLM's): over the tokens generated so far, c = how
//             often id was drawn: x[id] -= c * frequency + (c > 0) * presence. The counts are the
//             sampler's own: sample() counts the token it returns, accept() one chosen without a
//             draw (a token a grammar forces). llama.cpp counts its penalty window instead.
//   top-k     k <= 0 or k >= n: off. Keeps the k largest; ties go to the lower index.
//   top-p     p >= 1: off. probs = softmax(x); tokens by probability descending (ties: lower index
//             first); keeps the first max(i + 1, min_keep), i = first position where the running
//             sum of probabilities reaches p (all of them when it never does).
//   min-p     p <= 0: off. Keeps finite x >= max(x) + log(p); when fewer than min_keep remain,
//             the min_keep largest (ties: lower index).
//   draw      probs = softmax(x / temperature) over the candidates in descending order;
//             cdf = running sum / its last value; index = first cdf > u, u = rng.next_double().
// The arithmetic follows numpy's so seeded draws equal numpy's default_rng chain: sums of
// probabilities are numpy's pairwise sum, running sums sequential. NaN logits are a ValueError;
// a row with no finite logit after the filters is a ValueError ("logits have no finite entry").
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "sampling/rng.h"

namespace lowbit::sampling {

struct SamplerParams {
    double temperature = 0.8;         // <= 0: greedy
    int64_t top_k = 40;               // 0: off
    double top_p = 0.95;              // 1: off
    double min_p = 0.05;              // 0: off
    double repetition_penalty = 1.0;  // 1: off
    int64_t repeat_last_n = 64;       // window of the history the penalty sees; -1: all, 0: none
    double presence_penalty = 0.0;    // 0: off (OpenAI's range -2..2, checked by the callers)
    double frequency_penalty = 0.0;   // 0: off
    std::vector<std::pair<int64_t, double>> logit_bias;   // (token id, added to its logit)
};

// How often each token was generated so far (the presence / frequency penalties' counts).
using TokenCounts = std::map<int64_t, int64_t>;

// The window of `history` the penalty looks at, per repeat_last_n.
struct Window {
    const int64_t* ids;
    size_t n;
};
Window penalty_window(const SamplerParams& p, const int64_t* history, size_t n_history);

// ---- the filters on a full row of double logits, in place ---------------------------------------
void apply_repetition_penalty(double* x, size_t n, Window recent, double penalty);
void apply_logit_bias(double* x, size_t n, const std::vector<std::pair<int64_t, double>>& bias);
void apply_presence_frequency(double* x, size_t n, const TokenCounts& counts, double presence, double frequency);
void keep_top_k(double* x, size_t n, int64_t k);
void keep_top_p(double* x, size_t n, double p, size_t min_keep = 1);
void keep_min_p(double* x, size_t n, double p, size_t min_keep = 1);
void softmax(const double* x, size_t n, double* out);   // throws ValueError without a finite entry
double pairwise_sum(const double* a, size_t n);          // numpy's summation order

class Sampler {
public:
    // seed_words: the seed's little-endian uint32 words (see rng.h); empty = a random seed.
    Sampler(const SamplerParams& params, const std::vector<uint32_t>& seed_words);
    const SamplerParams& params() const { return params_; }

    // One token from a row of logits (float or double); `history` = every token so far (its
    // last repeat_last_n are the penalty window). `ids`: when not null, entry j of the row is
    // token ids[j] (ascending; a grammar's allowed tokens): bias, penalties and counts are looked
    // up through it, tokens outside it are skipped, and the token id is returned, not j.
    // The returned token is counted for the presence / frequency penalties.
    template <typename T>
    int64_t sample(const T* logits, size_t n, const int64_t* history, size_t n_history,
                   const int64_t* ids = nullptr);

    // Counts `token` as generated without a draw (a token a grammar forces).
    void accept(int64_t token) { ++counts_[token]; }
    const TokenCounts& counts() const { return counts_; }

    // The filtered, temperature-scaled row the draw uses (adjusted logits when greedy).
    template <typename T>
    void filtered_logits(const T* logits, size_t n, const int64_t* history, size_t n_history,
                         double* out, const int64_t* ids = nullptr) const;

private:
    SamplerParams params_;
    Pcg64 rng_;
    TokenCounts counts_;
};

}  // namespace lowbit::sampling

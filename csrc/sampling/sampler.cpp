// sampler.cpp: the filters and the draw (rules in sampler.h).
#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <queue>

#include "common.h"

namespace lowbit::sampling {
namespace {
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Descending by value, ties: lower index first (the order every filter ranks tokens in).
struct Ranked {
    double value;
    int64_t index;
};
bool ranks_before(const Ranked& a, const Ranked& b) {
    return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Indices of x (no NaN) in rank order: values descending, ties by index. A stable LSD radix
// sort on order-preserving 64-bit keys (8 passes of 8 bits): a full vocabulary in a few ms,
// where a comparison sort takes tens.
std::vector<int64_t> rank_order(const double* x, size_t n) {
    std::vector<uint64_t> keys(n), keys_tmp(n);
    std::vector<int64_t> order(n), order_tmp(n);
    for (size_t i = 0; i < n; ++i) {
        const double v = x[i] == 0.0 ? 0.0 : x[i];     // -0.0 ties with +0.0, as comparisons say
        uint64_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        const uint64_t ascending = (bits >> 63) ? ~bits : (bits | (uint64_t(1) << 63));
        keys[i] = ~ascending;                          // descending values sort first
        order[i] = int64_t(i);
    }
    for (int shift = 0; shift < 64; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 0xFF) + 1];
        if (count[1 + ((keys[0] >> shift) & 0xFF)] == n) continue;   // every key shares this byte
        for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
        for (size_t i = 0; i < n; ++i) {
            const size_t slot = count[(keys[i] >> shift) & 0xFF]++;
            keys_tmp[slot] = keys[i];
            order_tmp[slot] = order[i];
        }
        keys.swap(keys_tmp);
        order.swap(order_tmp);
    }
    return order;
}

// Adjusted values (bias, then penalties) of the few row entries they touch, sorted by row
// position (a row is never copied: the scan substitutes these few).
struct Overrides {
    std::vector<int64_t> ids;        // row positions
    std::vector<double> values;
};

// Row position of token t, or -1 when the row has no entry for it (`ids`: see Sampler::sample).
int64_t row_of(int64_t t, size_t n, const int64_t* ids) {
    if (ids == nullptr) return (t >= 0 && t < int64_t(n)) ? t : -1;
    const int64_t* it = std::lower_bound(ids, ids + n, t);
    return (it != ids + n && *it == t) ? int64_t(it - ids) : -1;
}

struct Adjustment {
    int64_t pos;
    double bias = 0.0;
    bool repeated = false;           // in the repetition penalty's window
    int64_t count = 0;               // times generated
};

// The chain's first three steps (sampler.h) on the entries they touch.
template <typename T>
Overrides adjustments(const T* logits, size_t n, const int64_t* ids, const SamplerParams& p, Window recent,
                      const TokenCounts& counts) {
    std::vector<Adjustment> touched;
    for (const auto& [token, bias] : p.logit_bias) {
        if (ids == nullptr && (token < 0 || token >= int64_t(n)))
            throw ValueError(str("logit_bias: token id ", token, " is out of range for ", n, " logits"));
        if (const int64_t pos = row_of(token, n, ids); pos >= 0) touched.push_back({pos, bias});
    }
    if (p.repetition_penalty != 1.0)
        for (size_t i = 0; i < recent.n; ++i)
            if (const int64_t pos = row_of(recent.ids[i], n, ids); pos >= 0) touched.push_back({pos, 0.0, true});
    if (p.presence_penalty != 0.0 || p.frequency_penalty != 0.0)
        for (const auto& [token, count] : counts)
            if (const int64_t pos = row_of(token, n, ids); pos >= 0) touched.push_back({pos, 0.0, false, count});
    std::sort(touched.begin(), touched.end(), [](const Adjustment& a, const Adjustment& b) { return a.pos < b.pos; });
    Overrides o;
    for (size_t i = 0; i < touched.size();) {
        Adjustment a = touched[i];
        for (++i; i < touched.size() && touched[i].pos == a.pos; ++i) {
            a.bias += touched[i].bias;
            a.repeated |= touched[i].repeated;
            a.count += touched[i].count;
        }
        double v = double(logits[a.pos]) + a.bias;
        if (a.repeated) v = v > 0 ? v / p.repetition_penalty : v * p.repetition_penalty;
        if (a.count > 0) v -= double(a.count) * p.frequency_penalty + p.presence_penalty;
        o.ids.push_back(a.pos);
        o.values.push_back(v);
    }
    return o;
}

void apply(double* x, const Overrides& o) {
    for (size_t j = 0; j < o.ids.size(); ++j) x[o.ids[j]] = o.values[j];
}

[[noreturn]] void throw_nan(size_t i) {
    throw ValueError(str("logits contain NaN (first at index ", i, ")"));
}

// The largest T that is <= bound: a float row is compared in float (vectorized) without ever
// skipping a value whose double is above the bound.
template <typename T>
T floor_to(double bound) {
    T t = T(bound);
    if (double(t) > bound) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
    return t;
}

// Calls consider(i, v) for each i in [begin, n) whose penalized value v is above `bound`
// (which consider may raise), in ascending i. Blocks with no value above the bound, no NaN and
// no penalized id are skipped after one vectorizable pass, so most of a row costs one compare.
template <typename T, typename Consider>
void scan_above(const T* x, size_t begin, size_t n, const Overrides& o, double& bound, Consider&& consider) {
    constexpr size_t kBlock = 64;
    size_t next = size_t(std::lower_bound(o.ids.begin(), o.ids.end(), int64_t(begin)) - o.ids.begin());
    for (size_t b = begin; b < n; b += kBlock) {
        const size_t e = std::min(n, b + kBlock);
        const bool penalized = next < o.ids.size() && o.ids[next] < int64_t(e);
        if (!penalized) {
            const T lo = floor_to<T>(bound);
            int hot = 0;
            for (size_t i = b; i < e; ++i) hot |= int(x[i] > lo) | int(x[i] != x[i]);
            if (!hot) continue;
        }
        for (size_t i = b; i < e; ++i) {
            double v = double(x[i]);
            if (next < o.ids.size() && o.ids[next] == int64_t(i)) v = o.values[next++];
            if (std::isnan(v)) throw_nan(i);
            if (v > bound) consider(i, v);
        }
    }
}

// Value i of a row with the overrides applied (for the few entries read one by one).
template <typename T>
double penalized_at(const T* x, const Overrides& o, size_t i) {
    auto it = std::lower_bound(o.ids.begin(), o.ids.end(), int64_t(i));
    const double v = (it != o.ids.end() && *it == int64_t(i)) ? o.values[size_t(it - o.ids.begin())] : double(x[i]);
    if (std::isnan(v)) throw_nan(i);
    return v;
}

// The k best entries of a row in rank order: a k-entry heap whose top is the worst kept; the
// first k entries fill it, then only values above its top are looked at.
template <typename T>
std::vector<Ranked> top_k_ranked(const T* x, size_t n, size_t k, const Overrides& o) {
    std::priority_queue<Ranked, std::vector<Ranked>, decltype(&ranks_before)> worst_on_top(ranks_before);
    for (size_t i = 0; i < std::min(k, n); ++i) worst_on_top.push({penalized_at(x, o, i), int64_t(i)});
    double bound = worst_on_top.top().value;     // equal values: the earlier index stays
    scan_above(x, k, n, o, bound, [&](size_t i, double v) {
        worst_on_top.pop();
        worst_on_top.push({v, int64_t(i)});
        bound = worst_on_top.top().value;
    });
    std::vector<Ranked> out(worst_on_top.size());
    for (size_t i = out.size(); i-- > 0; worst_on_top.pop()) out[i] = worst_on_top.top();
    return out;
}

// The first index of the largest penalized value (numpy's argmax of the penalized row).
template <typename T>
size_t argmax(const T* x, size_t n, const Overrides& o) {
    size_t best = 0;
    double bound = penalized_at(x, o, 0);
    scan_above(x, 1, n, o, bound, [&](size_t i, double v) { best = i; bound = v; });
    return best;
}
}  // namespace

double pairwise_sum(const double* a, size_t n) {
    // numpy's DOUBLE_pairwise_sum: 8 running sums per 128-block, halves (multiples of 8) above.
    if (n < 8) {
        double res = 0.0;
        for (size_t i = 0; i < n; ++i) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        size_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

void softmax(const double* x, size_t n, double* out) {
    const double m = n ? *std::max_element(x, x + n) : kNegInf;
    if (!std::isfinite(m)) throw ValueError("logits have no finite entry");
    for (size_t i = 0; i < n; ++i) out[i] = x[i] == kNegInf ? 0.0 : std::exp(x[i] - m);   // removed: skip exp
    const double total = pairwise_sum(out, n);
    for (size_t i = 0; i < n; ++i) out[i] /= total;
}

Window penalty_window(const SamplerParams& p, const int64_t* history, size_t n_history) {
    if (p.repeat_last_n == -1) return {history, n_history};
    const size_t take = std::min(n_history, size_t(std::max<int64_t>(p.repeat_last_n, 0)));
    return {history + (n_history - take), take};
}

void apply_repetition_penalty(double* x, size_t n, Window recent, double penalty) {
    SamplerParams p;
    p.repetition_penalty = penalty;
    apply(x, adjustments(x, n, nullptr, p, recent, {}));
}

void apply_logit_bias(double* x, size_t n, const std::vector<std::pair<int64_t, double>>& bias) {
    SamplerParams p;
    p.logit_bias = bias;
    apply(x, adjustments(x, n, nullptr, p, {nullptr, 0}, {}));
}

void apply_presence_frequency(double* x, size_t n, const TokenCounts& counts, double presence, double frequency) {
    SamplerParams p;
    p.presence_penalty = presence;
    p.frequency_penalty = frequency;
    apply(x, adjustments(x, n, nullptr, p, {nullptr, 0}, counts));
}

void keep_top_k(double* x, size_t n, int64_t k) {
    if (k <= 0 || size_t(k) >= n) return;
    std::vector<Ranked> best = top_k_ranked(x, n, size_t(k), Overrides{});
    std::vector<double> kept(best.size());
    for (size_t j = 0; j < best.size(); ++j) kept[j] = x[best[j].index];
    std::fill(x, x + n, kNegInf);
    for (size_t j = 0; j < best.size(); ++j) x[best[j].index] = kept[j];
}

void keep_top_p(double* x, size_t n, double p, size_t min_keep) {
    if (p >= 1.0) return;
    std::vector<double> probs(n);
    softmax(x, n, probs.data());
    const std::vector<int64_t> order = rank_order(probs.data(), n);
    double cum = 0.0;
    size_t reach = n;                       // first position whose running sum is >= p
    for (size_t i = 0; i < n; ++i) {
        cum += probs[order[i]];
        if (cum >= p) { reach = i; break; }
    }
    const size_t n_keep = std::max(reach + 1, min_keep);
    for (size_t i = n_keep; i < n; ++i) x[order[i]] = kNegInf;
}

void keep_min_p(double* x, size_t n, double p, size_t min_keep) {
    if (p <= 0.0 || n == 0) return;
    const double threshold = *std::max_element(x, x + n) + std::log(p);
    size_t n_keep = 0;
    for (size_t i = 0; i < n; ++i) n_keep += std::isfinite(x[i]) && x[i] >= threshold;
    if (n_keep >= min_keep) {
        for (size_t i = 0; i < n; ++i)
            if (!(std::isfinite(x[i]) && x[i] >= threshold)) x[i] = kNegInf;
        return;
    }
    const std::vector<int64_t> order = rank_order(x, n);
    for (size_t i = min_keep; i < n; ++i) x[order[i]] = kNegInf;
}

Sampler::Sampler(const SamplerParams& params, const std::vector<uint32_t>& seed_words)
    : params_(params), rng_(seed_words) {}

template <typename T>
void Sampler::filtered_logits(const T* logits, size_t n, const int64_t* history, size_t n_history,
                              double* out, const int64_t* ids) const {
    const SamplerParams& p = params_;
    for (size_t i = 0; i < n; ++i) {
        out[i] = double(logits[i]);
        if (std::isnan(out[i])) throw_nan(i);
    }
    apply(out, adjustments(logits, n, ids, p, penalty_window(p, history, n_history), counts_));
    if (p.temperature <= 0) return;
    keep_top_k(out, n, p.top_k);
    keep_top_p(out, n, p.top_p);
    keep_min_p(out, n, p.min_p);
    for (size_t i = 0; i < n; ++i) out[i] /= p.temperature;
}

namespace {
// The row position the chain draws from a row whose first entries `o` adjusted.
template <typename T>
size_t draw(const SamplerParams& p, Pcg64& rng, const T* logits, size_t n, const Overrides& o) {
    if (p.temperature <= 0) return argmax(logits, n, o);   // greedy
    // top-k on the full row, then the rest of the chain on the k candidates in rank order: the
    // same distribution as filtered_logits without sorting the vocabulary.
    const size_t k = (p.top_k > 0 && size_t(p.top_k) < n) ? size_t(p.top_k) : n;
    std::vector<Ranked> cand;
    if (k < n) {
        cand = top_k_ranked(logits, n, k, o);
    } else {
        std::vector<double> row(n);
        for (size_t i = 0; i < n; ++i) row[i] = double(logits[i]);
        for (size_t j = 0; j < o.ids.size(); ++j) row[size_t(o.ids[j])] = o.values[j];
        for (size_t i = 0; i < n; ++i)
            if (std::isnan(row[i])) throw_nan(i);
        cand.resize(n);
        size_t j = 0;
        for (int64_t i : rank_order(row.data(), n)) cand[j++] = {row[size_t(i)], i};
    }
    std::vector<double> vals(cand.size()), probs(cand.size());
    for (size_t j = 0; j < cand.size(); ++j) vals[j] = cand[j].value;
    keep_top_p(vals.data(), vals.size(), p.top_p);
    keep_min_p(vals.data(), vals.size(), p.min_p);
    for (double& v : vals) v /= p.temperature;
    softmax(vals.data(), vals.size(), probs.data());
    // numpy Generator.choice(len, p=probs): cdf = cumsum / its last value; first cdf > u
    for (size_t j = 1; j < probs.size(); ++j) probs[j] += probs[j - 1];
    const double last = probs.back();
    for (double& c : probs) c /= last;
    const double u = rng.next_double();
    const size_t pick = size_t(std::upper_bound(probs.begin(), probs.end(), u) - probs.begin());
    return size_t(cand[std::min(pick, cand.size() - 1)].index);
}
}  // namespace

template <typename T>
int64_t Sampler::sample(const T* logits, size_t n, const int64_t* history, size_t n_history, const int64_t* ids) {
    if (n == 0) throw ValueError("logits must be a non-empty 1-D array, got shape (0,)");
    const Window recent = penalty_window(params_, history, n_history);
    const size_t pos = draw(params_, rng_, logits, n, adjustments(logits, n, ids, params_, recent, counts_));
    const int64_t token = ids == nullptr ? int64_t(pos) : ids[pos];
    accept(token);
    return token;
}

template int64_t Sampler::sample<float>(const float*, size_t, const int64_t*, size_t, const int64_t*);
template int64_t Sampler::sample<double>(const double*, size_t, const int64_t*, size_t, const int64_t*);
template void Sampler::filtered_logits<float>(const float*, size_t, const int64_t*, size_t, double*,
                                              const int64_t*) const;
template void Sampler::filtered_logits<double>(const double*, size_t, const int64_t*, size_t, double*,
                                               const int64_t*) const;

}  // namespace lowbit::sampling

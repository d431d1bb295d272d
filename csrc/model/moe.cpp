// moe.cpp: see moe.h.
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "cpu/ops.h"

namespace lowbit::model {
namespace {

constexpr float kOaiAlpha = 1.702f, kOaiLimit = 7.0f;   // gpt-oss's SwiGLU (llama.cpp's constants)
constexpr float kMinWeightSum = 6.103515625e-5f;          // llama.cpp clamps the sum it divides by
constexpr int64_t kPrefillTokens = 16;   // batches from this size on count as prefill (see moe_feed_forward)

void project(const Matrix& w, const float* x, int64_t n, float* y, cpu::ThreadPool& pool, cpu::ActPrecision prec) {
    if (n == 1) cpu::matvec(w.data, w.type, w.rows, w.cols, x, y, pool, prec);
    else cpu::matmul(w.data, w.type, w.rows, w.cols, x, n, y, pool, prec);
}

void observe(MatmulObserver* obs, cpu::ThreadPool& pool, int64_t il, std::initializer_list<const char*> roles,
             const float* x, int64_t n, int64_t cols) {
    if (!obs) return;
    std::vector<std::string> names;
    for (const char* role : roles) names.push_back("blk." + std::to_string(il) + "." + role + ".weight");
    obs->observe(names, x, n, cols, pool);
}

// h = act(g) * u in place over g (one row of F).
void gated_act(FfnAct act, float* g, const float* u, int64_t F) {
    if (act == FfnAct::SiLU) {
        cpu::silu_mul(g, u, g, F);
    } else if (act == FfnAct::GeluTanh) {
        cpu::gelu_tanh_mul(g, u, g, F);
    } else {   // SwigluOai
        for (int64_t i = 0; i < F; ++i) {
            const float x = std::min(g[i], kOaiLimit), y = std::clamp(u[i], -kOaiLimit, kOaiLimit);
            g[i] = x / (1.0f + std::exp(-kOaiAlpha * x)) * (y + 1.0f);
        }
    }
}

// Slots t * k + j grouped by expert (a counting sort): s.order[s.first[e] .. s.first[e + 1]).
void group_by_expert(const ModelConfig& c, int64_t n, MoeScratch& s) {
    const int64_t k = c.n_expert_used;
    std::fill(s.first.begin(), s.first.end(), 0);
    for (int64_t i = 0; i < n * k; ++i) ++s.first[size_t(s.selected[size_t(i)]) + 1];
    for (int64_t e = 0; e < c.n_expert; ++e) s.first[size_t(e) + 1] += s.first[size_t(e)];
    // filled in token order, so each expert's rows stay in ascending token order
    std::copy(s.first.begin(), s.first.end() - 1, s.cursor.begin());
    for (int64_t i = 0; i < n * k; ++i) s.order[size_t(s.cursor[size_t(s.selected[size_t(i)])]++)] = i;
}

// One expert over its `cnt` token rows (already gathered in s.x): s.down = down(act(gate) * up) + biases.
void run_expert(const ModelConfig& c, const LayerWeights& l, int64_t il, int64_t e, int64_t cnt, MoeScratch& s,
                cpu::ThreadPool& pool, cpu::ActPrecision prec, MatmulObserver* obs) {
    const int64_t E = c.n_embd, F = c.n_ff_exp;
    observe(obs, pool, il, {"ffn_gate_exps", "ffn_up_exps"}, s.x.data(), cnt, E);
    project(l.gate_exps.expert(e), s.x.data(), cnt, s.gate.data(), pool, prec);
    project(l.up_exps.expert(e), s.x.data(), cnt, s.up.data(), pool, prec);
    auto row = [&](int64_t i) {
        float* g = s.gate.data() + i * F;
        float* u = s.up.data() + i * F;
        if (!l.gate_exps_b.empty()) {
            cpu::add_inplace(g, l.gate_exps_b.data() + e * F, F);
            cpu::add_inplace(u, l.up_exps_b.data() + e * F, F);
        }
        gated_act(c.ffn_act, g, u, F);
    };
    if (cnt == 1) row(0);
    else pool.parallel_for(cnt, [&](int64_t i, int) { row(i); });
    observe(obs, pool, il, {"ffn_down_exps"}, s.gate.data(), cnt, F);
    project(l.down_exps.expert(e), s.gate.data(), cnt, s.down.data(), pool, prec);
    if (!l.down_exps_b.empty())
        for (int64_t i = 0; i < cnt; ++i) cpu::add_inplace(s.down.data() + i * E, l.down_exps_b.data() + e * E, E);
}

}  // namespace

MoeScratch::MoeScratch(const ModelConfig& c, int64_t n_batch) {
    if (!c.is_moe()) return;
    const size_t B = size_t(n_batch), k = size_t(c.n_expert_used);
    logits.resize(B * size_t(c.n_expert));
    selected.resize(B * k);
    weight.resize(B * k);
    first.resize(size_t(c.n_expert) + 1);
    cursor.resize(size_t(c.n_expert));
    ids.resize(size_t(c.n_expert));
    order.resize(B * k);
    x.resize(B * size_t(c.n_embd));
    gate.resize(B * size_t(c.n_ff_exp));
    up.resize(B * size_t(c.n_ff_exp));
    down.resize(B * size_t(c.n_embd));
}

int64_t MoeScratch::bytes() const {
    const size_t floats = logits.size() + weight.size() + x.size() + gate.size() + up.size() + down.size();
    return int64_t(floats * sizeof(float) + (selected.size() + ids.size()) * sizeof(int32_t) +
                   (first.size() + cursor.size() + order.size()) * sizeof(int64_t));
}

void route_token(const ModelConfig& c, float* logits, int32_t* ids, int32_t* selected, float* weight) {
    const int64_t X = c.n_expert, k = c.n_expert_used;
    if (c.expert_gating == ExpertGating::Softmax) {   // probabilities first, selection on them
        const float mx = *std::max_element(logits, logits + X);
        double sum = 0.0;
        for (int64_t e = 0; e < X; ++e) { logits[e] = std::exp(logits[e] - mx); sum += logits[e]; }
        for (int64_t e = 0; e < X; ++e) logits[e] = float(logits[e] / sum);
    }
    // top-k, the larger value first and the lower id on ties; then sorted by id (moe.h)
    std::iota(ids, ids + X, 0);
    std::partial_sort(ids, ids + k, ids + X, [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    std::sort(ids, ids + k);
    for (int64_t j = 0; j < k; ++j) { selected[j] = ids[j]; weight[j] = logits[ids[j]]; }
    if (c.expert_gating == ExpertGating::SoftmaxTopK) {
        const float mx = *std::max_element(weight, weight + k);
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) { weight[j] = std::exp(weight[j] - mx); sum += weight[j]; }
        for (int64_t j = 0; j < k; ++j) weight[j] = float(weight[j] / sum);
    }
    if (c.expert_weights_norm) {
        double sum = 0.0;
        for (int64_t j = 0; j < k; ++j) sum += weight[j];
        const double inv = 1.0 / std::max(sum, double(kMinWeightSum));
        for (int64_t j = 0; j < k; ++j) weight[j] = float(weight[j] * inv);
    }
}

void moe_feed_forward(const ModelConfig& c, const LayerWeights& l, int64_t il, const float* xn, int64_t n,
                      float* out, MoeScratch& s, cpu::ThreadPool& pool, cpu::ActPrecision prec,
                      MatmulObserver* observer) {
    const int64_t E = c.n_embd, X = c.n_expert, k = c.n_expert_used;
    observe(observer, pool, il, {"ffn_gate_inp"}, xn, n, E);
    project(l.router, xn, n, s.logits.data(), pool, prec);
    for (int64_t t = 0; t < n; ++t) {
        float* lg = s.logits.data() + t * X;
        if (!l.router_b.empty()) cpu::add_inplace(lg, l.router_b.data(), X);
        route_token(c, lg, s.ids.data(), s.selected.data() + t * k, s.weight.data() + t * k);
    }
    group_by_expert(c, n, s);
    std::memset(out, 0, size_t(n * E) * sizeof(float));
    // Auto (cpu/matmul.h) keeps two-pass activations where the second pass is cheap: decode, and
    // matmuls of >= 16 rows with a strip GEMM. A prefill batch gives each expert only its share of
    // the tokens (n k / n_expert rows on average), which go through the multi-row dots at 2x the
    // integer work, so expert matmuls of a prefill batch use 8-bit activations (llama.cpp's).
    const cpu::ActPrecision expert_prec = prec == cpu::ActPrecision::Auto && n >= kPrefillTokens
                                              ? cpu::ActPrecision::Q8 : prec;
    for (int64_t e = 0; e < X; ++e) {   // ascending ids: each token adds its experts in id order
        const int64_t a = s.first[size_t(e)], cnt = s.first[size_t(e) + 1] - a;
        if (cnt == 0) continue;
        for (int64_t i = 0; i < cnt; ++i)
            std::memcpy(s.x.data() + i * E, xn + (s.order[size_t(a + i)] / k) * E, size_t(E) * sizeof(float));
        run_expert(c, l, il, e, cnt, s, pool, expert_prec, observer);
        for (int64_t i = 0; i < cnt; ++i) {
            const int64_t slot = s.order[size_t(a + i)];
            cpu::axpy_f32(out + (slot / k) * E, s.weight[size_t(slot)], s.down.data() + i * E, E);
        }
    }
}

}  // namespace lowbit::model

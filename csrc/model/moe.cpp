// moe.cpp: see moe.h.
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>

#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/ops.h"

namespace lowbit::model {
namespace {

constexpr float kOaiAlpha = 1.702f, kOaiLimit = 7.0f;   // gpt-oss's SwiGLU (llama.cpp's constants)
constexpr float kMinWeightSum = 6.103515625e-5f;          // llama.cpp clamps the sum it divides by
// Per-token loops (routing, the shared expert's gate) run on the pool from this many tokens: one
// token's work is ~1-2 us (128 experts: softmax and top-k), a parallel_for's barrier a few us.
constexpr int64_t kParallelTokens = 8;

// fn(t, thread) for every token t < n: on the pool from kParallelTokens tokens, else on the caller
// (thread 0). Each token's result is its own, so the split does not change any bit.
template <typename Fn>
void for_tokens(int64_t n, cpu::ThreadPool& pool, Fn&& fn) {
    if (n < kParallelTokens) {
        for (int64_t t = 0; t < n; ++t) fn(t, 0);
    } else {
        pool.parallel_for(n, fn);
    }
}

// y (n, w.rows) = x w^T. Packed weights (an expert or a shared-expert matrix repacked at load,
// weights.h) take the packed GEMM for every n: a decode step's one-token gemv reads the strips in
// place with requests ahead, and a token's row comes out the same whatever the batch.
void project(const Matrix& w, const float* x, int64_t n, float* y, cpu::ThreadPool& pool, cpu::ActPrecision prec) {
    if (w.packed) cpu::matmul_packed(w.packed, w.type, w.rows, w.cols, x, n, y, pool, prec);
    else if (n == 1) cpu::matvec(w.data, w.type, w.rows, w.cols, x, y, pool, prec);
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

// The n rows of w.gate = act(gate + bg) * (up + bu) of expert e (bias rows where the model has them).
void activate_rows(const ModelConfig& c, const LayerWeights& l, int64_t e, int64_t n, MoeScratch::Worker& w) {
    const int64_t F = c.n_ff_exp;
    for (int64_t i = 0; i < n; ++i) {
        float* g = w.gate.data() + i * F;
        float* u = w.up.data() + i * F;
        if (!l.gate_exps_b.empty()) {
            cpu::add_inplace(g, l.gate_exps_b.data() + e * F, F);
            cpu::add_inplace(u, l.up_exps_b.data() + e * F, F);
        }
        gated_act(c.ffn_act, g, u, F);
    }
}

// Each slot's row of slot_out = its row of w.down + bd.
void store_slots(const ModelConfig& c, const LayerWeights& l, const MoeScratch::Item& it, MoeScratch& s,
                 MoeScratch::Worker& w) {
    const int64_t E = c.n_embd;
    const int64_t* slots = s.order.data() + it.first;
    for (int64_t i = 0; i < it.count; ++i) {
        float* y = s.slot_out.data() + slots[i] * E;
        std::memcpy(y, w.down.data() + i * E, size_t(E) * sizeof(float));
        if (!l.down_exps_b.empty()) cpu::add_inplace(y, l.down_exps_b.data() + it.expert * E, E);
    }
}

// One work item: expert e over its `count` slots order[first ..], with the worker's single-threaded
// pool (or `pool` when an observer is attached: the items then run one by one on the caller).
// Each slot's row of slot_out = down(act(gate x + bg) * (up x + bu)) + bd.
void run_item(const ModelConfig& c, const LayerWeights& l, int64_t il, const float* xn, const MoeScratch::Item& it,
              MoeScratch& s, MoeScratch::Worker& w, cpu::ThreadPool& pool, cpu::ActPrecision prec,
              MatmulObserver* obs) {
    const int64_t E = c.n_embd, F = c.n_ff_exp, k = c.n_expert_used, e = it.expert, n = it.count;
    const int64_t* slots = s.order.data() + it.first;
    for (int64_t i = 0; i < n; ++i)
        std::memcpy(w.x.data() + i * E, xn + (slots[i] / k) * E, size_t(E) * sizeof(float));
    observe(obs, pool, il, {"ffn_gate_exps", "ffn_up_exps"}, w.x.data(), n, E);
    project(l.gate_exps.expert(e), w.x.data(), n, w.gate.data(), pool, prec);
    project(l.up_exps.expert(e), w.x.data(), n, w.up.data(), pool, prec);
    activate_rows(c, l, e, n, w);
    observe(obs, pool, il, {"ffn_down_exps"}, w.gate.data(), n, F);
    project(l.down_exps.expert(e), w.gate.data(), n, w.down.data(), pool, prec);
    store_slots(c, l, it, s, w);
}

// ---- The 8-bit path -----------------------------------------------------------------------
// With 8-bit activations (the expert matmuls of every batch under "auto", or act_precision "q8")
// each token's xn row is quantized once per layer into s.xq, and a work item multiplies its
// tokens' rows from there: gate and up share them (matmul() would quantize every row of every
// item twice: 2k times per token). Per matrix, cpu::matmul_quantized: the strip GEMM from
// kStripGateUpRows / kStripDownRows rows, else the multi-row dots (matmul()'s loops on rows
// quantized here, so each output is what matmul() gives for that row in that path). The dots
// decode the weights once per 4 rows and cost ~15 us a row of a Q4_K 768 x 2048 matrix; the
// strip GEMM decodes the matrix once (~100 us with the weights coming from memory), then costs
// ~4 us a row; a 768-wide down row has 3 super-blocks, which the dots take one by one, not as a
// group of 4, so down's strip pays off sooner. Thread CPU time per item of the bench_moe model
// (prefill 64 and 128 tokens, 2 threads, every item on one path, then on the other):
//   gate + up: dots = strip at 8-9 rows (8: 276 vs 289 us, 9: 324 vs 311 us)
//   down:      dots = strip at 5 rows   (5: 144 vs 144 us, 6: 155 vs 151 us)
constexpr int64_t kStripGateUpRows = 9, kStripDownRows = 6;

// q8 rows of n elements in the activation format of `type` (never F32 on this path).
size_t q8_row_bytes(GGMLType type, int64_t n) { return cpu::act_row_bytes(cpu::act_format(type), n); }


// Whether the experts of layer l take the 8-bit path: quantized types, gate and up dotting the
// same activation format (so one quantized xn row serves both).
bool q8_experts(const LayerWeights& l) {
    const GGMLType g = l.gate_exps.first.type, u = l.up_exps.first.type, d = l.down_exps.first.type;
    return cpu::act_format(g) != cpu::ActFormat::F32 && cpu::act_format(g) == cpu::act_format(u) &&
           cpu::act_format(d) != cpu::ActFormat::F32;
}

// run_item on the 8-bit path: the item's xn rows from s.xq, its gated rows quantized into w.hq.
// y (n, m.rows) = m . q[i] for the item's n q8 rows, on the calling thread (the worker's pool).
// Packed experts: the packed GEMM in place for any number of rows (no strip decode to amortize,
// so strip_rows does not apply; cpu::matmul_quantized).
void expert_matmul(const Matrix& m, const void* const* q, int64_t n, float* y, MoeScratch::Worker& w,
                   int64_t strip_rows) {
    cpu::matmul_quantized(m.data, m.type, m.rows, m.cols, q, n, y, w.pool, strip_rows, m.packed);
}

void run_item_q8(const ModelConfig& c, const LayerWeights& l, const MoeScratch::Item& it, MoeScratch& s,
                 MoeScratch::Worker& w) {
    const int64_t E = c.n_embd, F = c.n_ff_exp, k = c.n_expert_used, e = it.expert, n = it.count;
    const int64_t* slots = s.order.data() + it.first;
    const void* q[kExpertRows];
    const size_t x_bytes = q8_row_bytes(l.gate_exps.first.type, E), h_bytes = q8_row_bytes(l.down_exps.first.type, F);
    for (int64_t i = 0; i < n; ++i) q[i] = s.xq.data() + size_t(slots[i] / k) * x_bytes;
    expert_matmul(l.gate_exps.expert(e), q, n, w.gate.data(), w, kStripGateUpRows);
    expert_matmul(l.up_exps.expert(e), q, n, w.up.data(), w, kStripGateUpRows);
    activate_rows(c, l, e, n, w);
    const cpu::KernelSet& ks = cpu::kernels();
    for (int64_t i = 0; i < n; ++i) {
        uint8_t* dst = w.hq.data() + size_t(i) * h_bytes;
        cpu::quantize_act_row(ks, cpu::act_format(l.down_exps.first.type), w.gate.data() + i * F, dst, F);
        q[i] = dst;
    }
    expert_matmul(l.down_exps.expert(e), q, n, w.down.data(), w, kStripDownRows);
    store_slots(c, l, it, s, w);
}

// qwen2moe's shared expert, added to out: sigmoid(xn . shexp_gate) * down(silu(gate xn) * up xn).
void add_shared_expert(const ModelConfig& c, const LayerWeights& l, int64_t il, const float* xn, int64_t n,
                       float* out, MoeScratch& s, cpu::ThreadPool& pool, cpu::ActPrecision prec,
                       MatmulObserver* obs) {
    const int64_t E = c.n_embd, F = c.n_ff_shexp;
    observe(obs, pool, il, {"ffn_gate_shexp", "ffn_up_shexp"}, xn, n, E);
    project(l.gate_shexp, xn, n, s.sh_gate.data(), pool, prec);
    project(l.up_shexp, xn, n, s.sh_up.data(), pool, prec);
    for (int64_t t = 0; t < n; ++t) gated_act(FfnAct::SiLU, s.sh_gate.data() + t * F, s.sh_up.data() + t * F, F);
    observe(obs, pool, il, {"ffn_down_shexp"}, s.sh_gate.data(), n, F);
    project(l.down_shexp, s.sh_gate.data(), n, s.sh_out.data(), pool, prec);
    for_tokens(n, pool, [&](int64_t t, int) {
        const float* x = xn + t * E;
        float logit = 0.0f;
        for (int64_t i = 0; i < E; ++i) logit += x[i] * l.shexp_gate[size_t(i)];
        cpu::axpy_f32(out + t * E, 1.0f / (1.0f + std::exp(-logit)), s.sh_out.data() + t * E, E);
    });
}

// The batch's work items: every selected expert's slots in runs of at most kExpertRows.
void make_items(const ModelConfig& c, MoeScratch& s) {
    s.items.clear();
    for (int64_t e = 0; e < c.n_expert; ++e)
        for (int64_t a = s.first[size_t(e)], b = s.first[size_t(e) + 1]; a < b; a += kExpertRows)
            s.items.push_back({e, a, std::min(kExpertRows, b - a)});
    // the largest first, so the pool's threads end together (an expert can have 10x the average)
    std::stable_sort(s.items.begin(), s.items.end(), [](const MoeScratch::Item& a, const MoeScratch::Item& b) {
        return a.count > b.count;
    });
}

// Bytes of the wider q8 row (q8_0 or q8_K) of n elements.
size_t widest_row_bytes(int64_t n) {
    const int64_t n256 = (n + QK_K - 1) / QK_K * QK_K;
    return std::max(cpu::act_row_bytes(cpu::ActFormat::Q8_0, n256), cpu::act_row_bytes(cpu::ActFormat::Q8_K, n256));
}

}  // namespace

MoeScratch::Worker::Worker(const ModelConfig& c) {
    x.resize(size_t(kExpertRows * c.n_embd));
    gate.resize(size_t(kExpertRows * c.n_ff_exp));
    up.resize(size_t(kExpertRows * c.n_ff_exp));
    down.resize(size_t(kExpertRows * c.n_embd));
    hq.resize(size_t(kExpertRows) * widest_row_bytes(c.n_ff_exp));
}

MoeScratch::MoeScratch(const ModelConfig& c, int64_t n_batch, int n_threads) {
    if (!c.is_moe()) return;
    const size_t B = size_t(n_batch), k = size_t(c.n_expert_used);
    logits.resize(B * size_t(c.n_expert));
    selected.resize(B * k);
    weight.resize(B * k);
    first.resize(size_t(c.n_expert) + 1);
    cursor.resize(size_t(c.n_expert));
    ids.resize(size_t(n_threads) * size_t(c.n_expert));
    order.resize(B * k);
    items.reserve(size_t(c.n_expert) + B * k / size_t(kExpertRows) + 1);
    slot_out.resize(B * k * size_t(c.n_embd));
    xq.resize(B * widest_row_bytes(c.n_embd));
    for (int t = 0; t < n_threads; ++t) workers.push_back(std::make_unique<Worker>(c));
    if (c.n_ff_shexp > 0) {
        sh_gate.resize(B * size_t(c.n_ff_shexp));
        sh_up.resize(B * size_t(c.n_ff_shexp));
        sh_out.resize(B * size_t(c.n_embd));
    }
}

int64_t MoeScratch::bytes() const {
    size_t floats = logits.size() + weight.size() + slot_out.size() + sh_gate.size() + sh_up.size() + sh_out.size();
    size_t bytes = xq.size();
    for (const auto& w : workers) {
        floats += w->x.size() + w->gate.size() + w->up.size() + w->down.size();
        bytes += w->hq.size();
    }
    return int64_t(floats * sizeof(float) + bytes + (selected.size() + ids.size()) * sizeof(int32_t) +
                   (first.size() + cursor.size() + order.size()) * sizeof(int64_t) + items.capacity() * sizeof(Item));
}

void route_token(const ModelConfig& c, float* logits, int32_t* ids, int32_t* selected, float* weight) {
    const int64_t X = c.n_expert, k = c.n_expert_used;
    if (c.expert_gating == ExpertGating::Softmax) {   // probabilities first, selection on them
        const float mx = *std::max_element(logits, logits + X);
        double sum = 0.0;
        for (int64_t e = 0; e < X; ++e) { logits[e] = std::exp(logits[e] - mx); sum += logits[e]; }
        for (int64_t e = 0; e < X; ++e) logits[e] = float(logits[e] / sum);
    }
    // top-k, the larger value first and the lower id on ties (a NaN ranks last, keeping the order
    // strict); then sorted by id (moe.h)
    std::iota(ids, ids + X, 0);
    auto key = [&](int32_t e) { return std::isnan(logits[e]) ? -INFINITY : logits[e]; };
    std::partial_sort(ids, ids + k, ids + X, [&](int32_t a, int32_t b) {
        return key(a) > key(b) || (key(a) == key(b) && a < b);
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
    auto route = [&](int64_t t, int thread) {   // thread: its own row of ids
        float* lg = s.logits.data() + t * X;
        if (!l.router_b.empty()) cpu::add_inplace(lg, l.router_b.data(), X);
        route_token(c, lg, s.ids.data() + thread * X, s.selected.data() + t * k, s.weight.data() + t * k);
    };
    if (size_t(pool.size()) * size_t(X) > s.ids.size()) {   // a pool larger than the scratch's
        for (int64_t t = 0; t < n; ++t) route(t, 0);
    } else {
        for_tokens(n, pool, route);
    }
    group_by_expert(c, n, s);
    make_items(c, s);
    // Auto (cpu/matmul.h) keeps two-pass activations where the second pass is cheap, but not in
    // the experts, at any batch size: a prefill batch gives each expert only its share of the
    // tokens (n k / n_expert rows on average), which go through the multi-row dots at 2x the
    // integer work, and a decode step's k experts are compute-bound in the packed gemv (two
    // activation rows: 2x the dpbusd; bench_moe decode +18 % at 8 bits). So expert matmuls use
    // 8-bit activations (llama.cpp's) for every batch, and a token gets the same expert
    // arithmetic in a prefill and decoded alone (packed experts: the same bits).
    const cpu::ActPrecision expert_prec = prec == cpu::ActPrecision::Auto ? cpu::ActPrecision::Q8 : prec;
    const int64_t n_items = int64_t(s.items.size());
    // Items one by one, each matmul on the whole pool: with an observer (observer.h: it runs on the
    // caller with the pool) or when there are fewer items than threads (decode with k < threads:
    // every thread still streams weights). The same rows give the same results either way.
    if (observer || n_items < pool.size() || size_t(pool.size()) > s.workers.size()) {
        for (int64_t i = 0; i < n_items; ++i)
            run_item(c, l, il, xn, s.items[size_t(i)], s, *s.workers[0], pool, expert_prec, observer);
    } else if (expert_prec == cpu::ActPrecision::Q8 && q8_experts(l)) {
        const cpu::KernelSet& ks = cpu::kernels();
        const GGMLType type = l.gate_exps.first.type;
        const size_t x_bytes = q8_row_bytes(type, E);
        for_tokens(n, pool, [&](int64_t t, int) {   // a decode step's one row on the caller (no barrier)
            cpu::quantize_act_row(ks, cpu::act_format(type), xn + t * E, s.xq.data() + size_t(t) * x_bytes, E);
        });
        pool.parallel_for(n_items, [&](int64_t i, int thread) {
            run_item_q8(c, l, s.items[size_t(i)], s, *s.workers[size_t(thread)]);
        });
    } else {
        pool.parallel_for(n_items, [&](int64_t i, int thread) {
            MoeScratch::Worker& w = *s.workers[size_t(thread)];
            run_item(c, l, il, xn, s.items[size_t(i)], s, w, w.pool, expert_prec, nullptr);
        });
    }
    auto combine = [&](int64_t t) {   // out[t] = sum_j w_tj slot_out[t k + j], experts in id order
        float* y = out + t * E;
        std::memset(y, 0, size_t(E) * sizeof(float));
        for (int64_t j = 0; j < k; ++j)
            cpu::axpy_f32(y, s.weight[size_t(t * k + j)], s.slot_out.data() + (t * k + j) * E, E);
    };
    if (n == 1) combine(0);
    else pool.parallel_for(n, [&](int64_t t, int) { combine(t); });
    if (c.n_ff_shexp > 0) add_shared_expert(c, l, il, xn, n, out, s, pool, prec, observer);
}

}  // namespace lowbit::model

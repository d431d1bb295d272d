// forward.cpp: one transformer forward pass for every supported architecture, top to bottom.
//
// Per layer (B = tokens in the batch, E = n_embd, H = n_head, D = head_dim):
//   xn = rmsnorm(x) * attn_norm                               (B, E)
//   q, k, v = xn Wq^T (+bq), xn Wk^T (+bk), xn Wv^T (+bv)        (B, H D), (B, Hkv D) x 2
//     (one matmul over the stacked [q | k | v] rows when weights.cpp could fuse them; same for gate | up)
//     [qwen3, gemma3: per-head rmsnorm of q and k]  RoPE on q, k; k, v -> cache
//   attn = softmax(q k^T * scale, causal [, window]) v        (B, H D)
//   proj = attn Wo^T [gemma3: rmsnorm * attn_post_norm];  x += proj
//   xn = rmsnorm(x) * ffn_norm;  h = act(xn Wgate^T) * (xn Wup^T)  (B, n_ff)
//   proj = h Wdown^T [gemma3: rmsnorm * ffn_post_norm];  x += proj
// then logits = rmsnorm(x) * output_norm . Wout^T.
// B may hold rows of several sequences (forward_batch: each with its own cache and positions).
// Matmuls go through cpu::matmul (B > 1) / cpu::matvec (B == 1) at s.act_precision; everything else is f32 with
// double accumulation where it is cheap (norms, softmax sums), each stage one parallel_for over
// tokens or (head, token tile), inline for a single decode token.
#include "model/forward.h"
#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "cpu/attention.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu/profile.h"
#include "quant/types.h"

namespace lowbit::model {
namespace {

// Angle per position of each frequency pair i: base^(-2i / n_rot) / factor_i (rope_freqs), times
// freq_scale; with YaRN (config.h) times freq_scale (1 - mix_i) + mix_i instead, mix_i = ext_factor
// * ramp_i, ramp 1 below the correction dim of beta_fast rotations and 0 above that of beta_slow.
std::vector<double> make_inv_freq(const ModelConfig& c, const RopeParams& p, const Vec& factors) {
    std::vector<double> f(size_t(c.n_rot / 2));
    const double base = double(p.freq_base), n_rot = double(c.n_rot), pi = 3.14159265358979323846;
    auto corr_dim = [&](double rotations) {
        return n_rot * std::log(double(p.n_ctx_orig) / (rotations * 2.0 * pi)) / (2.0 * std::log(base));
    };
    double lo = 0.0, hi = 0.0;
    if (p.ext_factor != 0.0f) {
        lo = std::max(0.0, std::floor(corr_dim(double(p.beta_fast))));
        hi = std::min(n_rot - 1.0, std::ceil(corr_dim(double(p.beta_slow))));
    }
    for (size_t i = 0; i < f.size(); ++i) {
        double theta = std::pow(base, -2.0 * double(i) / n_rot);
        if (!factors.empty()) theta /= double(factors[i]);
        double scale = double(p.freq_scale);
        if (p.ext_factor != 0.0f) {
            const double y = (double(i) - lo) / std::max(0.001, hi - lo);
            const double mix = (1.0 - std::min(1.0, std::max(0.0, y))) * double(p.ext_factor);
            scale = scale * (1.0 - mix) + mix;
        }
        f[i] = theta * scale;
    }
    return f;
}

// y (n, rows) = x (n, cols) . W^T, activations at the engine's precision (cpu/matmul.h; small
// batches such as a decode step of several sessions take the strip GEMM where it is faster)
void project(const Matrix& w, const float* x, int64_t n, float* y, cpu::ThreadPool& pool, cpu::ActPrecision prec) {
    if (w.packed) cpu::matmul_packed(w.packed, w.type, w.rows, w.cols, x, n, y, pool, prec);   // weights.h
    else if (n == 1) cpu::matvec(w.data, w.type, w.rows, w.cols, x, y, pool, prec);
    else cpu::matmul(w.data, w.type, w.rows, w.cols, x, n, y, pool, prec, /*small_batches=*/true);
}

// fn(t) for every token t < n, each touching about `width` floats: threaded for batches, inline
// when the whole pass is smaller than one pool wake-up and barrier costs (a decode token, or a
// decode step of a few sessions: their norms, RoPE and gating take a few microseconds).
constexpr int64_t kInlineFloats = 16 << 10;
constexpr int64_t kInlineAttnWork = 128 << 10;  // attention: keys x head_dim x query heads over all rows (~4 us)
template <typename Fn>
void for_tokens(cpu::ThreadPool& pool, int64_t n, int64_t width, Fn&& fn) {
    if (n == 1 || n * width <= kInlineFloats) {
        for (int64_t t = 0; t < n; ++t) fn(t);
        return;
    }
    pool.parallel_for(n, [&](int64_t t, int) { fn(t); });
}

// Reports x (n, cols), the input of the tensors `roles` of layer il (il < 0: outside the layers),
// to the state's observer; nothing is done without one.
void observe(ForwardState& s, cpu::ThreadPool& pool, int64_t il, std::initializer_list<const char*> roles,
             const float* x, int64_t n, int64_t cols) {
    if (!s.observer) return;
    std::vector<std::string> names;
    const std::string prefix = il < 0 ? std::string() : "blk." + std::to_string(il) + ".";
    for (const char* role : roles) names.push_back(prefix + role + ".weight");
    s.observer->observe(names, x, n, cols, pool);
}

// q, k, v of every token from xn: projections, biases, QK-norm, RoPE; k and v into the cache.
void attention_inputs(const Model& m, const LayerWeights& l, int64_t il, const std::vector<SeqSpan>& spans,
                      ForwardState& s, cpu::ThreadPool& pool, int64_t n) {
    const ModelConfig& c = m.config;
    const int64_t Q = c.q_dim(), KV = c.kv_dim(), D = c.head_dim;
    const bool fused = l.wqkv.present();
    std::optional<cpu::prof::Scope> scope(std::in_place, cpu::prof::Op::MatQKV);
    if (c.fused_qkv) observe(s, pool, il, {"attn_qkv"}, s.xn.data(), n, c.n_embd);
    else observe(s, pool, il, {"attn_q", "attn_k", "attn_v"}, s.xn.data(), n, c.n_embd);
    if (fused) {
        project(l.wqkv, s.xn.data(), n, s.qkv.data(), pool, s.act_precision);
    } else {
        project(l.wq, s.xn.data(), n, s.q.data(), pool, s.act_precision);
        project(l.wk, s.xn.data(), n, s.k.data(), pool, s.act_precision);
        project(l.wv, s.xn.data(), n, s.v.data(), pool, s.act_precision);
    }
    scope.emplace(cpu::prof::Op::QKVPost);
    const float* rope = c.layer_is_swa[size_t(il)] ? s.rope_swa.data() : s.rope_global.data();
    const bool neox = c.rope_mode == RopeMode::NeoX;
    for_tokens(pool, n, Q + 2 * KV, [&](int64_t t) {
        float* q = s.q.data() + t * Q;
        float* k = s.k.data() + t * KV;
        float* v = s.v.data() + t * KV;
        if (fused) {   // qkv row: [q (Q) | k (KV) | v (KV)]
            const float* row = s.qkv.data() + t * (Q + 2 * KV);
            std::memcpy(q, row, size_t(Q) * sizeof(float));
            std::memcpy(k, row + Q, size_t(KV) * sizeof(float));
            std::memcpy(v, row + Q + KV, size_t(KV) * sizeof(float));
        }
        if (!l.bq.empty()) cpu::add_inplace(q, l.bq.data(), Q);
        if (!l.bk.empty()) cpu::add_inplace(k, l.bk.data(), KV);
        if (!l.bv.empty()) cpu::add_inplace(v, l.bv.data(), KV);
        if (c.qk_norm) {
            for (int64_t h = 0; h < c.n_head; ++h) cpu::rmsnorm(q + h * D, l.q_norm.data(), q + h * D, D, c.norm_eps);
            for (int64_t h = 0; h < c.n_head_kv; ++h)
                cpu::rmsnorm(k + h * D, l.k_norm.data(), k + h * D, D, c.norm_eps);
        } else if (c.qk_norm_full) {   // olmoe, olmo2: one norm over all heads
            cpu::rmsnorm(q, l.q_norm.data(), q, Q, c.norm_eps);
            cpu::rmsnorm(k, l.k_norm.data(), k, KV, c.norm_eps);
        }
        if (c.has_rope(il)) {
            const float* cs = rope + t * c.n_rot;   // (n_rot/2, 2) for this token
            cpu::rope(q, c.n_head, D, c.n_rot, neox, cs);
            cpu::rope(k, c.n_head_kv, D, c.n_rot, neox, cs);
        }
        spans[size_t(s.row_seq[size_t(t)])].cache->store(il, s.row_pos[size_t(t)], k, v);
    });
}

// Query heads per work item: the whole GQA group (each K / V row loaded once for all of them),
// split into parts when the step has too few items to keep every thread busy (one session's
// decode with one or two KV heads). A row's result does not depend on the split (cpu/attention.h).
int64_t heads_per_item(int64_t group, int64_t items, int n_threads) {
    int64_t parts = 1;
    while (parts < group && items * parts < 2 * int64_t(n_threads)) ++parts;
    return (group + parts - 1) / parts;
}

// Reads q8_0 cache rows for cpu::attend_head: n rows of consecutive cells of one KV head, as floats.
struct DequantRows {
    const KVCache* cache;
    int64_t il, g, d;
    static void fetch(const void* ctx, bool value, int64_t cell, int64_t n, float* rows) {
        const auto& f = *static_cast<const DequantRows*>(ctx);
        for (int64_t i = 0; i < n; ++i) {
            const uint8_t* row = value ? f.cache->v_row(f.il, cell + i, f.g) : f.cache->k_row(f.il, cell + i, f.g);
            f.cache->load_row(row, rows + i * f.d);
        }
    }
};

// attn (n, H D) = softmax(q k^T * scale) v over each token's visible cached positions, each
// sequence in its own cache: cpu::attend_head per work item = (sequence, KV head, `heads` of its
// query heads, tile of `tile` tokens), spread over the pool's threads (the tiles that see the most
// keys first), or inline when the whole step is less work than a pool wake-up.
void attention(const Model& m, int64_t il, const std::vector<SeqSpan>& spans, ForwardState& s,
               cpu::ThreadPool& pool) {
    const ModelConfig& c = m.config;
    const int64_t D = c.head_dim, Q = c.q_dim(), group = c.n_head / c.n_head_kv;
    cpu::prof::Scope scope(cpu::prof::Op::Attention);
    const int64_t tile = std::max<int64_t>(1, cpu::kAttnMaxRows / group);
    int64_t work = 0, tiles = 0;   // keys x head_dim x query heads the pass reads; tiles of all spans
    for (const SeqSpan& sp : spans) {
        work += c.n_head * (sp.pos0 + sp.n) * D * sp.n;
        tiles += (sp.n + tile - 1) / tile;
    }
    const bool inline_run = work <= kInlineAttnWork;
    const int64_t heads = std::min(cpu::kAttnMaxRows,
                                   inline_run ? group : heads_per_item(group, tiles * c.n_head_kv, pool.size()));
    const int64_t parts = (group + heads - 1) / heads, per_tile = c.n_head_kv * parts;
    const Vec& sinks = m.weights.layers[size_t(il)].attn_sinks;
    // Work item `item`'s queries and cache rows (rows: the q8_0 reader kv points to).
    auto item_args = [&](int64_t item, cpu::AttnQueries& a, cpu::AttnCache& kv, DequantRows& rows) {
        int64_t local = tiles - 1 - item / per_tile;   // the last tile of the last span first
        size_t si = 0;
        for (int64_t n_tiles; local >= (n_tiles = (spans[si].n + tile - 1) / tile); ++si) local -= n_tiles;
        const SeqSpan& sp = spans[si];
        const int64_t g = item % per_tile / parts, h0 = g * group + item % parts * heads;
        const int64_t t0 = sp.row0 + local * tile;
        a.n_heads = std::min(heads, (g + 1) * group - h0);
        a.n_tok = std::min(tile, sp.row0 + sp.n - t0);
        a.q = s.q.data() + t0 * Q + h0 * D;
        a.out = s.attn.data() + t0 * Q + h0 * D;
        a.q_head_stride = a.out_head_stride = D;
        a.q_tok_stride = a.out_tok_stride = Q;
        a.d = D;
        a.pos0 = sp.pos0 + (t0 - sp.row0);
        a.window = c.layer_is_swa[size_t(il)] ? c.n_swa : 0;
        a.scale = c.attn_scale;
        a.softcap = c.attn_softcap;
        a.sinks = sinks.empty() ? nullptr : sinks.data() + h0;
        const KVCache& cache = *sp.cache;
        kv.n_cells = cache.n_cells(il);
        rows = DequantRows{&cache, il, g, D};
        if (cache.rows_are_f16()) {
            kv.k = reinterpret_cast<const uint16_t*>(cache.k_row(il, 0, g));   // cell 0 of head g
            kv.v = reinterpret_cast<const uint16_t*>(cache.v_row(il, 0, g));
            kv.stride = cache.row_stride() / 2;   // in halves
        } else {
            kv.fetch = DequantRows::fetch;
            kv.ctx = &rows;
        }
    };
    auto run_item = [&](int64_t item, int thread) {
        cpu::AttnQueries a;
        cpu::AttnCache kv;
        DequantRows rows{};
        item_args(item, a, kv, rows);
        cpu::attend_head(a, kv, s.scores.data() + size_t(thread) * size_t(cpu::attn_scratch_floats(D)));
    };
    const int64_t n_items = tiles * per_tile;
    if (inline_run) {   // every item's first rows requested before the first item runs
        for (int64_t item = 0; item < n_items; ++item) {
            cpu::AttnQueries a;
            cpu::AttnCache kv;
            DequantRows rows{};
            item_args(item, a, kv, rows);
            cpu::attend_prefetch(a, kv, cpu::kAttnBlock);
        }
        for (int64_t item = 0; item < n_items; ++item) run_item(item, 0);
    } else {
        pool.parallel_for(n_items, run_item);
    }
}

// The cached K / V rows that layer il's attention will read, requested before its projections
// (KVCache::prefetch) when the step is a few decode rows: up to kPrefetchKV bytes of K (and as
// much of V) over all sequences, the latest positions first. SmolLM2, 1 thread, positions 32-120,
// load ~8: attention 0.43 -> 0.22 ms a token, 3.4 -> 1.6 ms a step of 8 sessions (10 % less CPU).
constexpr int64_t kPrefetchKV = 256 << 10;
void prefetch_keys(const ModelConfig& c, int64_t il, const std::vector<SeqSpan>& spans) {
    int64_t rows = 0;
    for (const SeqSpan& sp : spans) rows += sp.n;
    if (rows > int64_t(spans.size()) * 2) return;   // prefill: attention is compute, not latency
    const int64_t per_seq = kPrefetchKV / int64_t(spans.size());
    const int64_t window = c.layer_is_swa[size_t(il)] ? c.n_swa : 0;
    for (const SeqSpan& sp : spans) {
        const int64_t p0 = window > 0 ? std::max<int64_t>(0, sp.pos0 - window + 1) : 0;
        sp.cache->prefetch(il, p0, sp.pos0, per_seq);   // rows written before this step
    }
}

// x += [post_norm](proj) for every token.
void residual(const ModelConfig& c, const Vec& bias, const Vec& post_norm, ForwardState& s, cpu::ThreadPool& pool,
              int64_t n) {
    const int64_t E = c.n_embd;
    cpu::prof::Scope scope(cpu::prof::Op::Residual);
    for_tokens(pool, n, E, [&](int64_t t) {
        float* p = s.proj.data() + t * E;
        if (!bias.empty()) cpu::add_inplace(p, bias.data(), E);
        if (!post_norm.empty()) cpu::rmsnorm(p, post_norm.data(), p, E, c.norm_eps);
        if (c.residual_scale != 1.0f) cpu::axpy_f32(s.x.data() + t * E, c.residual_scale, p, E);   // granite
        else cpu::add_inplace(s.x.data() + t * E, p, E);
    });
}

void feed_forward(const Model& m, const LayerWeights& l, int64_t il, ForwardState& s, cpu::ThreadPool& pool,
                  int64_t n) {
    const ModelConfig& c = m.config;
    std::optional<cpu::prof::Scope> scope(std::in_place, c.is_moe() ? cpu::prof::Op::Moe : cpu::prof::Op::MatGateUp);
    if (c.is_moe())
        return moe_feed_forward(c, l, il, s.xn.data(), n, s.proj.data(), s.moe, pool, s.act_precision, s.observer);
    const int64_t F = c.n_ff;
    const bool fused = l.w_gate_up.present();
    if (c.fused_gate_up) observe(s, pool, il, {"ffn_up"}, s.xn.data(), n, c.n_embd);
    else observe(s, pool, il, {"ffn_gate", "ffn_up"}, s.xn.data(), n, c.n_embd);
    if (fused) project(l.w_gate_up, s.xn.data(), n, s.gate.data(), pool, s.act_precision);   // (n, 2F): [gate | up]
    else {
        project(l.w_gate, s.xn.data(), n, s.gate.data(), pool, s.act_precision);
        project(l.w_up, s.xn.data(), n, s.up.data(), pool, s.act_precision);
    }
    // Gated hidden row t into h: act(gate) * up.
    auto gated_row = [&](int64_t t, float* h) {
        const float* g = fused ? s.gate.data() + t * 2 * F : s.gate.data() + t * F;
        const float* u = fused ? g + F : s.up.data() + t * F;
        if (c.ffn_act == FfnAct::SiLU) cpu::silu_mul(g, u, h, F);
        else cpu::gelu_tanh_mul(g, u, h, F);
    };
    if (n > 1 && !s.observer) {
        // Several rows: each made where the down projection quantizes it (cpu/matmul.h, RowMaker),
        // never stored as floats (a 512-token prefill's (512, n_ff) hidden rows: written, then read
        // back from beyond L2). The gating's time counts as act_quant in the op profile then.
        scope.emplace(cpu::prof::Op::MatDown);
        using Gated = decltype(gated_row);
        const cpu::RowMaker maker{[](const void* ctx, int64_t t, float* h) { (*static_cast<const Gated*>(ctx))(t, h); },
                                  &gated_row};
        const Matrix& w = l.w_down;
        cpu::matmul(w.data, w.type, w.rows, w.cols, maker, n, s.proj.data(), pool, s.act_precision, /*small_batches=*/true,
                    w.packed);
        return;
    }
    scope.emplace(cpu::prof::Op::FfnAct);
    for_tokens(pool, n, F, [&](int64_t t) { gated_row(t, s.up.data() + t * F); });   // (n, F), in place over up
    scope.emplace(cpu::prof::Op::MatDown);
    observe(s, pool, il, {"ffn_down"}, s.up.data(), n, F);
    project(l.w_down, s.up.data(), n, s.proj.data(), pool, s.act_precision);
}

void norm_rows(const Vec& w, const ModelConfig& c, ForwardState& s, cpu::ThreadPool& pool, int64_t n) {
    const int64_t E = c.n_embd;
    cpu::prof::Scope scope(cpu::prof::Op::Norm);
    if (w.empty()) {   // olmo2: no pre-norm, the sub-block reads the residual stream itself
        std::memcpy(s.xn.data(), s.x.data(), size_t(n * E) * sizeof(float));
        return;
    }
    for_tokens(pool, n, E, [&](int64_t t) { cpu::rmsnorm(s.x.data() + t * E, w.data(), s.xn.data() + t * E, E, c.norm_eps); });
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, int64_t n_ctx) {
    auto m = std::make_unique<Model>();
    m->file = std::make_unique<GGUFFile>(GGUFFile::open(path));
    m->config = load_config(*m->file);
    m->weights = load_weights(*m->file, m->config);
    const ModelWeights& w = m->weights;
    const Vec& factors = w.rope_factors_long.empty() ? w.rope_freqs
                         : n_ctx > m->config.rope_global.n_ctx_orig ? w.rope_factors_long : w.rope_factors_short;
    m->inv_freq_global = make_inv_freq(m->config, m->config.rope_global, factors);
    m->inv_freq_swa = make_inv_freq(m->config, m->config.rope_swa, factors);
    m->load_n_ctx = n_ctx;
    return m;
}

ForwardState::ForwardState(const ModelConfig& c, int64_t n_batch_, int64_t n_ctx_, int n_threads)
    : n_batch(n_batch_), n_ctx(n_ctx_), moe(c, n_batch_, n_threads) {
    const size_t B = size_t(n_batch);
    x.resize(B * size_t(c.n_embd));
    xn.resize(B * size_t(c.n_embd));
    qkv.resize(B * size_t(c.q_dim() + 2 * c.kv_dim()));
    q.resize(B * size_t(c.q_dim()));
    k.resize(B * size_t(c.kv_dim()));
    v.resize(B * size_t(c.kv_dim()));
    attn.resize(B * size_t(c.q_dim()));
    proj.resize(B * size_t(c.n_embd));
    gate.resize(B * size_t(2 * c.n_ff));
    up.resize(B * size_t(c.n_ff));
    rope_global.resize(B * size_t(c.n_rot));
    rope_swa.resize(B * size_t(c.n_rot));
    scores.resize(size_t(n_threads) * size_t(cpu::attn_scratch_floats(c.head_dim)));
}

int64_t ForwardState::bytes() const {
    size_t f = x.size() + xn.size() + qkv.size() + q.size() + k.size() + v.size() + attn.size() + proj.size() +
               gate.size() + up.size() + rope_global.size() + rope_swa.size() + scores.size() +
               out_tmp.size();
    return int64_t(f * sizeof(float)) + moe.bytes();
}

void rerotate_keys(const Model& m, int64_t il, float* k, int64_t delta) {
    const ModelConfig& c = m.config;
    if (!c.has_rope(il)) return;   // smollm3's layers without RoPE: keys do not depend on position
    std::vector<float> cs(size_t(c.n_rot));
    cpu::rope_cos_sin(double(delta), m.inv_freq(il).data(), c.n_rot / 2, cs.data());   // a pure rotation: no mscale
    cpu::rope(k, c.n_head_kv, c.head_dim, c.n_rot, c.rope_mode == RopeMode::NeoX, cs.data());
}

namespace {

// Final norm of the rows in `outputs` (into xn, in their order), their hidden states and the output head.
void output_rows(const Model& m, ForwardState& s, cpu::ThreadPool& pool, const std::vector<RowOutput>& outputs) {
    const ModelConfig& c = m.config;
    const ModelWeights& w = m.weights;
    const int64_t E = c.n_embd, V = c.n_vocab, n_out = int64_t(outputs.size());
    bool any_logits = false, contiguous = true;   // logits destinations one after another: written in place
    for (int64_t i = 0; i < n_out; ++i) {
        any_logits = any_logits || outputs[size_t(i)].logits;
        contiguous = contiguous && outputs[size_t(i)].logits && outputs[size_t(i)].logits == outputs[0].logits + i * V;
    }
    std::optional<cpu::prof::Scope> scope(std::in_place, cpu::prof::Op::Norm);
    for_tokens(pool, n_out, E, [&](int64_t i) {
        const RowOutput& o = outputs[size_t(i)];
        cpu::rmsnorm(s.x.data() + o.row * E, w.output_norm.data(), s.xn.data() + i * E, E, c.norm_eps);
        if (o.hidden) std::memcpy(o.hidden, s.xn.data() + i * E, size_t(E) * sizeof(float));
    });
    if (!any_logits) return;
    scope.emplace(cpu::prof::Op::OutputHead);
    observe(s, pool, -1, {w.tied_output ? "token_embd" : "output"}, s.xn.data(), n_out, E);
    if (!contiguous && s.out_tmp.size() < size_t(n_out * V)) s.out_tmp.resize(size_t(n_out * V));
    float* logits = contiguous ? outputs[0].logits : s.out_tmp.data();
    project(w.output, s.xn.data(), n_out, logits, pool, s.act_precision);
    if (c.logit_scale != 1.0f)   // granite
        for (int64_t i = 0; i < n_out * V; ++i) logits[i] /= c.logit_scale;
    if (c.logit_softcap > 0.0f) {
        const float cap = c.logit_softcap;
        for (int64_t i = 0; i < n_out * V; ++i) logits[i] = cap * std::tanh(logits[i] / cap);
    }
    if (!contiguous)
        for (int64_t i = 0; i < n_out; ++i)
            if (outputs[size_t(i)].logits) std::memcpy(outputs[size_t(i)].logits, logits + i * V, size_t(V) * sizeof(float));
}

}  // namespace

std::vector<RowOutput> row_outputs(const ModelConfig& c, int64_t n, bool all_logits, float* logits, float* hidden) {
    std::vector<RowOutput> outputs;
    for (int64_t t = 0; t < n; ++t) {
        float* l = logits && (all_logits || t == n - 1) ? logits + (all_logits ? t : 0) * c.n_vocab : nullptr;
        float* h = hidden ? hidden + t * c.n_embd : nullptr;
        if (l || h) outputs.push_back(RowOutput{t, l, h});
    }
    return outputs;
}

void forward(const Model& m, KVCache& cache, ForwardState& s, cpu::ThreadPool& pool, const int32_t* tokens,
             int64_t n, int64_t pos0, float* logits, bool all_logits, const std::function<void()>& check_cancel,
             float* hidden) {
    forward_batch(m, {SeqSpan{&cache, pos0, 0, n}}, s, pool, tokens, row_outputs(m.config, n, all_logits, logits, hidden),
                  check_cancel);
}

void forward_batch(const Model& m, const std::vector<SeqSpan>& spans, ForwardState& s, cpu::ThreadPool& pool,
                   const int32_t* tokens, const std::vector<RowOutput>& outputs,
                   const std::function<void()>& check_cancel) {
    forward_layers(m, spans, s, pool, tokens, 0, m.config.n_layers, outputs, check_cancel);
}

void forward_layers(const Model& m, const std::vector<SeqSpan>& spans, ForwardState& s, cpu::ThreadPool& pool,
                    const int32_t* tokens, int64_t il0, int64_t il1, const std::vector<RowOutput>& outputs,
                    const std::function<void()>& check_cancel) {
    const ModelConfig& c = m.config;
    const ModelWeights& w = m.weights;
    const int64_t E = c.n_embd;
    LOWBIT_CHECK(0 <= il0 && il0 <= il1 && il1 <= c.n_layers && (outputs.empty() || il1 == c.n_layers), ValueError,
                 "forward_layers: layers [", il0, ", ", il1, ") of ", c.n_layers,
                 outputs.empty() ? "" : " (outputs need the last layer)");
    check_cancel();
    int64_t n = 0;   // rows of the pass; each row's sequence and position
    s.row_pos.resize(size_t(s.n_batch));
    s.row_seq.resize(size_t(s.n_batch));
    for (size_t i = 0; i < spans.size(); ++i) {
        LOWBIT_CHECK(spans[i].row0 == n && spans[i].n >= 1 && n + spans[i].n <= s.n_batch, ValueError,
                     "forward_batch: span ", i, " (rows ", spans[i].row0, "+", spans[i].n, ") does not follow row ", n,
                     " within the state's ", s.n_batch, " rows");
        for (int64_t t = 0; t < spans[i].n; ++t) {
            s.row_pos[size_t(n + t)] = spans[i].pos0 + t;
            s.row_seq[size_t(n + t)] = int32_t(i);
        }
        n += spans[i].n;
    }

    // Embeddings (scaled for gemma3; from layer 0 only: later starts find their input in s.x) and
    // each row's RoPE tables.
    const QuantType& embd_type = quant_type(w.token_embd.type);
    cpu::prof::add_pass(n);
    std::optional<cpu::prof::Scope> scope(std::in_place, cpu::prof::Op::Embed);
    for_tokens(pool, n, E, [&](int64_t t) {
        const double pos = double(s.row_pos[size_t(t)]);
        if (il0 == 0) {
            float* x = s.x.data() + t * E;
            embd_type.to_float(model::matrix_row(w.token_embd, tokens[t]), x, E);   // packed when the head is tied (weights.h)
            if (c.embd_scale != 1.0f) for (int64_t i = 0; i < E; ++i) x[i] *= c.embd_scale;
        }
        cpu::rope_cos_sin(pos, m.inv_freq_global.data(), c.n_rot / 2, s.rope_global.data() + t * c.n_rot,
                          c.rope_global.mscale());
        if (c.any_swa())
            cpu::rope_cos_sin(pos, m.inv_freq_swa.data(), c.n_rot / 2, s.rope_swa.data() + t * c.n_rot,
                              c.rope_swa.mscale());
    });
    scope.reset();

    for (int64_t il = il0; il < il1; ++il) {
        const LayerWeights& l = w.layers[size_t(il)];
        prefetch_keys(c, il, spans);
        norm_rows(l.attn_norm, c, s, pool, n);
        attention_inputs(m, l, il, spans, s, pool, n);
        if (il == il0)
            for (const SeqSpan& sp : spans) sp.cache->note_written(sp.pos0 + sp.n - 1);
        attention(m, il, spans, s, pool);
        {
            cpu::prof::Scope out_scope(cpu::prof::Op::MatOut);
            observe(s, pool, il, {"attn_output"}, s.attn.data(), n, c.q_dim());
            project(l.wo, s.attn.data(), n, s.proj.data(), pool, s.act_precision);
        }
        residual(c, l.bo, l.attn_post_norm, s, pool, n);
        norm_rows(l.ffn_norm, c, s, pool, n);
        feed_forward(m, l, il, s, pool, n);
        residual(c, Vec{}, l.ffn_post_norm, s, pool, n);
        check_cancel();
    }
    if (!outputs.empty()) output_rows(m, s, pool, outputs);
}

}  // namespace lowbit::model

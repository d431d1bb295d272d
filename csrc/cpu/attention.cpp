// attention.cpp: the online-softmax driver of attention.h (one for every instruction set), the
// scalar reference kernels and the choice of kernel set.
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "cpu/dispatch.h"

namespace lowbit::cpu {
namespace {

// ---- scalar reference kernels -------------------------------------------------------------

template <typename Row>
float load_value(const Row* x, int64_t i) {
    if constexpr (sizeof(Row) == 2) return fp16_to_fp32(x[i]);
    else return x[i];
}

template <typename Row>
void scores_scalar(const float* const* q, int64_t nq, const Row* k, int64_t stride, int64_t nk, int64_t d,
                   float scale, float* s, int64_t ld) {
    for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) {
            const Row* row = k + j * stride;
            float acc = 0.0f;
            for (int64_t c = 0; c < d; ++c) acc += q[i][c] * load_value(row, c);
            s[i * ld + j] = acc * scale;
        }
}

template <typename Row>
void values_scalar(const float* p, int64_t ld, int64_t nq, const Row* v, int64_t stride, int64_t nk, int64_t d,
                   float* const* out) {
    for (int64_t i = 0; i < nq; ++i)
        for (int64_t j = 0; j < nk; ++j) {
            const float pj = p[i * ld + j];
            for (int64_t c = 0; c < d; ++c) out[i][c] += pj * load_value(v + j * stride, c);
        }
}

float row_max_scalar(const float* s, int64_t n) {
    float m = s[0];
    for (int64_t j = 1; j < n; ++j) m = std::max(m, s[j]);
    return m;
}

// Column j adds into lane j % 16; the lanes are summed as the SIMD sets do (halves, then pairs).
float exp_sum_scalar(float* s, int64_t n, float m) {
    float lane[16] = {};
    for (int64_t j = 0; j < n; ++j) {
        s[j] = std::exp(s[j] - m);
        lane[j % 16] += s[j];
    }
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; ++k) lane[k] += lane[k + w];
    return lane[0];
}

constexpr AttnKernels kScalarKernels{"scalar",        scores_scalar<uint16_t>, scores_scalar<float>,
                                     values_scalar<uint16_t>, values_scalar<float>, row_max_scalar,
                                     exp_sum_scalar};

// ---- the driver -------------------------------------------------------------------------------

// One work item's rows: pointers, visible key positions [first, last], online-softmax state.
struct Rows {
    int64_t n = 0;
    const float* q[kAttnMaxRows];
    float* out[kAttnMaxRows];
    int64_t first[kAttnMaxRows], last[kAttnMaxRows];
    float m[kAttnMaxRows];    // running max of the row's scores (-inf before its first key)
    double l[kAttnMaxRows];   // running sum of e^(score - m)
};

void init_rows(const AttnQueries& a, Rows& r) {
    r.n = a.n_heads * a.n_tok;
    for (int64_t t = 0; t < a.n_tok; ++t)
        for (int64_t h = 0; h < a.n_heads; ++h) {
            const int64_t i = t * a.n_heads + h, pos = a.pos0 + t;
            r.q[i] = a.q + t * a.q_tok_stride + h * a.q_head_stride;
            r.out[i] = a.out + t * a.out_tok_stride + h * a.out_head_stride;
            r.first[i] = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
            r.last[i] = pos;
            r.m[i] = -INFINITY;
            r.l[i] = 0.0;
            std::memset(r.out[i], 0, size_t(a.d) * sizeof(float));
        }
}

// fn(column, cell, count) for the keys at positions [p0, p1) as runs of consecutive cells (a ring
// wraps at most once: every key an item sees fits the ring, p1 - p0 <= n_cells).
template <typename Fn>
void for_cell_runs(int64_t p0, int64_t p1, int64_t n_cells, Fn&& fn) {
    const int64_t cell = p0 % n_cells, len = p1 - p0, first = std::min(len, n_cells - cell);
    fn(int64_t(0), cell, first);
    if (first < len) fn(first, int64_t(0), len - first);
}

// Scores of every row against the keys [p0, p1) into columns c0.. of S.
void block_scores(const AttnKernels& K, const AttnQueries& a, const AttnCache& kv, const Rows& r, int64_t p0,
                  int64_t p1, float* S, int64_t c0, float* rows_f32) {
    for_cell_runs(p0, p1, kv.n_cells, [&](int64_t col, int64_t cell, int64_t len) {
        if (kv.fetch) kv.fetch(kv.ctx, false, cell, len, rows_f32 + col * a.d);
        else K.scores_f16(r.q, r.n, kv.k + cell * kv.stride, kv.stride, len, a.d, a.scale, S + c0 + col, kAttnBlock);
    });
    if (kv.fetch) K.scores_f32(r.q, r.n, rows_f32, a.d, p1 - p0, a.d, a.scale, S + c0, kAttnBlock);
}

void block_values(const AttnKernels& K, const AttnQueries& a, const AttnCache& kv, Rows& r, int64_t p0, int64_t p1,
                  const float* P, int64_t c0, float* rows_f32) {
    for_cell_runs(p0, p1, kv.n_cells, [&](int64_t col, int64_t cell, int64_t len) {
        if (kv.fetch) kv.fetch(kv.ctx, true, cell, len, rows_f32 + col * a.d);
        else K.values_f16(P + c0 + col, kAttnBlock, r.n, kv.v + cell * kv.stride, kv.stride, len, a.d, r.out);
    });
    if (kv.fetch) K.values_f32(P + c0, kAttnBlock, r.n, rows_f32, a.d, p1 - p0, a.d, r.out);
}

// fn(k_row, v_row) for the f16 K and V rows of positions [p0, p1), in order (fetch caches: none).
template <typename Fn>
void for_f16_rows(const AttnCache& kv, int64_t p0, int64_t p1, Fn&& fn) {
    if (kv.fetch) return;
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t cell = p % kv.n_cells;
        fn(kv.k + cell * kv.stride, kv.v + cell * kv.stride);
    }
}

// Requests the f16 K and V rows of the keys at positions [p0, p1) (fetch caches: nothing). A
// decode step finds them in memory, not cache (the weights streamed since the last step evicted
// them), one head's rows d halves every `stride`: a strided walk that the hardware prefetchers
// follow slowly, so that without requests a SmolLM2 layer's 3 KV heads x 64 keys took ~7 us
// in place against ~1.6 us with the rows in cache.
void prefetch_rows(const AttnCache& kv, int64_t d, int64_t p0, int64_t p1) {
    const int64_t row_bytes = d * int64_t(sizeof(uint16_t));
    for_f16_rows(kv, p0, p1, [&](const uint16_t* k_row, const uint16_t* v_row) {
        const auto* k = reinterpret_cast<const char*>(k_row);
        const auto* v = reinterpret_cast<const char*>(v_row);
        for (int64_t off = 0; off < row_bytes; off += 64) {
            __builtin_prefetch(k + off, 0, 2);
            __builtin_prefetch(v + off, 0, 2);
        }
    });
}

// Loads one value of every line of the f16 K and V rows of positions [p0, p1) before a decode
// item computes on them. Requesting those lines (prefetch_rows, and the layer's KVCache::prefetch
// before the projection) did not bring them in time: a second attention pass over the same rows
// took a third (one session) to a fifth (eight sessions) of the first. Loads, all independent,
// keep the core's misses in flight where the kernel's own loads, between its arithmetic, did not.
// bench_attention --ab, a decode step's attention: SmolLM2 8 sessions 0.66 -> 0.50 ms, one token
// 0.150 -> 0.110, gemma3 8 sessions 0.61 -> 0.30; bench_profile --ab -r 7 (q8), decode tok/s:
// SmolLM2 8 sessions 1.15x, one token 1.03x, gemma3 1.06x / 1.00x. Reads only: same bits.
constexpr int64_t kTouchKeys = 512;   // at most this many keys (the rest: requested block by block)
void touch_rows(const AttnCache& kv, int64_t d, int64_t p0, int64_t p1) {
    constexpr int64_t kLineHalves = 32;
    uint32_t acc = 0;
    for_f16_rows(kv, p0, p1, [&](const uint16_t* k, const uint16_t* v) {
        for (int64_t off = 0; off < d; off += kLineHalves) acc += uint32_t(k[off]) + v[off];
    });
    __asm__ volatile("" : : "r"(acc));   // the loads stay; nothing is written
}

// Keys any row of the work item sees: positions [lo, hi].
void visible_keys(const AttnQueries& a, int64_t& lo, int64_t& hi) {
    lo = a.window > 0 ? std::max<int64_t>(0, a.pos0 - a.window + 1) : 0;
    hi = a.pos0 + a.n_tok - 1;
}

void scale_row(float* o, float f, int64_t d) {
    for (int64_t c = 0; c < d; ++c) o[c] *= f;
}

// Row i's scores of the block at position B (columns c0..c1 computed) become probabilities
// relative to its new running max; the output and sum so far are rescaled when the max rises.
void block_softmax(const AttnKernels& K, const AttnQueries& a, Rows& r, int64_t i, int64_t B, int64_t c0,
                   int64_t c1, float* s) {
    const int64_t lo = std::max(r.first[i] - B, c0), hi = std::min(r.last[i] - B + 1, c1);   // visible columns
    if (lo >= hi) {   // sees none of this block: its values add exact zeros
        std::fill(s + c0, s + c1, 0.0f);
        return;
    }
    std::fill(s, s + lo, -INFINITY);
    std::fill(s + hi, s + kAttnBlock, -INFINITY);
    if (a.softcap > 0.0f)
        for (int64_t j = lo; j < hi; ++j) s[j] = a.softcap * std::tanh(s[j] / a.softcap);
    const float m_new = std::max(r.m[i], K.row_max(s, kAttnBlock));
    if (m_new > r.m[i] && r.l[i] > 0.0) {
        const float alpha = std::exp(r.m[i] - m_new);
        scale_row(r.out[i], alpha, a.d);
        r.l[i] *= double(alpha);
    }
    r.m[i] = m_new;
    r.l[i] += double(K.exp_sum(s, kAttnBlock, m_new));
}

}  // namespace

void attend_prefetch(const AttnQueries& a, const AttnCache& kv, int64_t max_keys) {
    int64_t lo, hi;
    visible_keys(a, lo, hi);
    prefetch_rows(kv, a.d, lo, std::min(hi + 1, lo + max_keys));
}

int64_t attn_scratch_floats(int64_t d) { return kAttnMaxRows * kAttnBlock + kAttnBlock * d; }

void attend_head(const AttnQueries& a, const AttnCache& kv, float* scratch) {
    attend_head(a, kv, scratch, attn_kernels());
}

void attend_head(const AttnQueries& a, const AttnCache& kv, float* scratch, const AttnKernels& K) {
    LOWBIT_CHECK(a.n_heads >= 1 && a.n_tok >= 1 && a.n_heads * a.n_tok <= kAttnMaxRows && a.d >= 1, ValueError,
                 "attend_head: ", a.n_heads, " heads x ", a.n_tok, " tokens (at most ", kAttnMaxRows, " rows)");
    Rows r;
    init_rows(a, r);
    float* S = scratch;                                 // (rows, kAttnBlock) scores, then probabilities
    float* rows_f32 = scratch + kAttnMaxRows * kAttnBlock;   // (kAttnBlock, d) fetched K or V rows
    int64_t lo, hi;   // keys any row sees (first[] rises with t)
    visible_keys(a, lo, hi);
    int64_t loaded = lo;   // rows from here on are requested a block ahead
    if (a.n_tok <= 2) {    // decode: touch_rows
        loaded = std::min(hi + 1, lo + kTouchKeys);
        touch_rows(kv, a.d, lo, loaded);
    } else {
        prefetch_rows(kv, a.d, lo, std::min(hi + 1, lo - lo % kAttnBlock + kAttnBlock));
    }
    for (int64_t B = lo - lo % kAttnBlock; B <= hi; B += kAttnBlock) {
        const int64_t c0 = std::max(lo, B) - B, c1 = std::min(hi + 1, B + kAttnBlock) - B;
        // the next block's rows, where not loaded above
        prefetch_rows(kv, a.d, std::max(B + kAttnBlock, loaded), std::min(hi + 1, B + 2 * kAttnBlock));
        block_scores(K, a, kv, r, B + c0, B + c1, S, c0, rows_f32);
        for (int64_t i = 0; i < r.n; ++i) block_softmax(K, a, r, i, B, c0, c1, S + i * kAttnBlock);
        block_values(K, a, kv, r, B + c0, B + c1, S, c0, rows_f32);
    }
    for (int64_t i = 0; i < r.n; ++i) {
        double sum = r.l[i];
        if (a.sinks) sum += std::exp(double(a.sinks[i % a.n_heads]) - double(r.m[i]));
        scale_row(r.out[i], float(1.0 / sum), a.d);
    }
}

const AttnKernels& attn_kernels(const std::string& set) {
    const CpuFeatures& f = cpu_features();
    if (set == "avx512" && f.has_avx512_level()) return avx512::kAttnKernels;
    if (set == "avx2" && f.has_avx2_level()) return avx2::kAttnKernels;
    LOWBIT_CHECK(set == "scalar", ValueError, "attention kernels '", set, "': valid choices are ", supported_levels());
    return kScalarKernels;
}

const AttnKernels& attn_kernels() {
    // the process kernel set: its name changes only through set_kernels (tests, benchmarks)
    const char* name = kernels().name;
    if (std::strcmp(name, "avx512") == 0) return avx512::kAttnKernels;
    if (std::strcmp(name, "avx2") == 0) return avx2::kAttnKernels;
    return kScalarKernels;
}

}  // namespace lowbit::cpu

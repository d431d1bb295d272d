// attention.h: softmax(q k^T * scale) v of the query heads of one KV head over its cached rows,
// flash-attention style (an online softmax over blocks of keys: no row of scores as wide as the
// context, no zero-fills), every query row of a work item against each K / V row loaded once.
//
// Work item = the query heads of one KV head (a GQA group, or part of it) x a tile of tokens of
// one sequence. Per block of keys [B, B + kAttnBlock) (B a multiple of kAttnBlock, clipped to the
// keys any row sees):
//   S (rows, kAttnBlock) = scale * q K^T     [softcap: cap tanh(S / cap)]   S = -inf where a row
//                                              does not see the key (causal, window, outside the block)
//   per row: m' = max(m, max S), l = l e^(m - m') + sum e^(S - m'),  o = o e^(m - m') + e^(S - m') V
//   at the end: o /= l [+ e^(sink - m): gpt-oss's sink logit, one more term without a value row]
// Blocks are aligned to absolute positions and a row's masked keys add exact zeros, so a row's
// result depends only on its own query and visible keys: a token gets the same bits in any tile,
// batch or split of the heads (batched decode equals decode alone, tests/test_batch.py).
//
// The kernels below (scores, values, row max, exp-sum) are per instruction set: AVX-512
// (attention_avx512.cpp), AVX2 (attention_avx2.cpp) and the scalar reference (attention.cpp),
// picked by the process kernel set (dispatch.h: LOWBIT_CPU, set_kernels). exp is a polynomial
// within 2 ulp of expf in the SIMD sets; everything else does the same float operations in the
// same order in every set.
#pragma once
#include <cstdint>
#include <string>

namespace lowbit::cpu {

constexpr int64_t kAttnBlock = 64;     // keys per online-softmax step
constexpr int64_t kAttnMaxRows = 64;   // query rows of one work item (heads x tokens)

// The query rows of one work item: heads [0, n_heads) x tokens [0, n_tok). Row (t, h) reads q at
// q + t * q_tok_stride + h * q_head_stride (d floats) and writes its output at the same offsets
// from out. Token t is at position pos0 + t and sees the keys at positions
// max(0, pos0 + t - window + 1) .. pos0 + t (window 0: from position 0).
struct AttnQueries {
    const float* q = nullptr;
    int64_t q_head_stride = 0, q_tok_stride = 0;
    float* out = nullptr;
    int64_t out_head_stride = 0, out_tok_stride = 0;
    int64_t n_heads = 0, n_tok = 0, d = 0;   // n_heads * n_tok <= kAttnMaxRows
    int64_t pos0 = 0, window = 0;
    float scale = 1.0f;
    float softcap = 0.0f;                   // > 0: scores become cap tanh(score / cap) (gemma2)
    const float* sinks = nullptr;           // (n_heads,) sink logits (gpt-oss), or nullptr
};

// The cached K / V rows of the KV head: position p lives in cell p % n_cells (a ring when the
// cache keeps a sliding window), row of a cell at k / v + cell * stride (in halves). Caches whose
// rows are not f16 give `fetch` instead: it writes n rows of consecutive cells from `cell` on
// (no wrap), K or V, as floats (n, d).
struct AttnCache {
    const uint16_t* k = nullptr;
    const uint16_t* v = nullptr;
    int64_t stride = 0, n_cells = 0;
    void (*fetch)(const void* ctx, bool value, int64_t cell, int64_t n, float* rows) = nullptr;
    const void* ctx = nullptr;
};

// Floats of scratch one attend_head call needs (one per concurrent caller).
int64_t attn_scratch_floats(int64_t d);

struct AttnKernels;
// Writes every query row's attention output, with the process kernel set's kernels or the given
// ones. ValueError for rows beyond kAttnMaxRows.
void attend_head(const AttnQueries& q, const AttnCache& kv, float* scratch);
void attend_head(const AttnQueries& q, const AttnCache& kv, float* scratch, const AttnKernels& kernels);

// Requests the K / V rows of the first max_keys keys that the item's rows see (f16 caches read in
// place; nothing for a fetch cache), so that a caller running several items one after another
// has all their first rows in flight at once. attend_head itself requests each block's rows one
// block ahead.
void attend_prefetch(const AttnQueries& q, const AttnCache& kv, int64_t max_keys);

// The per-instruction-set kernels (exposed for the tests that hold each set to the scalar one).
// Rows are given as pointer arrays; nq <= kAttnMaxRows, nk <= kAttnBlock.
//   scores:  s[i * ld + j] = scale * dot(q_i, key j)          key j at k + j * stride, (d,)
//   values:  out_i += sum_j p[i * ld + j] * value j (j ascending, element by element)
//   row_max: max of s[0..n)   exp_sum: s[j] = e^(s[j] - m) (e^-inf = 0), returns their float sum
// n of row_max / exp_sum is a multiple of 16 (a block row), lane j % 16 summing column j.
struct AttnKernels {
    const char* name;
    void (*scores_f16)(const float* const* q, int64_t nq, const uint16_t* k, int64_t stride, int64_t nk, int64_t d,
                       float scale, float* s, int64_t ld);
    void (*scores_f32)(const float* const* q, int64_t nq, const float* k, int64_t stride, int64_t nk, int64_t d,
                       float scale, float* s, int64_t ld);
    void (*values_f16)(const float* p, int64_t ld, int64_t nq, const uint16_t* v, int64_t stride, int64_t nk,
                       int64_t d, float* const* out);
    void (*values_f32)(const float* p, int64_t ld, int64_t nq, const float* v, int64_t stride, int64_t nk,
                       int64_t d, float* const* out);
    float (*row_max)(const float* s, int64_t n);
    float (*exp_sum)(float* s, int64_t n, float m);
};

// The kernels of the current process kernel set (dispatch.h), or of the named one.
const AttnKernels& attn_kernels();
const AttnKernels& attn_kernels(const std::string& set);

namespace avx2 {
extern const AttnKernels kAttnKernels;   // attention_avx2.cpp
}
namespace avx512 {
extern const AttnKernels kAttnKernels;   // attention_avx512.cpp
}

}  // namespace lowbit::cpu

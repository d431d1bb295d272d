// matmul.cpp: see matmul.h.
#include "cpu/matmul.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

#include "common.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/profile.h"
#include "cpu/weight_stream.h"

namespace lowbit::cpu {
namespace {

constexpr int64_t kActTile = kMaxDotRows;  // activation rows per prefill tile (one multi-row dot)
constexpr int64_t kTileBytes = 40 << 10;    // quantized activation bytes per tile that stay in L1
constexpr int64_t kTargetChunks = 8;  // chunks per thread: enough to balance, few enough to be cheap
// Activation elements quantized on the calling thread rather than through the pool: below this a
// parallel_for's wake-up and barrier cost more than the work (~10 us).
constexpr int64_t kInlineQuantElems = 32 << 10;

// Scratch of the calling thread that is kept between calls: a decode step makes a few hundred
// matmul calls, each of which would otherwise allocate its buffers (and, past malloc's mmap
// threshold, fault their pages in again). Slots: the quantized activations, quantize_rows' per
// thread work rows, the strip GEMM's decoded strips, rows made on demand (RowMaker). Above kKeptScratch a call gets its own
// buffer (a long prefill), so what a thread keeps stays small.
enum ScratchSlot { kActSlot, kQuantSlot, kStripSlot, kRowSlot, kSlots };
constexpr size_t kKeptScratch = size_t(8) << 20;

class Scratch {
public:
    Scratch(ScratchSlot slot, size_t bytes) {
        thread_local AlignedBuffer<uint8_t> kept[kSlots];
        if (bytes > kKeptScratch) {
            own_.resize(bytes);
            ptr_ = own_.data();
            return;
        }
        if (kept[slot].size() < bytes) kept[slot].resize(bytes);
        ptr_ = kept[slot].data();
    }
    uint8_t* data() const { return ptr_; }

private:
    AlignedBuffer<uint8_t> own_;
    uint8_t* ptr_ = nullptr;
};

// The activation rows x (n, cols), quantized for `type`. Q8X2 splits each x row i into two
// adjacent activation rows, 2i = hi and 2i + 1 = lo, so one multi-row dot takes both.
struct QuantizedActs {
    std::optional<Scratch> data;
    size_t row_bytes = 0;
    int64_t per_token = 1;   // activation rows per x row: 1, or 2 for (hi, lo)
    bool panel = false;      // rows are Q8PanelLayout rows for the set's panel kernel
    const StripKernels* strip = nullptr;   // rows are slots of StripActLayout groups for this strip GEMM
    size_t group_bytes = 0;                // strip: bytes per group of kStripAct rows (row_bytes: the share of one)
    const void* row(int64_t i) const { return data->data() + size_t(i) * row_bytes; }   // i: activation row
    const void* group(int64_t i) const { return data->data() + size_t(i / kStripAct) * group_bytes; }   // strip
};

// The lo row holds the residual times kLoScale (exact: a power of two), so its block scales
// are about as large as hi's: q8_0 stores them as fp16, whose normal range would otherwise end
// (6e-5) where activations of magnitude ~1 put an unscaled residual's scale.
constexpr float kLoScale = kActLoScale;

// r = (x - dequant(q)) * kLoScale: what the q8 row q misses of x.   x, r: (cols,)
void residual(ActFormat fmt, const float* x, const void* q, float* r, int64_t cols) {
    if (fmt == ActFormat::Q8_0) {
        const auto* b = static_cast<const block_q8_0*>(q);
        for (int64_t k = 0; k < cols / QK8_0; ++k) {
            const float d = fp16_to_fp32(b[k].d);
            for (int j = 0; j < QK8_0; ++j) r[k * QK8_0 + j] = (x[k * QK8_0 + j] - d * float(b[k].qs[j])) * kLoScale;
        }
    } else {
        const auto* b = static_cast<const block_q8_K*>(q);
        for (int64_t k = 0; k < cols / QK_K; ++k) {
            const float d = b[k].d;
            for (int j = 0; j < QK_K; ++j) r[k * QK_K + j] = (x[k * QK_K + j] - d * float(b[k].qs[j])) * kLoScale;
        }
    }
}

// out's layout for n_rows activation rows of `type`: slots of StripActLayout groups for `strip`,
// else panel rows where the set has a panel kernel, else plain rows of the activation format.
void lay_out_acts(const KernelSet& ks, GGMLType type, int64_t cols, int64_t n_rows, const StripKernels* strip,
                  QuantizedActs& out) {
    out.strip = strip;
    out.panel = !strip && ks.of(type).panel != nullptr;
    if (strip) {
        out.group_bytes = size_t(StripActLayout::group_bytes(cols, strip->block));
        out.row_bytes = out.group_bytes / kStripAct;
        out.data.emplace(kActSlot, size_t((n_rows + kStripAct - 1) / kStripAct) * out.group_bytes);
    } else {
        out.row_bytes = out.panel ? size_t(Q8PanelLayout::row_bytes(cols)) : act_row_bytes(act_format(type), cols);
        out.data.emplace(kActSlot, size_t(n_rows) * out.row_bytes);
    }
}

// Where activation row a lives: its strip group (slot a % kStripAct), or its own row.
uint8_t* act_row_dst(const QuantizedActs& out, int64_t a) {
    return out.data->data() + (out.strip ? size_t(a / kStripAct) * out.group_bytes : size_t(a) * out.row_bytes);
}

// Activation row a from its q8 blocks q (q8_0 or q8_K, as fmt): regrouped into its strip slot or
// panel row, else copied (nothing to do when q is the row itself).
void place_act_row(const QuantizedActs& out, GGMLType type, ActFormat fmt, int64_t cols, const void* q, int64_t a) {
    uint8_t* dst = act_row_dst(out, a);
    if (out.panel)
        build_q8_panel_row(static_cast<const block_q8_0*>(q), cols, panel_bias(type), dst);
    else if (out.strip && fmt == ActFormat::Q8_0)
        build_strip_act_row(static_cast<const block_q8_0*>(q), cols, out.strip->block, out.strip->bias, dst, int(a % kStripAct));
    else if (out.strip)
        build_strip_act_row(static_cast<const block_q8_K*>(q), cols, out.strip->block, out.strip->bias, dst, int(a % kStripAct));
    else if (q != dst)
        std::memcpy(dst, q, out.row_bytes);
}

// The x rows of a matmul: in memory (x, cols floats apart), or made on demand (maker; matmul.h).
struct XRows {
    const float* x = nullptr;
    const RowMaker* maker = nullptr;
};

// Every row of `src` made into `buf` (n, cols), threaded as quantize_rows threads its rows.
const float* make_all_rows(const RowMaker& maker, int64_t cols, int64_t n, float* buf, ThreadPool& pool) {
    auto make = [&](int64_t i, int) { maker.make(maker.ctx, i, buf + i * cols); };
    if (n * cols <= kInlineQuantElems) {
        for (int64_t i = 0; i < n; ++i) make(i, 0);
    } else {
        pool.parallel_for(n, make);
    }
    return buf;
}

// The fused path of quantize_rows: x rows (or rows made into `made`, one per thread) straight
// into their strip slots. A chunk is a group of kStripAct activation rows: its rows share cache
// lines (slots of the same blocks), so one thread writes them all, in order.
void quantize_into_strips(QuantizeStripFn fused, const StripKernels& strip, int64_t cols, XRows src, float* made,
                          int64_t n, QuantizedActs& out, ThreadPool& pool) {
    const int64_t pt = out.per_token, per_group = kStripAct / pt, n_groups = (n + per_group - 1) / per_group;
    auto quantize_group = [&](int64_t g, int thread) {
        float* row = src.maker ? made + size_t(thread) * size_t(cols) : nullptr;
        for (int64_t i = g * per_group; i < std::min(n, (g + 1) * per_group); ++i) {
            if (row) src.maker->make(src.maker->ctx, i, row);
            fused(row ? row : src.x + i * cols, cols, strip.block, strip.bias, pt == 2, act_row_dst(out, i * pt),
                  int(i * pt % kStripAct));
        }
    };
    if (n * cols * pt <= kInlineQuantElems) {
        for (int64_t g = 0; g < n_groups; ++g) quantize_group(g, 0);
    } else {
        pool.parallel_for(n_groups, quantize_group);
    }
}

// strip: lay the rows out for that strip GEMM (else panel rows where the set has a panel kernel).
// Rows made on demand are made one at a time on the fused strip path, else all first.
void quantize_rows(const KernelSet& ks, GGMLType type, int64_t cols, XRows src, int64_t n,
                   ActPrecision precision, QuantizedActs& out, ThreadPool& pool, const StripKernels* strip = nullptr) {
    const ActFormat fmt = act_format(type);
    prof::Scope scope(prof::Op::ActQuant);
    out.per_token = (precision == ActPrecision::Q8X2 && fmt != ActFormat::F32) ? 2 : 1;
    lay_out_acts(ks, type, cols, n * out.per_token, strip, out);
    const QuantizeStripFn fused = !strip || fmt == ActFormat::F32 ? nullptr
                                  : fmt == ActFormat::Q8_0    ? ks.quantize_strip_q8_0
                                                              : ks.quantize_strip_q8_K;
    std::optional<Scratch> made;   // rows made on demand: one per thread (fused), else all of them
    if (src.maker) made.emplace(kRowSlot, size_t(fused ? pool.size() : n) * size_t(cols) * sizeof(float));
    if (src.maker && !fused) src.x = make_all_rows(*src.maker, cols, n, reinterpret_cast<float*>(made->data()), pool);
    const float* x = src.x;
    if (fmt == ActFormat::F32) {
        std::memcpy(out.data->data(), x, size_t(n) * out.row_bytes);
        return;
    }
    if (fused)
        return quantize_into_strips(fused, *strip, cols, src, made ? reinterpret_cast<float*>(made->data()) : nullptr,
                                    n, out, pool);
    // Per thread: the residual (Q8X2) and, for a panel, the q8 blocks it is built from.
    const size_t q_bytes = act_row_bytes(fmt, cols);
    const bool regroup = out.panel || strip;   // rows built from q8 blocks quantized first
    const size_t per_thread = (out.per_token == 2 ? size_t(cols) * sizeof(float) : 0) + (regroup ? q_bytes : 0);
    const Scratch scratch(kQuantSlot, size_t(pool.size()) * ((per_thread + 63) / 64 * 64));
    auto quantize_one = [&](int64_t i, int thread) {
        uint8_t* mine = scratch.data() + size_t(thread) * ((per_thread + 63) / 64 * 64);
        auto* r = reinterpret_cast<float*>(mine);                                   // residual
        uint8_t* blocks = mine + (out.per_token == 2 ? size_t(cols) * sizeof(float) : 0);   // panel source
        for (int64_t part = 0; part < out.per_token; ++part) {   // hi, then lo
            const int64_t a = i * out.per_token + part;   // activation row
            uint8_t* q = regroup ? blocks : act_row_dst(out, a);
            quantize_act_row(ks, fmt, part == 0 ? x + i * cols : r, q, cols);
            if (part == 0 && out.per_token == 2) residual(fmt, x + i * cols, q, r, cols);
            place_act_row(out, type, fmt, cols, q, a);
        }
    };
    if (n * cols * out.per_token <= kInlineQuantElems) {   // a decode step of a few sessions: no barrier
        for (int64_t i = 0; i < n; ++i) quantize_one(i, 0);
    } else {
        pool.parallel_for(n, quantize_one);
    }
}

// The multi-row kernel for the activations as quantize_rows laid them out.
VecDotRowsFn rows_kernel(const KernelSet& ks, GGMLType type, const QuantizedActs& act) {
    return act.panel ? ks.of(type).panel : ks.of(type).dot_rows;
}

int64_t rows_per_chunk(int64_t rows, const ThreadPool& pool, int64_t multiple) {
    const int64_t want = std::max<int64_t>(1, rows / (int64_t(pool.size()) * kTargetChunks));
    return std::max(multiple, (want + multiple - 1) / multiple * multiple);
}

// Mat-mat through strips (kernels.h): a chunk is a run of strips, decoded once into the thread's
// scratch (at most kStripScratch bytes); every tile of activation rows (kStripTileBytes of panel
// rows, so they stay in L2 across the chunk's strips) then runs against each strip, kStripAct
// rows per GEMM call. Each output is computed the same way wherever it lies (strip, tile, thread).
// The next strip's weight rows (one contiguous run of bytes) are requested while this one
// decodes: the decoder walks 16 rows in runs of 256 elements, an access pattern the hardware
// prefetchers follow poorly, and a decode step's weights come from memory, not cache (one
// Q4_1 65536 x 576 strip GEMM of 16 activation rows: 5.9 -> 4.2 ms CPU time).
inline void prefetch_strip(const uint8_t* p, int64_t bytes) { request_weight_bytes(p, bytes); }

constexpr int64_t kStripMinRows = 16;          // fewer x rows: the panel kernels
constexpr int64_t kStripScratch = 192 << 10;   // decoded strip bytes per chunk and thread
constexpr int64_t kStripTileBytes = 256 << 10;
constexpr int64_t kPackedInPlaceRows = 4 * kStripAct;   // activation rows the packed GEMM reads in place
// The same for a type: the k-quants' in-place decode of their scales and quants costs more per
// GEMM call than the legacy types' (one Q4_K 640x2048 matmul of 32 two-pass activation rows, 2
// threads: 172 us in place vs 157 us through decoded strips), so they switch at 16 rows.
int64_t packed_in_place_rows(GGMLType type, int64_t cols) {
    return PackedLayout(type, cols).sb_bytes ? 2 * kStripAct : kPackedInPlaceRows;
}

// One strip's outputs: out[i * kStripRows + j] for activation rows i < na (pt per token) into
// y rows (i0 + i) / pt, weight rows r0 + j < r0 + nw.
inline void store_strip(const float* out, int64_t i0, int64_t na, int64_t pt, int64_t r0, int64_t nw, int64_t rows, float* y) {
    for (int64_t i = 0; i < na; i += pt) {
        float* dst = y + (i0 + i) / pt * rows + r0;
        const float* o = out + i * kStripRows;
        if (pt == 1) for (int64_t j = 0; j < nw; ++j) dst[j] = o[j];
        else for (int64_t j = 0; j < nw; ++j) dst[j] = o[j] + o[kStripRows + j] * (1.0f / kLoScale);
    }
}

constexpr int64_t kPackedChunks = 2;   // chunks a thread of packed_matmul (several tokens)
// The most bytes of weights in a chunk of a decode matmul on packed strips (packed_matmul:
// strips_per_chunk).
constexpr int64_t kGemvChunkBytes = 512 << 10;

// Strips per chunk of a decode matmul on packed strips: per_thread chunks a thread, each at most
// kGemvChunkBytes; where that cap makes more chunks, their count is rounded up to a multiple of
// the thread count, so that every thread takes as many (measured on the one-token gemv, which
// chunked this way until the eighteenth session: the 0.5B shape's FFN down projection, 56 Q6_K
// strips of 64 KB: 7 chunks of 8 left one thread a chunk after the other's last, 12 % of its
// thread time idle). Then rounded up to `multiple` strips, at least `least`.
int64_t strips_per_chunk(int64_t n_strips, int64_t strip_bytes, int64_t threads, int64_t per_thread, int64_t multiple,
                         int64_t least) {
    const int64_t cap = std::max<int64_t>(1, kGemvChunkBytes / strip_bytes);   // strips
    const int64_t by_cap = (n_strips + cap - 1) / cap;
    const int64_t n_chunks = std::max(threads * per_thread, (by_cap + threads - 1) / threads * threads);
    const int64_t per = (n_strips + n_chunks - 1) / n_chunks;
    return std::max(least, (per + multiple - 1) / multiple * multiple);
}

// Mat-mat (any n >= 1) on packed strips read in place: a chunk is a run of strips; each strip
// runs against every activation row, kStripAct per GEMM call (tiles of kStripTileBytes when the
// activations outgrow L2, so they are reused across the chunk's strips). Nothing is decoded, so
// one decode step of a few sessions costs the weight reads and its GEMM only. Several tokens (a
// batched decode step): strips in pairs through the pair GEMM where the set has one (each
// activation load serves two strips; kernels.h), the same bits; one token keeps the one-strip GEMM.
void packed_matmul(const StripKernels& sk, const void* packed, GGMLType type, int64_t rows, int64_t cols,
                   const QuantizedActs& act, int64_t n, float* y, ThreadPool& pool) {
    const int64_t strip_bytes = PackedLayout(type, cols).strip_bytes;
    const int64_t n_strips = (rows + kStripRows - 1) / kStripRows;
    const int64_t pt = act.per_token, n_act = n * pt;
    const int64_t tile = std::max<int64_t>(kStripAct, kStripTileBytes / int64_t(act.row_bytes) / kStripAct * kStripAct);
    const bool pairs = n >= 2 && sk.packed_pair;
    // Pairs: chunks of whole pairs, at least three, as only a chunk's later pairs have their weights
    // requested by the call before them (Q4_1 576 x 576, 16 activation rows: ~195 -> ~212 G MAC/s
    // against chunks of one pair). kPackedChunks a thread, as packed_matvec's one: each chunk
    // starts its weight stream cold (against kTargetChunks, interleaved batched decode steps,
    // 2 threads: 4 sessions 1.10x SmolLM2, 1.03x gemma3; 8 sessions at q8 1.03x, 1.03x).
    // One thread (a MoE expert's item on its worker): one chunk, the requests running on through it.
    // At most kGemvChunkBytes a chunk (an output head of 178 MB in four chunks left one thread
    // waiting for the other's last: gemma3 4 sessions 0.93x).
    int64_t per_chunk = pool.size() == 1 ? n_strips
                                          : strips_per_chunk(n_strips, strip_bytes, pool.size(), kPackedChunks, pairs ? 2 : 1,
                                                             pairs ? 6 : 1);
    if (n_act > tile) per_chunk = std::min(per_chunk, std::max<int64_t>(1, kStripScratch / strip_bytes));   // stay in L2
    const int64_t n_chunks = (n_strips + per_chunk - 1) / per_chunk;
    const auto* w = static_cast<const uint8_t*>(packed);
    pool.parallel_for(n_chunks, [&](int64_t c, int) {
        const int64_t s0 = c * per_chunk, s1 = std::min(n_strips, s0 + per_chunk);
        for (int64_t a0 = 0; a0 < n_act; a0 += tile) {
            const int64_t a1 = std::min(n_act, a0 + tile);
            for (int64_t s = s0; s < s1;) {
                const int64_t ns = pairs && s + 1 < s1 ? 2 : 1;   // strips this call
                // The next call's strips, from memory once. The pair GEMM spreads those requests
                // over the blocks of its first call (one Q4_1 3072 x 576 matmul of 16 activation
                // rows from memory, 1 thread: ~177 -> ~245 G MAC/s against one burst per call); the
                // first pair of a chunk is requested here, as is the one-strip GEMM's next strip.
                const int64_t next_bytes = s + ns < s1 ? std::min<int64_t>(2, s1 - s - ns) * strip_bytes : 0;
                if (a0 == 0 && ns == 1 && next_bytes) prefetch_strip(w + (s + 1) * strip_bytes, strip_bytes);
                if (a0 == 0 && ns == 2 && s == s0) prefetch_strip(w + s * strip_bytes, 2 * strip_bytes);
                for (int64_t i0 = a0; i0 < a1; i0 += kStripAct) {
                    const int64_t na = std::min<int64_t>(kStripAct, a1 - i0);
                    alignas(64) float out[2 * kStripAct * kStripRows];
                    if (ns == 2)
                        sk.packed_pair(int(cols), w + s * strip_bytes, size_t(strip_bytes), act.group(i0), int(na), out,
                                       w + (s + 2) * strip_bytes, size_t(a0 == 0 && i0 == a0 ? next_bytes : 0));
                    else sk.packed(int(cols), w + s * strip_bytes, act.group(i0), int(na), out);
                    for (int64_t h = 0; h < ns; ++h) {
                        const int64_t r0 = (s + h) * kStripRows, nw = std::min<int64_t>(kStripRows, rows - r0);
                        store_strip(out + h * kStripAct * kStripRows, i0, na, pt, r0, nw, rows, y);
                    }
                }
                s += ns;
            }
        }
    });
}

// One token on packed strips (matmul_packed's n == 1): each thread walks a contiguous run of
// strips with requests kGemvAhead bytes ahead of the reads (StripGemvFn; the run's first
// kGemvAhead bytes requested at once before its first strip). A decode step's weights come from
// memory: with nothing but the hardware prefetchers (or one burst per strip, which overruns L1 on
// wide strips) a mat-vec ran at 50-70% of the read bandwidth, the more so the smaller the matrix
// (a run of a 576x576 Q4_1 matrix starting cold every 12 KB). Measured (2 threads, load ~7, wall
// per call): SmolLM2's Q4_1 576x576 15.1 -> 7.9 us, 576x1536 30.6 -> 20.9, 960x576 16.4 -> 11.5,
// 3072x576 33.3 -> 30.7. Every run start is a cold start of the request stream, so each thread
// owns one run (against four chunks a thread: SmolLM2 1.16x, gemma3 1.01-1.05x), and balance
// comes from threads taking batches off the back of a slower thread's run (StripRange).
constexpr int64_t kGemvAhead = 8 << 10;

// A run of strips [front, back) that one thread owns and walks from the front, and that threads
// done with their own take batches of from the back: one 64-bit word, front | back << 32.
struct alignas(64) StripRange {
    std::atomic<uint64_t> fb{0};
    static uint64_t pack(int64_t f, int64_t b) { return uint64_t(f) | uint64_t(b) << 32; }
    // Batch [f, e) from the front (the owner, kFront) or the back (a thief); back: the range's
    // end then. False when the range is empty.
    template <bool kFront>
    bool take(int64_t batch, int64_t& f, int64_t& e, int64_t& back) {
        uint64_t cur = fb.load(std::memory_order_relaxed);
        for (;;) {
            const int64_t cf = int64_t(cur & 0xFFFFFFFFu), cb = int64_t(cur >> 32);
            if (cf >= cb) return false;
            f = kFront ? cf : std::max(cf, cb - batch);
            e = kFront ? std::min(cb, cf + batch) : cb;
            back = cb;
            if (fb.compare_exchange_weak(cur, kFront ? pack(e, cb) : pack(cf, f), std::memory_order_relaxed)) return true;
        }
    }
};

// Strips a claim takes: about kGemvBatchBytes of weights (one strip at least). Against the
// chunks of at most kGemvChunkBytes handed out by the pool before (every chunk a cold start of
// the request stream; gemma3's head: 341 of them), eighteenth session, Intel Xeon, 2 threads:
// gemma3's 178 MB Q8_0 head 30.9 -> 34.5 GB/s; one-token decode, interleaved processes, best of
// 5 (bench/results/ab_gemv_ranges_s18.json): gemma3 1.02x, the 0.5B shape 1.04x, SmolLM2 1.00x.
constexpr int64_t kGemvBatchBytes = 64 << 10;

void packed_matvec(const StripKernels& sk, const void* packed, GGMLType type, int64_t rows, int64_t cols,
                   const QuantizedActs& act, float* y, ThreadPool& pool) {
    const int64_t strip_bytes = PackedLayout(type, cols).strip_bytes;
    const int64_t n_strips = (rows + kStripRows - 1) / kStripRows;
    const int64_t pt = act.per_token;
    const auto* w = static_cast<const uint8_t*>(packed);
    // Strip s, requesting kGemvAhead bytes ahead of its reads up to `end`.
    auto strip = [&](int64_t s, const uint8_t* end) {
        const int64_t r0 = s * kStripRows, nw = std::min<int64_t>(kStripRows, rows - r0);
        alignas(64) float out[kStripAct * kStripRows];
        sk.packed_gemv(int(cols), w + s * strip_bytes, act.group(0), int(pt), out, w + s * strip_bytes + kGemvAhead, end);
        store_strip(out, 0, pt, pt, r0, nw, rows, y);
    };
    // The start of a stream of strips [s0, s1): its first kGemvAhead bytes requested at once.
    auto start_stream = [&](int64_t s0, int64_t s1) {
        prefetch_strip(w + s0 * strip_bytes, std::min<int64_t>(kGemvAhead, (s1 - s0) * strip_bytes));
    };
    // Strips [s0, s1) as one stream.
    auto run = [&](int64_t s0, int64_t s1) {
        start_stream(s0, s1);
        for (int64_t s = s0; s < s1; ++s) strip(s, w + s1 * strip_bytes);
    };
    // One thread (a MoE expert's matmul on its worker, moe.cpp): one run through the whole matrix.
    const int64_t threads = std::min<int64_t>(pool.size(), n_strips);
    if (threads <= 1) return run(0, n_strips);
    // Each thread owns a contiguous run of strips and walks it as one stream (requests running on
    // ahead to the run's current end); a thread done with its own takes batches from the back of
    // the others', so none waits on a slower one for more than a batch.
    std::vector<StripRange> ranges(static_cast<size_t>(threads));
    for (int64_t t = 0; t < threads; ++t)
        ranges[size_t(t)].fb.store(StripRange::pack(n_strips * t / threads, n_strips * (t + 1) / threads), std::memory_order_relaxed);
    const int64_t batch = std::max<int64_t>(1, kGemvBatchBytes / strip_bytes);
    pool.parallel_for(threads, [&](int64_t t, int) {
        int64_t f, e, back;
        for (bool first = true; ranges[size_t(t)].take<true>(batch, f, e, back); first = false) {
            if (first) start_stream(f, back);
            for (int64_t s = f; s < e; ++s) strip(s, w + back * strip_bytes);
        }
        for (int64_t k = 1; k < threads; ++k)
            while (ranges[size_t((t + k) % threads)].take<false>(batch, f, e, back)) run(f, e);
    });
}

// Packed weights under a kernel set without the packed GEMM (the scalar / AVX2 sets, or AVX-512
// set by set_kernels after load): each strip is unpacked to GGML rows in the thread's scratch and
// multiplied by the set's multi-row dot, as matvec / matmul would on the original rows (the same
// bits: unpacking is a byte permutation).
void unpacked_matmul(const KernelSet& ks, const void* packed, GGMLType type, int64_t rows, int64_t cols,
                     const QuantizedActs& act, int64_t n, float* y, ThreadPool& pool) {
    const VecDotRowsFn dot_rows = act.panel ? ks.of(type).panel : ks.of(type).dot_rows;
    const int64_t wrow = weight_row_bytes(type, cols);
    const int64_t n_strips = (rows + kStripRows - 1) / kStripRows;
    const int64_t pt = act.per_token;
    const int64_t tile = std::clamp<int64_t>(kTileBytes / int64_t(act.row_bytes), pt, kActTile) / pt;
    const Scratch scratch(kStripSlot, size_t(pool.size()) * size_t(kStripRows * wrow));
    pool.parallel_for(n_strips, [&](int64_t s, int thread) {
        uint8_t* mine = scratch.data() + size_t(thread) * size_t(kStripRows * wrow);
        const int64_t r0 = s * kStripRows, nw = std::min<int64_t>(kStripRows, rows - r0);
        unpack_strip(type, cols, packed, s, int(nw), mine, size_t(wrow));
        for (int64_t i0 = 0; i0 < n; i0 += tile) {
            const int64_t i1 = std::min(n, i0 + tile);
            for (int64_t j = 0; j < nw; ++j) {
                float out[kActTile];
                dot_rows(int(cols), mine + j * wrow, act.row(i0 * pt), act.row_bytes, int((i1 - i0) * pt), out);
                for (int64_t i = i0; i < i1; ++i)
                    y[i * rows + r0 + j] = pt == 1 ? out[i - i0] : out[pt * (i - i0)] + out[pt * (i - i0) + 1] * (1.0f / kLoScale);
            }
        }
    });
}


// packed: weights are packed strips (PackedLayout), turned into strips by sk.packed_to_strip.
void strip_matmul(const StripKernels& sk, const void* weights, GGMLType type, int64_t rows, int64_t cols,
                  const QuantizedActs& act, int64_t n, float* y, ThreadPool& pool, bool packed = false) {
    const int64_t strip_bytes = StripLayout::bytes(cols, sk.block);
    const int64_t n_strips = (rows + kStripRows - 1) / kStripRows;
    const int64_t pt = act.per_token, n_act = n * pt;
    const int64_t tile = std::max<int64_t>(kStripAct, kStripTileBytes / int64_t(act.row_bytes) / kStripAct * kStripAct);
    // Pairs (GGML rows, n >= 2, one tile): two strips of scratch, chunks of at least three pairs
    // (as packed_matmul: a chunk's first pair is requested in one burst).
    const bool pairs = !packed && n >= 2 && sk.gemm_pair && n_act <= tile;
    const int64_t budget = std::max<int64_t>(1, kStripScratch / strip_bytes);
    const int64_t want = std::max<int64_t>(1, n_strips / (int64_t(pool.size()) * kTargetChunks));
    const int64_t per_chunk = pairs ? rows_per_chunk(n_strips, pool, 6) : std::min(budget, want);
    const int64_t n_chunks = (n_strips + per_chunk - 1) / per_chunk;
    const auto* w = static_cast<const uint8_t*>(weights);
    const int64_t wrow = weight_row_bytes(type, cols);
    const int64_t scratch_strips = pairs ? 2 : per_chunk;
    const Scratch scratch(kStripSlot, size_t(pool.size()) * size_t(scratch_strips * strip_bytes));
    // One strip against activation rows [a0, a1): kStripAct rows per GEMM call, combined into y.
    auto gemm_strip = [&](const uint8_t* strip, int64_t s, int64_t a0, int64_t a1) {
        const int64_t r0 = s * kStripRows, nw = std::min<int64_t>(kStripRows, rows - r0);
        for (int64_t i0 = a0; i0 < a1; i0 += kStripAct) {
            const int64_t na = std::min<int64_t>(kStripAct, a1 - i0);   // even when pt == 2
            alignas(64) float out[kStripAct * kStripRows];
            sk.gemm(int(cols), strip, act.group(i0), int(na), out);
            store_strip(out, i0, na, pt, r0, nw, rows, y);
        }
    };
    // Strips s and s + 1 (decoded one after the other at `strip`) against rows [a0, a1): each
    // activation dword loaded once for both. One matmul of 512 x rows at two-pass precision, 1
    // thread, CPU time, strips one at a time -> in pairs: Q4_1 1536x576 1.65 -> 1.45 ms, Q4_K
    // 896x4864 8.5 -> 7.85, Q8_0 1024x640 1.15 -> 1.05, Q6_K 896x4864 9.85 -> 9.75, Q5_0 2048x896
    // 3.05 -> 3.1 (load ~5, best of 6, two runs each).
    auto gemm_pair = [&](const uint8_t* strip, int64_t s, int64_t a0, int64_t a1) {
        for (int64_t i0 = a0; i0 < a1; i0 += kStripAct) {
            const int64_t na = std::min<int64_t>(kStripAct, a1 - i0);
            alignas(64) float out[2 * kStripAct * kStripRows];
            sk.gemm_pair(int(cols), strip, size_t(strip_bytes), act.group(i0), int(na), out, nullptr, 0);
            for (int64_t h = 0; h < 2; ++h) {
                const int64_t r0 = (s + h) * kStripRows;
                store_strip(out + h * kStripAct * kStripRows, i0, na, pt, r0, std::min<int64_t>(kStripRows, rows - r0), rows, y);
            }
        }
    };
    const int64_t packed_bytes = packed ? PackedLayout(type, cols).strip_bytes : 0;
    auto decode_strip = [&](int64_t s, int64_t s1, uint8_t* strip) {
        const int64_t r0 = s * kStripRows;
        if (packed) {
            if (s + 1 < s1) prefetch_strip(w + (s + 1) * packed_bytes, packed_bytes);
            return sk.packed_to_strip(int(cols), w + s * packed_bytes, 0, kStripRows, strip);
        }
        if (s + 1 < s1) prefetch_strip(w + (r0 + kStripRows) * wrow, std::min<int64_t>(kStripRows, rows - r0 - kStripRows) * wrow);
        sk.decode(int(cols), w + r0 * wrow, size_t(wrow), int(std::min<int64_t>(kStripRows, rows - r0)), strip);
    };
    // Pairs of strips decoded from GGML rows: the pair GEMM, which also requests the next pair's
    // rows a few lines per block while the decoded pair is multiplied (one Q4_K 640 x 1024 matmul
    // of 16 activation rows from memory, 1 thread: ~133 -> ~180 G MAC/s; Q6_K 640 x 2048: ~128 ->
    // ~147, its decode being the larger part).
    auto gemm_pairs = [&](uint8_t* mine, int64_t s0, int64_t s1) {
        const int64_t chunk_end = std::min(rows, s1 * kStripRows);
        prefetch_strip(w + s0 * kStripRows * wrow, (std::min(chunk_end, (s0 + 2) * kStripRows) - s0 * kStripRows) * wrow);
        for (int64_t s = s0; s < s1; s += 2) {
            if (s + 1 == s1) {   // a lone last strip
                sk.decode(int(cols), w + s * kStripRows * wrow, size_t(wrow), int(std::min<int64_t>(kStripRows, rows - s * kStripRows)), mine);
                gemm_strip(mine, s, 0, n_act);
                break;
            }
            for (int64_t h = 0; h < 2; ++h) {
                const int64_t r0 = (s + h) * kStripRows;
                sk.decode(int(cols), w + r0 * wrow, size_t(wrow), int(std::min<int64_t>(kStripRows, rows - r0)), mine + h * strip_bytes);
            }
            const int64_t next0 = std::min(chunk_end, (s + 2) * kStripRows), next1 = std::min(chunk_end, (s + 4) * kStripRows);
            const size_t next_bytes = size_t((next1 - next0) * wrow + 63) / 64 * 64;
            for (int64_t i0 = 0; i0 < n_act; i0 += kStripAct) {
                const int64_t na = std::min<int64_t>(kStripAct, n_act - i0);
                alignas(64) float out[2 * kStripAct * kStripRows];
                sk.gemm_pair(int(cols), mine, size_t(strip_bytes), act.group(i0), int(na), out, w + next0 * wrow,
                             i0 == 0 ? next_bytes : 0);
                for (int64_t h = 0; h < 2; ++h) {
                    const int64_t r0 = (s + h) * kStripRows;
                    store_strip(out + h * kStripAct * kStripRows, i0, na, pt, r0, std::min<int64_t>(kStripRows, rows - r0), rows, y);
                }
            }
        }
    };
    pool.parallel_for(n_chunks, [&](int64_t c, int thread) {
        uint8_t* mine = scratch.data() + size_t(thread) * size_t(scratch_strips * strip_bytes);
        const int64_t s0 = c * per_chunk, s1 = std::min(n_strips, s0 + per_chunk);
        if (pairs) return gemm_pairs(mine, s0, s1);
        if (n_act <= tile) {   // one tile (a decode step of several sessions): each strip used while in L1
            for (int64_t s = s0; s < s1; ++s) {
                decode_strip(s, s1, mine);
                gemm_strip(mine, s, 0, n_act);
            }
            return;
        }
        for (int64_t s = s0; s < s1; ++s) decode_strip(s, s1, mine + (s - s0) * strip_bytes);
        for (int64_t a0 = 0; a0 < n_act; a0 += tile) {
            const int64_t a1 = std::min(n_act, a0 + tile);
            int64_t s = s0;
            if (sk.gemm_pair)   // the chunk's decoded strips lie one after another: pairs (the same bits)
                for (; s + 1 < s1; s += 2) gemm_pair(mine + (s - s0) * strip_bytes, s, a0, a1);
            for (; s < s1; ++s) gemm_strip(mine + (s - s0) * strip_bytes, s, a0, a1);
        }
    });
}

// The multi-row dots (no strip GEMM) over the activation rows as quantize_rows laid them out.
void dots_matmul(const KernelSet& ks, const void* weights, GGMLType type, int64_t rows, int64_t cols,
                 const QuantizedActs& act, int64_t n, float* y, ThreadPool& pool) {
    const VecDotRowsFn dot_rows = rows_kernel(ks, type, act);
    // Tokens per multi-row dot: up to kActTile activation rows, fewer where their quantized rows
    // would not stay in L1 together (wide panels): each row's result does not depend on the tile.
    const int64_t pt = act.per_token;
    const int64_t tile = std::clamp<int64_t>(kTileBytes / int64_t(act.row_bytes), pt, kActTile) / pt;
    const auto* w = static_cast<const uint8_t*>(weights);
    const int64_t wrow = weight_row_bytes(type, cols);
    const int64_t band_budget = std::max<int64_t>(1, (256 << 10) / wrow);  // rows in ~256 KiB
    const int64_t chunk_rows = std::min(band_budget, rows_per_chunk(rows, pool, 1));
    const int64_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
    pool.parallel_for(n_chunks, [&](int64_t c, int) {
        const int64_t r0 = c * chunk_rows, r1 = std::min(rows, r0 + chunk_rows);
        for (int64_t i0 = 0; i0 < n; i0 += tile) {
            const int64_t i1 = std::min(n, i0 + tile);
            for (int64_t r = r0; r < r1; ++r) {
                float out[kActTile];   // per token: one dot, or (hi, lo)
                dot_rows(int(cols), w + r * wrow, act.row(i0 * pt), act.row_bytes, int((i1 - i0) * pt), out);
                if (pt == 1) for (int64_t i = i0; i < i1; ++i) y[i * rows + r] = out[i - i0];
                else for (int64_t i = i0; i < i1; ++i) y[i * rows + r] = out[2 * (i - i0)] + out[2 * (i - i0) + 1] * (1.0f / kLoScale);
            }
        }
    });
}

}  // namespace

ActPrecision parse_act_precision(const std::string& name) {
    if (name == "q8") return ActPrecision::Q8;
    if (name == "high") return ActPrecision::Q8X2;
    if (name == "auto") return ActPrecision::Auto;
    throw ValueError(str("act_precision '", name, "' must be 'q8' (8-bit activations, as llama.cpp), 'high' ",
                         "(two-pass ~16-bit activations) or 'auto' (high, except q8 for the prefill of types ",
                         "without a strip GEMM)"));
}

const char* act_precision_name(ActPrecision p) {
    return p == ActPrecision::Q8X2 ? "high" : p == ActPrecision::Auto ? "auto" : "q8";
}

void check_matmul_shape(GGMLType type, int64_t rows, int64_t cols) {
    const GGMLTypeSize* ts = ggml_type_size(static_cast<uint32_t>(type));
    LOWBIT_CHECK(ts && kernel_for(scalar::kernel_set(), type), ValueError, "no CPU matmul kernel for GGML type id ",
                 static_cast<uint32_t>(type), ts ? str(" (", ts->name, ")") : std::string());
    LOWBIT_CHECK(rows > 0 && cols > 0, ValueError, "matmul shape (", rows, ", ", cols, ") must be positive");
    LOWBIT_CHECK(cols % ts->block_elems == 0, ValueError, "matmul cols ", cols, " is not a multiple of the ",
                 ts->name, " block size ", ts->block_elems);
    LOWBIT_CHECK(cols <= (int64_t(1) << 30), ValueError, "matmul cols ", cols, " exceeds 2^30");
}

int64_t weight_row_bytes(GGMLType type, int64_t cols) {
    const GGMLTypeSize* ts = ggml_type_size(static_cast<uint32_t>(type));
    return cols / ts->block_elems * ts->block_bytes;
}

namespace {
// Auto's precision for a matmul of n rows of `type` under ks (matmul.h).
ActPrecision auto_precision(const KernelSet& ks, GGMLType type, int64_t n) {
    if (!ks.auto_two_pass) return ActPrecision::Q8;   // scalar, AVX2 (kernels.h)
    return strip_kernels_for(ks, type) || n < kStripMinRows ? ActPrecision::Q8X2 : ActPrecision::Q8;
}
}  // namespace

void matvec(const void* weights, GGMLType type, int64_t rows, int64_t cols, const float* x, float* y,
            ThreadPool& pool, ActPrecision precision) {
    check_matmul_shape(type, rows, cols);
    const KernelSet& ks = kernels();
    if (precision == ActPrecision::Auto) precision = auto_precision(ks, type, 1);
    QuantizedActs act;
    quantize_rows(ks, type, cols, XRows{x}, 1, precision, act, pool);
    const auto* w = static_cast<const uint8_t*>(weights);
    const int64_t wrow = weight_row_bytes(type, cols);
    const int64_t chunk_rows = rows_per_chunk(rows, pool, 4);
    const int64_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
    if (act.per_token == 1 && !act.panel) {
        // Requests kGemvAhead bytes ahead of the reads, a row's bytes per row, as the packed gemv
        // walks its strips (the hardware prefetchers alone left the AVX2 mat-vec short of the
        // read bandwidth). Same bits.
        const VecDotFn dot = kernel_for(ks, type);
        pool.parallel_for(n_chunks, [&](int64_t c, int) {
            const int64_t r0 = c * chunk_rows, r1 = std::min(rows, (c + 1) * chunk_rows);
            const uint8_t *first = w + r0 * wrow, *end = w + r1 * wrow;
            request_weight_bytes(first, std::min<int64_t>(kGemvAhead, end - first));
            for (int64_t r = r0; r < r1; ++r) {
                request_ahead(first + kGemvAhead, end, r - r0, wrow);
                y[r] = dot(int(cols), w + r * wrow, act.row(0));
            }
        });
        return;
    }
    const int pt = int(act.per_token);
    if (const PanelWRowsFn wrows = act.panel ? ks.of(type).panel_wrows : nullptr) {   // kPanelWRows weight rows a call
        pool.parallel_for(n_chunks, [&](int64_t c, int) {
            const int64_t r1 = std::min(rows, (c + 1) * chunk_rows);
            for (int64_t r = c * chunk_rows; r < r1; r += kPanelWRows) {
                const int nw = int(std::min<int64_t>(kPanelWRows, r1 - r));
                float out[2 * kPanelWRows];
                wrows(int(cols), w + r * wrow, size_t(wrow), nw, act.row(0), act.row_bytes, pt, out);
                for (int i = 0; i < nw; ++i) y[r + i] = pt == 1 ? out[i] : out[2 * i] + out[2 * i + 1] * (1.0f / kLoScale);
            }
        });
        return;
    }
    const VecDotRowsFn dot_rows = rows_kernel(ks, type, act);   // (hi, lo) in one pass over the weight row
    pool.parallel_for(n_chunks, [&](int64_t c, int) {
        const int64_t r1 = std::min(rows, (c + 1) * chunk_rows);
        for (int64_t r = c * chunk_rows; r < r1; ++r) {
            float hi_lo[2];
            dot_rows(int(cols), w + r * wrow, act.row(0), act.row_bytes, pt, hi_lo);
            y[r] = pt == 1 ? hi_lo[0] : hi_lo[0] + hi_lo[1] * (1.0f / kLoScale);
        }
    });
}

namespace {
void matmul_packed_x(const void* packed, GGMLType type, int64_t rows, int64_t cols, XRows x, int64_t n, float* y,
                     ThreadPool& pool, ActPrecision precision);

// Prefill: a chunk is a band of weight rows, small enough to stay in L2 while every activation
// row (in tiles of kActTile, whose quantized rows stay in L1/L2) is dotted against it. Each weight
// byte therefore comes from memory once per call instead of once per activation row, and the
// multi-row dot decodes each weight block once per tile instead of once per activation row.
void matmul_x(const void* weights, GGMLType type, int64_t rows, int64_t cols, XRows x, int64_t n, float* y,
              ThreadPool& pool, ActPrecision precision, bool small_batches, const void* packed) {
    check_matmul_shape(type, rows, cols);
    if (n <= 0) return;
    if (packed) return matmul_packed_x(packed, type, rows, cols, x, n, y, pool, precision);
    if (n == 1 && x.maker) {
        std::vector<float> row(static_cast<size_t>(cols));
        x.maker->make(x.maker->ctx, 0, row.data());
        return matvec(weights, type, rows, cols, row.data(), y, pool, precision);
    }
    if (n == 1) return matvec(weights, type, rows, cols, x.x, y, pool, precision);
    const KernelSet& ks = kernels();
    QuantizedActs act;
    const StripKernels* type_strip = strip_kernels_for(ks, type);
    if (precision == ActPrecision::Auto) precision = auto_precision(ks, type, n);
    const int64_t act_rows = n * (precision == ActPrecision::Q8X2 ? 2 : 1);
    const StripKernels* strip = n >= kStripMinRows || (small_batches && act_rows >= kStripMinActRows) ? type_strip : nullptr;
    quantize_rows(ks, type, cols, x, n, precision, act, pool, strip);
    if (strip) return strip_matmul(*strip, weights, type, rows, cols, act, n, y, pool);
    dots_matmul(ks, weights, type, rows, cols, act, n, y, pool);
}

// Packed weights: the packed strip GEMM for every n (one token too: its lanes are weight rows, so
// a mat-vec is the same kernel with one or two activation rows, and batched rows equal unbatched
// ones bit for bit), or the set's dots on unpacked strips where the set has no packed GEMM.
void matmul_packed_x(const void* packed, GGMLType type, int64_t rows, int64_t cols, XRows x, int64_t n, float* y,
                     ThreadPool& pool, ActPrecision precision) {
    check_matmul_shape(type, rows, cols);
    LOWBIT_CHECK(PackedLayout::has(type), ValueError, "GGML type id ", uint32_t(type), " has no packed layout");
    if (n <= 0) return;
    const KernelSet& ks = kernels();
    const StripKernels* sk = strip_kernels_for(ks, type);
    if (precision == ActPrecision::Auto) precision = auto_precision(ks, type, n);   // as matmul decides on the unpacked rows
    QuantizedActs act;
    if (sk && sk->packed) {
        quantize_rows(ks, type, cols, x, n, precision, act, pool, sk);
        // Up to four GEMM calls per strip (a decode step of <= 16 sessions at two-pass precision):
        // read in place (16 sessions: 0.98k -> 1.21k tok/s SmolLM2, 605 -> 687 gemma3, against
        // decoding each strip once at 9+ sessions); more: each strip turned into u bytes once
        // (cheap from packed) and reused.
        if (n == 1 && sk->packed_gemv) return packed_matvec(*sk, packed, type, rows, cols, act, y, pool);
        if (n * act.per_token <= packed_in_place_rows(type, cols)) return packed_matmul(*sk, packed, type, rows, cols, act, n, y, pool);
        return strip_matmul(*sk, packed, type, rows, cols, act, n, y, pool, /*packed=*/true);
    }
    quantize_rows(ks, type, cols, x, n, precision, act, pool);
    unpacked_matmul(ks, packed, type, rows, cols, act, n, y, pool);
}
}  // namespace

void matmul(const void* weights, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n, float* y,
            ThreadPool& pool, ActPrecision precision, bool small_batches, const void* packed) {
    matmul_x(weights, type, rows, cols, XRows{x}, n, y, pool, precision, small_batches, packed);
}

void matmul(const void* weights, GGMLType type, int64_t rows, int64_t cols, const RowMaker& x, int64_t n, float* y,
            ThreadPool& pool, ActPrecision precision, bool small_batches, const void* packed) {
    matmul_x(weights, type, rows, cols, XRows{nullptr, &x}, n, y, pool, precision, small_batches, packed);
}

void matmul_packed(const void* packed, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n,
                   float* y, ThreadPool& pool, ActPrecision precision) {
    matmul_packed_x(packed, type, rows, cols, XRows{x}, n, y, pool, precision);
}

// Rows quantized by the caller: laid out as quantize_rows lays out its own (strip groups, panel
// rows or plain q8 rows, one activation row per x row), then matmul's strip or dot loops, or on
// packed weights the packed GEMM in place (any n: no strip decode to amortize, so no threshold).
void matmul_quantized(const void* weights, GGMLType type, int64_t rows, int64_t cols, const void* const* act,
                      int64_t n, float* y, ThreadPool& pool, int64_t strip_min_rows, const void* packed) {
    check_matmul_shape(type, rows, cols);
    LOWBIT_CHECK(!packed || PackedLayout::has(type), ValueError, "GGML type id ", uint32_t(type),
                 " has no packed layout");
    const ActFormat fmt = act_format(type);
    LOWBIT_CHECK(fmt != ActFormat::F32, ValueError, "matmul_quantized: GGML type id ", uint32_t(type),
                 " takes float activations, not quantized rows");
    if (n <= 0) return;
    const KernelSet& ks = kernels();
    const StripKernels* strip = strip_kernels_for(ks, type);
    if (packed ? strip && !strip->packed : n < strip_min_rows) strip = nullptr;
    QuantizedActs q;
    lay_out_acts(ks, type, cols, n, strip, q);
    for (int64_t i = 0; i < n; ++i)   // no profile scope: callers run this on pool threads too
        place_act_row(q, type, fmt, cols, act[i], i);
    if (packed) {
        if (!strip) return unpacked_matmul(ks, packed, type, rows, cols, q, n, y, pool);
        if (n == 1 && strip->packed_gemv) return packed_matvec(*strip, packed, type, rows, cols, q, y, pool);
        if (PackedLayout(type, cols).sb_bytes && n > packed_in_place_rows(type, cols))   // k-quants: as matmul_packed
            return strip_matmul(*strip, packed, type, rows, cols, q, n, y, pool, /*packed=*/true);
        return packed_matmul(*strip, packed, type, rows, cols, q, n, y, pool);
    }
    if (strip) return strip_matmul(*strip, weights, type, rows, cols, q, n, y, pool);
    dots_matmul(ks, weights, type, rows, cols, q, n, y, pool);
}

std::vector<uint8_t> strip_activations(GGMLType type, int64_t cols, const float* x, int64_t n, ActPrecision precision,
                                       ThreadPool& pool) {
    check_matmul_shape(type, 1, cols);
    LOWBIT_CHECK(cpu_features().has_avx512_level(), ValueError,
                 "strip_activations: the strip GEMM's activation layout is AVX-512's; this CPU supports: ", supported_levels());
    const StripKernels* strip = strip_kernels_for(avx512::kernel_set(), type);
    LOWBIT_CHECK(strip, ValueError, "GGML type id ", uint32_t(type), " has no strip GEMM");
    if (precision == ActPrecision::Auto) precision = ActPrecision::Q8X2;
    const int64_t pt = precision == ActPrecision::Q8X2 ? 2 : 1;
    LOWBIT_CHECK(n > 0 && n * pt % kStripAct == 0, ValueError, "strip_activations: ", n, " rows x ", pt,
                 " per token do not fill whole groups of ", kStripAct);
    QuantizedActs act;
    quantize_rows(kernels(), type, cols, XRows{x}, n, precision, act, pool, strip);
    const uint8_t* p = act.data->data();
    return std::vector<uint8_t>(p, p + size_t(n * pt / kStripAct) * act.group_bytes);
}

double read_bandwidth_gbs(ThreadPool& pool, int64_t bytes, int iters) {
    LOWBIT_CHECK(bytes >= (1 << 20) && bytes <= (int64_t(16) << 30), ValueError,
                 "read_bandwidth bytes ", bytes, " must be in [1 MiB, 16 GiB]");
    LOWBIT_CHECK(iters >= 1 && iters <= 100, ValueError, "read_bandwidth iters ", iters, " must be in [1, 100]");
    const int64_t words = bytes / 8;
    AlignedBuffer<uint64_t> buf{static_cast<size_t>(words), Pages::Huge};   // as the weights it bounds (common.h)
    const int64_t n_chunks = int64_t(pool.size()) * 16;
    const int64_t per_chunk = (words + n_chunks - 1) / n_chunks;
    std::vector<uint64_t> sums(static_cast<size_t>(n_chunks));
    pool.parallel_for(n_chunks, [&](int64_t c, int) {  // first touch by the threads that read it
        const int64_t e = std::min(words, (c + 1) * per_chunk);
        for (int64_t i = c * per_chunk; i < e; ++i) buf[size_t(i)] = uint64_t(i) * 0x9E3779B97F4A7C15ull;
    });
    double best = 0.0;
    for (int it = 0; it <= iters; ++it) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.parallel_for(n_chunks, [&](int64_t c, int) {
            const int64_t e = std::min(words, (c + 1) * per_chunk);
            uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int64_t i = c * per_chunk;
            for (; i + 4 <= e; i += 4) { s0 += buf[i]; s1 += buf[i + 1]; s2 += buf[i + 2]; s3 += buf[i + 3]; }
            for (; i < e; ++i) s0 += buf[size_t(i)];
            sums[size_t(c)] = s0 + s1 + s2 + s3;
        });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (it > 0) best = std::max(best, double(words * 8) / s / 1e9);
    }
    volatile uint64_t sink = 0;
    for (uint64_t v : sums) sink = sink + v;
    return best;
}

}  // namespace lowbit::cpu

// kv_cache.h: per-layer key/value cache, f16 or q8_0, with ring buffers for sliding windows.
//
// Layout per layer:  K, V: (n_cells, n_head_kv, row_bytes)  one row = one head's head_dim values
//   f16:  row = head_dim halves            q8_0: row = head_dim / 32 blocks of 34 bytes
// Position p lives in cell p % n_cells. Full-attention layers have n_cells = n_ctx, so nothing is
// ever overwritten. Sliding-window layers (window W keys, self included) keep a ring of
// min(n_ctx, W + n_batch) cells: a batch of up to n_batch queries at p0.. needs keys from
// p0 - W + 1 on, and writing the batch only overwrites positions older than that.
//
// Validity: cells hold positions [lo_valid, n_past) where n_past is kept by the caller;
// lo_valid rises as a ring overwrites old positions. truncate() and shift() keep it honest:
// when a ring no longer holds the window a later query needs, they say so (see each).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common.h"
#include "model/config.h"

namespace lowbit::model {

enum class KVType { F16, Q8_0 };

// "f16" / "q8_0" (case-insensitive); ValueError for other names, or q8_0 when head_dim % 32 != 0.
KVType parse_kv_type(const std::string& name, int64_t head_dim);
const char* kv_type_name(KVType t);

// The one rule for the cache's size, used by KVCache itself, the Engine's memory check and the
// estimate before load (lowbit._core.kv_cache_bytes): cells of layer il (sliding-window layers:
// min(n_ctx, window + n_batch), others n_ctx), bytes of one head's row, and K + V bytes in all.
int64_t kv_layer_cells(const ModelConfig& c, int64_t il, int64_t n_ctx, int64_t n_batch);
int64_t kv_row_bytes(KVType t, int64_t head_dim);
int64_t kv_cache_bytes(const ModelConfig& c, int64_t n_ctx, int64_t n_batch, KVType t);

class KVCache {
public:
    KVCache(const ModelConfig& c, int64_t n_ctx, int64_t n_batch, KVType type);

    KVType type() const { return type_; }
    int64_t n_layers() const { return int64_t(layers_.size()); }
    int64_t n_cells(int64_t il) const { return layers_[size_t(il)].n_cells; }
    int64_t row_bytes() const { return row_bytes_; }
    int64_t head_dim() const { return head_dim_; }
    int64_t bytes(int64_t n_layers = -1) const;         // K + V of every layer (of the first n_layers)
    int64_t total_cells(int64_t n_layers = -1) const;   // sum over layers (the first n_layers) of n_cells
    int64_t lo_valid() const { return lo_valid_; }

    // Rows of consecutive cells of one head are row_stride() bytes apart; cell of pos = pos % n_cells.
    int64_t row_stride() const { return n_head_kv_ * row_bytes_; }
    const uint8_t* k_row(int64_t il, int64_t pos, int64_t head) const { return row(il, pos, head, false); }
    const uint8_t* v_row(int64_t il, int64_t pos, int64_t head) const { return row(il, pos, head, true); }

    // Writes one token's keys and values.   k, v: (n_head_kv, head_dim) f32
    void store(int64_t il, int64_t pos, const float* k, const float* v);
    // Dequantizes one row (one head) to f32.   out: (head_dim,)
    void load_row(const uint8_t* row, float* out) const;
    // True when rows can be used in place (f16: cpu/attention.h reads them), false when they must be
    // dequantized with load_row first (q8_0).
    bool rows_are_f16() const { return type_ == KVType::F16; }
    // Requests into cache the K and V rows (every head) of positions [p0, p1) of layer il, at most
    // max_bytes of each: a decode step's attention finds them in memory otherwise (the weights
    // streamed since the last step evicted them), and reading them one head at a time, on one
    // thread, left the other waiting. Asked for before the layer's q/k/v projection, they arrive
    // while it runs.
    void prefetch(int64_t il, int64_t p0, int64_t p1, int64_t max_bytes) const;
    // Call after writing positions up to `last_pos` in every layer: rings lost what they overwrote.
    void note_written(int64_t last_pos);

    // Drop positions >= n (n < n_past). Returns the n_past that results: n, or 0 when a
    // sliding-window ring no longer holds the window a query at n needs (everything is dropped
    // then, as llama.cpp does for its SWA cache; the caller re-evaluates from 0).
    int64_t truncate(int64_t n_past, int64_t n);

    // Drop positions [n_keep, n_keep + n_discard) and move later ones down by n_discard.
    // rerotate(layer, k (n_head_kv, head_dim) f32, delta) re-applies RoPE for a position change.
    // Throws ValueError (cache unchanged) when a ring lacks keys the moved window needs.
    // Returns the new n_past.
    using Rerotate = std::function<void(int64_t il, float* k, int64_t delta)>;
    // n_layers >= 0: only the first n_layers layers move (those a host pass writes below a forward
    // backend's; 0: none, the new n_past is still returned).
    int64_t shift(int64_t n_past, int64_t n_keep, int64_t n_discard, const Rerotate& rerotate, int64_t n_layers = -1);

    // Makes positions [0, n) hold what `src` (a cache of the same model and type, holding
    // positions up to src_n_past > n - 1) holds there: K/V rows copied as bytes, cell by cell
    // (the two may differ in n_ctx, so in ring size). Throws ValueError, this cache unchanged,
    // when a ring of src no longer holds the window a query at position n needs. The caller's
    // n_past becomes n; positions src's rings had lost stay lost here (lo_valid). n_layers >= 0:
    // only the first n_layers layers (those a host pass writes below a forward backend's).
    void copy_prefix(const KVCache& src, int64_t src_n_past, int64_t n, int64_t n_layers = -1);

private:
    struct Layer {
        int64_t n_cells = 0;
        AlignedBuffer<uint8_t> k, v;   // (n_cells, n_head_kv, row_bytes)
    };
    const uint8_t* row(int64_t il, int64_t pos, int64_t head, bool value) const {
        const Layer& l = layers_[size_t(il)];
        const size_t off = size_t(((pos % l.n_cells) * n_head_kv_ + head) * row_bytes_);
        return (value ? l.v.data() : l.k.data()) + off;
    }
    uint8_t* row_mut(int64_t il, int64_t pos, int64_t head, bool value) {
        return const_cast<uint8_t*>(row(il, pos, head, value));
    }
    void store_row(const float* x, uint8_t* row);
    int64_t ring_cells() const;      // n_cells of the sliding layers (0 when none is a ring)

    KVType type_;
    int64_t n_ctx_, n_head_kv_, head_dim_, row_bytes_, n_swa_;
    std::vector<Layer> layers_;
    int64_t lo_valid_ = 0;
};

}  // namespace lowbit::model

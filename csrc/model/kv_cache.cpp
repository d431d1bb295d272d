// kv_cache.cpp: see kv_cache.h.
#include "model/kv_cache.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "cpu/ops.h"
#include "quant/types.h"

namespace lowbit::model {

KVType parse_kv_type(const std::string& name, int64_t head_dim) {
    std::string n = name;
    for (char& ch : n) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    if (n == "f16") return KVType::F16;
    if (n == "q8_0") {
        LOWBIT_CHECK(head_dim % QK8_0 == 0, ValueError, "kv_type 'q8_0' needs head_dim divisible by ", QK8_0,
                     "; this model has head_dim ", head_dim, " (use 'f16')");
        return KVType::Q8_0;
    }
    throw ValueError(str("unknown kv_type '", name, "'; valid: f16, q8_0"));
}

const char* kv_type_name(KVType t) { return t == KVType::F16 ? "f16" : "q8_0"; }

int64_t kv_layer_cells(const ModelConfig& c, int64_t il, int64_t n_ctx, int64_t n_batch) {
    return c.layer_is_swa[size_t(il)] ? std::min(n_ctx, c.n_swa + n_batch) : n_ctx;
}

int64_t kv_row_bytes(KVType t, int64_t head_dim) {
    return t == KVType::F16 ? head_dim * 2 : head_dim / QK8_0 * int64_t(sizeof(block_q8_0));
}

int64_t kv_cache_bytes(const ModelConfig& c, int64_t n_ctx, int64_t n_batch, KVType t) {
    const int64_t row = checked_mul<ModelError>(c.n_head_kv, kv_row_bytes(t, c.head_dim), "KV heads x row bytes");
    int64_t total = 0;
    for (int64_t il = 0; il < c.n_layers; ++il)
        total = checked_add<ModelError>(total, checked_mul<ModelError>(2 * kv_layer_cells(c, il, n_ctx, n_batch), row,
                                                                       "KV cache layer bytes"), "KV cache bytes");
    return total;
}

KVCache::KVCache(const ModelConfig& c, int64_t n_ctx, int64_t n_batch, KVType type)
    : type_(type), n_ctx_(n_ctx), n_head_kv_(c.n_head_kv), head_dim_(c.head_dim), n_swa_(c.n_swa) {
    row_bytes_ = kv_row_bytes(type, head_dim_);
    layers_.resize(size_t(c.n_layers));
    for (int64_t il = 0; il < c.n_layers; ++il) {
        Layer& l = layers_[size_t(il)];
        l.n_cells = kv_layer_cells(c, il, n_ctx, n_batch);
        const size_t bytes = size_t(checked_mul<ModelError>(checked_mul<ModelError>(l.n_cells, n_head_kv_, "KV cells x heads"),
                                                            row_bytes_, "KV cache layer bytes"));
        l.k.resize(bytes);   // pages are touched as positions are written
        l.v.resize(bytes);
    }
}

int64_t KVCache::bytes(int64_t n_layers) const {
    int64_t b = 0;
    for (size_t il = 0; il < layers_.size() && (n_layers < 0 || int64_t(il) < n_layers); ++il)
        b += int64_t(layers_[il].k.size() + layers_[il].v.size());
    return b;
}

int64_t KVCache::total_cells(int64_t n_layers) const {
    int64_t n = 0;
    for (size_t il = 0; il < layers_.size() && (n_layers < 0 || int64_t(il) < n_layers); ++il) n += layers_[il].n_cells;
    return n;
}

int64_t KVCache::ring_cells() const {
    for (const Layer& l : layers_)
        if (l.n_cells < n_ctx_) return l.n_cells;
    return 0;
}

void KVCache::store_row(const float* x, uint8_t* row) {
    if (type_ == KVType::F16) cpu::f32_to_f16_row(x, reinterpret_cast<uint16_t*>(row), head_dim_);
    else quant_type(GGMLType::Q8_0).from_float(x, row, head_dim_, nullptr);
}

void KVCache::load_row(const uint8_t* row, float* out) const {
    if (type_ == KVType::F16) cpu::f16_to_f32_row(reinterpret_cast<const uint16_t*>(row), out, head_dim_);
    else quant_type(GGMLType::Q8_0).to_float(row, out, head_dim_);
}

void KVCache::store(int64_t il, int64_t pos, const float* k, const float* v) {
    for (int64_t h = 0; h < n_head_kv_; ++h) {
        store_row(k + h * head_dim_, row_mut(il, pos, h, false));
        store_row(v + h * head_dim_, row_mut(il, pos, h, true));
    }
}

void KVCache::prefetch(int64_t il, int64_t p0, int64_t p1, int64_t max_bytes) const {
    const Layer& l = layers_[size_t(il)];
    const int64_t stride = row_stride();   // the rows of one position: one run of bytes
    p0 = std::max(p0, p1 - std::min(l.n_cells, max_bytes / stride));
    for (int64_t p = std::max<int64_t>(p0, 0); p < p1;) {   // runs of consecutive cells (a ring wraps)
        const int64_t cell = p % l.n_cells, run = std::min(p1 - p, l.n_cells - cell);
        const int64_t b0 = cell * stride, b1 = (cell + run) * stride;
        for (int64_t b = b0 - b0 % 64; b < b1; b += 64) {
            __builtin_prefetch(l.k.data() + b, 0, 2);
            __builtin_prefetch(l.v.data() + b, 0, 2);
        }
        p += run;
    }
}

void KVCache::note_written(int64_t last_pos) {
    const int64_t ring = ring_cells();
    if (ring > 0) lo_valid_ = std::max(lo_valid_, last_pos + 1 - ring);
}

int64_t KVCache::truncate(int64_t n_past, int64_t n) {
    if (n >= n_past) return n_past;
    if (ring_cells() > 0 && lo_valid_ > std::max<int64_t>(0, n - n_swa_ + 1)) n = 0;
    if (n == 0) lo_valid_ = 0;
    return n;
}

int64_t KVCache::shift(int64_t n_past, int64_t n_keep, int64_t n_discard, const Rerotate& rerotate,
                       int64_t n_layers) {
    const int64_t new_n = n_past - n_discard;
    const int64_t layers = n_layers < 0 ? this->n_layers() : std::min(n_layers, this->n_layers());
    if (layers == 0) return new_n;
    const int64_t ring = ring_cells();
    // Oldest new position whose row every layer still has: rings may have lost some.
    int64_t lo_new = 0;
    if (ring > 0) {
        auto available = [&](int64_t q) {
            const int64_t s = q < n_keep ? q : q + n_discard;
            return s >= lo_valid_ && s < n_past;
        };
        lo_new = new_n;
        while (lo_new > 0 && new_n - (lo_new - 1) <= ring && available(lo_new - 1)) --lo_new;
        const int64_t need = std::max<int64_t>(0, new_n - n_swa_ + 1);
        LOWBIT_CHECK(lo_new <= need, ValueError, "cannot shift: the sliding-window cache (", ring,
                     " cells) no longer holds positions ", need, "..", new_n - 1, " after the shift (kept from ",
                     lo_new, "); truncate(0) and re-evaluate instead");
    }
    // Moved rows go through a temporary copy (ring cells may overlap their destinations).
    std::vector<float> kbuf(size_t(n_head_kv_ * head_dim_));
    for (int64_t il = 0; il < layers; ++il) {
        const bool is_ring = layers_[size_t(il)].n_cells < n_ctx_;
        const int64_t first = std::max(n_keep, is_ring ? lo_new : int64_t(0));
        const int64_t n_move = std::max<int64_t>(0, new_n - first);
        const size_t tok_bytes = size_t(checked_mul<ModelError>(n_head_kv_, row_bytes_, "KV bytes per token"));
        std::vector<uint8_t> ktmp(size_t(n_move) * tok_bytes), vtmp(size_t(n_move) * tok_bytes);
        for (int64_t i = 0; i < n_move; ++i) {
            const int64_t src = first + i + n_discard;
            std::memcpy(ktmp.data() + size_t(i) * tok_bytes, row(il, src, 0, false), tok_bytes);
            std::memcpy(vtmp.data() + size_t(i) * tok_bytes, row(il, src, 0, true), tok_bytes);
        }
        for (int64_t i = 0; i < n_move; ++i) {
            const int64_t dst = first + i;
            const uint8_t* ksrc = ktmp.data() + size_t(i) * tok_bytes;
            for (int64_t h = 0; h < n_head_kv_; ++h) load_row(ksrc + h * row_bytes_, kbuf.data() + h * head_dim_);
            rerotate(il, kbuf.data(), -n_discard);
            for (int64_t h = 0; h < n_head_kv_; ++h)
                store_row(kbuf.data() + h * head_dim_, row_mut(il, dst, h, false));
            std::memcpy(row_mut(il, dst, 0, true), vtmp.data() + size_t(i) * tok_bytes, tok_bytes);
        }
    }
    if (ring > 0) lo_valid_ = lo_new;
    return new_n;
}

void KVCache::copy_prefix(const KVCache& src, int64_t src_n_past, int64_t n, int64_t n_layers) {
    LOWBIT_CHECK(src.type_ == type_ && src.n_head_kv_ == n_head_kv_ && src.head_dim_ == head_dim_ &&
                 src.layers_.size() == layers_.size(), ValueError, "copy_prefix: the caches differ (",
                 kv_type_name(src.type_), " vs ", kv_type_name(type_), " or geometry); both must be of one model and kv_type");
    LOWBIT_CHECK(n >= 0 && n <= src_n_past && n <= n_ctx_, ValueError, "copy_prefix: ", n,
                 " positions asked, the source holds ", src_n_past, " and this cache ", n_ctx_);
    // Per layer, the positions to copy: what this cache would hold after writing [0, n) itself,
    // cut to what src still holds; a ring of src may have lost only keys no later query sees.
    const int64_t need = std::max<int64_t>(0, n - n_swa_ + 1);   // oldest key a query at n sees
    int64_t lo_new = 0;
    const size_t layers = n_layers < 0 ? layers_.size() : std::min(layers_.size(), size_t(n_layers));
    std::vector<int64_t> first(layers);
    for (size_t il = 0; il < layers; ++il) {
        const int64_t cells = layers_[il].n_cells, src_cells = src.layers_[il].n_cells;
        const int64_t src_lo = src_cells < src.n_ctx_ ? std::max(src.lo_valid_, src_n_past - src_cells) : 0;
        first[il] = std::max<int64_t>(0, n - cells);
        if (src_lo > first[il]) {
            LOWBIT_CHECK(cells < n_ctx_ && src_lo <= need, ValueError, "copy_prefix: the source's sliding-window cache (",
                         src_cells, " cells) no longer holds positions ", need, "..", n - 1, " (kept from ", src_lo,
                         "); evaluate the prefix instead");
            first[il] = src_lo;
            lo_new = std::max(lo_new, src_lo);
        }
    }
    const size_t tok_bytes = size_t(n_head_kv_ * row_bytes_);   // one position: every head's row
    for (size_t il = 0; il < layers; ++il)
        for (int64_t p = first[il]; p < n; ++p) {
            std::memcpy(row_mut(int64_t(il), p, 0, false), src.row(int64_t(il), p, 0, false), tok_bytes);
            std::memcpy(row_mut(int64_t(il), p, 0, true), src.row(int64_t(il), p, 0, true), tok_bytes);
        }
    lo_valid_ = ring_cells() > 0 ? std::max(lo_new, std::max<int64_t>(0, n - ring_cells())) : 0;
}

}  // namespace lowbit::model

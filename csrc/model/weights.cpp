// weights.cpp: see weights.h. Tensor names follow llama.cpp's GGUF conventions.
#include "model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <cstdlib>
#include <initializer_list>

#include "common.h"
#include "cpu/dispatch.h"
#include "cpu/kernels.h"
#include "cpu/matmul.h"
#include "cpu/threadpool.h"
#include "quant/types.h"

namespace lowbit::model {
namespace {

std::string shape_str(int64_t a, int64_t b) { return str("[", a, ", ", b, "]"); }
std::string shape_str(const TensorInfo& t) {
    std::string s = "[";
    for (int d = 0; d < t.n_dims; ++d) s += str(d ? ", " : "", t.ne[size_t(d)]);
    return s + "]";
}

class Loader {
public:
    Loader(const GGUFFile& f) : f_(f) {}

    const TensorInfo* find(const std::string& name) const { return f_.find_tensor(name); }

    const TensorInfo& require(const std::string& name) const {
        const TensorInfo* t = f_.find_tensor(name);
        LOWBIT_CHECK(t, ModelError, f_.path(), ": missing tensor '", name, "'");
        return *t;
    }

    // GGUF ne = [cols, rows]; a matrix the CPU kernels can multiply with.
    Matrix matrix(const std::string& name, int64_t rows, int64_t cols) const {
        return matrix_of(require(name), rows, cols);
    }
    Matrix matrix_opt(const std::string& name, int64_t rows, int64_t cols) const {
        const TensorInfo* t = find(name);
        return t ? matrix_of(*t, rows, cols) : Matrix{};
    }

    // A 1-D float vector of n elements, copied out as f32.
    Vec vec(const std::string& name, int64_t n) const { return vec_of(require(name), n); }
    Vec vec_opt(const std::string& name, int64_t n) const {
        const TensorInfo* t = find(name);
        return t ? vec_of(*t, n) : Vec{};
    }

    Matrix matrix_of(const TensorInfo& t, int64_t rows, int64_t cols) const {
        LOWBIT_CHECK(t.n_dims == 2 && t.ne[0] == cols && t.ne[1] == rows, ModelError, f_.path(), ": tensor '",
                     t.name, "' has shape ", shape_str(t), ", expected ", shape_str(cols, rows));
        try {
            cpu::check_matmul_shape(t.type, rows, cols);
        } catch (const ValueError& e) {
            throw ModelError(str(f_.path(), ": tensor '", t.name, "' (", t.type_size->name, "): ", e.what()));
        }
        Matrix m;
        m.data = f_.tensor_data(t);
        m.type = t.type;
        m.rows = rows;
        m.cols = cols;
        m.row_bytes = cpu::weight_row_bytes(t.type, cols);
        return m;
    }

    // GGUF ne = [cols, rows, n]: n stacked matrices the CPU kernels can multiply with.
    ExpertMatrices experts(const std::string& name, int64_t n, int64_t rows, int64_t cols) const {
        const TensorInfo& t = require(name);
        LOWBIT_CHECK(t.n_dims == 3 && t.ne[0] == cols && t.ne[1] == rows && t.ne[2] == n, ModelError, f_.path(),
                     ": tensor '", name, "' has shape ", shape_str(t), ", expected [", cols, ", ", rows, ", ", n, "]");
        try {
            cpu::check_matmul_shape(t.type, rows, cols);
        } catch (const ValueError& e) {
            throw ModelError(str(f_.path(), ": tensor '", t.name, "' (", t.type_size->name, "): ", e.what()));
        }
        ExpertMatrices x;
        x.first.data = f_.tensor_data(t);
        x.first.type = t.type;
        x.first.rows = rows;
        x.first.cols = cols;
        x.first.row_bytes = cpu::weight_row_bytes(t.type, cols);
        x.n = n;
        x.stride = rows * x.first.row_bytes;
        return x;
    }

    // A (rows, cols) float table (GGUF ne = [cols, rows]) copied out as f32, row-major.
    Vec table(const std::string& name, int64_t rows, int64_t cols) const {
        const TensorInfo& t = require(name);
        LOWBIT_CHECK(t.n_dims == 2 && t.ne[0] == cols && t.ne[1] == rows, ModelError, f_.path(), ": tensor '", name,
                     "' has shape ", shape_str(t), ", expected ", shape_str(cols, rows));
        const QuantType* qt = find_quant_type(t.type);
        LOWBIT_CHECK(qt && cols % qt->block_elems == 0, ModelError, f_.path(), ": tensor '", name, "' has type ",
                     t.type_size->name, ", which cannot be read as floats");
        Vec v(size_t(rows * cols));
        qt->to_float(f_.tensor_data(t), v.data(), rows * cols);
        return v;
    }

    Vec vec_of(const TensorInfo& t, int64_t n) const {
        LOWBIT_CHECK(t.n_elements == n && (t.n_dims == 1 || t.ne[0] == n), ModelError, f_.path(), ": tensor '",
                     t.name, "' has shape ", shape_str(t), ", expected [", n, "]");
        const QuantType* qt = find_quant_type(t.type);
        LOWBIT_CHECK(qt && n % qt->block_elems == 0, ModelError, f_.path(), ": tensor '", t.name, "' has type ",
                     t.type_size->name, ", which cannot be read as floats");
        Vec v(static_cast<size_t>(n));
        qt->to_float(f_.tensor_data(t), v.data(), n);
        return v;
    }

private:
    const GGUFFile& f_;
};

// The router and the stacked experts of one MoE layer (biases: gpt-oss).
void load_experts(const Loader& ld, const ModelConfig& c, const std::string& p, LayerWeights& l) {
    const int64_t E = c.n_embd, F = c.n_ff_exp, X = c.n_expert;
    l.router = ld.matrix(p + "ffn_gate_inp.weight", X, E);
    l.gate_exps = ld.experts(p + "ffn_gate_exps.weight", X, F, E);
    l.up_exps = ld.experts(p + "ffn_up_exps.weight", X, F, E);
    l.down_exps = ld.experts(p + "ffn_down_exps.weight", X, E, F);
    if (c.arch == Arch::GptOss) {
        l.router_b = ld.vec(p + "ffn_gate_inp.bias", X);
        l.gate_exps_b = ld.table(p + "ffn_gate_exps.bias", X, F);
        l.up_exps_b = ld.table(p + "ffn_up_exps.bias", X, F);
        l.down_exps_b = ld.table(p + "ffn_down_exps.bias", X, E);
    }
    if (c.n_ff_shexp > 0) {
        l.shexp_gate = ld.vec(p + "ffn_gate_inp_shexp.weight", E);
        l.gate_shexp = ld.matrix(p + "ffn_gate_shexp.weight", c.n_ff_shexp, E);
        l.up_shexp = ld.matrix(p + "ffn_up_shexp.weight", c.n_ff_shexp, E);
        l.down_shexp = ld.matrix(p + "ffn_down_shexp.weight", E, c.n_ff_shexp);
    }
}

// Whether the engine adds the bias tensor `name` (one it would not add changes the model: refused).
bool bias_is_used(const std::string& name, const ModelConfig& c) {
    auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
    if (has(".attn_q.") || has(".attn_k.") || has(".attn_v.") || has(".attn_output.")) return !c.fused_qkv;
    return c.arch == Arch::GptOss && (has(".ffn_gate_inp.") || has(".ffn_gate_exps.") || has(".ffn_up_exps.") ||
                                      has(".ffn_down_exps."));
}

LayerWeights load_layer(const Loader& ld, const ModelConfig& c, int64_t il) {
    const std::string p = str("blk.", il, ".");
    const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim();
    LayerWeights l;
    if (c.pre_norms) l.attn_norm = ld.vec(p + "attn_norm.weight", E);
    if (c.fused_qkv) {
        l.wqkv = ld.matrix(p + "attn_qkv.weight", Q + 2 * KV, E);
    } else {
        l.wq = ld.matrix(p + "attn_q.weight", Q, E);
        l.wk = ld.matrix(p + "attn_k.weight", KV, E);
        l.wv = ld.matrix(p + "attn_v.weight", KV, E);
    }
    if (c.qkv_bias) {
        l.bq = ld.vec(p + "attn_q.bias", Q);
        l.bk = ld.vec(p + "attn_k.bias", KV);
        l.bv = ld.vec(p + "attn_v.bias", KV);
    } else if (!c.fused_qkv) {
        l.bq = ld.vec_opt(p + "attn_q.bias", Q);
        l.bk = ld.vec_opt(p + "attn_k.bias", KV);
        l.bv = ld.vec_opt(p + "attn_v.bias", KV);
    }
    l.bo = ld.vec_opt(p + "attn_output.bias", E);
    if (c.qk_norm || c.qk_norm_full) {   // per head, or over the whole q / k row
        l.q_norm = ld.vec(p + "attn_q_norm.weight", c.qk_norm ? c.head_dim : Q);
        l.k_norm = ld.vec(p + "attn_k_norm.weight", c.qk_norm ? c.head_dim : KV);
    }
    l.wo = ld.matrix(p + "attn_output.weight", E, Q);
    if (c.attn_sinks) l.attn_sinks = ld.vec(p + "attn_sinks.weight", c.n_head);
    if (c.post_norms) l.attn_post_norm = ld.vec(p + "post_attention_norm.weight", E);
    // gpt-oss stores its FFN pre-norm under the name post_attention_norm (llama.cpp's attn_post_norm)
    if (c.arch == Arch::GptOss) l.ffn_norm = ld.vec(p + "post_attention_norm.weight", E);
    else if (c.pre_norms) l.ffn_norm = ld.vec(p + "ffn_norm.weight", E);
    if (c.is_moe()) {
        load_experts(ld, c, p, l);
    } else if (c.fused_gate_up) {
        l.w_gate_up = ld.matrix(p + "ffn_up.weight", 2 * c.n_ff, E);
    } else {
        l.w_gate = ld.matrix(p + "ffn_gate.weight", c.n_ff, E);
        l.w_up = ld.matrix(p + "ffn_up.weight", c.n_ff, E);
    }
    if (!c.is_moe()) l.w_down = ld.matrix(p + "ffn_down.weight", E, c.n_ff);
    if (c.post_norms) l.ffn_post_norm = ld.vec(p + "post_ffw_norm.weight", E);
    return l;
}

// Drops the mapping's pages that lie wholly inside [p, p + bytes) from this process (clean,
// file-backed: they would be read again from the file if ever touched).
void release_pages(const void* p, size_t bytes) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGE_SIZE));
    const uintptr_t a = (uintptr_t(p) + page - 1) / page * page, b = (uintptr_t(p) + bytes) / page * page;
    if (b > a) madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED);
}

// One matrix made of `parts` stacked row-wise (all of one type and width), copied into `w.fused`;
// an absent Matrix when the types differ. (Packed types are stacked by Packer::stacked instead.)

Matrix concat_rows(ModelWeights& w, std::initializer_list<const Matrix*> parts) {
    const Matrix& first = **parts.begin();
    Matrix m = first;
    m.rows = 0;
    for (const Matrix* part : parts) {
        if (part->type != first.type || part->cols != first.cols) return Matrix{};
        m.rows += part->rows;
    }
    AlignedBuffer<uint8_t> buf(size_t(m.rows * m.row_bytes), Pages::Huge);   // a type without a packed layout
    size_t off = 0;
    for (const Matrix* part : parts) {
        const size_t bytes = size_t(part->rows * part->row_bytes);
        std::memcpy(buf.data() + off, part->data, bytes);
        release_pages(part->data, bytes);
        off += bytes;
    }
    m.data = buf.data();
    w.fused_bytes += buf.size();
    w.fused.push_back(std::move(buf));
    return m;
}

// Whether matrices of `type` are repacked: the kernel set in use reads a packed layout of it in place.
bool packable(GGMLType type) { return cpu::packs(cpu::kernels(), type); }

// The packed copies of a model's matrices (PackedLayout), made in one parallel pass: add() and
// add_experts() allocate each copy and point the matrix at it, run() fills them (strip ranges on
// every core: the copies' first touch, i.e. the kernel's page zeroing, is spread too) and releases
// the mapped rows as they are packed (the token embedding of a tied head keeps its mapping:
// lookups read the packed copy). The sources are always mapped rows: a packable type is never
// fused into a GGML copy (stacked() packs q | k | v straight from the parts).
class Packer {
public:
    explicit Packer(ModelWeights& w) : w_(w) {}

    // m's rows packed; m == the parts stacked row-wise (q | k | v without a fused copy), or m alone.
    void add(Matrix& m, std::initializer_list<const Matrix*> parts = {}) {
        if (!m.present() || m.packed || !m.data || !packable(m.type)) return;
        std::vector<cpu::RowRun> runs;
        if (parts.size() == 0) runs.push_back({m.data, m.rows});
        else for (const Matrix* part : parts) runs.push_back({part->data, part->rows});
        uint8_t* dst = allocate(m, 1);
        m.packed = dst;
        add_job(m, std::move(runs), dst);
    }

    // q | k | v (or gate | up) as one packed matrix, read in place from the parts; absent (the
    // parts are then used, and packed, one by one) when their types or widths differ.
    Matrix stacked(std::initializer_list<const Matrix*> parts) {
        const Matrix& first = **parts.begin();
        Matrix m = first;
        m.rows = 0;
        for (const Matrix* part : parts) {
            if (!part->data || part->type != first.type || part->cols != first.cols) return Matrix{};
            m.rows += part->rows;
        }
        add(m, parts);
        m.data = nullptr;   // no GGML copy: matrix_row unpacks from m.packed
        return m;
    }

    // Every expert of x packed into one buffer (expert e at x.packed + e * x.packed_stride), one
    // job per expert (its mapped rows released when packed).
    void add_experts(ExpertMatrices& x) {
        const Matrix& m = x.first;
        if (!x.present() || x.packed || !m.data || !packable(m.type)) return;
        const int64_t per_expert = cpu::packed_bytes(m.type, m.rows, m.cols);
        uint8_t* dst = allocate(m, x.n);
        x.packed = dst;
        x.packed_stride = per_expert;
        for (int64_t e = 0; e < x.n; ++e)
            add_job(m, {{static_cast<const uint8_t*>(m.data) + e * x.stride, m.rows}}, dst + e * per_expert);
    }

    void run() {
        struct Item {
            Job* job;
            int64_t s0, s1;
        };
        std::vector<Item> items;   // ~256 KB of packed bytes each
        for (Job& j : jobs_) {
            const int64_t per = std::max<int64_t>(1, (int64_t(256) << 10) / j.strip_bytes);
            for (int64_t s = 0; s < j.n_strips; s += per) {
                items.push_back({&j, s, std::min(j.n_strips, s + per)});
                ++j.items_left;
            }
        }
        std::atomic<size_t> next{0};
        std::exception_ptr error;
        std::mutex error_mutex;
        auto work = [&] {
            try {
                for (size_t i; (i = next.fetch_add(1)) < items.size();) {
                    Job& j = *items[i].job;
                    cpu::pack_strips(j.type, j.cols, j.runs.data(), int(j.runs.size()), j.row_bytes, items[i].s0,
                                     items[i].s1, j.dst);
                    // the mapped rows just packed leave the process now (pages wholly inside them;
                    // the job's last item releases all its rows, pages across items included), so
                    // a load's resident memory peaks near the packed copies', not at twice them
                    release_rows(j, items[i].s0 * cpu::kStripRows, items[i].s1 * cpu::kStripRows);
                    if (j.items_left.fetch_sub(1) == 1) release_rows(j, 0, j.n_strips * cpu::kStripRows);
                }
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                next = items.size();
            }
        };
        const int n_threads = int(std::min<size_t>(size_t(std::max(1, cpu::physical_core_count())), items.size()));
        std::vector<std::thread> threads;
        for (int t = 1; t < n_threads; ++t) threads.emplace_back(work);
        work();
        for (std::thread& t : threads) t.join();
        jobs_.clear();
        if (error) std::rethrow_exception(error);
    }

private:
    struct Job {
        GGMLType type;
        int64_t cols, n_strips, strip_bytes;
        size_t row_bytes;
        std::vector<cpu::RowRun> runs;   // mapped rows, stacked
        uint8_t* dst;
        std::atomic<int64_t> items_left{0};
    };

    // A new buffer of `copies` packed matrices of m's shape, owned by the weights.
    uint8_t* allocate(const Matrix& m, int64_t copies) {
        AlignedBuffer<uint8_t> buf(size_t(cpu::packed_bytes(m.type, m.rows, m.cols) * copies), Pages::Huge);
        uint8_t* p = buf.data();
        w_.fused_bytes += buf.size();
        w_.packed_bytes += buf.size();
        w_.fused.push_back(std::move(buf));
        return p;
    }

    void add_job(const Matrix& m, std::vector<cpu::RowRun> runs, uint8_t* dst) {
        const cpu::PackedLayout L(m.type, m.cols);
        Job& j = jobs_.emplace_back();   // a deque: items point at jobs
        j.type = m.type;
        j.cols = m.cols;
        j.n_strips = (m.rows + cpu::kStripRows - 1) / cpu::kStripRows;
        j.strip_bytes = L.strip_bytes;
        j.row_bytes = size_t(m.row_bytes);
        j.runs = std::move(runs);
        j.dst = dst;
    }

    // Releases the mapped pages of rows [r0, r1) of j's stacked runs.
    static void release_rows(const Job& j, int64_t r0, int64_t r1) {
        int64_t start = 0;
        for (const cpu::RowRun& run : j.runs) {
            const int64_t a = std::max(r0, start), b = std::min(r1, start + run.rows);
            if (a < b)
                release_pages(static_cast<const uint8_t*>(run.data) + (a - start) * int64_t(j.row_bytes),
                              size_t((b - a) * int64_t(j.row_bytes)));
            start += run.rows;
        }
    }

    ModelWeights& w_;
    std::deque<Job> jobs_;
};

}  // namespace

const uint8_t* matrix_row(const Matrix& m, int64_t r) {
    if (!m.packed) return static_cast<const uint8_t*>(m.data) + r * m.row_bytes;
    thread_local std::vector<uint8_t> row;
    row.resize(size_t(m.row_bytes));
    cpu::unpack_row(m.type, m.cols, m.packed, r, row.data());
    return row.data();
}

bool repack_enabled() {
    const char* v = std::getenv("LOWBIT_REPACK");
    return !v || std::string(v) != "0";
}

ModelWeights load_weights(const GGUFFile& f, const ModelConfig& c) {
    const Loader ld(f);
    ModelWeights w;
    const TensorInfo& embd = ld.require("token_embd.weight");
    w.token_embd = ld.matrix_of(embd, c.n_vocab, c.n_embd);
    LOWBIT_CHECK(find_quant_type(embd.type), ModelError, f.path(), ": tensor 'token_embd.weight' has type ",
                 embd.type_size->name, ", which has no row dequantizer");
    w.output_norm = ld.vec("output_norm.weight", c.n_embd);
    w.output = ld.matrix_opt("output.weight", c.n_vocab, c.n_embd);
    w.tied_output = !w.output.present();
    if (w.tied_output) w.output = w.token_embd;
    w.rope_freqs = ld.vec_opt("rope_freqs.weight", c.n_rot / 2);
    w.rope_factors_long = ld.vec_opt("rope_factors_long.weight", c.n_rot / 2);
    w.rope_factors_short = ld.vec_opt("rope_factors_short.weight", c.n_rot / 2);
    LOWBIT_CHECK(w.rope_factors_long.empty() == w.rope_factors_short.empty(), ModelError, f.path(),
                 ": LongRoPE needs both 'rope_factors_long.weight' and 'rope_factors_short.weight'");
    LOWBIT_CHECK(w.rope_factors_long.empty() || w.rope_freqs.empty(), ModelError, f.path(),
                 ": both 'rope_freqs.weight' and LongRoPE factors");
    for (const auto& [name, factors] : {std::pair<const char*, const Vec*>{"rope_freqs.weight", &w.rope_freqs},
                                        {"rope_factors_long.weight", &w.rope_factors_long},
                                        {"rope_factors_short.weight", &w.rope_factors_short}})
        for (float v : *factors)
            LOWBIT_CHECK(std::isfinite(v) && v > 0.0f, ModelError, f.path(), ": tensor '", name, "' holds ", v,
                         ", expected positive factors");
    w.layers.reserve(size_t(c.n_layers));
    for (int64_t il = 0; il < c.n_layers; ++il) w.layers.push_back(load_layer(ld, c, il));
    const bool repack = repack_enabled();
    Packer packer(w);
    for (LayerWeights& l : w.layers) {   // fewer, larger matvecs for decode
        // packed: q | k | v stacked straight into one packed copy; otherwise a fused GGML copy
        if (!l.wqkv.present())
            l.wqkv = repack && packable(l.wq.type) ? packer.stacked({&l.wq, &l.wk, &l.wv}) : concat_rows(w, {&l.wq, &l.wk, &l.wv});
        if (!l.w_gate_up.present() && l.w_gate.present())
            l.w_gate_up = repack && packable(l.w_gate.type) ? packer.stacked({&l.w_gate, &l.w_up})
                                                            : concat_rows(w, {&l.w_gate, &l.w_up});
    }
    if (repack) {   // every matrix the forward multiplies through project(), experts included
        for (LayerWeights& l : w.layers) {
            if (l.wqkv.present()) packer.add(l.wqkv);
            else for (Matrix* m : {&l.wq, &l.wk, &l.wv}) packer.add(*m);
            packer.add(l.wo);
            if (l.w_gate_up.present()) packer.add(l.w_gate_up);
            else for (Matrix* m : {&l.w_gate, &l.w_up}) packer.add(*m);
            packer.add(l.w_down);
            for (ExpertMatrices* x : {&l.gate_exps, &l.up_exps, &l.down_exps}) packer.add_experts(*x);
            for (Matrix* m : {&l.gate_shexp, &l.up_shexp, &l.down_shexp}) packer.add(*m);
        }
        packer.add(w.output);
        packer.run();
        // A tied head's rows are the token embeddings: lookups read the packed copy too, so the
        // mapped table (whose pages run() released) is not faulted back in row by row.
        if (w.tied_output && w.output.packed) w.token_embd.packed = w.output.packed;
    }
    for (const TensorInfo& t : f.tensors()) {
        w.bytes_by_type[t.type_size->name] += t.n_bytes;
        // A bias this engine would not add changes the model: refuse rather than ignore it.
        const std::string name(t.name);
        const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
        LOWBIT_CHECK(!is_bias || bias_is_used(name, c), ModelError, f.path(), ": tensor '", name,
                     "' is not supported for architecture ", arch_name(c.arch));
    }
    return w;
}

}  // namespace lowbit::model

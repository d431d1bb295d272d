// device_plan.cpp: the device forward pass's tensors and memory plan (cuda/device_plan.h).
#include "cuda/device_plan.h"

#include <algorithm>

#include "cuda/quant_hd.h"
#include "quant/types.h"

namespace lowbit::cuda {
namespace {

bool has_device_format(GGMLType type) {
    switch (type) {
#define LOWBIT_PLAN_CASE(T) case GGMLType::T: return true;
        LOWBIT_CUDA_FORMATS(LOWBIT_PLAN_CASE)
#undef LOWBIT_PLAN_CASE
        default: return false;
    }
}

int64_t align_up(int64_t x) { return (x + kDeviceAlign - 1) / kDeviceAlign * kDeviceAlign; }

// The widest matrix input (cols) and the largest rows x cols of the pass.
struct Widths {
    int64_t cols = 0, elems = 0;
};

// The largest x in [1, hi] with fits(x), 0 if none; fits is monotone (true up to the answer).
template <typename Fits>
int64_t largest_fitting(int64_t hi, const Fits& fits) {
    if (hi < 1 || !fits(1)) return 0;
    int64_t lo = 1;   // fits(lo); the answer is in [lo, hi]
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (fits(mid)) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

}  // namespace

std::vector<DeviceTensor> device_tensors(const model::Model& m, int64_t first_layer) {
    const model::ModelConfig& c = m.config;
    LOWBIT_CHECK(first_layer >= 0 && first_layer < c.n_layers, ValueError, "device layers: the first one, ",
                 first_layer, ", is not in [0, ", c.n_layers, ")");
    const model::ModelWeights& w = m.weights;
    LOWBIT_CHECK(!c.is_moe(), ModelError, "the CUDA forward pass does not run mixture-of-experts models yet (",
                 c.n_expert, " experts)");
    LOWBIT_CHECK(!c.attn_sinks, ModelError, "the CUDA forward pass does not run attention sinks (gpt-oss) yet");
    LOWBIT_CHECK(c.head_dim <= 512, ModelError, "the CUDA attention holds head dims up to 512, the model has ",
                 c.head_dim);
    std::vector<DeviceTensor> out;
    int64_t offset = 0;
    auto add_matrix = [&](const std::string& name, const model::Matrix& mat) {
        if (!mat.present()) return;
        LOWBIT_CHECK(has_device_format(mat.type), ModelError, "tensor ", name, ": GGML type ",
                     quant_type(mat.type).name, " has no CUDA kernel");
        LOWBIT_CHECK(mat.cols % 32 == 0, ModelError, "tensor ", name, ": rows of ", mat.cols,
                     " weights; the CUDA kernels take multiples of 32");
        DeviceTensor t{name, &mat, nullptr, checked_mul(mat.rows, mat.row_bytes, "device matrix") + kRowPad, offset};
        offset = align_up(offset + t.bytes);
        out.push_back(t);
    };
    auto add_vec = [&](const std::string& name, const model::Vec& v) {
        if (v.empty()) return;
        DeviceTensor t{name, nullptr, &v, int64_t(v.size() * sizeof(float)), offset};
        offset = align_up(offset + t.bytes);
        out.push_back(t);
    };
    for (size_t il = size_t(first_layer); il < w.layers.size(); ++il) {
        const model::LayerWeights& l = w.layers[il];
        const std::string p = "blk." + std::to_string(il) + ".";
        add_vec(p + "attn_norm", l.attn_norm);
        if (l.wqkv.present()) add_matrix(p + "attn_qkv", l.wqkv);
        else {
            add_matrix(p + "attn_q", l.wq);
            add_matrix(p + "attn_k", l.wk);
            add_matrix(p + "attn_v", l.wv);
        }
        add_vec(p + "attn_q.bias", l.bq);
        add_vec(p + "attn_k.bias", l.bk);
        add_vec(p + "attn_v.bias", l.bv);
        add_vec(p + "attn_q_norm", l.q_norm);
        add_vec(p + "attn_k_norm", l.k_norm);
        add_matrix(p + "attn_output", l.wo);
        add_vec(p + "attn_output.bias", l.bo);
        add_vec(p + "post_attention_norm", l.attn_post_norm);
        add_vec(p + "ffn_norm", l.ffn_norm);
        if (l.w_gate_up.present()) add_matrix(p + "ffn_gate_up", l.w_gate_up);
        else {
            add_matrix(p + "ffn_gate", l.w_gate);
            add_matrix(p + "ffn_up", l.w_up);
        }
        add_matrix(p + "ffn_down", l.w_down);
        add_vec(p + "post_ffw_norm", l.ffn_post_norm);
    }
    add_vec("output_norm", w.output_norm);
    add_matrix(w.tied_output ? "token_embd (tied output)" : "output", w.output);
    return out;
}

DevicePlan plan_device(const model::Model& m, int64_t n_ctx, int64_t n_batch, int64_t first_layer, KvFormat kv) {
    const model::ModelConfig& c = m.config;
    LOWBIT_CHECK(n_ctx >= 1 && n_batch >= 1 && n_batch <= 65535, ValueError, "device plan: n_ctx ", n_ctx,
                 " and n_batch ", n_batch, " must be >= 1 (n_batch <= 65535)");
    DevicePlan p;
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.first_layer = first_layer;
    p.kv_format = kv;
    LOWBIT_CHECK(kv == KvFormat::F16 || c.head_dim % 32 == 0, ValueError, "a q8_0 KV cache needs head_dim divisible by "
                 "32; this model has head_dim ", c.head_dim, " (use f16)");
    const std::vector<DeviceTensor> tensors = device_tensors(m, first_layer);
    Widths wd;
    for (const DeviceTensor& t : tensors) {
        if (t.matrix) {
            p.weights_by_type[quant_type(t.matrix->type).name] += t.bytes;
            wd.cols = std::max(wd.cols, t.matrix->cols);
            wd.elems = std::max(wd.elems, t.matrix->rows * t.matrix->cols);
        } else {
            p.weights_by_type["f32"] += t.bytes;
        }
    }
    p.weights = tensors.empty() ? 0 : tensors.back().offset + tensors.back().bytes;
    const int64_t kv_dim = c.kv_dim(), Q = c.q_dim(), E = c.n_embd, F = c.n_ff;
    p.kv = checked_mul(checked_mul(2 * (c.n_layers - first_layer), n_ctx, "device KV cache"),
                       c.n_head_kv * kv_row_bytes(kv, c.head_dim), "device KV cache");
    const int64_t keys = c.n_swa > 0 && std::all_of(c.layer_is_swa.begin(), c.layer_is_swa.end(), [](bool b) { return b; })
                             ? std::min(n_ctx, c.n_swa) : n_ctx;   // the most keys a token sees
    auto floats = [&](int64_t per_row) { return align_up(checked_mul(n_batch, per_row, "device activations") * 4); };
    int64_t* part = p.scratch_parts;
    part[kX] = part[kXn] = part[kProj] = floats(E);
    part[kQkv] = floats(Q + 2 * kv_dim);
    part[kQ] = part[kAttn] = floats(Q);
    part[kK] = part[kV] = floats(kv_dim);
    part[kGate] = floats(2 * F);
    part[kUp] = floats(F);
    part[kAttnPartials] = align_up(attention_scratch_floats(c.n_head, n_batch, keys, c.head_dim) * 4);
    part[kQ8] = align_up(wd.cols / 32 * kQ8aBytes);
    part[kLogits] = align_up(checked_mul(kLogitRows, c.n_vocab, "device logits") * 4);
    part[kPos] = align_up(n_batch * 4);
    part[kInvFreqGlobal] = part[kInvFreqSwa] = align_up(int64_t(c.n_rot / 2) * 8);
    for (int64_t b : p.scratch_parts) p.scratch += b;
    // A prefill matmul (n > 1) dequantizes its matrix to f16 and rounds x to f16 (mmm.cu), per call.
    p.transient = n_batch > 1 ? align_up(wd.elems * 2) + align_up(n_batch * wd.cols * 2) : 0;
    return p;
}

int64_t device_reserve(const DevicePlan& p) { return (int64_t(64) << 20) + p.total() / 100; }

int64_t largest_fitting_n_ctx(const model::Model& m, int64_t n_batch, int64_t free_bytes, int64_t n_ctx_limit,
                              int64_t first_layer, KvFormat kv) {
    auto fits = [&](int64_t n_ctx) {
        const DevicePlan p = plan_device(m, n_ctx, n_batch, first_layer, kv);
        return p.total() + device_reserve(p) <= free_bytes;
    };
    return largest_fitting(n_ctx_limit, fits);
}

int64_t largest_fitting_gpu_layers(const model::Model& m, int64_t n_ctx, int64_t n_batch, int64_t free_bytes,
                                   KvFormat kv) {
    const int64_t n_layers = m.config.n_layers;
    auto fits = [&](int64_t layers) {   // the plan grows with the layers
        const DevicePlan p = plan_device(m, n_ctx, n_batch, n_layers - layers, kv);
        return p.total() + device_reserve(p) <= free_bytes;
    };
    return largest_fitting(n_layers, fits);
}

void check_device_fit(const model::Model& m, const DevicePlan& p, int64_t free_bytes) {
    const int64_t reserve = device_reserve(p);
    if (p.total() + reserve <= free_bytes) return;
    const double MiB = double(1 << 20);
    const int64_t n_layers = m.config.n_layers, layers = n_layers - p.first_layer;
    const int64_t best_ctx = largest_fitting_n_ctx(m, p.n_batch, free_bytes, p.n_ctx, p.first_layer, p.kv_format);
    const int64_t best_layers = largest_fitting_gpu_layers(m, p.n_ctx, p.n_batch, free_bytes, p.kv_format);
    std::string advice;
    if (best_ctx > 0) advice = str("the largest n_ctx that fits is ", best_ctx);
    if (best_layers > 0) advice += str(best_ctx > 0 ? "; or " : "", "n_gpu_layers=", best_layers, " fits at n_ctx ", p.n_ctx);
    if (advice.empty())
        advice = str("the weights do not fit at any n_ctx", layers > 1 ? ", nor one layer's" : "", " (use device='cpu')");
    throw InsufficientMemory(str(
        "the model needs ", int64_t(double(p.total()) / MiB), " MiB on the CUDA device (weights ",
        int64_t(double(p.weights) / MiB), " MiB of ", layers, " of ", n_layers, " layers and the head, KV cache ",
        int64_t(double(p.kv) / MiB), " MiB (", p.kv_format == KvFormat::F16 ? "f16" : "q8_0", ") for n_ctx ", p.n_ctx,
        ", scratch ",
        int64_t(double(p.scratch + p.transient) / MiB), " MiB for n_batch ", p.n_batch, ") plus a ",
        int64_t(double(reserve) / MiB), " MiB reserve, but ", int64_t(double(free_bytes) / MiB), " MiB are free; ",
        advice));
}

}  // namespace lowbit::cuda

// device_model.cu: the forward pass of model/forward.cpp on the CUDA device (device_model.h).
//
// Per piece of n <= n_batch tokens at positions pos0 .. pos0+n-1, with the kernels of ops.cuh:
//   x = embedding rows (looked up and scaled on the host, uploaded), or with layer offload the
//       residual stream after the CPU's layers (uploaded)
//   per device layer: xn = rmsnorm(x) * attn_norm; q, k, v = projections (+ biases) [per-head or
//   whole-row qk-norm] RoPE; k, v -> the f16 cache rows pos0..; attn = attention (window on
//   sliding layers, softcap); proj = attn Wo^T (+ bo) [post-norm]; x += residual_scale proj;
//   xn = rmsnorm(x) * ffn_norm; h = act(xn Wgate^T) * (xn Wup^T); proj = h Wdown^T [post-norm];
//   x += residual_scale proj
//   logits = rmsnorm(x) * output_norm . Wout^T [/ logit_scale] [softcap], kLogitRows rows at a time.
// Projections of one row take mmvq (q8 activations, fused dequantization), of several rows mmm
// (f16 tensor cores through cuBLAS when built with it). Everything runs on one stream; the host
// waits only for the logits (and for the end of a piece without them). The KV cache holds f16 or
// q8_0 rows, the CPU cache's bytes (cuda/kv_hd.h).
//
// Decode steps (one token with logits) after the first run as one CUDA graph, captured once: the
// kernels read the token's position from the device (kPos) and attention's grid is sized for the
// whole context, so the same launches serve every position. LOWBIT_CUDA_GRAPHS=0 turns it off; a
// capture that fails leaves the eager launches (decode_graph_status says why).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include "cpu/ops.h"
#include "cuda/device_model.h"
#include "cuda/ops.cuh"
#include "quant/types.h"

namespace lowbit::cuda {
namespace {

// One model's tensors on the device (device_tensors' arena), shared by its device models.
struct DeviceWeights {
    std::shared_ptr<const model::Model> m;
    DeviceBuffer arena;
    std::unordered_map<const void*, const uint8_t*> dev;   // host Matrix / Vec -> its device copy

    void upload(const std::vector<DeviceTensor>& tensors, int64_t bytes) {
        arena.alloc(size_t(bytes), 0);   // device_tensors padded each matrix already
        std::vector<uint8_t> staging;
        for (const DeviceTensor& t : tensors) {
            if (t.vec) {
                arena.upload(t.vec->data(), t.vec->size() * sizeof(float), size_t(t.offset));
                dev[t.vec] = arena.as<uint8_t>() + t.offset;
                continue;
            }
            const model::Matrix& mat = *t.matrix;
            const size_t row_bytes = size_t(mat.row_bytes);
            if (mat.data) {
                arena.upload(mat.data, size_t(mat.rows) * row_bytes, size_t(t.offset));
            } else {   // packed from a copy (weights.h): the GGML rows come back one at a time
                const int64_t per = std::max<int64_t>(1, (int64_t(8) << 20) / mat.row_bytes);
                staging.resize(size_t(per) * row_bytes);
                for (int64_t r0 = 0; r0 < mat.rows; r0 += per) {
                    const int64_t nr = std::min(per, mat.rows - r0);
                    for (int64_t r = 0; r < nr; ++r)
                        std::memcpy(staging.data() + size_t(r) * row_bytes, model::matrix_row(mat, r0 + r), row_bytes);
                    arena.upload(staging.data(), size_t(nr) * row_bytes, size_t(t.offset) + size_t(r0) * row_bytes);
                }
            }
            dev[t.matrix] = arena.as<uint8_t>() + t.offset;
        }
    }
};

std::mutex g_weights_mu;
using WeightsKey = std::pair<const model::Model*, int64_t>;          // model, first device layer
std::map<WeightsKey, std::weak_ptr<DeviceWeights>> g_weights;         // uploads alive

std::shared_ptr<DeviceWeights> resident_weights(const WeightsKey& key) {
    std::lock_guard<std::mutex> lock(g_weights_mu);
    auto it = g_weights.find(key);
    if (it == g_weights.end()) return nullptr;
    auto w = it->second.lock();
    if (!w) g_weights.erase(it);
    return w;
}

}  // namespace

struct DeviceModel::Impl {
    std::shared_ptr<const model::Model> m;
    std::shared_ptr<DeviceWeights> w;
    DevicePlan plan;
    DeviceBuffer kv, scratch;
    cudaStream_t stream = nullptr;
    uint8_t* part[kScratchParts] = {};
    int64_t n_past = 0;
    std::atomic<bool> cancelled{false};
    std::vector<float> host_x;
    std::vector<int32_t> host_pos;
    std::string device_name;
    int64_t peak = 0;
    cudaGraphExec_t decode_graph = nullptr;
    int64_t eager_decodes = 0;     // decode steps launched one kernel at a time (the first warms lazy set-ups)
    std::string graph_status = "not captured yet";
    bool graphs = true;            // LOWBIT_CUDA_GRAPHS != "0", and no capture failed

    ~Impl() {
        if (decode_graph) cudaGraphExecDestroy(decode_graph);
        if (stream) cudaStreamDestroy(stream);
    }
    template <typename T> T* at(ScratchPart p) const { return reinterpret_cast<T*>(part[p]); }
    const void* weights(const model::Matrix& mat) const { return w->dev.at(&mat); }
    const float* vec(const model::Vec& v) const {
        return v.empty() ? nullptr : reinterpret_cast<const float*>(w->dev.at(&v));
    }
    // Layer il's K rows, then its V rows (device layers only): n_ctx positions of n_head_kv rows
    // in the plan's format each (cuda/kv_hd.h).
    int64_t kv_layer_bytes() const {
        return plan.n_ctx * m->config.n_head_kv * kv_row_bytes(plan.kv_format, m->config.head_dim);
    }
    uint8_t* k_cache(int64_t il) { return kv.as<uint8_t>() + 2 * (il - plan.first_layer) * kv_layer_bytes(); }
    uint8_t* v_cache(int64_t il) { return k_cache(il) + kv_layer_bytes(); }

    void note_peak() {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) peak = std::max(peak, int64_t(total_b - free_b));
        else cudaGetLastError();
    }

    // y (n, rows) = x (n, cols) . W^T
    void project(const model::Matrix& mat, const float* x, int64_t n, float* y) {
        if (n == 1) matvec(weights(mat), mat.type, mat.rows, mat.cols, x, at<block_q8a>(kQ8), y, stream);
        else matmul(weights(mat), mat.type, mat.rows, mat.cols, x, n, y, stream);
    }

    // Columns [c0, c0 + width) of src rows (n, src_width) into dst (n, width).
    void split(const float* src, int64_t src_width, int64_t c0, float* dst, int64_t width, int64_t n) {
        LOWBIT_CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(width) * 4, src + c0, size_t(src_width) * 4, size_t(width) * 4,
                                            size_t(n), cudaMemcpyDeviceToDevice, stream));
    }

    // x += [post_norm]([bias +] proj) for n rows
    void residual(const model::Vec& bias, const model::Vec& post_norm, int64_t n) {
        const model::ModelConfig& c = m->config;
        float* proj = at<float>(kProj);
        if (!bias.empty()) add_rows(proj, vec(bias), n, c.n_embd, stream);
        if (!post_norm.empty()) rmsnorm(proj, vec(post_norm), proj, n, c.n_embd, c.norm_eps, stream);
        axpy(at<float>(kX), c.residual_scale, proj, n * c.n_embd, stream);
    }

    void norm_rows(const model::Vec& w, int64_t n) {
        const model::ModelConfig& c = m->config;
        if (w.empty())   // olmo2: the sub-block reads the residual stream itself
            LOWBIT_CUDA_CHECK(cudaMemcpyAsync(at<float>(kXn), at<float>(kX), size_t(n * c.n_embd) * 4,
                                              cudaMemcpyDeviceToDevice, stream));
        else rmsnorm(at<float>(kX), vec(w), at<float>(kXn), n, c.n_embd, c.norm_eps, stream);
    }

    // max_pos: the largest position of the rows (kPos holds each row's), which sizes attention's grid.
    void layer(int64_t il, int64_t n, int64_t max_pos) {
        const model::ModelConfig& c = m->config;
        const model::LayerWeights& l = m->weights.layers[size_t(il)];
        const int64_t Q = c.q_dim(), KV = c.kv_dim(), D = c.head_dim, F = c.n_ff;
        float *xn = at<float>(kXn), *q = at<float>(kQ), *k = at<float>(kK), *v = at<float>(kV);
        norm_rows(l.attn_norm, n);
        if (l.wqkv.present()) {
            float* qkv = at<float>(kQkv);
            project(l.wqkv, xn, n, qkv);
            split(qkv, Q + 2 * KV, 0, q, Q, n);
            split(qkv, Q + 2 * KV, Q, k, KV, n);
            split(qkv, Q + 2 * KV, Q + KV, v, KV, n);
        } else {
            project(l.wq, xn, n, q);
            project(l.wk, xn, n, k);
            project(l.wv, xn, n, v);
        }
        if (!l.bq.empty()) add_rows(q, vec(l.bq), n, Q, stream);
        if (!l.bk.empty()) add_rows(k, vec(l.bk), n, KV, stream);
        if (!l.bv.empty()) add_rows(v, vec(l.bv), n, KV, stream);
        if (c.qk_norm) {
            rmsnorm(q, vec(l.q_norm), q, n * c.n_head, D, c.norm_eps, stream);
            rmsnorm(k, vec(l.k_norm), k, n * c.n_head_kv, D, c.norm_eps, stream);
        } else if (c.qk_norm_full) {
            rmsnorm(q, vec(l.q_norm), q, n, Q, c.norm_eps, stream);
            rmsnorm(k, vec(l.k_norm), k, n, KV, c.norm_eps, stream);
        }
        if (c.has_rope(il)) {
            const bool swa = c.layer_is_swa[size_t(il)], neox = c.rope_mode == model::RopeMode::NeoX;
            const double* inv = at<double>(swa ? kInvFreqSwa : kInvFreqGlobal);
            const float mscale = swa ? c.rope_swa.mscale() : c.rope_global.mscale();
            rope(q, n, c.n_head, D, c.n_rot, neox, at<int32_t>(kPos), inv, mscale, stream);
            rope(k, n, c.n_head_kv, D, c.n_rot, neox, at<int32_t>(kPos), inv, mscale, stream);
        }
        kv_write(plan.kv_format, k, k_cache(il), n, KV, at<int32_t>(kPos), stream);
        kv_write(plan.kv_format, v, v_cache(il), n, KV, at<int32_t>(kPos), stream);
        const int64_t window = c.layer_is_swa[size_t(il)] ? c.n_swa : 0;
        attention(plan.kv_format, q, k_cache(il), v_cache(il), at<float>(kAttn), c.n_head, c.n_head_kv, D, n,
                  at<int32_t>(kPos), max_pos, window, c.attn_scale, c.attn_softcap, at<float>(kAttnPartials), stream);
        project(l.wo, at<float>(kAttn), n, at<float>(kProj));
        residual(l.bo, l.attn_post_norm, n);
        norm_rows(l.ffn_norm, n);
        float *gate = at<float>(kGate), *up = at<float>(kUp);
        const bool gelu = c.ffn_act != model::FfnAct::SiLU;
        if (l.w_gate_up.present()) {   // (n, 2F) rows [gate | up]
            project(l.w_gate_up, xn, n, gate);
            gated_rows(gate, gate + F, up, n, F, 2 * F, gelu, stream);
        } else {
            project(l.w_gate, xn, n, gate);
            project(l.w_up, xn, n, up);
            gated_rows(gate, up, up, n, F, F, gelu, stream);
        }
        project(l.w_down, up, n, at<float>(kProj));
        residual(model::Vec{}, l.ffn_post_norm, n);
    }

    // Logits of rows [a, a + rows) (rows <= kLogitRows) into kLogits.
    void head(int64_t a, int64_t rows) {
        const model::ModelConfig& c = m->config;
        const model::ModelWeights& w = m->weights;
        const int64_t E = c.n_embd, V = c.n_vocab;
        rmsnorm(at<float>(kX) + a * E, vec(w.output_norm), at<float>(kXn), rows, E, c.norm_eps, stream);
        project(w.output, at<float>(kXn), rows, at<float>(kLogits));
        if (c.logit_scale != 1.0f || c.logit_softcap > 0.0f)
            scale_softcap(at<float>(kLogits), rows * V, c.logit_scale, c.logit_softcap, stream);
    }

    void download_logits(float* out, int64_t rows) {
        LOWBIT_CUDA_CHECK(cudaMemcpyAsync(out, at<float>(kLogits), size_t(rows * m->config.n_vocab) * 4,
                                          cudaMemcpyDeviceToHost, stream));
        LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
    }

    // Rows [r0, r1) of the piece into out (their logits, one after another).
    void logits(int64_t r0, int64_t r1, float* out) {
        for (int64_t a = r0; a < r1; a += kLogitRows) {
            const int64_t rows = std::min(kLogitRows, r1 - a);
            head(a, rows);
            download_logits(out + (a - r0) * m->config.n_vocab, rows);
        }
    }

    // One decode step's launches (every device layer for one row at the position in kPos, the
    // head into kLogits) captured into decode_graph; on failure the eager launches stay.
    // Captured on a stream of its own that does not synchronize with the legacy stream: capturing a
    // blocking stream would leave the legacy stream unusable meanwhile, and other sessions' uploads
    // and prefill scratch use it from other threads. The graph is launched on `stream`.
    void capture_decode() {
        cudaGraph_t g = nullptr;
        cudaStream_t main = stream, cap = nullptr;
        cudaError_t err = cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking);
        if (err == cudaSuccess) err = cudaStreamBeginCapture(cap, cudaStreamCaptureModeThreadLocal);
        std::string why;
        if (err == cudaSuccess) {
            stream = cap;   // layer() and head() launch on `stream`
            try {
                for (int64_t il = plan.first_layer; il < m->config.n_layers; ++il) layer(il, 1, plan.n_ctx - 1);
                head(0, 1);
            } catch (const std::exception& e) {
                why = e.what();
            }
            stream = main;
            const cudaError_t end = cudaStreamEndCapture(cap, &g);
            if (err == cudaSuccess) err = end;
        }
        if (cap) cudaStreamDestroy(cap);
        if (err == cudaSuccess && why.empty()) err = cudaGraphInstantiate(&decode_graph, g, 0);
        if (g) cudaGraphDestroy(g);
        if (err == cudaSuccess && why.empty()) {
            graph_status = str("captured (", m->config.n_layers - plan.first_layer, " layers and the head)");
            return;
        }
        cudaGetLastError();   // not sticky: the eager launches go on
        decode_graph = nullptr;
        graphs = false;
        graph_status = "capture failed, eager launches: " + (why.empty() ? std::string(cudaGetErrorString(err)) : why);
    }

    // x_in: the CPU layers' residual stream (layer offload), else nullptr (embeddings here).
    // hidden: nullptr, or (n, n_embd) host floats for every row's output-normed hidden state.
    void piece(const int32_t* tokens, const float* x_in, int64_t n, bool all_logits, float* out, float* hidden,
               const std::function<void()>& check) {
        const model::ModelConfig& c = m->config;
        const model::Matrix& te = m->weights.token_embd;
        const int64_t E = c.n_embd, pos0 = n_past;
        const QuantType& qt = quant_type(te.type);
        host_x.resize(size_t(n * E));
        host_pos.resize(size_t(n));
        for (int64_t t = 0; t < n; ++t) {
            float* x = host_x.data() + t * E;
            if (x_in) {
                std::memcpy(x, x_in + t * E, size_t(E) * 4);   // staged: the caller's rows may change once eval returns
            } else {
                qt.to_float(model::matrix_row(te, tokens[t]), x, E);
                if (c.embd_scale != 1.0f) for (int64_t i = 0; i < E; ++i) x[i] *= c.embd_scale;
            }
            host_pos[size_t(t)] = int32_t(pos0 + t);
        }
        LOWBIT_CUDA_CHECK(cudaMemcpyAsync(at<float>(kX), host_x.data(), host_x.size() * 4, cudaMemcpyHostToDevice, stream));
        LOWBIT_CUDA_CHECK(cudaMemcpyAsync(at<int32_t>(kPos), host_pos.data(), host_pos.size() * 4, cudaMemcpyHostToDevice,
                                          stream));
        const auto poll = [&]() {   // cancel() and the engine's checks, between layers
            try {
                if (cancelled.load(std::memory_order_relaxed)) throw Cancelled("CUDA eval cancelled");
                if (check) check();
            } catch (...) {
                cudaStreamSynchronize(stream);   // the launched layers finish before the caller goes on
                throw;
            }
        };
        if (n == 1 && out && !hidden && graphs) {   // a decode step: replayed from the graph after the first
            poll();
            if (!decode_graph && eager_decodes >= 1) capture_decode();
            if (decode_graph) {
                LOWBIT_CUDA_CHECK(cudaGraphLaunch(decode_graph, stream));
                download_logits(out, 1);
                n_past = pos0 + 1;
                return;
            }
            ++eager_decodes;
        }
        for (int64_t il = plan.first_layer; il < c.n_layers; ++il) {
            poll();
            layer(il, n, pos0 + n - 1);
        }
        if (hidden) {   // the output norm of every row (what logits() starts from), downloaded
            rmsnorm(at<float>(kX), vec(m->weights.output_norm), at<float>(kXn), n, c.n_embd, c.norm_eps, stream);
            LOWBIT_CUDA_CHECK(cudaMemcpyAsync(hidden, at<float>(kXn), size_t(n * c.n_embd) * 4, cudaMemcpyDeviceToHost,
                                              stream));
        }
        if (out) logits(all_logits ? 0 : n - 1, n, out);
        else LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));   // host_x / host_pos are reused by the next piece
        n_past = pos0 + n;
    }
};

DeviceModel::DeviceModel(std::shared_ptr<const model::Model> m, int64_t n_ctx, int64_t n_batch, int64_t first_layer,
                         KvFormat kv_format)
    : impl_(std::make_unique<Impl>()) {
    LOWBIT_CHECK(m != nullptr, ValueError, "DeviceModel: no model");
    Impl& d = *impl_;
    d.m = std::move(m);
    const std::vector<DeviceTensor> tensors = device_tensors(*d.m, first_layer);   // ModelError before any CUDA call
    d.plan = plan_device(*d.m, n_ctx, n_batch, first_layer, kv_format);
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count <= 0) {
        cudaGetLastError();
        throw CudaError(str("no CUDA device (", err != cudaSuccess ? cudaGetErrorString(err) : "none found", ")"));
    }
    LOWBIT_CUDA_CHECK(cudaSetDevice(0));
    cudaDeviceProp prop{};
    LOWBIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    d.device_name = str(prop.name, " (cc ", prop.major, ".", prop.minor, ", ", prop.multiProcessorCount, " SMs)");
    if (const char* env = std::getenv("LOWBIT_CUDA_GRAPHS"); env && std::string(env) == "0") {
        d.graphs = false;
        d.graph_status = "off (LOWBIT_CUDA_GRAPHS=0)";
    }
    size_t free_b = 0, total_b = 0;
    LOWBIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    // Another device model of this model holds the weights already: only the KV cache and scratch are new.
    // (Two first device models of one model built at once may both upload; each is correct.)
    const WeightsKey key{d.m.get(), first_layer};
    d.w = resident_weights(key);
    DevicePlan need = d.plan;
    if (d.w) need.weights = 0;
    check_device_fit(*d.m, need, int64_t(free_b));
    // A blocking stream: ordered after the legacy-stream memsets and copies below (and mmm.cu's).
    LOWBIT_CUDA_CHECK(cudaStreamCreate(&d.stream));
    d.kv.alloc(size_t(d.plan.kv), 0);
    d.scratch.alloc(size_t(d.plan.scratch), 0);
    LOWBIT_CUDA_CHECK(cudaMemset(d.kv.as<uint8_t>(), 0, size_t(d.plan.kv)));   // unwritten cells read as zeros, not NaN
    uint8_t* p = d.scratch.as<uint8_t>();
    for (int i = 0; i < kScratchParts; ++i) {
        d.part[i] = p;
        p += d.plan.scratch_parts[i];
    }
    if (!d.w) {
        auto w = std::make_shared<DeviceWeights>();
        w->m = d.m;
        w->upload(tensors, d.plan.weights);
        std::lock_guard<std::mutex> lock(g_weights_mu);
        g_weights[key] = w;
        d.w = std::move(w);
    }
    const model::Model& md = *d.m;
    if (!md.inv_freq_global.empty())
        d.scratch.upload(md.inv_freq_global.data(), md.inv_freq_global.size() * 8, size_t(d.part[kInvFreqGlobal] - d.scratch.as<uint8_t>()));
    if (!md.inv_freq_swa.empty())
        d.scratch.upload(md.inv_freq_swa.data(), md.inv_freq_swa.size() * 8, size_t(d.part[kInvFreqSwa] - d.scratch.as<uint8_t>()));
    LOWBIT_CUDA_CHECK(cudaDeviceSynchronize());   // a pageable upload may still be in flight when cudaMemcpy returns
    d.note_peak();
}

DeviceModel::~DeviceModel() = default;

void DeviceModel::eval(const int32_t* tokens, const float* x, int64_t n, bool all_logits, float* out,
                       const std::function<void()>& check, float* hidden) {
    Impl& d = *impl_;
    const model::ModelConfig& c = d.m->config;
    LOWBIT_CHECK(n >= 1, ValueError, "eval: no tokens");
    LOWBIT_CHECK((x != nullptr) == (d.plan.first_layer > 0), ValueError, "eval: ",
                 d.plan.first_layer > 0 ? str("layers below ", d.plan.first_layer, " run on the CPU: their output is needed")
                                        : std::string("every layer is on the device: it takes tokens, not hidden states"));
    LOWBIT_CHECK(d.n_past + n <= d.plan.n_ctx, ValueError, "eval: ", n, " tokens after ", d.n_past,
                 " exceed the device context of ", d.plan.n_ctx);
    for (int64_t t = 0; t < n; ++t)
        LOWBIT_CHECK(tokens[t] >= 0 && tokens[t] < c.n_vocab, ValueError, "eval: token ", tokens[t], " at index ", t,
                     " is outside the vocabulary of ", c.n_vocab);
    for (int64_t t0 = 0; t0 < n; t0 += d.plan.n_batch) {
        const int64_t len = std::min(d.plan.n_batch, n - t0);
        const bool last = t0 + len == n;
        float* dst = !out ? nullptr : all_logits ? out + t0 * c.n_vocab : last ? out : nullptr;
        d.piece(tokens + t0, x ? x + t0 * c.n_embd : nullptr, len, all_logits, dst,
                hidden ? hidden + t0 * c.n_embd : nullptr, check);
    }
    d.note_peak();
}

void DeviceModel::truncate(int64_t n) {
    LOWBIT_CHECK(n >= 0 && n <= impl_->n_past, ValueError, "truncate: ", n, " is not in [0, ", impl_->n_past, "]");
    impl_->n_past = n;
}
void DeviceModel::copy_prefix_from(const DeviceModel& src, int64_t n, bool check_only) {
    Impl& d = *impl_;
    const Impl& s = *src.impl_;
    LOWBIT_CHECK(&src != this && s.m == d.m && s.plan.first_layer == d.plan.first_layer &&
                 s.plan.kv_format == d.plan.kv_format, ValueError,
                 "copy_prefix_from: the device sessions differ in model, layers or KV cache format");
    LOWBIT_CHECK(n >= 0 && n <= s.n_past && n <= d.plan.n_ctx, ValueError, "copy_prefix_from: ", n,
                 " positions asked, the source holds ", s.n_past, " and this cache ", d.plan.n_ctx);
    if (check_only) return;
    const int64_t bytes = n * d.m->config.n_head_kv * kv_row_bytes(d.plan.kv_format, d.m->config.head_dim);
    Impl& from = const_cast<Impl&>(s);   // its rows are only read
    for (int64_t il = d.plan.first_layer; il < d.m->config.n_layers && bytes > 0; ++il) {
        LOWBIT_CUDA_CHECK(cudaMemcpyAsync(d.k_cache(il), from.k_cache(il), size_t(bytes), cudaMemcpyDeviceToDevice,
                                          d.stream));
        LOWBIT_CUDA_CHECK(cudaMemcpyAsync(d.v_cache(il), from.v_cache(il), size_t(bytes), cudaMemcpyDeviceToDevice,
                                          d.stream));
    }
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(d.stream));
    d.n_past = n;
}

void DeviceModel::shift(int64_t n_keep, int64_t n_discard) {
    Impl& d = *impl_;
    const model::ModelConfig& c = d.m->config;
    LOWBIT_CHECK(n_keep >= 0 && n_discard >= 0 && n_keep + n_discard <= d.n_past, ValueError, "shift(n_keep=", n_keep,
                 ", n_discard=", n_discard, ") needs n_keep + n_discard <= n_past (", d.n_past, ")");
    if (n_discard == 0) return;
    // The rotation by -n_discard of each RoPE table (model::rerotate_keys: a pure rotation, no mscale).
    const int64_t half = c.n_rot / 2, count = d.n_past - n_keep - n_discard;
    std::vector<float> tables(size_t(4 * half));
    if (half > 0) {
        cpu::rope_cos_sin(double(-n_discard), d.m->inv_freq_global.data(), half, tables.data());
        if (!d.m->inv_freq_swa.empty()) cpu::rope_cos_sin(double(-n_discard), d.m->inv_freq_swa.data(), half,
                                                          tables.data() + 2 * half);
    }
    DeviceBuffer dev_tables(std::max<size_t>(tables.size(), 1) * sizeof(float));
    if (half > 0) dev_tables.upload(tables.data(), tables.size() * sizeof(float));
    const bool neox = c.rope_mode == model::RopeMode::NeoX;
    for (int64_t il = d.plan.first_layer; il < c.n_layers && count > 0; ++il) {
        const float* cs = !c.has_rope(il) || half == 0 ? nullptr
                          : dev_tables.as<float>() + (c.layer_is_swa[size_t(il)] && !d.m->inv_freq_swa.empty() ? 2 * half : 0);
        kv_move(d.plan.kv_format, d.k_cache(il), c.n_head_kv, c.head_dim, n_keep + n_discard, n_keep, count, cs, c.n_rot,
                neox, d.stream);
        kv_move(d.plan.kv_format, d.v_cache(il), c.n_head_kv, c.head_dim, n_keep + n_discard, n_keep, count, nullptr, 0,
                neox, d.stream);
    }
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(d.stream));   // dev_tables is freed on return
    d.n_past -= n_discard;
}

void DeviceModel::cancel() { impl_->cancelled.store(true, std::memory_order_relaxed); }
void DeviceModel::reset_cancel() { impl_->cancelled.store(false, std::memory_order_relaxed); }
int64_t DeviceModel::n_past() const { return impl_->n_past; }
int64_t DeviceModel::n_ctx() const { return impl_->plan.n_ctx; }
int64_t DeviceModel::n_vocab() const { return impl_->m->config.n_vocab; }
const DevicePlan& DeviceModel::plan() const { return impl_->plan; }
std::string DeviceModel::device() const { return impl_->device_name; }
int64_t DeviceModel::peak_used_bytes() const { return impl_->peak; }
std::string DeviceModel::decode_graph_status() const { return impl_->graph_status; }

}  // namespace lowbit::cuda

// bind_cuda_model.cpp: the model on the CUDA device (cuda/device_model.h) and its memory plan
// (cuda/device_plan.h, host code: checked in every build).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "cuda/device_model.h"
#include "cuda/device_plan.h"
#include "runtime/engine.h"

#include <cstring>
#include <functional>
#include <map>

namespace py = pybind11;

namespace lowbit {
namespace {

using runtime::Engine;

py::dict plan_dict(const cuda::DevicePlan& p) {
    py::dict d;
    d["n_ctx"] = p.n_ctx;
    d["n_batch"] = p.n_batch;
    d["first_layer"] = p.first_layer;
    d["kv_type"] = p.kv_format == cuda::KvFormat::F16 ? "f16" : "q8_0";
    d["weights_bytes"] = p.weights;
    d["kv_bytes"] = p.kv;
    d["scratch_bytes"] = p.scratch;
    d["transient_bytes"] = p.transient;
    d["total_bytes"] = p.total();
    d["reserve_bytes"] = cuda::device_reserve(p);
    d["weights_by_type"] = p.weights_by_type;
    return d;
}

// An engine's forward pass on the device: the engine keeps positions, chunks, sampling and cancel.
class DeviceBackend final : public runtime::ForwardBackend {
public:
    DeviceBackend(std::shared_ptr<const model::Model> m, int64_t n_ctx, int64_t n_batch, int64_t first_layer,
                  cuda::KvFormat kv)
        : dm_(std::move(m), n_ctx, n_batch, first_layer, kv) {}
    int64_t first_layer() const override { return dm_.plan().first_layer; }
    void eval(const int32_t* tokens, const float* x, int64_t n, int64_t pos0, bool all_logits, float* out,
              float* hidden, const std::function<void()>& check) override {
        if (dm_.n_past() != pos0) dm_.truncate(pos0);   // the engine truncated since
        dm_.eval(tokens, x, n, all_logits, out, check, hidden);
    }
    std::string name() const override {
        const int64_t l0 = dm_.plan().first_layer;
        return "cuda: " + dm_.device() + (l0 > 0 ? str(", layers ", l0, "+ (below on the CPU)") : std::string());
    }
    void copy_prefix_from(const runtime::ForwardBackend& src, int64_t, int64_t n, bool check_only) override {
        const auto* other = dynamic_cast<const DeviceBackend*>(&src);
        LOWBIT_CHECK(other != nullptr, ValueError, "copy_prefix_from: the source session runs on ", src.name());
        dm_.copy_prefix_from(other->dm_, n, check_only);
    }
    void shift(int64_t n_past, int64_t n_keep, int64_t n_discard) override {
        if (dm_.n_past() != n_past) dm_.truncate(n_past);   // the engine truncated since
        dm_.shift(n_keep, n_discard);
    }
    std::map<std::string, int64_t> memory() const override {
        const cuda::DevicePlan& p = dm_.plan();
        return {{"weights", p.weights}, {"kv", p.kv}, {"scratch", p.scratch}, {"transient", p.transient},
                {"peak_used", dm_.peak_used_bytes()}};
    }

private:
    cuda::DeviceModel dm_;
};

// The layer-offload protocol with the CPU on both sides: layers [first_layer, n_layers) and the
// head in a second CPU pass with its own cache, fed the residual stream the engine's pass leaves
// (what DeviceBackend gets). Bit-equal to the engine's own pass (the same kernels on the same
// rows), so the CPU tests check the split itself (forward_layers, the engine's hand-over,
// truncation) in every build.
class CpuLayersBackend final : public runtime::ForwardBackend {
public:
    CpuLayersBackend(const Engine& e, int64_t first_layer)
        : m_(e.shared_model()), first_layer_(first_layer),
          cache_(m_->config, e.n_ctx(), e.n_batch(), model::parse_kv_type(e.kv_type(), m_->config.head_dim)),
          state_(m_->config, e.n_batch(), e.n_ctx(), e.n_threads()), pool_(e.n_threads()) {
        LOWBIT_CHECK(first_layer >= 1 && first_layer < m_->config.n_layers, ValueError, "split: the first layer, ",
                     first_layer, ", is not in [1, ", m_->config.n_layers, ")");
        state_.act_precision = cpu::parse_act_precision(e.act_precision());
    }
    int64_t first_layer() const override { return first_layer_; }
    void eval(const int32_t* tokens, const float* x, int64_t n, int64_t pos0, bool all_logits, float* out,
              float* hidden, const std::function<void()>& check) override {
        LOWBIT_CHECK(x != nullptr, ValueError, "split: no residual stream from the CPU's layers");
        resume(pos0);
        std::memcpy(state_.x.data(), x, size_t(n * m_->config.n_embd) * sizeof(float));
        model::forward_layers(*m_, {model::SeqSpan{&cache_, pos0, 0, n}}, state_, pool_, tokens, first_layer_,
                              m_->config.n_layers, model::row_outputs(m_->config, n, all_logits, out, hidden), check);
        n_past_ = pos0 + n;
    }
    std::string name() const override { return str("cpu split at layer ", first_layer_); }
    void copy_prefix_from(const runtime::ForwardBackend& src, int64_t src_n_past, int64_t n, bool check_only) override {
        const auto* other = dynamic_cast<const CpuLayersBackend*>(&src);
        LOWBIT_CHECK(other != nullptr && other->first_layer_ == first_layer_, ValueError,
                     "copy_prefix_from: the source session runs on ", src.name());
        if (check_only) return;
        cache_.copy_prefix(other->cache_, src_n_past, n);
        n_past_ = n;
    }
    void shift(int64_t n_past, int64_t n_keep, int64_t n_discard) override {
        resume(n_past);
        n_past_ = cache_.shift(n_past, n_keep, n_discard, model::key_rerotation(*m_));
    }
    std::map<std::string, int64_t> memory() const override {
        return {{"kv", int64_t(cache_.bytes())}, {"scratch", state_.bytes()}};
    }

private:
    // Continue at the engine's position: this cache truncated to it (the engine truncated since).
    void resume(int64_t pos) {
        if (pos == n_past_) return;
        LOWBIT_CHECK(pos < n_past_ && cache_.truncate(n_past_, pos) == pos, ValueError, "split: position ", pos,
                     " after ", n_past_, " cannot be resumed");
        n_past_ = pos;
    }

    std::shared_ptr<const model::Model> m_;
    int64_t first_layer_, n_past_ = 0;
    model::KVCache cache_;
    model::ForwardState state_;
    cpu::ThreadPool pool_;
};

cuda::KvFormat kv_format(const std::string& kv_type) {
    if (kv_type == "f16") return cuda::KvFormat::F16;
    if (kv_type == "q8_0") return cuda::KvFormat::Q8_0;
    throw ValueError(str("kv_type must be 'f16' or 'q8_0', got '", kv_type, "'"));
}

// n_gpu_layers (-1: all) -> the first device layer.
int64_t first_device_layer(const model::Model& m, int64_t n_gpu_layers) {
    const int64_t n = m.config.n_layers;
    LOWBIT_CHECK(n_gpu_layers == -1 || n_gpu_layers >= 1, ValueError, "n_gpu_layers must be -1 (all) or >= 1, got ",
                 n_gpu_layers);
    return n_gpu_layers == -1 || n_gpu_layers >= n ? 0 : n - n_gpu_layers;
}

}  // namespace

void bind_cuda_model(py::module_& m) {
    m.def("engine_to_cuda", [](Engine& e, int64_t n_gpu_layers) {
        auto model = e.shared_model();
        const int64_t n_ctx = e.n_ctx(), n_batch = e.n_batch(), first = first_device_layer(*model, n_gpu_layers);
        const cuda::KvFormat kv = kv_format(e.kv_type());
        std::unique_ptr<runtime::ForwardBackend> backend;
        {
            py::gil_scoped_release nogil;
            backend = std::make_unique<DeviceBackend>(std::move(model), n_ctx, n_batch, first, kv);
        }
        e.set_backend(std::move(backend));
    }, py::arg("engine"), py::arg("n_gpu_layers") = -1,
       "Run the engine's later evals on the CUDA device: the last n_gpu_layers layers (-1 or >= the layer count: "
       "every layer) and the output head there, with a KV cache of the engine's n_ctx cells and kv_type; the layers below "
       "run on the CPU first, in the engine's own pass and cache (sessions of one model share one upload of its "
       "weights). lowbit.CudaError without a device, lowbit.InsufficientMemory when the plan does not fit, "
       "lowbit.ModelError for what the device pass does not run, ValueError for an engine that already holds "
       "positions or n_gpu_layers below -1 or 0.");
    m.def("engine_split_on_cpu", [](Engine& e, int64_t first_layer) {
        e.set_backend(std::make_unique<CpuLayersBackend>(e, first_layer));
    }, py::arg("engine"), py::arg("first_layer"),
       "Test hook for layer offload: layers from first_layer on (and the head) run in a second CPU pass with its "
       "own cache, fed the residual stream the engine's pass leaves: the hand-over a partly offloaded engine makes "
       "to the device, bit-equal to the unsplit pass.");
    m.def("cuda_plan", [](const Engine& e, int64_t n_ctx, int64_t n_batch, int64_t n_gpu_layers,
                          const std::string& kv_type) {
        const auto model = e.shared_model();
        const int64_t first = first_device_layer(*model, n_gpu_layers);
        py::dict d = plan_dict(cuda::plan_device(*model, n_ctx, n_batch, first, kv_format(kv_type)));
        py::list tensors;
        for (const cuda::DeviceTensor& t : cuda::device_tensors(*model, first))
            tensors.append(py::make_tuple(t.name, t.offset, t.bytes));
        d["tensors"] = tensors;
        return d;
    }, py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch"), py::arg("n_gpu_layers") = -1,
       py::arg("kv_type") = "f16",
       "What the engine's model takes on a CUDA device for n_ctx cells of kv_type and n_batch rows with its last "
       "n_gpu_layers layers there (-1: all), planned on the host: {first_layer, kv_type, weights_bytes, kv_bytes, scratch_bytes, "
       "transient_bytes, total_bytes, reserve_bytes, weights_by_type, tensors: [(name, offset, bytes)]}. "
       "lowbit.ModelError for what the device pass does not run.");
    m.def("cuda_check_fit", [](const Engine& e, int64_t n_ctx, int64_t n_batch, int64_t free_bytes, int64_t n_gpu_layers,
                               const std::string& kv_type) {
        const auto model = e.shared_model();
        cuda::check_device_fit(*model, cuda::plan_device(*model, n_ctx, n_batch, first_device_layer(*model, n_gpu_layers),
                                                         kv_format(kv_type)),
                               free_bytes);
    }, py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch"), py::arg("free_bytes"), py::arg("n_gpu_layers") = -1,
       py::arg("kv_type") = "f16",
       "lowbit.InsufficientMemory (a MemoryError) when the plan plus its reserve exceeds free_bytes, naming the "
       "figures, the largest n_ctx and the most n_gpu_layers that fit: the check a CudaModel makes against the "
       "device's free memory.");
    m.def("cuda_largest_n_ctx", [](const Engine& e, int64_t n_batch, int64_t free_bytes, int64_t n_ctx_limit,
                                   int64_t n_gpu_layers, const std::string& kv_type) {
        const auto model = e.shared_model();
        return cuda::largest_fitting_n_ctx(*model, n_batch, free_bytes, n_ctx_limit,
                                           first_device_layer(*model, n_gpu_layers), kv_format(kv_type));
    }, py::arg("engine"), py::arg("n_batch"), py::arg("free_bytes"), py::arg("n_ctx_limit"),
       py::arg("n_gpu_layers") = -1, py::arg("kv_type") = "f16",
       "The largest n_ctx <= n_ctx_limit whose plan fits in free_bytes (0: none).");
    m.def("cuda_largest_n_gpu_layers", [](const Engine& e, int64_t n_ctx, int64_t n_batch, int64_t free_bytes,
                                          const std::string& kv_type) {
        return cuda::largest_fitting_gpu_layers(*e.shared_model(), n_ctx, n_batch, free_bytes, kv_format(kv_type));
    }, py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch"), py::arg("free_bytes"), py::arg("kv_type") = "f16",
       "The most layers (the last ones) whose plan at n_ctx fits in free_bytes (0: not one).");

    py::class_<cuda::DeviceModel>(m, "CudaModel",
        "The engine's model on the CUDA device: every layer and the output head there, a KV cache of n_ctx cells "
        "(kv_type f16 or q8_0), pieces of n_batch rows. lowbit.CudaError without a device, lowbit.InsufficientMemory "
        "when the plan does not fit, lowbit.ModelError for what the device pass does not run.")
        .def(py::init([](const Engine& e, int64_t n_ctx, int64_t n_batch, const std::string& kv_type) {
            auto model = e.shared_model();
            const cuda::KvFormat kv = kv_format(kv_type);
            py::gil_scoped_release nogil;
            return std::make_unique<cuda::DeviceModel>(std::move(model), n_ctx, n_batch, 0, kv);
        }), py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch") = 512, py::arg("kv_type") = "f16")
        .def("eval", [](cuda::DeviceModel& d, const py::object& tokens, bool all_logits) {
            const std::vector<int32_t> ids = token_ids(tokens);
            LOWBIT_CHECK(!ids.empty(), ValueError, "eval needs at least one token");
            const int64_t V = d.n_vocab();
            py::array_t<float> out = all_logits ? py::array_t<float>({int64_t(ids.size()), V}) : py::array_t<float>({V});
            float* dst = out.mutable_data();
            {
                py::gil_scoped_release nogil;
                d.eval(ids.data(), nullptr, int64_t(ids.size()), all_logits, dst);
            }
            return out;
        }, py::arg("tokens"), py::arg("all_logits") = false,
           "Append tokens at n_past; the last token's logits (n_vocab,), or every token's (n, n_vocab).")
        .def("truncate", &cuda::DeviceModel::truncate, py::arg("n"))
        .def("cancel", &cuda::DeviceModel::cancel, "Stop a running eval between layers (thread-safe); stays set "
             "until reset_cancel().")
        .def("reset_cancel", &cuda::DeviceModel::reset_cancel)
        .def_property_readonly("n_past", &cuda::DeviceModel::n_past)
        .def_property_readonly("n_ctx", &cuda::DeviceModel::n_ctx)
        .def_property_readonly("device", &cuda::DeviceModel::device)
        .def("memory", [](const cuda::DeviceModel& d) {
            py::dict out = plan_dict(d.plan());
            out["peak_used_bytes"] = d.peak_used_bytes();
            out["device"] = d.device();
            out["decode_graph"] = d.decode_graph_status();
            return out;
        }, "The plan's device bytes (weights, KV cache, scratch, transient) and the most device memory seen in use.");
}

}  // namespace lowbit

// bind_cuda_model.cpp: the model on the CUDA device (cuda/device_model.h) and its memory plan
// (cuda/device_plan.h, host code: checked in every build).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "cuda/device_model.h"
#include "cuda/device_plan.h"
#include "runtime/engine.h"

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
    DeviceBackend(std::shared_ptr<const model::Model> m, int64_t n_ctx, int64_t n_batch) : dm_(std::move(m), n_ctx, n_batch) {}
    void eval(const int32_t* tokens, int64_t n, int64_t pos0, bool all_logits, float* out,
              const std::function<void()>& check) override {
        if (dm_.n_past() != pos0) dm_.truncate(pos0);   // the engine truncated since
        dm_.eval(tokens, n, all_logits, out, check);
    }
    std::string name() const override { return "cuda: " + dm_.device(); }
    std::map<std::string, int64_t> memory() const override {
        const cuda::DevicePlan& p = dm_.plan();
        return {{"weights", p.weights}, {"kv", p.kv}, {"scratch", p.scratch}, {"transient", p.transient},
                {"peak_used", dm_.peak_used_bytes()}};
    }

private:
    cuda::DeviceModel dm_;
};

}  // namespace

void bind_cuda_model(py::module_& m) {
    m.def("engine_to_cuda", [](Engine& e) {
        auto model = e.shared_model();
        const int64_t n_ctx = e.n_ctx(), n_batch = e.n_batch();
        std::unique_ptr<runtime::ForwardBackend> backend;
        {
            py::gil_scoped_release nogil;
            backend = std::make_unique<DeviceBackend>(std::move(model), n_ctx, n_batch);
        }
        e.set_backend(std::move(backend));
    }, py::arg("engine"),
       "Run the engine's later evals on the CUDA device: every layer and the output head there, an f16 KV cache of the "
       "engine's n_ctx cells (sessions of one model share one upload of its weights). lowbit.CudaError without a "
       "device, lowbit.InsufficientMemory when the plan does not fit, lowbit.ModelError for what the device pass does "
       "not run, ValueError for an engine that already holds positions.");
    m.def("cuda_plan", [](const Engine& e, int64_t n_ctx, int64_t n_batch) {
        const auto model = e.shared_model();
        py::dict d = plan_dict(cuda::plan_device(*model, n_ctx, n_batch));
        py::list tensors;
        for (const cuda::DeviceTensor& t : cuda::device_tensors(*model))
            tensors.append(py::make_tuple(t.name, t.offset, t.bytes));
        d["tensors"] = tensors;
        return d;
    }, py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch"),
       "What the engine's model takes on a CUDA device for n_ctx cells and n_batch rows, planned on the host: "
       "{weights_bytes, kv_bytes, scratch_bytes, transient_bytes, total_bytes, reserve_bytes, weights_by_type, "
       "tensors: [(name, offset, bytes)]}. lowbit.ModelError for what the device pass does not run.");
    m.def("cuda_check_fit", [](const Engine& e, int64_t n_ctx, int64_t n_batch, int64_t free_bytes) {
        const auto model = e.shared_model();
        cuda::check_device_fit(*model, cuda::plan_device(*model, n_ctx, n_batch), free_bytes);
    }, py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch"), py::arg("free_bytes"),
       "lowbit.InsufficientMemory (a MemoryError) when the plan plus its reserve exceeds free_bytes, naming the "
       "figures and the largest n_ctx that fits: the check a CudaModel makes against the device's free memory.");
    m.def("cuda_largest_n_ctx", [](const Engine& e, int64_t n_batch, int64_t free_bytes, int64_t n_ctx_limit) {
        return cuda::largest_fitting_n_ctx(*e.shared_model(), n_batch, free_bytes, n_ctx_limit);
    }, py::arg("engine"), py::arg("n_batch"), py::arg("free_bytes"), py::arg("n_ctx_limit"),
       "The largest n_ctx <= n_ctx_limit whose plan fits in free_bytes (0: none).");

    py::class_<cuda::DeviceModel>(m, "CudaModel",
        "The engine's model on the CUDA device: every layer and the output head there, an f16 KV cache of n_ctx "
        "cells, pieces of n_batch rows. lowbit.CudaError without a device, lowbit.InsufficientMemory when the plan "
        "does not fit, lowbit.ModelError for what the device pass does not run.")
        .def(py::init([](const Engine& e, int64_t n_ctx, int64_t n_batch) {
            auto model = e.shared_model();
            py::gil_scoped_release nogil;
            return std::make_unique<cuda::DeviceModel>(std::move(model), n_ctx, n_batch);
        }), py::arg("engine"), py::arg("n_ctx"), py::arg("n_batch") = 512)
        .def("eval", [](cuda::DeviceModel& d, const py::object& tokens, bool all_logits) {
            const std::vector<int32_t> ids = token_ids(tokens);
            LOWBIT_CHECK(!ids.empty(), ValueError, "eval needs at least one token");
            const int64_t V = d.n_vocab();
            py::array_t<float> out = all_logits ? py::array_t<float>({int64_t(ids.size()), V}) : py::array_t<float>({V});
            float* dst = out.mutable_data();
            {
                py::gil_scoped_release nogil;
                d.eval(ids.data(), int64_t(ids.size()), all_logits, dst);
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
            return out;
        }, "The plan's device bytes (weights, KV cache, scratch, transient) and the most device memory seen in use.");
}

}  // namespace lowbit

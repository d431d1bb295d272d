// device_model.h: a whole model on the CUDA device, the forward pass of model/forward.cpp for dense
// architectures with every layer and the output head on the GPU (device_model.cu), an f16 or
// q8_0 KV cache there, and a memory plan checked against free device memory before anything is
// allocated (device_plan.h). Host-only declarations: bindings and tests include this in every
// build; without the CUDA backend the constructor throws CudaError (device_model_nocuda.cpp).
//
// Layer offload: with first_layer > 0 only layers [first_layer, n_layers) and the head are on the
// device; eval then takes the residual stream the CPU's layers below left (model::forward_layers).
//
// Device models of one model::Model and first layer share one upload of its weights (every
// session on the model adds only its KV cache and scratch); the fit check counts the weights only
// for the first.
//
// Decode steps after the first replay one CUDA graph (device_model.cu).
//
// Left for later (issue 19): mixture of experts, tensor-core flash attention for prefill.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "cuda/device_plan.h"
#include "model/forward.h"

namespace lowbit::cuda {

class DeviceModel {
public:
    // Plans n_ctx cells (f16 or q8_0) and n_batch rows of layers [first_layer, n_layers), checks the plan
    // against the device's free memory (InsufficientMemory naming the figures and the largest
    // n_ctx / n_gpu_layers that fit), then uploads. ModelError for what the device pass does not
    // run (device_tensors), CudaError without a device.
    DeviceModel(std::shared_ptr<const model::Model> m, int64_t n_ctx, int64_t n_batch, int64_t first_layer = 0,
                KvFormat kv_format = KvFormat::F16);
    ~DeviceModel();
    DeviceModel(const DeviceModel&) = delete;
    DeviceModel& operator=(const DeviceModel&) = delete;

    // Appends n tokens at n_past (in pieces of n_batch rows): logits of the last token, or of
    // every token with all_logits, into out (rows x n_vocab floats, host memory). With
    // first_layer > 0, x (n, n_embd) is the tokens' residual stream after the CPU's layers
    // (tokens then only range-checked); else nullptr. Cancelled between layers after cancel() or
    // when check() throws (the engine's cancel and abort checks); n_past then counts only the
    // pieces that completed. hidden: nullptr, or (n, n_embd) for every token's output-normed
    // hidden state (what embeddings pool).
    void eval(const int32_t* tokens, const float* x, int64_t n, bool all_logits, float* out,
              const std::function<void()>& check = {}, float* hidden = nullptr);
    void truncate(int64_t n);   // forget positions >= n (0 <= n <= n_past)
    // Makes positions [0, n) hold src's (a device model of the same model, first layer and cache
    // format, holding at least n positions; n <= n_ctx): rows copied on the device, n_past = n.
    // ValueError, nothing changed, otherwise; check_only: only that check.
    void copy_prefix_from(const DeviceModel& src, int64_t n, bool check_only = false);
    // A context shift: positions [n_keep + n_discard, n_past) move down by n_discard, keys
    // re-rotated by -n_discard as the CPU's KVCache::shift does (every row is kept: no rings).
    void shift(int64_t n_keep, int64_t n_discard);
    void cancel();              // thread-safe; stays set until reset_cancel()
    void reset_cancel();

    int64_t n_past() const;
    int64_t n_ctx() const;
    int64_t n_vocab() const;
    const DevicePlan& plan() const;
    std::string device() const;          // "NVIDIA H200 (cc 9.0, 132 SMs)"
    int64_t peak_used_bytes() const;     // the most device memory in use (total - free) seen after an eval
    // The decode step's CUDA graph: "not captured yet", "captured (...)", "off (LOWBIT_CUDA_GRAPHS=0)"
    // or "capture failed, eager launches: <why>".
    std::string decode_graph_status() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace lowbit::cuda

// device_model_nocuda.cpp: the device model of a build without the CUDA backend.
#include "cuda/device_model.h"

#ifndef LOWBIT_WITH_CUDA
namespace lowbit::cuda {
struct DeviceModel::Impl {};
DeviceModel::DeviceModel(std::shared_ptr<const model::Model> m, int64_t, int64_t, int64_t first_layer, KvFormat) {
    if (m) device_tensors(*m, first_layer);   // ModelError first, as in a CUDA build
    throw CudaError("no CUDA device (lowbit was built without the CUDA backend)");
}
DeviceModel::~DeviceModel() = default;
void DeviceModel::eval(const int32_t*, const float*, int64_t, bool, float*, const std::function<void()>&, float*) {}
void DeviceModel::truncate(int64_t) {}
void DeviceModel::copy_prefix_from(const DeviceModel&, int64_t, bool) {}
void DeviceModel::shift(int64_t, int64_t) {}
void DeviceModel::cancel() {}
void DeviceModel::reset_cancel() {}
int64_t DeviceModel::n_past() const { return 0; }
int64_t DeviceModel::n_ctx() const { return 0; }
int64_t DeviceModel::n_vocab() const { return 0; }
const DevicePlan& DeviceModel::plan() const { static const DevicePlan none; return none; }
std::string DeviceModel::device() const { return {}; }
int64_t DeviceModel::peak_used_bytes() const { return 0; }
std::string DeviceModel::decode_graph_status() const { return {}; }
}  // namespace lowbit::cuda
#endif

// cuda_common.cuh: what every kernel file shares: CUDA errors as lowbit::CudaError (never an
// abort), device buffers, warp reductions and the device copies of the codebooks.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common.h"
#include "cuda/quant_hd.h"

namespace lowbit::cuda {

// Throws CudaError naming the call, the file:line and CUDA's message. The error is cleared first
// where it is not sticky, so the process stays usable after e.g. a failed allocation.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line);

#define LOWBIT_CUDA_CHECK(call)                                                                  \
    do {                                                                                         \
        const cudaError_t lowbit_err_ = (call);                                                  \
        if (lowbit_err_ != cudaSuccess) ::lowbit::cuda::throw_cuda_error(lowbit_err_, #call, __FILE__, __LINE__); \
    } while (0)
// After a launch: a bad configuration shows up as the last error.
#define LOWBIT_CUDA_LAUNCHED(name) LOWBIT_CUDA_CHECK(cudaGetLastError())

// Owning device allocation (cudaMalloc, never managed memory), `pad` extra bytes past the end so
// that kernels reading 16-byte aligned spans may overrun a row's last bytes.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes, size_t pad = 16) { alloc(bytes, pad); }
    ~DeviceBuffer() { if (ptr_) cudaFree(ptr_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
    void alloc(size_t bytes, size_t pad = 16);
    void upload(const void* host, size_t bytes, size_t offset = 0);
    void download(void* host, size_t bytes, size_t offset = 0) const;
    template <typename T> T* as() { return static_cast<T*>(ptr_); }
    template <typename T> const T* as() const { return static_cast<const T*>(ptr_); }
    size_t bytes() const { return bytes_; }
private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// The codebooks on the current device, uploaded once from quant/iq_tables.h (grid_tables_host.h).
const GridTables& device_grid_tables();

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ int warp_sum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

inline unsigned ceil_div(int64_t a, int64_t b) { return unsigned((a + b - 1) / b); }

}  // namespace lowbit::cuda

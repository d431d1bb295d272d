// device.cu: CUDA device discovery. cudart is linked statically and loads the driver lazily,
// so on a machine without a driver or GPU the calls below return an error code that we
// report as "no CUDA device"; nothing here may abort the process.
#include <cuda_runtime.h>

#include "runtime/device.h"

namespace lowbit {

CudaStatus cuda_status() {
    CudaStatus s;
    s.compiled = true;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n <= 0) {
        s.device_count = 0;
        s.message = std::string("no CUDA device (") +
                    (err != cudaSuccess ? cudaGetErrorString(err) : "none found") + ")";
        cudaGetLastError();  // clear the sticky-free error state
        return s;
    }
    s.device_count = n;
    for (int i = 0; i < n; ++i) {
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) { cudaGetLastError(); continue; }
        CudaDeviceInfo d;
        d.index = i;
        d.name = prop.name;
        d.cc_major = prop.major;
        d.cc_minor = prop.minor;
        d.sm_count = prop.multiProcessorCount;
        d.total_bytes = prop.totalGlobalMem;
        size_t free_b = 0, total_b = 0;
        if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) d.free_bytes = free_b;
        else cudaGetLastError();
        s.devices.push_back(d);
    }
    s.message = std::to_string(n) + (n == 1 ? " CUDA device" : " CUDA devices");
    return s;
}

}  // namespace lowbit

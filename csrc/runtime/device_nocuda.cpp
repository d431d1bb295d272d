// device_nocuda.cpp: the CUDA status of a build without the CUDA backend.
#include "runtime/device.h"

#ifndef LOWBIT_WITH_CUDA
namespace lowbit {
CudaStatus cuda_status() {
    CudaStatus s;
    s.compiled = false;
    s.message = "no CUDA device (lowbit was built without the CUDA backend)";
    return s;
}
}  // namespace lowbit
#endif

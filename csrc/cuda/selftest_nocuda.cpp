// selftest_nocuda.cpp: the device self-test of a build without the CUDA backend.
#include "common.h"
#include "cuda/selftest.h"

#ifndef LOWBIT_WITH_CUDA
namespace lowbit::cuda {
SelfTestReport run_selftest(uint64_t, bool) {
    throw CudaError("no CUDA device (lowbit was built without the CUDA backend)");
}
double device_copy_gbs(size_t) {
    throw CudaError("no CUDA device (lowbit was built without the CUDA backend)");
}
void device_alloc_probe(size_t) {
    throw CudaError("no CUDA device (lowbit was built without the CUDA backend)");
}
}  // namespace lowbit::cuda
#endif

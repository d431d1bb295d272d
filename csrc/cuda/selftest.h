// selftest.h: the device self-test (selftest.cu with the CUDA backend; selftest_nocuda.cpp without):
// every kernel on fresh random data against the CPU path, with its error, tolerance and speed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit::cuda {

struct SelfTestEntry {
    std::string name;      // "matvec/Q4_K", "rmsnorm", ...
    double max_err = 0;    // the check's error measure (stated in detail)
    double tol = 0;        // the bound the test asserts: max_err <= tol
    double gbs = 0;        // achieved bandwidth of the timed kernel in GB/s (0: not timed)
    std::string detail;    // what was compared and how
};

struct SelfTestReport {
    std::string device;    // "NVIDIA H200 (cc 9.0, 132 SMs)"
    std::vector<SelfTestEntry> entries;
};

// Throws CudaError when the build has no CUDA backend or no device is usable.
SelfTestReport run_selftest(uint64_t seed, bool bandwidth);

// A device-to-device copy of `bytes` (median of 10 after 2 warm-ups): GB/s counting bytes read
// and written, the yardstick of achieved bandwidth. CudaError without a device.
double device_copy_gbs(size_t bytes);

// Allocates `bytes` of device memory through DeviceBuffer and frees it: a failure must come back
// as CudaError naming the size, with the device still usable afterwards (tests force one).
void device_alloc_probe(size_t bytes);

}  // namespace lowbit::cuda

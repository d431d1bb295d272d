// device.h: what accelerators this build and this machine have. Never throws for a
// missing driver or device: that is a normal state reported in `message`.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace lowbit {

struct CudaDeviceInfo {
    int index = 0;
    std::string name;
    int cc_major = 0, cc_minor = 0;   // compute capability
    int sm_count = 0;
    size_t total_bytes = 0, free_bytes = 0;
};

struct CudaStatus {
    bool compiled = false;            // this build has the CUDA backend
    int device_count = 0;
    std::string message;              // "2 CUDA devices", "no CUDA device (...)", "built without CUDA"
    std::vector<CudaDeviceInfo> devices;
};

CudaStatus cuda_status();

}  // namespace lowbit

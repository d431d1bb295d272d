// context.cu: CUDA errors as exceptions, device buffers, and the device copies of the codebooks.
#include <mutex>

#include "cuda/cuda_common.cuh"
#include "cuda/grid_tables_host.h"

namespace lowbit::cuda {

void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
    cudaGetLastError();   // clear a non-sticky error so later calls work
    throw CudaError(str("CUDA error ", int(err), " (", cudaGetErrorName(err), ": ", cudaGetErrorString(err),
                        ") in ", what, " at ", file, ":", line));
}

void DeviceBuffer::alloc(size_t bytes, size_t pad) {
    if (ptr_) { cudaFree(ptr_); ptr_ = nullptr; bytes_ = 0; }
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes + pad);
    if (err != cudaSuccess) {
        cudaGetLastError();
        throw CudaError(str("cudaMalloc of ", bytes + pad, " bytes failed: ", cudaGetErrorString(err)));
    }
    ptr_ = p;
    bytes_ = bytes;
    if (pad) LOWBIT_CUDA_CHECK(cudaMemset(static_cast<uint8_t*>(p) + bytes, 0, pad));
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
    LOWBIT_CHECK(offset + bytes <= bytes_, ValueError, "upload of ", bytes, " bytes at ", offset, " overruns a ",
                 bytes_, "-byte device buffer");
    LOWBIT_CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, host, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
    LOWBIT_CHECK(offset + bytes <= bytes_, ValueError, "download of ", bytes, " bytes at ", offset, " overruns a ",
                 bytes_, "-byte device buffer");
    LOWBIT_CUDA_CHECK(cudaMemcpy(host, static_cast<const uint8_t*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

const GridTables& device_grid_tables() {
    // One upload per process (lowbit uses one device at a time); the buffer lives until exit.
    static std::mutex mu;
    static DeviceBuffer* tables = nullptr;
    static GridTables dev{};
    std::lock_guard<std::mutex> lock(mu);
    if (tables) return dev;
    size_t total = 0;
    for (const auto& t : kGridTableBytes) total += (t.bytes + 15) / 16 * 16;
    auto* buf = new DeviceBuffer(total, 0);
    const void* ptrs[9];
    size_t off = 0, i = 0;
    for (const auto& t : kGridTableBytes) {
        buf->upload(t.host, t.bytes, off);
        ptrs[i++] = buf->as<uint8_t>() + off;
        off += (t.bytes + 15) / 16 * 16;
    }
    dev = GridTables{static_cast<const uint64_t*>(ptrs[0]), static_cast<const uint64_t*>(ptrs[1]),
                     static_cast<const uint64_t*>(ptrs[2]), static_cast<const uint32_t*>(ptrs[3]),
                     static_cast<const uint32_t*>(ptrs[4]), static_cast<const uint64_t*>(ptrs[5]),
                     static_cast<const uint8_t*>(ptrs[6]),  static_cast<const int8_t*>(ptrs[7]),
                     static_cast<const int8_t*>(ptrs[8])};
    tables = buf;
    return dev;
}

}  // namespace lowbit::cuda

// mmm.cu: prefill mat-mat, y (n, rows) = x (n, cols) . W^T. The weights are dequantized to f16
// (dequantize.cu, bit for bit the CPU values rounded to half), then either cuBLAS multiplies
// them with x rounded to f16 on the tensor cores, accumulating in f32 (LOWBIT_WITH_CUBLAS: CMake
// found CUDAToolkit's cuBLAS), or a shared-memory tiled kernel does, x kept in f32.
#include <mutex>

#include "cuda/ops.cuh"

#ifdef LOWBIT_WITH_CUBLAS
#include <cublas_v2.h>
#endif

namespace lowbit::cuda {
namespace {

constexpr int kTile = 16;

// One kTile x kTile output tile per block: x rows [i0, i0+16) against weight rows [r0, r0+16),
// k in steps of 16 through shared memory (the +1 column keeps the transposed reads off one bank).
__global__ void gemm_tiled_kernel(const float* __restrict__ x, const __half* __restrict__ w, float* __restrict__ y,
                                  int64_t n, int64_t rows, int64_t cols) {
    __shared__ float xs[kTile][kTile + 1], ws[kTile][kTile + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t i0 = int64_t(blockIdx.y) * kTile, r0 = int64_t(blockIdx.x) * kTile;
    float acc = 0.0f;
    for (int64_t k0 = 0; k0 < cols; k0 += kTile) {
        const int64_t k = k0 + tx;
        xs[ty][tx] = (i0 + ty < n && k < cols) ? x[(i0 + ty) * cols + k] : 0.0f;
        ws[ty][tx] = (r0 + ty < rows && k < cols) ? __half2float(w[(r0 + ty) * cols + k]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; ++kk) acc += xs[ty][kk] * ws[tx][kk];
        __syncthreads();
    }
    if (i0 + ty < n && r0 + tx < rows) y[(i0 + ty) * rows + r0 + tx] = acc;
}

__global__ void f32_to_f16_kernel(const float* __restrict__ x, __half* __restrict__ y, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half_rn(x[i]);
}

#ifdef LOWBIT_WITH_CUBLAS
const char* cublas_status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "cuBLAS error";
    }
}
#define LOWBIT_CUBLAS_CHECK(call)                                                                       \
    do {                                                                                                \
        const cublasStatus_t st_ = (call);                                                              \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                               \
            throw CudaError(str(#call, " failed: ", cublas_status_name(st_), " (", int(st_), ")"));    \
    } while (0)

// One handle per process (created on first use, on the current device).
cublasHandle_t cublas_handle() {
    static std::mutex mu;
    static cublasHandle_t handle = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (!handle) LOWBIT_CUBLAS_CHECK(cublasCreate(&handle));
    return handle;
}
#endif

}  // namespace

bool matmul_uses_cublas() {
#ifdef LOWBIT_WITH_CUBLAS
    return true;
#else
    return false;
#endif
}

void matmul(const void* w, GGMLType type, int64_t rows, int64_t cols, const float* x, int64_t n, float* y,
            cudaStream_t stream) {
    LOWBIT_CHECK(rows > 0 && n > 0, ValueError, "matmul: rows and n must be positive, got ", rows, " and ", n);
    device_row_bytes(type, cols);   // validates the shape
    DeviceBuffer w16(size_t(checked_mul(rows, cols, "matmul weights")) * sizeof(__half));
    dequantize(w, type, rows, cols, w16.as<__half>(), stream);
#ifdef LOWBIT_WITH_CUBLAS
    DeviceBuffer x16(size_t(checked_mul(n, cols, "matmul activations")) * sizeof(__half));
    f32_to_f16_kernel<<<ceil_div(n * cols, 256), 256, 0, stream>>>(x, x16.as<__half>(), n * cols);
    LOWBIT_CUDA_LAUNCHED("f32_to_f16");
    cublasHandle_t h = cublas_handle();
    LOWBIT_CUBLAS_CHECK(cublasSetStream(h, stream));
    const float alpha = 1.0f, beta = 0.0f;
    // column-major view: y^T (rows x n) = W (rows x cols, stored as cols x rows) ^T . x^T (cols x n)
    LOWBIT_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols), &alpha,
                                     w16.as<__half>(), CUDA_R_16F, int(cols), x16.as<__half>(), CUDA_R_16F, int(cols),
                                     &beta, y, CUDA_R_32F, int(rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
#else
    (void)f32_to_f16_kernel;
    const dim3 grid(ceil_div(rows, kTile), ceil_div(n, kTile)), block(kTile, kTile);
    gemm_tiled_kernel<<<grid, block, 0, stream>>>(x, w16.as<__half>(), y, n, rows, cols);
    LOWBIT_CUDA_LAUNCHED("gemm_tiled");
#endif
    // the scratch buffers are freed on return: wait for the kernels that read them
    LOWBIT_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace lowbit::cuda

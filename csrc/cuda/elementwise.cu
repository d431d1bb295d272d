// elementwise.cu: the residual stream's small steps (bias rows, the residual add, the logits'
// scale and softcap), one thread per value, the CPU's formulas (cpu/ops.cpp, model/forward.cpp).
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

__global__ void add_rows_kernel(float* __restrict__ x, const float* __restrict__ b, int64_t total, int64_t width) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total) x[i] += b[i % width];
}

__global__ void axpy_kernel(float* __restrict__ x, float a, const float* __restrict__ p, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) x[i] = a == 1.0f ? x[i] + p[i] : x[i] + a * p[i];
}

__global__ void scale_softcap_kernel(float* __restrict__ x, int64_t n, float scale, float softcap) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (scale != 1.0f) v /= scale;
    if (softcap > 0.0f) v = softcap * tanhf(v / softcap);
    x[i] = v;
}

}  // namespace

void add_rows(float* x, const float* b, int64_t rows, int64_t width, cudaStream_t stream) {
    LOWBIT_CHECK(rows > 0 && width > 0, ValueError, "add_rows: empty shape (", rows, ", ", width, ")");
    const int64_t total = rows * width;
    add_rows_kernel<<<ceil_div(total, 256), 256, 0, stream>>>(x, b, total, width);
    LOWBIT_CUDA_LAUNCHED("add_rows");
}

void axpy(float* x, float a, const float* p, int64_t n, cudaStream_t stream) {
    LOWBIT_CHECK(n > 0, ValueError, "axpy: n must be positive, got ", n);
    axpy_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(x, a, p, n);
    LOWBIT_CUDA_LAUNCHED("axpy");
}

void scale_softcap(float* x, int64_t n, float scale, float softcap, cudaStream_t stream) {
    LOWBIT_CHECK(n > 0, ValueError, "scale_softcap: n must be positive, got ", n);
    scale_softcap_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(x, n, scale, softcap);
    LOWBIT_CUDA_LAUNCHED("scale_softcap");
}

}  // namespace lowbit::cuda

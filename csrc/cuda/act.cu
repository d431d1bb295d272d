// act.cu: gated activations, out = act(gate) * up, elementwise with the CPU's formulas
// (cpu/ops.cpp): SiLU g / (1 + e^-g), GELU 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))).
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }
__device__ __forceinline__ float gelu_tanh(float g) {
    constexpr float kSqrt2OverPi = 0.79788456080286535588f;
    return 0.5f * g * (1.0f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g)));
}

__global__ void silu_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = silu(gate[i]) * up[i];
}

__global__ void gelu_tanh_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out,
                                     int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = gelu_tanh(gate[i]) * up[i];
}

// Row r of gate / up at r * stride, of out at r * width.
__global__ void gated_rows_kernel(const float* __restrict__ gate, const float* up, float* out,   // out may be up
                                  int64_t rows, int64_t width, int64_t stride, bool gelu) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= rows * width) return;
    const int64_t r = i / width, j = i % width;
    const float g = gate[r * stride + j];
    out[i] = (gelu ? gelu_tanh(g) : silu(g)) * up[r * stride + j];
}

}  // namespace

void silu_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream) {
    LOWBIT_CHECK(n > 0, ValueError, "silu_mul: n must be positive, got ", n);
    silu_mul_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(gate, up, out, n);
    LOWBIT_CUDA_LAUNCHED("silu_mul");
}

void gelu_tanh_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream) {
    LOWBIT_CHECK(n > 0, ValueError, "gelu_tanh_mul: n must be positive, got ", n);
    gelu_tanh_mul_kernel<<<ceil_div(n, 256), 256, 0, stream>>>(gate, up, out, n);
    LOWBIT_CUDA_LAUNCHED("gelu_tanh_mul");
}

void gated_rows(const float* gate, const float* up, float* out, int64_t rows, int64_t width, int64_t stride, bool gelu,
                cudaStream_t stream) {
    LOWBIT_CHECK(rows > 0 && width > 0 && stride >= width, ValueError, "gated_rows: bad shape (", rows, ", ", width,
                 ") with row stride ", stride);
    gated_rows_kernel<<<ceil_div(rows * width, 256), 256, 0, stream>>>(gate, up, out, rows, width, stride, gelu);
    LOWBIT_CUDA_LAUNCHED("gated_rows");
}

}  // namespace lowbit::cuda

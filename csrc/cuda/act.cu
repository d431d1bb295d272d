// act.cu: gated activations, out = act(gate) * up, elementwise with the CPU's formulas
// (cpu/ops.cpp): SiLU g / (1 + e^-g), GELU 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))).
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

__global__ void silu_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out, int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}

__global__ void gelu_tanh_mul_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* out,
                                     int64_t n) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) return;
    constexpr float kSqrt2OverPi = 0.79788456080286535588f;
    const float g = gate[i];
    out[i] = 0.5f * g * (1.0f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * up[i];
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

}  // namespace lowbit::cuda

// quantize_act.cu: activations f32 -> block_q8a, one warp per 32 values: d = amax / 127,
// q = round-to-nearest-even(x * (1 / d)), sum exact (the host test's emulation does the same).
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

__global__ void quantize_act_kernel(const float* __restrict__ x, block_q8a* __restrict__ out, int64_t blocks) {
    const int64_t b = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (b >= blocks) return;
    const int lane = threadIdx.x % 32;
    const float v = x[b * 32 + lane];
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const int q = __float2int_rn(v * id);
    const int sum = warp_sum(q);
    out[b].qs[lane] = int8_t(q);
    if (lane == 0) {
        out[b].d = d;
        out[b].sum = sum;
    }
}

}  // namespace

void quantize_act(const float* x, block_q8a* out, int64_t n, int64_t cols, cudaStream_t stream) {
    LOWBIT_CHECK(cols > 0 && cols % 32 == 0 && n > 0, ValueError, "quantize_act: cols must be a positive multiple of 32, got ", cols);
    const int64_t blocks = n * cols / 32;
    quantize_act_kernel<<<ceil_div(blocks, 8), 256, 0, stream>>>(x, out, blocks);
    LOWBIT_CUDA_LAUNCHED("quantize_act");
}

}  // namespace lowbit::cuda

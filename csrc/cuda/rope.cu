// rope.cu: rotary embedding in place, one thread per rotated pair. The angle pos * inv_freq[i]
// and its cos / sin are computed in double and scaled by mscale before rounding to float, as the
// CPU's rope_cos_sin; the rotation is the CPU's rope (x0 c - x1 s, x0 s + x1 c) in float.
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

__global__ void rope_kernel(float* __restrict__ x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t half,
                            bool neox, const int32_t* __restrict__ pos, const double* __restrict__ inv_freq,
                            float mscale) {
    const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k >= n_tok * n_heads * half) return;
    const int64_t i = k % half, h = (k / half) % n_heads, t = k / (half * n_heads);
    const double a = double(pos[t]) * inv_freq[i];
    double s, c;
    sincos(a, &s, &c);
    const float cf = float(c * double(mscale)), sf = float(s * double(mscale));
    float* xh = x + (t * n_heads + h) * head_dim;
    float* p0 = neox ? xh + i : xh + 2 * i;
    float* p1 = neox ? xh + i + half : xh + 2 * i + 1;
    const float x0 = *p0, x1 = *p1;
    *p0 = x0 * cf - x1 * sf;
    *p1 = x0 * sf + x1 * cf;
}

}  // namespace

void rope(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot, bool neox, const int32_t* pos,
          const double* inv_freq, float mscale, cudaStream_t stream) {
    LOWBIT_CHECK(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim, ValueError, "rope: n_rot must be even and in (0, ",
                 head_dim, "], got ", n_rot);
    LOWBIT_CHECK(n_tok > 0 && n_heads > 0, ValueError, "rope: empty shape");
    const int64_t pairs = n_tok * n_heads * (n_rot / 2);
    rope_kernel<<<ceil_div(pairs, 256), 256, 0, stream>>>(x, n_tok, n_heads, head_dim, n_rot / 2, neox, pos, inv_freq,
                                                          mscale);
    LOWBIT_CUDA_LAUNCHED("rope");
}

}  // namespace lowbit::cuda

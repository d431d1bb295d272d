// norm.cu: RMSNorm and softmax, one block of 256 threads per row; the sums that decide accuracy
// accumulate in double, as the CPU's ops.cpp.
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

constexpr int kThreads = 256;

// Reduce v over the block with op; `identity` fills the lanes of warp 0 past the warp count.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* shared /* [32] */) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = threadIdx.x < blockDim.x / 32 ? shared[threadIdx.x] : identity;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    const T out = shared[0];
    __syncthreads();   // shared is reused by the caller's next reduction
    return out;
}

struct Add { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct Max { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

// y may be x (in place: qk-norm, post-norms); each thread reads its values before writing them.
__global__ void rmsnorm_kernel(const float* x, const float* __restrict__ w, float* y, int64_t n, float eps) {
    __shared__ double red[32];
    const float* xr = x + int64_t(blockIdx.x) * n;
    float* yr = y + int64_t(blockIdx.x) * n;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += double(xr[i]) * double(xr[i]);
    ss = block_reduce(ss, Add{}, 0.0, red);
    const float scale = float(1.0 / sqrt(ss / double(n) + double(eps)));
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w ? xr[i] * scale * w[i] : xr[i] * scale;
}

__global__ void softmax_kernel(float* __restrict__ x, int64_t n, float scale) {
    __shared__ float redf[32];
    __shared__ double redd[32];
    float* xr = x + int64_t(blockIdx.x) * n;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, scale * xr[i]);
    m = block_reduce(m, Max{}, -INFINITY, redf);
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(scale * xr[i] - m);
        xr[i] = e;
        s += e;
    }
    s = block_reduce(s, Add{}, 0.0, redd);
    const float inv = float(1.0 / s);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xr[i] *= inv;
}

}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps, cudaStream_t stream) {
    LOWBIT_CHECK(rows > 0 && n > 0, ValueError, "rmsnorm: empty shape (", rows, ", ", n, ")");
    rmsnorm_kernel<<<unsigned(rows), kThreads, 0, stream>>>(x, w, y, n, eps);
    LOWBIT_CUDA_LAUNCHED("rmsnorm");
}

void softmax(float* x, int64_t rows, int64_t n, float scale, cudaStream_t stream) {
    LOWBIT_CHECK(rows > 0 && n > 0, ValueError, "softmax: empty shape (", rows, ", ", n, ")");
    softmax_kernel<<<unsigned(rows), kThreads, 0, stream>>>(x, n, scale);
    LOWBIT_CUDA_LAUNCHED("softmax");
}

}  // namespace lowbit::cuda

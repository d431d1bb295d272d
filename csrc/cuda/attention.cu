// attention.cu: KV-cache write (f32 -> f16) and decode attention split over the cache.
//
// Decode attention, one query token: block (h, s) takes cache positions [s * kSplit, (s+1) * kSplit)
// of query head h: scores scale * q.k_j (one warp per position, lanes over d, shuffle sum) into
// shared memory, their max m and p_j = e^(score_j - m), l = sum p_j, o = sum p_j v_j; it writes
// (m, l, o[0..d)) to scratch. A second kernel combines the splits of each head:
// out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

constexpr int kSplit = 256;     // cache positions per block
constexpr int kMaxD = 512;      // head dims held in shared memory
constexpr int kThreads = 128;

__global__ void kv_write_kernel(const float* __restrict__ src, __half* __restrict__ cache, int64_t total,
                                int64_t offset) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total) cache[offset + i] = __float2half_rn(src[i]);
}

__global__ void attn_split_kernel(const float* __restrict__ q, const __half* __restrict__ k,
                                  const __half* __restrict__ v, float* __restrict__ partial, int64_t n_head,
                                  int64_t group, int64_t d, int64_t n_kv, float scale) {
    __shared__ float qs[kMaxD];
    __shared__ float p[kSplit];
    __shared__ float red[kThreads / 32];
    const int64_t h = blockIdx.x, s = blockIdx.y;
    const int64_t j0 = s * kSplit, nj = min(int64_t(kSplit), n_kv - j0);
    const int64_t kv_stride = (n_head / group) * d, kv_off = (h / group) * d;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) qs[e] = q[h * d + e];
    __syncthreads();
    for (int64_t j = warp; j < nj; j += kThreads / 32) {
        const __half* kr = k + (j0 + j) * kv_stride + kv_off;
        float dot = 0.0f;
        for (int64_t e = lane; e < d; e += 32) dot += qs[e] * __half2float(kr[e]);
        dot = warp_sum(dot);
        if (lane == 0) p[j] = scale * dot;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < nj; j += blockDim.x) m = fmaxf(m, p[j]);
    m = warp_max(m);
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < kThreads / 32; ++w) m = fmaxf(m, red[w]);
    __syncthreads();
    float l = 0.0f;
    for (int64_t j = threadIdx.x; j < nj; j += blockDim.x) {
        const float e = expf(p[j] - m);
        p[j] = e;
        l += e;
    }
    l = warp_sum(l);
    if (lane == 0) red[warp] = l;
    __syncthreads();
    l = 0.0f;
    for (int w = 0; w < kThreads / 32; ++w) l += red[w];
    float* out = partial + (h * gridDim.y + s) * (d + 2);
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
        float o = 0.0f;
        for (int64_t j = 0; j < nj; ++j) o += p[j] * __half2float(v[(j0 + j) * kv_stride + kv_off + e]);
        out[2 + e] = o;
    }
    if (threadIdx.x == 0) {
        out[0] = m;
        out[1] = l;
    }
}

__global__ void attn_combine_kernel(const float* __restrict__ partial, float* __restrict__ out, int64_t splits,
                                    int64_t d) {
    const int64_t h = blockIdx.x;
    const float* ph = partial + h * splits * (d + 2);
    float mx = -INFINITY;
    for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, ph[s * (d + 2)]);
    float l = 0.0f;
    for (int64_t s = 0; s < splits; ++s) l += expf(ph[s * (d + 2)] - mx) * ph[s * (d + 2) + 1];
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
        float o = 0.0f;
        for (int64_t s = 0; s < splits; ++s) o += expf(ph[s * (d + 2)] - mx) * ph[s * (d + 2) + 2 + e];
        out[h * d + e] = o / l;
    }
}

}  // namespace

void kv_write_f16(const float* src, __half* cache, int64_t n_tok, int64_t width, int64_t pos0, cudaStream_t stream) {
    LOWBIT_CHECK(n_tok > 0 && width > 0 && pos0 >= 0, ValueError, "kv_write_f16: bad shape (", n_tok, ", ", width,
                 ") at position ", pos0);
    const int64_t total = n_tok * width;
    kv_write_kernel<<<ceil_div(total, 256), 256, 0, stream>>>(src, cache, total, pos0 * width);
    LOWBIT_CUDA_LAUNCHED("kv_write_f16");
}

int64_t attention_scratch_floats(int64_t n_head, int64_t n_kv, int64_t d) {
    return n_head * int64_t(ceil_div(n_kv, kSplit)) * (d + 2);
}

void attention_decode(const float* q, const __half* k, const __half* v, float* out, int64_t n_head, int64_t n_head_kv,
                      int64_t d, int64_t n_kv, float scale, float* scratch, cudaStream_t stream) {
    LOWBIT_CHECK(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0, ValueError, "attention_decode: ", n_head,
                 " query heads are not a multiple of ", n_head_kv, " kv heads");
    LOWBIT_CHECK(d > 0 && d <= kMaxD, ValueError, "attention_decode: head dim ", d, " not in [1, ", kMaxD, "]");
    LOWBIT_CHECK(n_kv > 0, ValueError, "attention_decode: empty cache");
    const unsigned splits = ceil_div(n_kv, kSplit);
    attn_split_kernel<<<dim3(unsigned(n_head), splits), kThreads, 0, stream>>>(q, k, v, scratch, n_head,
                                                                             n_head / n_head_kv, d, n_kv, scale);
    LOWBIT_CUDA_LAUNCHED("attention_split");
    attn_combine_kernel<<<unsigned(n_head), kThreads, 0, stream>>>(scratch, out, splits, d);
    LOWBIT_CUDA_LAUNCHED("attention_combine");
}

}  // namespace lowbit::cuda

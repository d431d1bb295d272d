// attention.cu: KV-cache write (f32 -> f16 or q8_0 rows, cuda/kv_hd.h) and causal attention over
// the cache, split over it.
//
// Query token t (of n_tok) sits at position pos[t] (read on the device, so that a captured decode
// step replays at new positions; the grid is sized by the host's bound max_pos) and sees the cache
// rows of positions
// max(0, p - window + 1) .. p (window 0: from 0); the cache holds position j at row j. Block
// (h, s, t) takes the visible positions [s * kSplit, (s+1) * kSplit) of query head h: scores
// scale * q.k_j (one warp per position, lanes over d, shuffle sum; softcap c: c tanh(score / c))
// into shared memory, their max m and p_j = e^(score_j - m), l = sum p_j, o = sum p_j v_j; it writes
// (m, l, o[0..d)) to scratch (m = -inf, l = 0, o = 0 past the token's keys). A second kernel
// combines the splits of each (token, head): out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
// Decode is n_tok = 1; prefill runs every token's splits in one launch (no tensor cores: the
// flash-attention prefill of issue 19 is still to come).
#include <algorithm>

#include "cuda/device_plan.h"
#include "cuda/kv_hd.h"
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

constexpr int kSplit = int(kAttnSplit);   // cache positions per block (cuda/device_plan.h)
constexpr int kMaxD = 512;      // head dims held in shared memory
constexpr int kThreads = 128;

__global__ void kv_write_kernel(const float* __restrict__ src, __half* __restrict__ cache, int64_t total,
                                int64_t width, const int32_t* __restrict__ pos) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < total) cache[int64_t(pos[i / width]) * width + i % width] = __float2half_rn(src[i]);
}

// A warp stores one q8_0 block: lane j's value x quantized with the block's scale (KvQ8, the CPU
// cache's rule); lane 0 writes the fp16 scale. Every lane of the warp must take part.
__device__ __forceinline__ void store_q8_block(float x, int lane, uint8_t* blk) {
    const float amax = warp_max(fabsf(x));
    uint16_t d_bits;
    float id;
    KvQ8::scale(amax, d_bits, id);
    blk[2 + lane] = uint8_t(KvQ8::code(x, id));
    if (lane == 0) {
        blk[0] = uint8_t(d_bits & 0xFF);
        blk[1] = uint8_t(d_bits >> 8);
    }
}

// One warp per q8_0 block of 32 values (block b of token t's row of `width`).
__global__ void kv_write_q8_kernel(const float* __restrict__ src, uint8_t* __restrict__ cache, int64_t blocks,
                                   int64_t width, const int32_t* __restrict__ pos) {
    const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (b >= blocks) return;   // whole warps leave together: blocks are warp-aligned
    const int64_t per_row = width / 32, t = b / per_row, rb = b % per_row;
    store_q8_block(src[t * width + rb * 32 + lane], lane,
                   cache + (int64_t(pos[t]) * per_row + rb) * KvQ8::kBlock);
}

// Block (i, g): kv head g's key row of position src0 + i, decoded, rotated by cos_sin (n_rot / 2
// pairs: (j, j + n_rot/2) for NeoX, else (2j, 2j + 1); the rest of the row as it is: cpu::rope's
// arithmetic) and re-encoded into position dst0 + i's row, as KVCache::shift does on the CPU.
template <typename Kv>
__global__ void kv_rotate_move_kernel(uint8_t* __restrict__ cache, int64_t n_kv_head, int64_t d, int64_t src0,
                                      int64_t dst0, const float* __restrict__ cos_sin, int64_t n_rot, bool neox) {
    __shared__ float row[kMaxD];
    const int64_t i = blockIdx.x, g = blockIdx.y, rb = Kv::row_bytes(d);
    const uint8_t* src = cache + ((src0 + i) * n_kv_head + g) * rb;
    uint8_t* dst = cache + ((dst0 + i) * n_kv_head + g) * rb;
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) row[e] = Kv::at(src, e);
    __syncthreads();
    const int64_t half = n_rot / 2;
    for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
        const int64_t a = neox ? j : 2 * j, b = neox ? j + half : 2 * j + 1;
        const float c = cos_sin[2 * j], s = cos_sin[2 * j + 1], x0 = row[a], x1 = row[b];
        row[a] = x0 * c - x1 * s;
        row[b] = x0 * s + x1 * c;
    }
    __syncthreads();
    if (Kv::kFormat == KvFormat::F16) {
        for (int64_t e = threadIdx.x; e < d; e += blockDim.x)
            reinterpret_cast<__half*>(dst)[e] = __float2half_rn(row[e]);
    } else {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        for (int64_t blk = warp; blk < d / 32; blk += blockDim.x / 32)
            store_q8_block(row[blk * 32 + lane], lane, dst + blk * KvQ8::kBlock);
    }
}

template <typename Kv>
__global__ void attn_split_kernel(const float* __restrict__ q, const uint8_t* __restrict__ k,
                                  const uint8_t* __restrict__ v, float* __restrict__ partial, int64_t n_head,
                                  int64_t group, int64_t d, const int32_t* __restrict__ positions, int64_t window,
                                  float scale, float softcap) {
    __shared__ float qs[kMaxD];
    __shared__ float p[kSplit];
    __shared__ float red[kThreads / 32];
    const int64_t h = blockIdx.x, s = blockIdx.y, t = blockIdx.z;
    const int64_t pos = positions[t], first = window > 0 ? max(int64_t(0), pos - window + 1) : 0;
    const int64_t j0 = first + s * kSplit, nj = min(int64_t(kSplit), pos + 1 - j0);   // nj <= 0: no keys
    const int64_t n_kv_head = n_head / group, g = h / group, row = Kv::row_bytes(d);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* out = partial + ((t * n_head + h) * gridDim.y + s) * (d + 2);
    if (nj <= 0) {   // this split lies past the token's last key
        for (int64_t e = threadIdx.x; e < d; e += blockDim.x) out[2 + e] = 0.0f;
        if (threadIdx.x == 0) {
            out[0] = -INFINITY;
            out[1] = 0.0f;
        }
        return;
    }
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) qs[e] = q[(t * n_head + h) * d + e];
    __syncthreads();
    for (int64_t j = warp; j < nj; j += kThreads / 32) {
        const uint8_t* kr = k + ((j0 + j) * n_kv_head + g) * row;
        float dot = 0.0f;
        for (int64_t e = lane; e < d; e += 32) dot += qs[e] * Kv::at(kr, e);
        dot = warp_sum(dot);
        float sc = scale * dot;
        if (softcap > 0.0f) sc = softcap * tanhf(sc / softcap);
        if (lane == 0) p[j] = sc;
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
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
        float o = 0.0f;
        for (int64_t j = 0; j < nj; ++j) o += p[j] * Kv::at(v + ((j0 + j) * n_kv_head + g) * row, e);
        out[2 + e] = o;
    }
    if (threadIdx.x == 0) {
        out[0] = m;
        out[1] = l;
    }
}

// Block (h, t): out row (t, h) from the splits of query head h of token t (split 0 always has keys).
__global__ void attn_combine_kernel(const float* __restrict__ partial, float* __restrict__ out, int64_t splits,
                                    int64_t n_head, int64_t d) {
    const int64_t h = blockIdx.x, t = blockIdx.y;
    const float* ph = partial + (t * n_head + h) * splits * (d + 2);
    float mx = -INFINITY;
    for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, ph[s * (d + 2)]);
    float l = 0.0f;
    for (int64_t s = 0; s < splits; ++s) l += expf(ph[s * (d + 2)] - mx) * ph[s * (d + 2) + 1];
    for (int64_t e = threadIdx.x; e < d; e += blockDim.x) {
        float o = 0.0f;
        for (int64_t s = 0; s < splits; ++s) o += expf(ph[s * (d + 2)] - mx) * ph[s * (d + 2) + 2 + e];
        out[(t * n_head + h) * d + e] = o / l;
    }
}

}  // namespace

void kv_write(KvFormat format, const float* src, void* cache, int64_t n_tok, int64_t width, const int32_t* pos,
              cudaStream_t stream) {
    LOWBIT_CHECK(n_tok > 0 && width > 0 && pos != nullptr && (format == KvFormat::F16 || width % 32 == 0), ValueError,
                 "kv_write: bad shape (", n_tok, ", ", width, ")");
    if (format == KvFormat::F16) {
        const int64_t total = n_tok * width;
        kv_write_kernel<<<ceil_div(total, 256), 256, 0, stream>>>(src, static_cast<__half*>(cache), total, width, pos);
    } else {
        const int64_t blocks = n_tok * width / 32;
        kv_write_q8_kernel<<<ceil_div(blocks * 32, 256), 256, 0, stream>>>(src, static_cast<uint8_t*>(cache), blocks,
                                                                           width, pos);
    }
    LOWBIT_CUDA_LAUNCHED("kv_write");
}

void kv_move(KvFormat format, void* cache, int64_t n_kv_head, int64_t d, int64_t src0, int64_t dst0, int64_t count,
             const float* cos_sin, int64_t n_rot, bool neox, cudaStream_t stream) {
    LOWBIT_CHECK(count >= 0 && dst0 >= 0 && dst0 < src0 && d > 0 && d <= kMaxD && n_kv_head > 0 &&
                 (format == KvFormat::F16 || d % 32 == 0) && n_rot >= 0 && n_rot <= d && n_rot % 2 == 0, ValueError,
                 "kv_move: bad rows (", count, " from ", src0, " to ", dst0, ", ", n_kv_head, " x ", d, ", n_rot ", n_rot,
                 ")");
    auto* base = static_cast<uint8_t*>(cache);
    const int64_t pos_bytes = n_kv_head * kv_row_bytes(format, d), step = src0 - dst0;
    // In launches of at most `step` positions, in order: each reads rows no launch before it wrote
    // and writes rows every launch before it has read (the rows move down).
    for (int64_t i0 = 0; i0 < count; i0 += step) {
        const int64_t n = std::min(step, count - i0);
        if (!cos_sin) {
            LOWBIT_CUDA_CHECK(cudaMemcpyAsync(base + (dst0 + i0) * pos_bytes, base + (src0 + i0) * pos_bytes,
                                              size_t(n * pos_bytes), cudaMemcpyDeviceToDevice, stream));
            continue;
        }
        const dim3 grid{unsigned(n), unsigned(n_kv_head), 1u};
        if (format == KvFormat::F16)
            kv_rotate_move_kernel<KvF16><<<grid, kThreads, 0, stream>>>(base, n_kv_head, d, src0 + i0, dst0 + i0,
                                                                         cos_sin, n_rot, neox);
        else
            kv_rotate_move_kernel<KvQ8><<<grid, kThreads, 0, stream>>>(base, n_kv_head, d, src0 + i0, dst0 + i0,
                                                                        cos_sin, n_rot, neox);
        LOWBIT_CUDA_LAUNCHED("kv_move");
    }
}

int64_t attention_splits(int64_t max_pos, int64_t window) {
    int64_t widest = max_pos + 1;
    if (window > 0) widest = std::min(widest, window);
    return int64_t(ceil_div(widest, kSplit));
}

void attention(KvFormat format, const float* q, const void* k, const void* v, float* out, int64_t n_head,
               int64_t n_head_kv, int64_t d, int64_t n_tok, const int32_t* pos, int64_t max_pos, int64_t window,
               float scale, float softcap, float* scratch, cudaStream_t stream) {
    LOWBIT_CHECK(n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0, ValueError, "attention: ", n_head,
                 " query heads are not a multiple of ", n_head_kv, " kv heads");
    LOWBIT_CHECK(d > 0 && d <= kMaxD && (format == KvFormat::F16 || d % 32 == 0), ValueError, "attention: head dim ",
                 d, " not in [1, ", kMaxD, "]", format == KvFormat::F16 ? "" : " or not a multiple of 32 (q8_0 cache)");
    LOWBIT_CHECK(n_tok > 0 && n_tok <= 65535 && pos != nullptr && max_pos >= 0 && window >= 0, ValueError,
                 "attention: bad query span (", n_tok, " tokens, positions up to ", max_pos, ", window ", window, ")");
    const int64_t splits = attention_splits(max_pos, window);
    LOWBIT_CHECK(splits <= 65535, ValueError, "attention: ", max_pos + 1, " positions exceed the kernel's grid");
    const dim3 grid{unsigned(n_head), unsigned(splits), unsigned(n_tok)};
    const auto* kb = static_cast<const uint8_t*>(k);
    const auto* vb = static_cast<const uint8_t*>(v);
    if (format == KvFormat::F16)
        attn_split_kernel<KvF16><<<grid, kThreads, 0, stream>>>(q, kb, vb, scratch, n_head, n_head / n_head_kv, d, pos,
                                                               window, scale, softcap);
    else
        attn_split_kernel<KvQ8><<<grid, kThreads, 0, stream>>>(q, kb, vb, scratch, n_head, n_head / n_head_kv, d, pos,
                                                              window, scale, softcap);
    LOWBIT_CUDA_LAUNCHED("attention_split");
    attn_combine_kernel<<<dim3(unsigned(n_head), unsigned(n_tok)), kThreads, 0, stream>>>(scratch, out, splits,
                                                                                        n_head, d);
    LOWBIT_CUDA_LAUNCHED("attention_combine");
}

}  // namespace lowbit::cuda

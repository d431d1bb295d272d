// mmvq.cu: decode mat-vec with fused dequantization (llama.cpp's mmvq idea).
//
// One warp per weight row, kWarps rows per block. The warp walks its row in rounds: it copies the
// bytes of as many whole blocks as fit in kTileBytes - 16 (4 KiB tile) into its shared memory with 16-byte
// loads (uint4), coalesced across the lanes, from the 16-byte aligned address at or below the
// round's first byte (so every weight byte is read from memory once; a round re-reads at most
// the 15 bytes its predecessor's last vector already held, from L1/L2). Then lane l takes the
// round's 32-weight chunks l, l+32, ... and adds Fmt<T>::dot of each against its block_q8a (float
// formats: dotf against x). The lanes' partial sums meet with shuffles; lane 0 writes y[row].
// The weight allocation must extend >= 15 bytes past the last row (DeviceBuffer pads 16).
#include "cuda/dispatch.cuh"
#include "cuda/ops.cuh"

namespace lowbit::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kTileBytes = 4096;   // per warp: >= 31 chunks per round for every format

template <class F>
__global__ void __launch_bounds__(32 * kWarps) mmvq_kernel(const uint8_t* __restrict__ w, int64_t rows,
                                                           int64_t row_bytes, int blocks_per_row,
                                                           const block_q8a* __restrict__ act,
                                                           const float* __restrict__ xf, float* __restrict__ y,
                                                           GridTables t) {
    __shared__ uint4 tiles[kWarps][kTileBytes / 16];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t row = int64_t(blockIdx.x) * kWarps + warp;
    if (row >= rows) return;   // whole warps leave together: no block-wide barrier below
    constexpr int kRoundBlocks = (kTileBytes - 16) / F::kBytes;
    const uint8_t* row_ptr = w + row * row_bytes;
    const uint8_t* tile = reinterpret_cast<const uint8_t*>(tiles[warp]);
    float acc = 0.0f;
    for (int b0 = 0; b0 < blocks_per_row; b0 += kRoundBlocks) {
        const int nb = min(kRoundBlocks, blocks_per_row - b0);
        const uint8_t* start = row_ptr + int64_t(b0) * F::kBytes;
        const uint8_t* aligned = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(start) & ~uintptr_t(15));
        const int head = int(start - aligned);
        const int nvec = (head + nb * F::kBytes + 15) / 16;
        const uint4* src = reinterpret_cast<const uint4*>(aligned);
        for (int i = lane; i < nvec; i += 32) tiles[warp][i] = __ldg(src + i);
        __syncwarp();
        const int chunks = nb * F::kChunks;
        for (int k = lane; k < chunks; k += 32) {
            const int bi = k / F::kChunks, c = k % F::kChunks;
            const uint8_t* blk = tile + head + bi * F::kBytes;
            const int64_t chunk = int64_t(b0 + bi) * F::kChunks + c;
            if constexpr (F::kFloatAct) {
                acc += F::dotf(blk, c, xf + chunk * 32);
            } else {
                const block_q8a a = act[chunk];
                acc += F::dot(blk, c, a, t);
            }
        }
        __syncwarp();   // the tile is rewritten by the next round
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

}  // namespace

void matvec(const void* w, GGMLType type, int64_t rows, int64_t cols, const float* x, block_q8a* act_scratch, float* y,
            cudaStream_t stream) {
    const int64_t row_bytes = device_row_bytes(type, cols);
    LOWBIT_CHECK(rows > 0, ValueError, "matvec: rows must be positive, got ", rows);
    const GridTables& t = device_grid_tables();
    dispatch_format(type, "matvec", [&](auto f) {
        using F = decltype(f);
        if constexpr (!F::kFloatAct) quantize_act(x, act_scratch, 1, cols, stream);
        mmvq_kernel<F><<<ceil_div(rows, kWarps), 32 * kWarps, 0, stream>>>(
            static_cast<const uint8_t*>(w), rows, row_bytes, int(cols / F::kElems), act_scratch, x, y, t);
    });
    LOWBIT_CUDA_LAUNCHED("matvec");
}

}  // namespace lowbit::cuda

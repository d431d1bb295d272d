// dequantize.cu: weights -> f32 / f16 with Fmt<T>::decode (bit for bit the CPU dequantizer
// in f32; f16 output rounds that to nearest even). One thread per 32-weight chunk.
#include "cuda/dispatch.cuh"
#include "cuda/ops.cuh"

namespace lowbit::cuda {

bool has_format(GGMLType type) {
    switch (type) {
#define LOWBIT_HAS_CASE(T) case GGMLType::T: return true;
        LOWBIT_CUDA_FORMATS(LOWBIT_HAS_CASE)
#undef LOWBIT_HAS_CASE
        default: return false;
    }
}

int64_t device_row_bytes(GGMLType type, int64_t cols) {
    int64_t bytes = 0;
    dispatch_format(type, "device_row_bytes", [&](auto f) {
        using F = decltype(f);
        LOWBIT_CHECK(cols > 0 && cols % F::kElems == 0, ValueError, "a row of ", cols, " weights is not a positive ",
                     "multiple of the ", F::kElems, "-weight block of GGML type ", uint32_t(type));
        bytes = cols / F::kElems * F::kBytes;
    });
    return bytes;
}

namespace {

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

template <class F, typename Out>
__global__ void dequantize_kernel(const uint8_t* __restrict__ w, int64_t chunks_per_row, int64_t total_chunks,
                                  int64_t row_bytes, Out* __restrict__ out, GridTables t) {
    const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k >= total_chunks) return;
    const int64_t r = k / chunks_per_row, kc = k % chunks_per_row;
    const uint8_t* blk = w + r * row_bytes + (kc / F::kChunks) * F::kBytes;
    float y[32];
    F::decode(blk, int(kc % F::kChunks), y, t);
    Out* o = out + r * chunks_per_row * 32 + kc * 32;
#pragma unroll
    for (int j = 0; j < 32; ++j) store(o + j, y[j]);
}

template <typename Out>
void dequantize_any(const void* w, GGMLType type, int64_t rows, int64_t cols, Out* out, cudaStream_t stream) {
    const int64_t row_bytes = device_row_bytes(type, cols);
    const GridTables& t = device_grid_tables();
    dispatch_format(type, "dequantize", [&](auto f) {
        using F = decltype(f);
        const int64_t per_row = cols / 32, total = rows * per_row;
        dequantize_kernel<F, Out><<<ceil_div(total, 128), 128, 0, stream>>>(static_cast<const uint8_t*>(w), per_row,
                                                                           total, row_bytes, out, t);
    });
    LOWBIT_CUDA_LAUNCHED("dequantize");
}

}  // namespace

void dequantize(const void* w, GGMLType type, int64_t rows, int64_t cols, float* out, cudaStream_t stream) {
    dequantize_any(w, type, rows, cols, out, stream);
}
void dequantize(const void* w, GGMLType type, int64_t rows, int64_t cols, __half* out, cudaStream_t stream) {
    dequantize_any(w, type, rows, cols, out, stream);
}

}  // namespace lowbit::cuda

// kv_hd.h: the device KV cache's row formats as __host__ __device__ arithmetic, shared by the
// kernels (attention.cu) and the host check (host_check.cpp), which holds them to the CPU's cache
// (model/kv_cache.h) in every build: an f16 row is head_dim halves (round to nearest even); a
// q8_0 row is head_dim / 32 blocks of quant/reference.h's quantize_row_q8_0 (fp16 d = amax / 127,
// codes round(x / d) half away from zero, with the reciprocal of the float d).
//
// Layout: position p, kv head g at byte (p * n_head_kv + g) * Kv::row_bytes(head_dim) of a
// layer's K (or V) rows, as the CPU's full-attention layers hold them.
#pragma once
#include <cmath>
#include <cstdint>

#include "cuda/quant_hd.h"

namespace lowbit::cuda {

enum class KvFormat { F16, Q8_0 };

LOWBIT_HD uint16_t f2h_bits(float x) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(x));
#else
    return fp32_to_fp16(x);
#endif
}

struct KvF16 {
    static constexpr KvFormat kFormat = KvFormat::F16;
    LOWBIT_HD static int64_t row_bytes(int64_t d) { return 2 * d; }
    LOWBIT_HD static float at(const uint8_t* row, int64_t e) {
#if defined(__CUDA_ARCH__)
        return __half2float(reinterpret_cast<const __half*>(row)[e]);
#else
        return h2f(ld16(row + 2 * e));
#endif
    }
};

struct KvQ8 {
    static constexpr KvFormat kFormat = KvFormat::Q8_0;
    static constexpr int64_t kBlock = 34;   // fp16 d, then 32 int8 codes
    LOWBIT_HD static int64_t row_bytes(int64_t d) { return d / 32 * kBlock; }
    LOWBIT_HD static float at(const uint8_t* row, int64_t e) {   // Fmt<Q8_0>::decode of one value
        const uint8_t* b = row + (e / 32) * kBlock;
        return float(int8_t(b[2 + e % 32])) * h2f(ld16(b));
    }
    // A block's scale from the max |x| of its 32 values: the stored fp16 bits and the reciprocal
    // of the float scale that the codes use.
    LOWBIT_HD static void scale(float amax, uint16_t& d_bits, float& id) {
        const float d = amax / 127;
        d_bits = f2h_bits(d);
        id = d != 0.0f ? 1.0f / d : 0.0f;
    }
    LOWBIT_HD static int8_t code(float x, float id) { return int8_t(roundf(x * id)); }
    // One block of 32 values, serially (the device writes one per warp, a lane per value).
    LOWBIT_HD static void quantize_block(const float* x, uint8_t* b) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = fmaxf(amax, fabsf(x[j]));
        uint16_t d_bits;
        float id;
        scale(amax, d_bits, id);
        b[0] = uint8_t(d_bits & 0xFF);
        b[1] = uint8_t(d_bits >> 8);
        for (int j = 0; j < 32; ++j) b[2 + j] = uint8_t(code(x[j], id));
    }
};

LOWBIT_HD int64_t kv_row_bytes(KvFormat f, int64_t d) {
    return f == KvFormat::F16 ? KvF16::row_bytes(d) : KvQ8::row_bytes(d);
}

}  // namespace lowbit::cuda

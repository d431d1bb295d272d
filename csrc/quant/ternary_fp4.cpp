// ternary_fp4.cpp: quantizers of TQ1_0 / TQ2_0 (ternary, one fp16 scale per 256) and MXFP4 /
// NVFP4 (FP4 E2M1 codes with power-of-two / E4M3 scales). llama.cpp's model quantizer uses the
// plain *_ref algorithms for all four and ignores an imatrix; so do these (uses_imatrix false).
// Same float operations as ggml: amax scale, lroundf (half away from zero) of x / amax for the
// trits; the FP4 code is the first of the 16 grid values with the smallest |value * d - x|.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>

#include "quant/iq_common.h"
#include "quant/reference.h"

namespace lowbit {

namespace {

// Trit of x at inverse scale id: -1, 0, 1 -> 0, 1, 2.
inline int trit(float x, float id) { return int(std::lround(x * id)) + 1; }

float amax_of(const float* x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
    return amax;
}

// Five (or four, then shifted up one) base-3 digits, first digit most significant, stored as
// ceil(v * 256 / 243) so that a multiply by 3^k moves digit k to the byte's top (tq1_digit).
inline uint8_t pack_trits(int v) { return uint8_t((uint16_t(uint8_t(v)) * 256 + (243 - 1)) / 243); }

int best_index_fp4(float x, float d) {
    int best = 0;
    float best_err = std::fabs(float(kValuesMxfp4[0]) * d - x);
    for (int i = 1; i < 16; ++i) {
        const float err = std::fabs(float(kValuesMxfp4[i]) * d - x);
        if (err < best_err) {
            best = i;
            best_err = err;
        }
    }
    return best;
}

// Unsigned E4M3 code of x > 0 (the mantissa rounded half up on bit 19; 0x7E = 448 at most).
uint8_t fp32_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    x = std::min(x, 448.0f);
    const uint32_t bits = fp32_to_bits(x);
    int exp = int((bits >> 23) & 0xFF) - 127 + 7;
    if (exp <= 0) {   // subnormal: man * 2^-9
        const int man = std::min(7, int(x * 512.0f + 0.5f));
        return man < 1 ? 0 : uint8_t(man);
    }
    if (exp >= 15) return 0x7E;
    int man = int((bits >> 20) & 0x7) + int((bits >> 19) & 1);
    if (man > 7) {
        man = 0;
        if (++exp >= 15) return 0x7E;
    }
    return uint8_t((exp << 3) | man);
}

}  // namespace

void quantize_row_tq1_0(const float* x, void* out, int64_t n, const float*) {
    auto* y = static_cast<block_tq1_0*>(out);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        const float d = amax_of(x, QK_K);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int m = 0; m < 32; ++m) {   // weights 32k + m, k = 0..4
            int v = 0;
            for (int k = 0; k < 5; ++k) v = v * 3 + trit(x[m + 32 * k], id);
            y[i].qs[m] = pack_trits(v);
        }
        for (int m = 0; m < 16; ++m) {   // weights 160 + 16k + m
            int v = 0;
            for (int k = 0; k < 5; ++k) v = v * 3 + trit(x[160 + m + 16 * k], id);
            y[i].qs[32 + m] = pack_trits(v);
        }
        for (int m = 0; m < 4; ++m) {    // weights 240 + 4k + m, k = 0..3, digit 4 zero
            int v = 0;
            for (int k = 0; k < 4; ++k) v = v * 3 + trit(x[240 + m + 4 * k], id);
            y[i].qh[m] = pack_trits(v * 3);
        }
    }
}

void quantize_row_tq2_0(const float* x, void* out, int64_t n, const float*) {
    auto* y = static_cast<block_tq2_0*>(out);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        const float d = amax_of(x, QK_K);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int c = 0; c < 2; ++c)
            for (int m = 0; m < 32; ++m) {
                int q = 0;
                for (int k = 0; k < 4; ++k) q |= (trit(x[128 * c + 32 * k + m], id) & 3) << (2 * k);
                y[i].qs[32 * c + m] = uint8_t(q);
            }
    }
}

void quantize_row_mxfp4(const float* x, void* out, int64_t n, const float*) {
    auto* y = static_cast<block_mxfp4*>(out);
    for (int64_t i = 0; i < n / QK_MXFP4; ++i, x += QK_MXFP4) {
        const float amax = amax_of(x, QK_MXFP4);
        // floor(log2(amax)) - 2 is the exponent that puts amax in the grid's top binade (6 = 1.5 * 4);
        // ggml converts through int, so a very small amax wraps the same way here.
        const uint8_t e = amax > 0.0f ? uint8_t(int(std::floor(std::log2(amax)) - 2 + 127)) : 0;
        const float d = e8m0_to_fp32_half(e);
        y[i].e = e;
        for (int j = 0; j < QK_MXFP4 / 2; ++j)
            y[i].qs[j] = uint8_t(best_index_fp4(x[j], d) | (best_index_fp4(x[j + QK_MXFP4 / 2], d) << 4));
    }
}

void quantize_row_nvfp4(const float* x, void* out, int64_t n, const float*) {
    auto* y = static_cast<block_nvfp4*>(out);
    for (int64_t i = 0; i < n / QK_NVFP4; ++i) {
        for (int s = 0; s < QK_NVFP4 / QK_NVFP4_SUB; ++s, x += QK_NVFP4_SUB) {
            const uint8_t ue = fp32_to_ue4m3(amax_of(x, QK_NVFP4_SUB) / 6.0f);   // 6: the largest E2M1 value
            y[i].d[s] = ue;
            const float d = ue4m3_to_fp32_half(ue);
            for (int j = 0; j < QK_NVFP4_SUB / 2; ++j)
                y[i].qs[8 * s + j] = uint8_t(best_index_fp4(x[j], d) | (best_index_fp4(x[j + 8], d) << 4));
        }
    }
}

}  // namespace lowbit

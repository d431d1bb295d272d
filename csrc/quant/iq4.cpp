// iq4.cpp: quantizers of IQ4_NL (blocks of 32, one fp16 scale) and IQ4_XS (super-blocks of 256,
// 6-bit sub-block scales), both on the non-linear grid kvalues_iq4nl.
//
// This is the search llama.cpp's model quantizer runs (quantize_iq4_nl / quantize_iq4_xs, ntry = 7)
// with or without an imatrix: per 32-weight block, weights are imatrix * sqrt(sigma2 + x^2) (or x^2
// without imatrix); the block scale starts at max / -127 (the grid's first value), and 15 candidate
// inverse scales (values[0] + itry) / max, itry = -7..7, are scored by weighted sumqx^2 / sumq2.
// (ggml's quantize_row_iq4_nl_ref, ntry = -1, is only used for tests and is not reproduced.)
#pragma GCC optimize("fp-contract=off")  // a fused multiply-add would change rounding

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "quant/blocks.h"
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

namespace {

constexpr int kNtry = 7;
constexpr int kBlock = 32;

// Index of the grid value nearest to x (ties to the larger value). The midpoint of two
// neighbouring levels is compared as x + x against their (exact, integer) sum.
inline int best_index_iq4(float x) {
    const float x2 = x + x;
    int idx = 0;
    for (int step = 8; step > 0; step >>= 1) {
        const int j = idx + step;
        if (x2 >= float(kvalues_iq4nl[j - 1] + kvalues_iq4nl[j])) idx = j;
    }
    return idx;
}

// Best scale of one 32-weight block; codes into L. Returns 0 (codes 0) for an all-zero block.
float search_block_scale(const float* xb, const float* weight, uint8_t* L) {
    float amax = 0, max = 0;
    for (int j = 0; j < kBlock; ++j) {
        const float ax = std::fabs(xb[j]);
        if (ax > amax) { amax = ax; max = xb[j]; }
    }
    if (amax < kGroupMaxEps) {
        std::memset(L, 0, kBlock);
        return 0;
    }
    float d = -max / kvalues_iq4nl[0];
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < kBlock; ++j) {
        const int l = best_index_iq4(id * xb[j]);
        L[j] = uint8_t(l);
        const float q = kvalues_iq4nl[l];
        sumqx += weight[j] * q * xb[j];
        sumq2 += weight[j] * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -kNtry; itry <= kNtry; ++itry) {
        id = (itry + kvalues_iq4nl[0]) / max;
        sumqx = sumq2 = 0;
        for (int j = 0; j < kBlock; ++j) {
            const float q = kvalues_iq4nl[best_index_iq4(id * xb[j])];
            sumqx += weight[j] * q * xb[j];
            sumq2 += weight[j] * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

// Per-block weights (see the file comment); sigma2 = 2 * mean(x^2) over the (super-)block.
void block_weights(const float* xb, const float* qw, float sigma2, float* weight) {
    for (int j = 0; j < kBlock; ++j) {
        weight[j] = qw ? qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
    }
}

float sigma2_of(const float* x, int n) {
    float sigma2 = 0;
    for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
    return sigma2 * (2.f / n);
}

}  // namespace

void quantize_row_iq4_nl(const float* x, void* out, int64_t n, const float* imatrix) {
    block_iq4_nl* y = static_cast<block_iq4_nl*>(out);
    uint8_t L[kBlock];
    float weight[kBlock];
    for (int64_t ib = 0; ib < n / QK4_NL; ++ib) {
        const float* xb = x + QK4_NL * ib;
        block_weights(xb, imatrix ? imatrix + QK4_NL * ib : nullptr, sigma2_of(xb, QK4_NL), weight);
        const float d = search_block_scale(xb, weight, L);
        y[ib].d = fp32_to_fp16(d);
        // re-round against the float scale (not the fp16 one), as ggml does
        const float id = d != 0 ? 1 / d : 0;
        for (int j = 0; j < kBlock; ++j) L[j] = uint8_t(best_index_iq4(id * xb[j]));
        pack_nibbles(L, y[ib].qs);
    }
}

void quantize_row_iq4_xs(const float* x, void* out, int64_t n, const float* imatrix) {
    block_iq4_xs* y = static_cast<block_iq4_xs*>(out);
    uint8_t L[QK_K];
    float weight[kBlock], scales[QK_K / kBlock];
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float* xs = x + QK_K * ibl;
        const float* qs_w = imatrix ? imatrix + QK_K * ibl : nullptr;
        const float sigma2 = sigma2_of(xs, QK_K);
        float max_scale = 0, amax_scale = 0;
        for (int ib = 0; ib < QK_K / kBlock; ++ib) {
            block_weights(xs + kBlock * ib, qs_w ? qs_w + kBlock * ib : nullptr, sigma2, weight);
            scales[ib] = search_block_scale(xs + kBlock * ib, weight, L + kBlock * ib);
            if (std::fabs(scales[ib]) > amax_scale) {
                amax_scale = std::fabs(scales[ib]);
                max_scale = scales[ib];
            }
        }
        // 6-bit signed sub-block scales against d = -max_scale / 32; codes re-rounded at d * l.
        const float d = -max_scale / 32;
        y[ibl].d = fp32_to_fp16(d);
        y[ibl].scales_h = 0;
        const float id = d != 0 ? 1 / d : 0.f;
        for (int ib = 0; ib < QK_K / kBlock; ++ib) {
            int l = std::max(-32, std::min(31, nearest_int(id * scales[ib])));
            const float dl = d * l;
            const float idl = dl != 0 ? 1 / dl : 0.f;
            for (int j = 0; j < kBlock; ++j) L[kBlock * ib + j] = uint8_t(best_index_iq4(idl * xs[kBlock * ib + j]));
            l += 32;
            if (ib % 2 == 0) y[ibl].scales_l[ib / 2] = uint8_t(l & 0xF);
            else y[ibl].scales_l[ib / 2] |= uint8_t((l & 0xF) << 4);
            y[ibl].scales_h |= uint16_t((l >> 4) << (2 * ib));
        }
        for (int ib = 0; ib < QK_K / kBlock; ++ib) pack_nibbles(L + kBlock * ib, y[ibl].qs + 16 * ib);
    }
}

}  // namespace lowbit

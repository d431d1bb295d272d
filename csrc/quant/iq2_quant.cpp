// iq2_quant.cpp: the IQ2_XXS, IQ2_XS and IQ2_S quantizers: the searches of llama.cpp's
// quantize_row_iq2_{xxs,xs,s}_impl, so that the bytes agree (the shared pieces in iq_search.h).
//
// Magnitudes are quantized as 2l + 1, l = 0..2, in 8-weight codebook points (kIq2xxsGrid 256 /
// kIq2xsGrid 512 / kIq2sGrid 1024 points); weights w = imatrix * sqrt(sigma2 + x^2).
//  - IQ2_XXS: 32-weight groups, sigma2 = mean(x^2) of the super-block, signs with parity (7 bits
//    per point); the trials scale the effective max of make_qp_quants(32, 4) (13 trials, step 0.1)
//    and every point is re-resolved at the winning scale. d = max group scale / 31 (no fudge);
//    each group: 4 index bytes, then 4 x 7 sign bits | 4-bit scale << 28.
//  - IQ2_XS: 16-weight groups, 19 trials of (5 + 0.1 is) / max, only the points off the codebook
//    re-resolved; qs = index (9 bits) | signs << 9; 4-bit scales, two per byte.
//  - IQ2_S: as IQ2_XS with plain sign bytes (no parity), sigma2 = 2 mean(x^2), without an imatrix
//    w = sigma2 / 4 + x^2; d stored * 0.9875 (ggml's fudge).
// IQ2_XXS and IQ2_XS need an imatrix (ggml asserts; quantize_rows refuses earlier with ValueError).
#pragma GCC optimize("fp-contract=off")   // a fused multiply-add would change rounding

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "quant/iq_search.h"
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

namespace {

constexpr int kMaxQ = 3;
constexpr IqGroupSearch kSearchXxs = {32, kMaxQ, 6, 0.1f, true, true, true};
constexpr IqGroupSearch kSearchXs = {16, kMaxQ, 9, 0.1f, true, false, false};
constexpr float kGroupMaxEpsIq2s = 1e-8f;

// The 4-bit code of a group scale under the super-block scale 1 / id: scale ~ d (2 l + 1).
int scale_code(float id, float scale) { return std::max(0, std::min(15, nearest_int(0.5f * (id * scale - 1)))); }

// 4-bit codes of the 16 IQ2_XS / IQ2_S groups' scales under super-block scale d, two per byte.
void pack_group_scales(const float* scales, float d, uint8_t* packed) {
    const float id = 1 / d;
    for (int ib = 0; ib < QK_K / 16; ib += 2)
        packed[ib / 2] = uint8_t(scale_code(id, scales[ib]) | scale_code(id, scales[ib + 1]) << 4);
}

}  // namespace

void quantize_row_iq2_xxs(const float* x, void* out, int64_t n, const float* imatrix) {
    LOWBIT_CHECK(imatrix, ValueError, "IQ2_XXS needs an importance matrix (imatrix)");
    const IqLattice& g = iq_lattice(GGMLType::IQ2_XXS);
    auto* y = static_cast<block_iq2_xxs*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float* xbl = x + QK_K * ibl;
        uint32_t q2[2 * (QK_K / 32)] = {};
        y[ibl].d = fp32_to_fp16(0.0f);
        const float sigma2 = iq_sum_squares(xbl, QK_K) / QK_K;
        float scales[QK_K / 32], max_scale = 0;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float* xb = xbl + 32 * ib;
            float weight[32], xval[32];
            iq_block_weights(xb, imatrix + QK_K * ibl + 32 * ib, sigma2, 32, weight);
            uint8_t signs[4];
            iq_strip_signs(xb, weight, 4, true, xval, signs);
            scales[ib] = 0;
            if (iq_max_of(xval, 32) < kGroupMaxEps) continue;
            uint8_t Lqp[32];
            const float qp_scale = make_qp_quants(32, kMaxQ + 1, xval, Lqp, weight);
            const float eff_max = qp_scale * kMaxQ;
            if (eff_max <= 0) continue;
            int index[4];
            float scale = iq_search_group(g, kSearchXxs, xval, weight, eff_max, qp_scale, index);
            if (scale < 0) {   // ggml's guard: the scale is stored unsigned
                scale = -scale;
                for (uint8_t& s : signs) s = uint8_t(~s & 127);
            }
            for (int k = 0; k < 4; ++k) {
                q2[2 * ib] |= uint32_t(index[k]) << (8 * k);
                q2[2 * ib + 1] |= uint32_t(signs[k]) << (7 * k);
            }
            scales[ib] = scale;
            max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) {
            std::memset(y[ibl].qs, 0, sizeof(y[ibl].qs));
            continue;
        }
        const float d = max_scale / 31;
        y[ibl].d = fp32_to_fp16(d);
        const float id = 1 / d;
        for (int ib = 0; ib < QK_K / 32; ++ib) q2[2 * ib + 1] |= uint32_t(scale_code(id, scales[ib])) << 28;
        std::memcpy(y[ibl].qs, q2, sizeof(q2));
    }
}

namespace {

// IQ2_XS and IQ2_S: the 16 groups' scales and codebook indices (signs into signs[2 * ib + k]);
// returns the largest scale. plain_signs: IQ2_S (8 sign bits, no parity).
float search_groups_16(const IqLattice& g, const float* xbl, const float* qw, bool plain_signs, float* scales,
                       int* index, uint8_t* signs) {
    const float sigma2 = plain_signs ? 2 * iq_sum_squares(xbl, QK_K) / QK_K : iq_sum_squares(xbl, QK_K) / QK_K;
    float max_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float* xb = xbl + 16 * ib;
        float weight[16], xval[16];
        if (qw || !plain_signs) iq_block_weights(xb, qw + 16 * ib, sigma2, 16, weight);
        else
            for (int i = 0; i < 16; ++i) weight[i] = 0.25f * sigma2 + xb[i] * xb[i];
        iq_strip_signs(xb, weight, 2, !plain_signs, xval, signs + 2 * ib);
        const float max = iq_max_of(xval, 16);
        scales[ib] = 0;
        if (max < (plain_signs ? kGroupMaxEpsIq2s : kGroupMaxEps)) {   // written as zeros
            index[2 * ib] = index[2 * ib + 1] = 0;
            signs[2 * ib] = signs[2 * ib + 1] = 0;
            continue;
        }
        float scale = iq_search_group(g, kSearchXs, xval, weight, max, max / (2 * kMaxQ - 1), index + 2 * ib);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; ++k) signs[2 * ib + k] = uint8_t(plain_signs ? ~signs[2 * ib + k] : ~signs[2 * ib + k] & 127);
        }
        scales[ib] = scale;
        max_scale = std::max(max_scale, scale);
    }
    return max_scale;
}

}  // namespace

void quantize_row_iq2_xs(const float* x, void* out, int64_t n, const float* imatrix) {
    LOWBIT_CHECK(imatrix, ValueError, "IQ2_XS needs an importance matrix (imatrix)");
    const IqLattice& g = iq_lattice(GGMLType::IQ2_XS);
    auto* y = static_cast<block_iq2_xs*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        std::memset(&y[ibl], 0, sizeof(block_iq2_xs));
        float scales[QK_K / 16];
        int index[QK_K / 8];
        uint8_t signs[QK_K / 8];
        const float max_scale =
            search_groups_16(g, x + QK_K * ibl, imatrix + QK_K * ibl, false, scales, index, signs);
        if (max_scale == 0) continue;
        const float d = max_scale / 31;
        y[ibl].d = fp32_to_fp16(d);
        for (int i = 0; i < QK_K / 8; ++i) y[ibl].qs[i] = uint16_t(index[i] | signs[i] << 9);
        pack_group_scales(scales, d, y[ibl].scales);
    }
}

void quantize_row_iq2_s(const float* x, void* out, int64_t n, const float* imatrix) {
    const IqLattice& g = iq_lattice(GGMLType::IQ2_S);
    auto* y = static_cast<block_iq2_s*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        std::memset(&y[ibl], 0, sizeof(block_iq2_s));
        float scales[QK_K / 16];
        int index[QK_K / 8];
        uint8_t signs[QK_K / 8];
        const float max_scale = search_groups_16(g, x + QK_K * ibl, imatrix ? imatrix + QK_K * ibl : nullptr, true,
                                                 scales, index, signs);
        for (int i = 0; i < QK_K / 8; ++i) {   // written even when every group is empty, as ggml does
            y[ibl].qs[i] = uint8_t(index[i] & 255);
            y[ibl].qh[i / 4] |= uint8_t((index[i] >> 8) << (2 * (i % 4)));
            y[ibl].qs[QK_K / 8 + i] = signs[i];
        }
        if (max_scale == 0) continue;
        const float d = max_scale / 31;
        y[ibl].d = fp32_to_fp16(d * 0.9875f);
        pack_group_scales(scales, d, y[ibl].scales);
    }
}

}  // namespace lowbit

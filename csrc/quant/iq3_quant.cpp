// iq3_quant.cpp: the IQ3_XXS and IQ3_S quantizers: the searches llama.cpp's model quantizer runs
// (quantize_iq3_xxs, quantize_iq3_s), with or without an imatrix, so the bytes agree.
//
// Per 32-weight group: weights w = imatrix * sqrt(sigma2 + x^2) (x^2 without one), sigma2 =
// 2 * mean(x^2) over the super-block. Signs come off first (|x|), in 8-weight points whose count
// of negatives must be even (the 8th sign bit is parity): an odd point flips its least important
// weight. Magnitudes are quantized as 2l + 1, l = 0..7, and must form codebook points (4 weights
// each, kIq3xxsGrid): 31 trial scales (15 + 0.2 is) / max; a point off the codebook takes the best
// of its nearest codebook neighbours (the two nearest distances, in squared lattice distance)
// under the sqrt-weights; the trial with the largest sumqx^2 / sumq2 wins; points still off the
// codebook are re-resolved at the final scale. The super-block scale d = max group scale / 31
// (stored * 1.0125, ggml's fudge), the 4-bit group scale s = round((scale / d - 1) / 2).
// IQ3_S differs: 512-point codebook (kIq3sGrid, neighbours at the three nearest distances), plain
// sign bits (no parity), 19 trial scales, every point re-resolved at the final scale when any is
// off the codebook, d stored * 1.033; and, as in ggml, a group with max |x| == 0 does not advance
// the qs / signs write position (the next group's codes land in its place).
#pragma GCC optimize("fp-contract=off")   // a fused multiply-add would change rounding

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "quant/iq_common.h"
#include "quant/iq_search.h"
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

namespace {

constexpr float kGroupMaxEpsIq3 = 1e-8f;
constexpr IqGroupSearch kSearchXxs = {32, 8, 15, 0.2f, true, false, false};
constexpr IqGroupSearch kSearchS = {32, 8, 9, 0.2f, false, true, false};

}  // namespace

void quantize_row_iq3_xxs(const float* x, void* out, int64_t n, const float* imatrix) {
    const IqLattice& g = iq_lattice(GGMLType::IQ3_XXS);
    auto* y = static_cast<block_iq3_xxs*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float* xbl = x + QK_K * ibl;
        uint8_t* qs = y[ibl].qs;
        std::memset(qs, 0, sizeof(y[ibl].qs));
        y[ibl].d = fp32_to_fp16(0.0f);
        const float sigma2 = 2 * iq_sum_squares(xbl, QK_K) / QK_K;
        float scales[QK_K / 32], max_scale = 0;
        uint32_t signs_word[QK_K / 32];
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float* xb = xbl + 32 * ib;
            float weight[32], xval[32];
            iq_block_weights(xb, imatrix ? imatrix + QK_K * ibl + 32 * ib : nullptr, sigma2, 32, weight);
            uint8_t signs[4];
            iq_strip_signs(xb, weight, 4, true, xval, signs);
            const float max = iq_max_of(xval, 32);
            if (max < kGroupMaxEpsIq3) {   // an empty group: scale, signs and indices 0
                scales[ib] = 0;
                signs_word[ib] = 0;
                continue;
            }
            int index[8];
            float scale = iq_search_group(g, kSearchXxs, xval, weight, max, max / 15, index);
            for (int k = 0; k < 8; ++k) qs[8 * ib + k] = uint8_t(index[k]);
            if (scale < 0) {   // ggml's guard: the scale is stored unsigned
                scale = -scale;
                for (uint8_t& s : signs) s = uint8_t(~s & 127);
            }
            signs_word[ib] = uint32_t(signs[0]) | uint32_t(signs[1]) << 7 | uint32_t(signs[2]) << 14 |
                             uint32_t(signs[3]) << 21;
            scales[ib] = scale;
            max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) {
            std::memset(qs, 0, sizeof(y[ibl].qs));
            continue;
        }
        const float d = max_scale / 31;
        y[ibl].d = fp32_to_fp16(d * 1.0125f);
        const float id = 1 / d;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const int l = std::max(0, std::min(15, nearest_int(0.5f * (id * scales[ib] - 1))));
            const uint32_t word = signs_word[ib] | uint32_t(l) << 28;
            std::memcpy(qs + QK_K / 4 + 4 * ib, &word, 4);
        }
    }
}

void quantize_row_iq3_s(const float* x, void* out, int64_t n, const float* imatrix) {
    const IqLattice& g = iq_lattice(GGMLType::IQ3_S);
    auto* y = static_cast<block_iq3_s*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float* xbl = x + QK_K * ibl;
        std::memset(&y[ibl], 0, sizeof(block_iq3_s));
        uint8_t* qs = y[ibl].qs;          // write positions: advance only past non-empty groups
        uint8_t* signs = y[ibl].signs;
        const float sigma2 = 2 * iq_sum_squares(xbl, QK_K) / QK_K;
        float scales[QK_K / 32], max_scale = 0;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float* xb = xbl + 32 * ib;
            float weight[32], xval[32];
            iq_block_weights(xb, imatrix ? imatrix + QK_K * ibl + 32 * ib : nullptr, sigma2, 32, weight);
            uint8_t block_signs[4];
            iq_strip_signs(xb, weight, 4, false, xval, block_signs);
            const float max = iq_max_of(xval, 32);
            if (max == 0) {
                scales[ib] = 0;
                continue;
            }
            int index[8];
            float scale = iq_search_group(g, kSearchS, xval, weight, max, max / 15, index);
            if (scale < 0) {
                scale = -scale;
                for (uint8_t& s : block_signs) s = uint8_t(~s);
            }
            for (int k = 0; k < 8; ++k) {
                qs[k] = uint8_t(index[k] & 255);
                y[ibl].qh[ib] |= uint8_t((index[k] >> 8) << k);
            }
            qs += 8;
            std::memcpy(signs, block_signs, 4);
            signs += 4;
            scales[ib] = scale;
            max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) continue;
        const float d = max_scale / 31;
        y[ibl].d = fp32_to_fp16(d * 1.033f);
        const float id = 1 / d;
        for (int ib = 0; ib < QK_K / 32; ib += 2) {
            const int l1 = std::max(0, std::min(15, nearest_int(0.5f * (id * scales[ib] - 1))));
            const int l2 = std::max(0, std::min(15, nearest_int(0.5f * (id * scales[ib + 1] - 1))));
            y[ibl].scales[ib / 2] = uint8_t(l1 | (l2 << 4));
        }
    }
}

}  // namespace lowbit

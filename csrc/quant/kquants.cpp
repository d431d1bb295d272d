// kquants.cpp: quantizers of Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (super-blocks of 256).
//
// Two paths per type, as in llama.cpp's quantize_q*_K():
//   - no imatrix: the *_ref algorithm (per sub-block scale search with weights derived from x,
//     then the sub-block scales quantized linearly against the largest one);
//   - imatrix:    the *_impl algorithm (weights = imatrix * sqrt(sigma2 + x^2), scales quantized
//     by make_qp_quants / make_qx_quants weighted by each sub-block's total weight).
// Both finish the same way: scales go to fp16, every weight is re-rounded against the stored
// (fp16-rounded) scales, then codes are packed. Layouts: see blocks.h.
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

// sigma2 of the imatrix paths: factor * mean(x^2) over the super-block.
float mean_square(const float* x, float factor) {
    float sum_x2 = 0;
    for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
    return factor * sum_x2 / QK_K;
}

// Importance weights of one sub-block: qw * sqrt(sigma2 + x^2).
void imatrix_weights(const float* qw, const float* x, int n, float sigma2, float* weights) {
    for (int l = 0; l < n; ++l) weights[l] = qw[l] * std::sqrt(sigma2 + x[l] * x[l]);
}

// ---- Q2_K ------------------------------------------------------------------------------------

// Re-round weights against the stored scales (fp16 d/dmin times 4-bit sub-scales) and pack.
void finish_q2_K(const float* x, block_q2_K& y, uint8_t* L) {
    const float dm = fp16_to_fp32(y.d), mm = fp16_to_fp32(y.dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = dm * (y.scales[j] & 0xF);
        if (d == 0) continue;
        const float m = mm * (y.scales[j] >> 4);
        for (int ii = 0; ii < 16; ++ii) {
            L[16 * j + ii] = uint8_t(std::max(0, std::min(3, nearest_int((x[16 * j + ii] + m) / d))));
        }
    }
    pack_2bit_k(L, y.qs);
}

void q2_K_ref_block(const float* x, block_q2_K& y) {
    uint8_t L[QK_K], Laux[16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
        scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
        max_scale = std::max(max_scale, scales[j]);
        max_min = std::max(max_min, mins[j]);
    }
    const float q4scale = 15.f;
    if (max_scale > 0) {
        const float iscale = q4scale / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) y.scales[j] = uint8_t(nearest_int(iscale * scales[j]));
        y.d = fp32_to_fp16(max_scale / q4scale);
    } else {
        std::memset(y.scales, 0, sizeof(y.scales));
        y.d = fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
        const float iscale = q4scale / max_min;
        for (int j = 0; j < QK_K / 16; ++j) y.scales[j] |= uint8_t(nearest_int(iscale * mins[j]) << 4);
        y.dmin = fp32_to_fp16(max_min / q4scale);
    } else {
        y.dmin = fp32_to_fp16(0.f);
    }
    finish_q2_K(x, y, L);
}

void q2_K_imatrix_block(const float* x, block_q2_K& y, const float* qw) {
    uint8_t L[QK_K], Laux[16], Ls[QK_K / 16], Lm[QK_K / 16];
    float weights[16], mins[QK_K / 16], scales[QK_K / 16], sw[QK_K / 16];
    const float sigma2 = mean_square(x, 1.0f);
    for (int j = 0; j < QK_K / 16; ++j) {
        imatrix_weights(qw + 16 * j, x + 16 * j, 16, sigma2, weights);
        sw[j] = 0;
        for (int l = 0; l < 16; ++l) sw[j] += weights[l];
        scales[j] = make_qkx3_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
    }
    const float dm = make_qp_quants(QK_K / 16, 15, scales, Ls, sw);
    const float mm = make_qp_quants(QK_K / 16, 15, mins, Lm, sw);
    y.d = fp32_to_fp16(dm);
    y.dmin = fp32_to_fp16(mm);
    for (int j = 0; j < QK_K / 16; ++j) y.scales[j] = uint8_t(Ls[j] | (Lm[j] << 4));
    finish_q2_K(x, y, L);
}

// ---- Q3_K ------------------------------------------------------------------------------------

// Re-round against the stored scales, split codes into hmask (bit 2) and 2-bit qs.
void finish_q3_K(const float* x, block_q3_K& y, int8_t* L) {
    int scales[16];
    unpack_q3_K_scales(y.scales, scales);
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = fp16_to_fp32(y.d) * scales[j];
        if (d == 0) continue;
        for (int ii = 0; ii < 16; ++ii) {
            const int l = std::max(-4, std::min(3, nearest_int(x[16 * j + ii] / d)));
            L[16 * j + ii] = int8_t(l + 4);
        }
    }
    std::memset(y.hmask, 0, sizeof(y.hmask));
    uint8_t low[QK_K];
    for (int j = 0; j < QK_K; ++j) {
        int l = L[j];
        if (l > 3) {
            y.hmask[j % 32] |= uint8_t(1 << (j / 32));
            l -= 4;
        }
        low[j] = uint8_t(l);
    }
    pack_2bit_k(low, y.qs);
}

void q3_K_ref_block(const float* x, block_q3_K& y) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
        scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
        const float scale = std::fabs(scales[j]);
        if (scale > amax) { amax = scale; max_scale = scales[j]; }
    }
    std::memset(y.scales, 0, sizeof(y.scales));
    if (max_scale != 0) {
        const float iscale = -32.f / max_scale;
        for (int j = 0; j < QK_K / 16; ++j) {
            // ggml stores nearest_int into an int8_t before clamping
            const int l = std::max(-32, std::min(31, int(int8_t(nearest_int(iscale * scales[j])))));
            pack_q3_K_scale(y.scales, j, l + 32);
        }
        y.d = fp32_to_fp16(1 / iscale);
    } else {
        y.d = fp32_to_fp16(0.f);
    }
    finish_q3_K(x, y, L);
}

void q3_K_imatrix_block(const float* x, block_q3_K& y, const float* qw) {
    int8_t L[QK_K], Ls[QK_K / 16];
    float scales[QK_K / 16], weights[16], sw[QK_K / 16];
    const float sigma2 = mean_square(x, 2.0f);
    for (int j = 0; j < QK_K / 16; ++j) {
        imatrix_weights(qw + 16 * j, x + 16 * j, 16, sigma2, weights);
        float sumw = 0;
        for (int l = 0; l < 16; ++l) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, 1, weights);
    }
    std::memset(y.scales, 0, sizeof(y.scales));
    const float d_block = make_qx_quants(QK_K / 16, 32, scales, Ls, 1, sw);
    for (int j = 0; j < QK_K / 16; ++j) pack_q3_K_scale(y.scales, j, Ls[j]);
    y.d = fp32_to_fp16(d_block);
    finish_q3_K(x, y, L);
}

// ---- Q4_K / Q5_K ---------------------------------------------------------------------------

// Reference weights of a 32-weight sub-block: rms(x) + |x|.
void rms_plus_abs_weights(const float* x, float* weights) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[l] * x[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[l]);
}

// Reference path of Q4_K (nmax 15) and Q5_K (nmax 31): sub-block search, then 6-bit scales and
// mins linear against the largest. Fills packed scales, d, dmin.
// L receives the search's codes (kept for sub-blocks whose stored scale is 0).
void k4_ref_scales(const float* x, int nmax, float rmin, float rdelta, int nstep, uint8_t* L,
                   uint8_t* packed, uint16_t* d_out, uint16_t* dmin_out) {
    uint8_t Laux[32], ls[8], lm[8];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        rms_plus_abs_weights(x + 32 * j, weights);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep, false);
        max_scale = std::max(max_scale, scales[j]);
        max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; ++j) {
        // ggml truncates nearest_int to uint8_t before the MIN(63, .)
        ls[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
        lm[j] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    }
    pack_scales_mins_k4(packed, ls, lm);
    *d_out = fp32_to_fp16(max_scale / 63.f);
    *dmin_out = fp32_to_fp16(max_min / 63.f);
}

// Imatrix path of Q4_K / Q5_K.
void k4_imatrix_scales(const float* x, int nmax, const float* qw, uint8_t* L, uint8_t* packed,
                       uint16_t* d_out, uint16_t* dmin_out) {
    uint8_t Laux[32], ls[8], lm[8];
    float weights[32], mins[8], scales[8], sw[8];
    const float sigma2 = mean_square(x, 2.0f);
    for (int j = 0; j < QK_K / 32; ++j) {
        imatrix_weights(qw + 32 * j, x + 32 * j, 32, sigma2, weights);
        float sumw = 0;
        for (int l = 0; l < 32; ++l) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = make_qkx3_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, false);
    }
    const float d_block = make_qp_quants(QK_K / 32, 63, scales, ls, sw);
    const float m_block = make_qp_quants(QK_K / 32, 63, mins, lm, sw);
    pack_scales_mins_k4(packed, ls, lm);
    *d_out = fp32_to_fp16(d_block);
    *dmin_out = fp32_to_fp16(m_block);
}

// Codes in [0, nmax] of all 256 weights against the stored scales (sub-blocks whose scale is 0
// keep the codes of the search, as in ggml).
void k4_requantize(const float* x, int nmax, const uint8_t* packed, uint16_t d16, uint16_t dmin16, uint8_t* L) {
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        unpack_scale_min_k4(j, packed, &sc, &m);
        const float d = fp16_to_fp32(d16) * sc;
        if (d == 0) continue;
        const float dm = fp16_to_fp32(dmin16) * m;
        for (int ii = 0; ii < 32; ++ii) {
            L[32 * j + ii] = uint8_t(std::max(0, std::min(nmax, nearest_int((x[32 * j + ii] + dm) / d))));
        }
    }
}

void pack_q4_K(const uint8_t* L, block_q4_K& y) {
    uint8_t* q = y.qs;
    for (int j = 0; j < QK_K; j += 64, q += 32) {
        for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
    }
}

void pack_q5_K(const uint8_t* L, block_q5_K& y) {
    std::memset(y.qh, 0, sizeof(y.qh));
    uint8_t* ql = y.qs;
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64, ql += 32) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; y.qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; y.qh[j] |= m2; }
            ql[j] = uint8_t(l1 | (l2 << 4));
        }
        m1 = uint8_t(m1 << 2);
        m2 = uint8_t(m2 << 2);
    }
}

// ---- Q6_K ------------------------------------------------------------------------------------

// Both paths: make_qx_quants per 16 (weights x^2 or the raw imatrix), int8 scales vs the largest.
void q6_K_block(const float* x, block_q6_K& y, const float* qw) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
        const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, qw ? qw + 16 * ib : nullptr);
        scales[ib] = scale;
        if (std::fabs(scale) > max_abs_scale) {
            max_abs_scale = std::fabs(scale);
            max_scale = scale;
        }
    }
    if (max_abs_scale < kGroupMaxEps) {
        std::memset(&y, 0, sizeof(block_q6_K));
        return;
    }
    const float iscale = -128.f / max_scale;
    y.d = fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) y.scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < QK_K / 16; ++j) {
        const float d = fp16_to_fp32(y.d) * y.scales[j];
        if (d == 0) continue;
        for (int ii = 0; ii < 16; ++ii) {
            const int l = std::max(-32, std::min(31, nearest_int(x[16 * j + ii] / d)));
            L[16 * j + ii] = int8_t(l + 32);
        }
    }
    uint8_t* ql = y.ql;
    uint8_t* qh = y.qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
            const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l] = uint8_t(q1 | (q3 << 4));
            ql[l + 32] = uint8_t(q2 | (q4 << 4));
            qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                            ((L[j + l + 96] >> 4) << 6));
        }
    }
}

}  // namespace

// ================================ row entry points ============================================

void quantize_row_q2_K(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q2_K* y = static_cast<block_q2_K*>(out);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        if (imatrix) q2_K_imatrix_block(x + QK_K * i, y[i], imatrix + QK_K * i);
        else q2_K_ref_block(x + QK_K * i, y[i]);
    }
}

void quantize_row_q3_K(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q3_K* y = static_cast<block_q3_K*>(out);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        if (imatrix) q3_K_imatrix_block(x + QK_K * i, y[i], imatrix + QK_K * i);
        else q3_K_ref_block(x + QK_K * i, y[i]);
    }
}

void quantize_row_q4_K(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q4_K* y = static_cast<block_q4_K*>(out);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float* xb = x + QK_K * i;
        if (imatrix) k4_imatrix_scales(xb, 15, imatrix + QK_K * i, L, y[i].scales, &y[i].d, &y[i].dmin);
        else k4_ref_scales(xb, 15, -1.f, 0.1f, 20, L, y[i].scales, &y[i].d, &y[i].dmin);
        k4_requantize(xb, 15, y[i].scales, y[i].d, y[i].dmin, L);
        pack_q4_K(L, y[i]);
    }
}

void quantize_row_q5_K(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q5_K* y = static_cast<block_q5_K*>(out);
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float* xb = x + QK_K * i;
        if (imatrix) k4_imatrix_scales(xb, 31, imatrix + QK_K * i, L, y[i].scales, &y[i].d, &y[i].dmin);
        else k4_ref_scales(xb, 31, -0.5f, 0.1f, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        k4_requantize(xb, 31, y[i].scales, y[i].d, y[i].dmin, L);
        pack_q5_K(L, y[i]);
    }
}

void quantize_row_q6_K(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q6_K* y = static_cast<block_q6_K*>(out);
    for (int64_t i = 0; i < n / QK_K; ++i) q6_K_block(x + QK_K * i, y[i], imatrix ? imatrix + QK_K * i : nullptr);
}

}  // namespace lowbit

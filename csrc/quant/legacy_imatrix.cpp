// legacy_imatrix.cpp: Q4_0, Q4_1, Q5_0 and Q5_1 quantizers used when an imatrix is given
// (llama.cpp's quantize_row_q*_impl). Per 32-weight block, weights are
// imatrix * sqrt(sigma2 + x^2) with sigma2 = mean(x^2) over the WHOLE row; symmetric types search
// with make_qx_quants, the ones with a min with make_qkx3_quants. Without imatrix the plain
// reference quantizers in reference.cpp run instead.
#pragma GCC optimize("fp-contract=off")  // a fused multiply-add would change rounding

#include <cmath>

#include "common.h"
#include "quant/blocks.h"
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

namespace {

constexpr int kBlock = 32;

float row_mean_square(const float* x, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    return sum_x2 / float(n);
}

void block_weights(const float* xb, const float* qw, float sigma2, float* weight) {
    for (int j = 0; j < kBlock; ++j) weight[j] = qw[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
}


}  // namespace

void quantize_row_q4_0_imatrix(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q4_0* y = static_cast<block_q4_0*>(out);
    const float sigma2 = row_mean_square(x, n);
    float weight[kBlock];
    int8_t L[kBlock];
    for (int64_t ib = 0; ib < n / kBlock; ++ib) {
        const float* xb = x + kBlock * ib;
        block_weights(xb, imatrix + kBlock * ib, sigma2, weight);
        y[ib].d = fp32_to_fp16(make_qx_quants(kBlock, 8, xb, L, 1, weight));
        pack_nibbles(reinterpret_cast<const uint8_t*>(L), y[ib].qs);
    }
}

void quantize_row_q5_0_imatrix(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q5_0* y = static_cast<block_q5_0*>(out);
    const float sigma2 = row_mean_square(x, n);
    float weight[kBlock];
    int8_t L[kBlock];
    for (int64_t ib = 0; ib < n / kBlock; ++ib) {
        const float* xb = x + kBlock * ib;
        block_weights(xb, imatrix + kBlock * ib, sigma2, weight);
        y[ib].d = fp32_to_fp16(make_qx_quants(kBlock, 16, xb, L, 1, weight));
        pack_5bit(reinterpret_cast<const uint8_t*>(L), y[ib].qs, y[ib].qh);
    }
}

void quantize_row_q4_1_imatrix(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q4_1* y = static_cast<block_q4_1*>(out);
    const float sigma2 = row_mean_square(x, n);
    float weight[kBlock];
    uint8_t L[kBlock], Laux[kBlock];
    for (int64_t ib = 0; ib < n / kBlock; ++ib) {
        const float* xb = x + kBlock * ib;
        block_weights(xb, imatrix + kBlock * ib, sigma2, weight);
        float min;
        const float d = make_qkx3_quants(kBlock, 15, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
        y[ib].d = fp32_to_fp16(d);
        y[ib].m = fp32_to_fp16(-min);
        pack_nibbles(L, y[ib].qs);
    }
}

void quantize_row_q5_1_imatrix(const float* x, void* out, int64_t n, const float* imatrix) {
    block_q5_1* y = static_cast<block_q5_1*>(out);
    const float sigma2 = row_mean_square(x, n);
    float weight[kBlock];
    uint8_t L[kBlock], Laux[kBlock];
    for (int64_t ib = 0; ib < n / kBlock; ++ib) {
        const float* xb = x + kBlock * ib;
        block_weights(xb, imatrix + kBlock * ib, sigma2, weight);
        float min;
        const float d = make_qkx3_quants(kBlock, 31, xb, weight, L, &min, Laux, -0.9f, 0.05f, 36, false);
        y[ib].d = fp32_to_fp16(d);
        y[ib].m = fp32_to_fp16(-min);
        pack_5bit(L, y[ib].qs, y[ib].qh);
    }
}

}  // namespace lowbit

// iq1_quant.cpp: the IQ1_S and IQ1_M quantizers: the searches of llama.cpp's
// quantize_row_iq1_{s,m}_impl, so that the bytes agree (the codebook lattice in iq_search.h).
//
// Each weight becomes one of three values (-1, 0, 1) + shift, shift = +-kIq1Delta per group
// (IQ1_S: 32-weight groups; IQ1_M: 16-weight groups, one shift per 8-weight half), times the group
// scale. With three values the weighted least-squares split is found exactly: sort the group's
// x ascending (stable: ties keep their order, as glibc's merge-sorting qsort does), and for
// every pair of boundaries i1 <= i2 (below i1 -> -1, below i2 -> 0, the rest -> +1) score
// sumqx^2 / sumq2 from prefix sums of w x and w, for each shift choice. The split's 8-weight
// points must be codebook points (kIq1sGrid, 2048): one off the codebook takes the neighbour
// (three nearest distances) nearest under w at the group scale, and the scale is refitted.
// IQ1_S: d = max scale / 15, stored * 1.125; qh = 3-bit index highs | 3-bit scale << 12 |
// (shift -1) << 15. IQ1_M: 3-bit scales in the four scale words, the shift signs in qh bits 3
// and 7, and the fp16 super-block scale refitted over all groups (stored * 1.1125) spread over
// the scale words' top nibbles. Weights w = imatrix * sqrt(sigma2 + x^2), sigma2 = 2 mean(x^2);
// IQ1_M without an imatrix: w = x^2 (IQ1_S needs one).
#pragma GCC optimize("fp-contract=off")   // a fused multiply-add would change rounding

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <numeric>

#include "common.h"
#include "quant/iq_search.h"
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

namespace {

constexpr float kGroupMaxEpsIq1s = 1e-12f;
constexpr float kGroupMaxEpsIq1m = 1e-7f;
constexpr float kShiftPlus[3] = {-1 + kIq1Delta, kIq1Delta, 1 + kIq1Delta};
constexpr float kShiftMinus[3] = {-1 - kIq1Delta, -kIq1Delta, 1 - kIq1Delta};

float sigma2_of(const float* xbl) { return 2 * iq_sum_squares(xbl, QK_K) / QK_K; }

float max_abs(const float* xb, int n) {
    float max = std::fabs(xb[0]);
    for (int i = 1; i < n; ++i) max = std::max(max, std::fabs(xb[i]));
    return max;
}

// Positions of xb[0..n) in ascending order of value, ties in position order.
void sort_positions(const float* xb, int n, int* order) {
    std::iota(order, order + n, 0);
    std::stable_sort(order, order + n, [xb](int a, int b) { return xb[a] < xb[b]; });
}

// Levels (0, 1, 2 for -1, 0, +1) of the split: sorted positions below i1, below i2, the rest.
void split_levels(const int* order, int n, int i1, int i2, int8_t* L) {
    for (int j = 0; j < n; ++j) L[order[j]] = int8_t(j < i1 ? 0 : j < i2 ? 1 : 2);
}

// The codebook neighbour of an off-codebook point u nearest to x / scale under w, with values xx.
int nearest_neighbour(const IqLattice& g, int u, const float* x, const float* w, float scale, const float* xx) {
    float best_d2 = FLT_MAX;
    int best = *g.neighbours_begin(u);   // ggml asserts a finite distance; an overflowed one keeps the first
    for (const uint16_t* k = g.neighbours_begin(u); k != g.neighbours_end(u); ++k) {
        const uint8_t* level = g.levels(*k);
        float d2 = 0;
        for (int i = 0; i < 8; ++i) {
            const float diff = scale * xx[level[i]] - x[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            best = *k;
        }
    }
    return best;
}

// Codebook indices of a group's points from split levels L; when any point was off the codebook
// the scale is refitted to the chosen points (xx[k]: the value table of point k).
float resolve_points(const IqLattice& g, const float* xb, const float* weight, int npoints, const int8_t* L,
                     const float* const* xx, float scale, int* index) {
    bool all_on_grid = true;
    for (int k = 0; k < npoints; ++k) {
        const int u = g.lattice_index(L + 8 * k);
        index[k] = g.codebook_index(u);
        if (index[k] < 0) {
            all_on_grid = false;
            index[k] = nearest_neighbour(g, u, xb + 8 * k, weight + 8 * k, scale, xx[k]);
        }
    }
    if (all_on_grid) return scale;
    float sumqx = 0, sumq2 = 0;
    for (int k = 0; k < npoints; ++k) {
        const uint8_t* level = g.levels(index[k]);
        for (int j = 0; j < 8; ++j) {
            const float w = weight[8 * k + j], q = xx[k][level[j]];
            sumqx += w * q * xb[8 * k + j];
            sumq2 += w * q * q;
        }
    }
    return sumqx > 0 && sumq2 > 0 ? sumqx / sumq2 : scale;
}

// IQ1_S's exact split of one 32-weight group: returns false when no split scores; else the
// levels, the scale and the shift (+1: kShiftPlus, -1: kShiftMinus).
bool best_split_iq1s(const float* xb, const float* weight, float max, int8_t* L, float* scale_out, int* shift_out) {
    constexpr int n = 32;
    int order[n];
    sort_positions(xb, n, order);
    float sumx[n + 1], sumw[n + 1];
    sumx[0] = sumw[0] = 0;
    for (int j = 0; j < n; ++j) {
        sumx[j + 1] = sumx[j] + weight[order[j]] * xb[order[j]];
        sumw[j + 1] = sumw[j] + weight[order[j]];
    }
    float best_score = -FLT_MAX, scale = max;
    int besti1 = -1, besti2 = -1, best_shift = 0;
    for (int i1 = 0; i1 <= n; ++i1) {
        for (int i2 = i1; i2 <= n; ++i2) {
            for (int shift : {1, -1}) {
                const float* v = shift == 1 ? kShiftPlus : kShiftMinus;
                const float sumqx = (sumx[i1] - sumx[0]) * v[0] + (sumx[i2] - sumx[i1]) * v[1] + (sumx[n] - sumx[i2]) * v[2];
                const float sumq2 = (sumw[i1] - sumw[0]) * v[0] * v[0] + (sumw[i2] - sumw[i1]) * v[1] * v[1] +
                                    (sumw[n] - sumw[i2]) * v[2] * v[2];
                if (sumq2 > 0 && sumqx * sumqx > best_score * sumq2) {
                    scale = sumqx / sumq2;
                    best_score = scale * sumqx;
                    besti1 = i1, besti2 = i2, best_shift = shift;
                }
            }
        }
    }
    if (besti1 < 0 || besti2 < 0 || best_shift == 0) return false;
    split_levels(order, n, besti1, besti2, L);
    if (scale < 0) {   // mirror: -1 <-> +1 and the shift's sign
        for (int j = 0; j < n; ++j) L[j] = int8_t(2 - L[j]);
        scale = -scale;
        best_shift = -best_shift;
    }
    *scale_out = scale;
    *shift_out = best_shift;
    return true;
}

// IQ1_M's exact split of one 16-weight group whose two 8-weight halves each pick a shift:
// combination k (0..3): bit 1 set = first half kShiftMinus, bit 0 set = second half kShiftMinus.
// The prefix sums are kept per half; since v[0] - v[1] = v[1] - v[2] = -1 for both shifts, a
// split's sumqx per half is T v[2] - S(i1) - S(i2) (ggml's arrangement, kept for its rounding).
bool best_split_iq1m(const float* xb, const float* weight, float max, int8_t* L, float* scale_out, int* combo_out) {
    constexpr int n = 16;
    int order[n];
    sort_positions(xb, n, order);
    float px[2][n + 1], pw[2][n + 1];
    px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0;
    for (int j = 0; j < n; ++j) {
        const int i = order[j], h = i < n / 2 ? 0 : 1;
        px[h][j + 1] = px[h][j] + weight[i] * xb[i];
        px[1 - h][j + 1] = px[1 - h][j];
        pw[h][j + 1] = pw[h][j] + weight[i];
        pw[1 - h][j + 1] = pw[1 - h][j];
    }
    const float txs[2] = {px[0][n], px[1][n]}, tws[2] = {pw[0][n], pw[1][n]};
    const float p2 = kShiftPlus[2], m2 = kShiftMinus[2];
    const float cp1 = kShiftPlus[0] * kShiftPlus[0] - kShiftPlus[1] * kShiftPlus[1];
    const float cp2 = kShiftPlus[1] * kShiftPlus[1] - kShiftPlus[2] * kShiftPlus[2];
    const float cm1 = kShiftMinus[0] * kShiftMinus[0] - kShiftMinus[1] * kShiftMinus[1];
    const float cm2 = kShiftMinus[1] * kShiftMinus[1] - kShiftMinus[2] * kShiftMinus[2];
    float best_score = -FLT_MAX, scale = max;
    int besti1 = -1, besti2 = -1, best_k = -1;
    for (int i1 = 0; i1 <= n; ++i1) {
        for (int i2 = i1; i2 <= n; ++i2) {
            float qx_p[2], qx_m[2], q2_p[2], q2_m[2];
            for (int h = 0; h < 2; ++h) {
                const float sx = px[h][i1] + px[h][i2];
                qx_p[h] = txs[h] * p2 - sx;
                qx_m[h] = txs[h] * m2 - sx;
                q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
            }
            const float sumqx[4] = {qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1]};
            const float sumq2[4] = {q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1]};
            for (int k = 0; k < 4; ++k) {
                if (sumq2[k] > 0 && sumqx[k] * sumqx[k] > best_score * sumq2[k]) {
                    scale = sumqx[k] / sumq2[k];
                    best_score = scale * sumqx[k];
                    besti1 = i1, besti2 = i2, best_k = k;
                }
            }
        }
    }
    if (besti1 < 0 || besti2 < 0 || best_k < 0) return false;
    split_levels(order, n, besti1, besti2, L);
    if (scale < 0) {   // mirror: -1 <-> +1, and both halves' shifts flip
        for (int j = 0; j < n; ++j) L[j] = int8_t(2 - L[j]);
        scale = -scale;
        best_k = 3 - best_k;
    }
    *scale_out = scale;
    *combo_out = best_k;
    return true;
}

// The value tables of an IQ1_M group's two halves for shift combination k.
void iq1m_tables(int combo, const float** xx) {
    xx[0] = combo < 2 ? kShiftPlus : kShiftMinus;
    xx[1] = combo % 2 == 0 ? kShiftPlus : kShiftMinus;
}

}  // namespace

void quantize_row_iq1_s(const float* x, void* out, int64_t n, const float* imatrix) {
    LOWBIT_CHECK(imatrix, ValueError, "IQ1_S needs an importance matrix (imatrix)");
    const IqLattice& g = iq_lattice(GGMLType::IQ1_S);
    auto* y = static_cast<block_iq1_s*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        std::memset(&y[ibl], 0, sizeof(block_iq1_s));
        const float* xbl = x + QK_K * ibl;
        const float sigma2 = sigma2_of(xbl);
        float scales[QK_K / 32], max_scale = 0;
        int shifts[QK_K / 32];
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float* xb = xbl + 32 * ib;
            float weight[32];
            iq_block_weights(xb, imatrix + QK_K * ibl + 32 * ib, sigma2, 32, weight);
            scales[ib] = 0;
            shifts[ib] = 1;
            int8_t L[32];
            float scale;
            const float max = max_abs(xb, 32);
            if (max < kGroupMaxEpsIq1s || !best_split_iq1s(xb, weight, max, L, &scale, &shifts[ib])) continue;
            const float* xx = shifts[ib] == 1 ? kShiftPlus : kShiftMinus;
            const float* const tables[4] = {xx, xx, xx, xx};
            int index[4];
            scale = resolve_points(g, xb, weight, 4, L, tables, scale, index);
            uint16_t h = 0;
            for (int k = 0; k < 4; ++k) {
                y[ibl].qs[4 * ib + k] = uint8_t(index[k] & 255);
                h = uint16_t(h | (index[k] >> 8) << (3 * k));
            }
            y[ibl].qh[ib] = h;
            scales[ib] = scale;
            max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) continue;
        const float d = max_scale / 15;
        y[ibl].d = fp32_to_fp16(d * 1.125f);
        const float id = 1 / d;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            int l = std::max(0, std::min(7, nearest_int(0.5f * (id * scales[ib] - 1))));
            if (shifts[ib] == -1) l |= 8;
            y[ibl].qh[ib] = uint16_t(y[ibl].qh[ib] | l << 12);
        }
    }
}

void quantize_row_iq1_m(const float* x, void* out, int64_t n, const float* imatrix) {
    constexpr uint8_t kShiftBits[4] = {0x00, 0x80, 0x08, 0x88};   // qh bits of the combinations
    const IqLattice& g = iq_lattice(GGMLType::IQ1_M);
    auto* y = static_cast<block_iq1_m*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        std::memset(&y[ibl], 0, sizeof(block_iq1_m));
        const float* xbl = x + QK_K * ibl;
        const float sigma2 = sigma2_of(xbl);
        float weight[QK_K], scales[QK_K / 16], max_scale = 0;
        int combos[QK_K / 16], index[QK_K / 8] = {};
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const float* xb = xbl + 16 * ib;
            float* w = weight + 16 * ib;
            iq_block_weights(xb, imatrix ? imatrix + QK_K * ibl + 16 * ib : nullptr, sigma2, 16, w);
            scales[ib] = 0;
            combos[ib] = 0;
            int8_t L[16];
            float scale;
            const float max = max_abs(xb, 16);
            if (max < kGroupMaxEpsIq1m || !best_split_iq1m(xb, w, max, L, &scale, &combos[ib])) continue;
            const float* xx[2];
            iq1m_tables(combos[ib], xx);
            scale = resolve_points(g, xb, w, 2, L, xx, scale, index + 2 * ib);
            y[ibl].qs[2 * ib] = uint8_t(index[2 * ib] & 255);
            y[ibl].qs[2 * ib + 1] = uint8_t(index[2 * ib + 1] & 255);
            y[ibl].qh[ib] = uint8_t((index[2 * ib] >> 8) | (index[2 * ib + 1] >> 8) << 4);
            scales[ib] = scale;
            max_scale = std::max(max_scale, scale);
        }
        if (max_scale == 0) continue;
        // 3-bit group scales; then the super-block scale refitted to them over every group
        uint16_t sc[4] = {};
        float d = max_scale / 15;
        const float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int ib = 0; ib < QK_K / 16; ++ib) {
            const int l = std::max(0, std::min(7, nearest_int(0.5f * (id * scales[ib] - 1))));
            sc[ib / 4] = uint16_t(sc[ib / 4] | l << (3 * (ib % 4)));
            y[ibl].qh[ib] |= kShiftBits[combos[ib]];
            const float* xx[2];
            iq1m_tables(combos[ib], xx);
            for (int k = 0; k < 2; ++k) {
                const uint8_t* level = g.levels(index[2 * ib + k]);
                for (int j = 0; j < 8; ++j) {
                    const float w = weight[16 * ib + 8 * k + j];
                    const float q = xx[k][level[j]] * float(2 * l + 1);
                    sumqx += w * q * xbl[16 * ib + 8 * k + j];
                    sumq2 += w * q * q;
                }
            }
        }
        if (sumq2 > 0) d = sumqx / sumq2;
        const uint16_t s = fp32_to_fp16(d * 1.1125f);
        sc[0] = uint16_t(sc[0] | (s & 0x000f) << 12);
        sc[1] = uint16_t(sc[1] | (s & 0x00f0) << 8);
        sc[2] = uint16_t(sc[2] | (s & 0x0f00) << 4);
        sc[3] = uint16_t(sc[3] | (s & 0xf000));
        std::memcpy(y[ibl].scales, sc, sizeof(sc));
    }
}

}  // namespace lowbit

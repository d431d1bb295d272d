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
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

namespace {

constexpr int kMaxQ = 8;             // magnitudes 2l + 1, l < 8
constexpr int kMapSize = 1 << 12;    // 4 x 3-bit lattice coordinates
constexpr float kGroupMaxEpsIq3 = 1e-8f;

// The IQ3_XXS codebook as lattice points (l per coordinate), the map lattice point -> codebook
// index (-1 when off the codebook) and, for each off-codebook point, its candidate neighbours:
// every codebook point at one of the two smallest squared distances, ordered by (distance, index).
struct Iq3Lattice {
    uint8_t level[512][4];
    int map[kMapSize];
    std::vector<std::vector<uint16_t>> neighbours;   // by lattice point

    // grid: the codebook (size points); nwant: how many nearest distances give neighbours
    Iq3Lattice(const uint32_t* grid, int size, int nwant) : neighbours(kMapSize) {
        // the codebook's magnitudes in increasing order are levels 0..7
        std::vector<int> values;
        for (int k = 0; k < size; ++k)
            for (int i = 0; i < 4; ++i) values.push_back(int((grid[k] >> (8 * i)) & 0xFF));
        std::sort(values.begin(), values.end());
        values.erase(std::unique(values.begin(), values.end()), values.end());
        std::fill(map, map + kMapSize, -1);
        for (int k = 0; k < size; ++k) {
            int u = 0;
            for (int i = 0; i < 4; ++i) {
                const int v = int((grid[k] >> (8 * i)) & 0xFF);
                level[k][i] = uint8_t(std::lower_bound(values.begin(), values.end(), v) - values.begin());
                u |= level[k][i] << (3 * i);
            }
            map[u] = k;
        }
        std::vector<std::pair<int, int>> dist(size_t(size), {0, 0});
        for (int u = 0; u < kMapSize; ++u) {
            if (map[u] >= 0) continue;
            for (int k = 0; k < size; ++k) {
                int d2 = 0;
                for (int i = 0; i < 4; ++i) {
                    const int diff = 2 * level[k][i] - 2 * ((u >> (3 * i)) & 7);
                    d2 += diff * diff;
                }
                dist[k] = {d2, k};
            }
            std::sort(dist.begin(), dist.end());
            int distinct = 1;
            for (int j = 0; j < size; ++j) {
                if (dist[j].first > dist[0].first && dist[j].first != dist[j - 1].first && ++distinct > nwant) break;
                neighbours[u].push_back(uint16_t(dist[j].second));
            }
        }
    }
};

const Iq3Lattice& iq3xxs_lattice() {
    static const Iq3Lattice lattice(kIq3xxsGrid, 256, 2);
    return lattice;
}

const Iq3Lattice& iq3s_lattice() {
    static const Iq3Lattice lattice(kIq3sGrid, 512, 3);
    return lattice;
}

// How the two formats' group searches differ (see the file comment).
struct Iq3Search {
    int trials;              // trial scales (15 + 0.2 is) / max for is in [-trials, trials]
    bool start_on_grid;      // initial "on codebook" flags before any trial wins
    bool redo_all;           // re-resolve every point (not just the off-codebook ones) at the end
};
constexpr Iq3Search kSearchXxs = {15, true, false};
constexpr Iq3Search kSearchS = {9, false, true};

int lattice_index(const int8_t* L) {
    int u = 0;
    for (int i = 0; i < 4; ++i) u |= L[i] << (3 * i);
    return u;
}

// The codebook point among u's neighbours nearest to xval / scale under weights w; its levels into L.
int best_neighbour(const Iq3Lattice& g, int u, const float* xval, const float* w, float scale, int8_t* L) {
    float best_d2 = FLT_MAX;
    int best = -1;
    for (uint16_t k : g.neighbours[u]) {
        float d2 = 0;
        for (int i = 0; i < 4; ++i) {
            const float q = float(2 * g.level[k][i] + 1);
            const float diff = scale * q - xval[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            best = k;
        }
    }
    for (int i = 0; i < 4; ++i) L[i] = int8_t(g.level[best][i]);
    return best;
}

// Levels of 4 magnitudes at inverse scale id, clamped to the lattice.
void round_levels(const float* xval, float id, int8_t* L) {
    for (int i = 0; i < 4; ++i) L[i] = int8_t(std::max(0, std::min(kMaxQ - 1, nearest_int(0.5f * (id * xval[i] - 1)))));
}

void weighted_sums(const float* weight, const float* xval, const int8_t* L, float* sumqx, float* sumq2) {
    *sumqx = *sumq2 = 0;
    for (int i = 0; i < 32; ++i) {
        const float q = float(2 * L[i] + 1);
        *sumqx += weight[i] * xval[i] * q;
        *sumq2 += weight[i] * q * q;
    }
}

// |x| of one group into xval with the 7 stored sign bits of each 8-weight point into signs[4].
void strip_signs(const float* xb, const float* weight, float* xval, uint8_t* signs) {
    for (int k = 0; k < 4; ++k) {
        int nflip = 0;
        uint8_t s = 0;
        for (int i = 0; i < 8; ++i) {
            const float v = xb[8 * k + i];
            xval[8 * k + i] = v >= 0 ? v : -v;
            if (v < 0) { ++nflip; s |= uint8_t(1 << i); }
        }
        if (nflip % 2) {   // parity: flip the weight that matters least
            int imin = 0;
            float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
            for (int i = 1; i < 8; ++i) {
                const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if (ax < min) { min = ax; imin = i; }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= uint8_t(1 << imin);
        }
        signs[k] = s & 127;
    }
}

// The importance of each weight of a 32-block: imatrix * sqrt(sigma2 + x^2), or x^2 without one.
void block_weights(const float* xb, const float* qw, float sigma2, float* weight) {
    if (qw)
        for (int i = 0; i < 32; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    else
        for (int i = 0; i < 32; ++i) weight[i] = xb[i] * xb[i];
}

float max_of(const float* xval) {
    float max = xval[0];
    for (int i = 1; i < 32; ++i) max = std::max(max, xval[i]);
    return max;
}

// Scale of one group (max: its largest magnitude, >= the epsilon) and its 8 codebook indices.
float search_group(const Iq3Lattice& g, const Iq3Search& how, const float* xval, const float* weight, float max,
                   int* index) {
    float waux[32];
    for (int i = 0; i < 32; ++i) waux[i] = std::sqrt(weight[i]);
    int8_t L[32] = {};
    float best = 0, scale = max / (2 * kMaxQ - 1);
    bool on_grid[8], on_grid_aux[8];
    std::fill(on_grid, on_grid + 8, how.start_on_grid);
    int8_t Laux[32];
    for (int is = -how.trials; is <= how.trials; ++is) {
        const float id = (2 * kMaxQ - 1 + float(is) * 0.2f) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < 8; ++k) {
            round_levels(xval + 4 * k, id, Laux + 4 * k);
            const int u = lattice_index(Laux + 4 * k);
            on_grid_aux[k] = g.map[u] >= 0;
            if (!on_grid_aux[k]) best_neighbour(g, u, xval + 4 * k, waux + 4 * k, this_scale, Laux + 4 * k);
        }
        float sumqx, sumq2;
        weighted_sums(weight, xval, Laux, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            std::memcpy(L, Laux, 32);
            std::copy(on_grid_aux, on_grid_aux + 8, on_grid);
        }
    }
    if (std::count(on_grid, on_grid + 8, false) > 0 && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < 8; ++k) {
            if (on_grid[k] && !how.redo_all) continue;
            int8_t Lk[4];
            round_levels(xval + 4 * k, id, Lk);
            const int u = lattice_index(Lk);
            if (g.map[u] >= 0) std::memcpy(L + 4 * k, Lk, 4);
            else best_neighbour(g, u, xval + 4 * k, waux + 4 * k, scale, L + 4 * k);
        }
        float sumqx, sumq2;
        weighted_sums(weight, xval, L, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    for (int k = 0; k < 8; ++k) index[k] = g.map[lattice_index(L + 4 * k)];
    return scale;
}

}  // namespace

void quantize_row_iq3_xxs(const float* x, void* out, int64_t n, const float* imatrix) {
    const Iq3Lattice& g = iq3xxs_lattice();
    auto* y = static_cast<block_iq3_xxs*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float* xbl = x + QK_K * ibl;
        uint8_t* qs = y[ibl].qs;
        std::memset(qs, 0, sizeof(y[ibl].qs));
        y[ibl].d = fp32_to_fp16(0.0f);
        float sumx2 = 0;
        for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
        const float sigma2 = 2 * sumx2 / QK_K;
        float scales[QK_K / 32], max_scale = 0;
        uint32_t signs_word[QK_K / 32];
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float* xb = xbl + 32 * ib;
            float weight[32], xval[32];
            block_weights(xb, imatrix ? imatrix + QK_K * ibl + 32 * ib : nullptr, sigma2, weight);
            uint8_t signs[4];
            strip_signs(xb, weight, xval, signs);
            const float max = max_of(xval);
            if (max < kGroupMaxEpsIq3) {   // an empty group: scale, signs and indices 0
                scales[ib] = 0;
                signs_word[ib] = 0;
                continue;
            }
            int index[8];
            float scale = search_group(g, kSearchXxs, xval, weight, max, index);
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
    const Iq3Lattice& g = iq3s_lattice();
    auto* y = static_cast<block_iq3_s*>(out);
    for (int64_t ibl = 0; ibl < n / QK_K; ++ibl) {
        const float* xbl = x + QK_K * ibl;
        std::memset(&y[ibl], 0, sizeof(block_iq3_s));
        uint8_t* qs = y[ibl].qs;          // write positions: advance only past non-empty groups
        uint8_t* signs = y[ibl].signs;
        float sumx2 = 0;
        for (int i = 0; i < QK_K; ++i) sumx2 += xbl[i] * xbl[i];
        const float sigma2 = 2 * sumx2 / QK_K;
        float scales[QK_K / 32], max_scale = 0;
        for (int ib = 0; ib < QK_K / 32; ++ib) {
            const float* xb = xbl + 32 * ib;
            float weight[32], xval[32];
            block_weights(xb, imatrix ? imatrix + QK_K * ibl + 32 * ib : nullptr, sigma2, weight);
            uint8_t block_signs[4];
            for (int k = 0; k < 4; ++k) {
                uint8_t s = 0;
                for (int i = 0; i < 8; ++i) {
                    const float v = xb[8 * k + i];
                    xval[8 * k + i] = v >= 0 ? v : -v;
                    if (v < 0) s |= uint8_t(1 << i);
                }
                block_signs[k] = s;
            }
            const float max = max_of(xval);
            if (max == 0) {
                scales[ib] = 0;
                continue;
            }
            int index[8];
            float scale = search_group(g, kSearchS, xval, weight, max, index);
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

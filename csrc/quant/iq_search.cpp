// iq_search.cpp: the codebook lattices and the group search the i-quant quantizers share (see
// iq_search.h). Every float step follows ggml's order: the bytes depend on it.
#pragma GCC optimize("fp-contract=off")   // a fused multiply-add would change rounding

#include "quant/iq_search.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "quant/iq_tables.h"
#include "quant/scale_search.h"

namespace lowbit {

IqLattice::IqLattice(const uint8_t* grid, int size, int dim, int bits, int nwant)
    : dim_(dim), bits_(bits), level_(size_t(size) * size_t(dim)), map_(size_t(1) << (bits * dim), -1) {
    // the codebook bytes are int8 (IQ1: -1 / 0 / 1); their distinct values in order are levels
    std::vector<int> values;
    for (int i = 0; i < size * dim; ++i) values.push_back(int(int8_t(grid[i])));
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    const int n_levels = int(values.size());
    for (int k = 0; k < size; ++k) {
        int8_t L[8];
        for (int i = 0; i < dim; ++i) {
            const int v = int(int8_t(grid[size_t(k) * size_t(dim) + size_t(i)]));
            L[i] = int8_t(std::lower_bound(values.begin(), values.end(), v) - values.begin());
            level_[size_t(k) * size_t(dim) + size_t(i)] = uint8_t(L[i]);
        }
        map_[size_t(lattice_index(L))] = k;
    }
    // Neighbour lists of the off-codebook points the quantizers can produce (levels < n_levels).
    const size_t n_points = map_.size();
    start_.assign(n_points + 1, 0);
    std::vector<int> d2(size_t(size), 0);
    std::vector<int> nearest;   // the nwant smallest distinct distances, increasing
    for (size_t u = 0; u < n_points; ++u) {
        start_[u] = uint32_t(neighbours_.size());
        bool reachable = map_[u] < 0;
        for (int i = 0; i < dim && reachable; ++i) reachable = int((u >> (bits * i)) & ((1u << bits) - 1)) < n_levels;
        if (!reachable) continue;
        nearest.clear();
        for (int k = 0; k < size; ++k) {
            int d = 0;
            for (int i = 0; i < dim; ++i) {
                const int diff = 2 * int(level_[size_t(k) * size_t(dim) + size_t(i)]) -
                                 2 * int((u >> (bits * i)) & ((1u << bits) - 1));
                d += diff * diff;
            }
            d2[size_t(k)] = d;
            const auto pos = std::lower_bound(nearest.begin(), nearest.end(), d);
            if (pos != nearest.end() && *pos == d) continue;
            if (int(pos - nearest.begin()) >= nwant) continue;
            nearest.insert(pos, d);
            if (int(nearest.size()) > nwant) nearest.pop_back();
        }
        for (int d : nearest)
            for (int k = 0; k < size; ++k)
                if (d2[size_t(k)] == d) neighbours_.push_back(uint16_t(k));
    }
    start_[n_points] = uint32_t(neighbours_.size());
}

int IqLattice::lattice_index(const int8_t* L) const {
    int u = 0;
    for (int i = 0; i < dim_; ++i) u |= int(L[i]) << (bits_ * i);
    return u;
}

const IqLattice& iq_lattice(GGMLType type) {
    auto bytes = [](const auto* table) { return reinterpret_cast<const uint8_t*>(table); };
    switch (type) {
        case GGMLType::IQ2_XXS: { static const IqLattice g(bytes(kIq2xxsGrid), 256, 8, 2, 2); return g; }
        case GGMLType::IQ2_XS: { static const IqLattice g(bytes(kIq2xsGrid), 512, 8, 2, 2); return g; }
        case GGMLType::IQ2_S: { static const IqLattice g(bytes(kIq2sGrid), 1024, 8, 2, 1); return g; }
        case GGMLType::IQ1_S:
        case GGMLType::IQ1_M: { static const IqLattice g(bytes(kIq1sGrid), 2048, 8, 2, 3); return g; }
        case GGMLType::IQ3_XXS: { static const IqLattice g(bytes(kIq3xxsGrid), 256, 4, 3, 2); return g; }
        case GGMLType::IQ3_S: { static const IqLattice g(bytes(kIq3sGrid), 512, 4, 3, 3); return g; }
        default: throw ValueError(str("type ", static_cast<uint32_t>(type), " has no lattice codebook"));
    }
}

void iq_block_weights(const float* xb, const float* qw, float sigma2, int n, float* weight) {
    if (qw)
        for (int i = 0; i < n; ++i) weight[i] = qw[i] * std::sqrt(sigma2 + xb[i] * xb[i]);
    else
        for (int i = 0; i < n; ++i) weight[i] = xb[i] * xb[i];
}

void iq_strip_signs(const float* xb, const float* weight, int npoints, bool parity, float* xval, uint8_t* signs) {
    for (int k = 0; k < npoints; ++k) {
        int nflip = 0;
        uint8_t s = 0;
        for (int i = 0; i < 8; ++i) {
            const float v = xb[8 * k + i];
            xval[8 * k + i] = v >= 0 ? v : -v;
            if (v < 0) { ++nflip; s |= uint8_t(1 << i); }
        }
        if (parity && nflip % 2) {   // flip the weight that matters least
            int imin = 0;
            float min = weight[8 * k] * xb[8 * k] * xb[8 * k];
            for (int i = 1; i < 8; ++i) {
                const float ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if (ax < min) { min = ax; imin = i; }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= uint8_t(1 << imin);
        }
        signs[k] = parity ? uint8_t(s & 127) : s;
    }
}

float iq_max_of(const float* xval, int n) {
    float max = xval[0];
    for (int i = 1; i < n; ++i) max = std::max(max, xval[i]);
    return max;
}

namespace {

constexpr int kMaxGroup = 32;

// The codebook point among u's neighbours nearest to xval / scale under weights w; its levels into L.
void best_neighbour(const IqLattice& g, int u, const float* xval, const float* w, float scale, int8_t* L) {
    float best_d2 = FLT_MAX;
    int best = *g.neighbours_begin(u);   // ggml asserts a finite distance; an overflowed one keeps the first
    for (const uint16_t* k = g.neighbours_begin(u); k != g.neighbours_end(u); ++k) {
        const uint8_t* level = g.levels(*k);
        float d2 = 0;
        for (int i = 0; i < g.dim(); ++i) {
            const float q = float(2 * level[i] + 1);
            const float diff = scale * q - xval[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best_d2) {
            best_d2 = d2;
            best = *k;
        }
    }
    for (int i = 0; i < g.dim(); ++i) L[i] = int8_t(g.levels(best)[i]);
}

// Levels of one point's magnitudes at inverse scale id, clamped to [0, kmax_q).
void round_levels(const float* xval, float id, int dim, int kmax_q, int8_t* L) {
    for (int i = 0; i < dim; ++i)
        L[i] = int8_t(std::max(0, std::min(kmax_q - 1, nearest_int(0.5f * (id * xval[i] - 1)))));
}

void weighted_sums(const float* weight, const float* xval, const int8_t* L, int n, float* sumqx, float* sumq2) {
    *sumqx = *sumq2 = 0;
    for (int i = 0; i < n; ++i) {
        const float q = float(2 * L[i] + 1);
        *sumqx += weight[i] * xval[i] * q;
        *sumq2 += weight[i] * q * q;
    }
}

}  // namespace

float iq_search_group(const IqLattice& g, const IqGroupSearch& how, const float* xval, const float* weight, float max,
                      float scale, int* index) {
    const int dim = g.dim(), npoints = how.n / dim;
    float waux[kMaxGroup];
    for (int i = 0; i < how.n; ++i) waux[i] = std::sqrt(weight[i]);
    int8_t L[kMaxGroup] = {}, Laux[kMaxGroup];
    bool on_grid[kMaxGroup / 4], on_grid_aux[kMaxGroup / 4];
    std::fill(on_grid, on_grid + npoints, how.start_on_grid);
    float best = 0;
    for (int is = -how.trials; is <= how.trials; ++is) {
        const float id = (2 * how.kmax_q - 1 + float(is) * how.step) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < npoints; ++k) {
            round_levels(xval + dim * k, id, dim, how.kmax_q, Laux + dim * k);
            const int u = g.lattice_index(Laux + dim * k);
            on_grid_aux[k] = g.codebook_index(u) >= 0;
            if (!on_grid_aux[k]) best_neighbour(g, u, xval + dim * k, waux + dim * k, this_scale, Laux + dim * k);
        }
        float sumqx, sumq2;
        weighted_sums(weight, xval, Laux, how.n, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            std::memcpy(L, Laux, size_t(how.n));
            std::copy(on_grid_aux, on_grid_aux + npoints, on_grid);
        }
    }
    const bool any_off = std::count(on_grid, on_grid + npoints, false) > 0;
    if ((how.redo_always || any_off) && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < npoints; ++k) {
            if (on_grid[k] && !how.redo_all) continue;
            int8_t Lk[8];
            round_levels(xval + dim * k, id, dim, how.kmax_q, Lk);
            const int u = g.lattice_index(Lk);
            if (g.codebook_index(u) >= 0) std::memcpy(L + dim * k, Lk, size_t(dim));
            else best_neighbour(g, u, xval + dim * k, waux + dim * k, scale, L + dim * k);
        }
        float sumqx, sumq2;
        weighted_sums(weight, xval, L, how.n, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    for (int k = 0; k < npoints; ++k) index[k] = g.codebook_index(g.lattice_index(L + dim * k));
    return scale;
}

}  // namespace lowbit

// iq_search.h: what the lattice i-quant quantizers (IQ1_S/M in iq1_quant.cpp, IQ2_XXS/XS/S in
// iq2_quant.cpp, IQ3_XXS/S in iq3_quant.cpp) share: the codebook as a lattice with each off-codebook
// point's nearest codebook neighbours, the per-weight importances, the sign stripping, and the
// trial-scale group search of the IQ2/IQ3 families (llama.cpp's quantize_row_iq{2,3}_*_impl), so
// that every quantizer writes the bytes llama.cpp writes. Implemented in iq_search.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"
#include "quant/blocks.h"

namespace lowbit {

// A codebook whose points have `dim` coordinates (4 or 8), each one of a few magnitude levels l
// (the codebook bytes' distinct values in increasing order; the quantizers work with 2l + 1).
// Lattice index of levels L: sum L[i] << (bits * i). For each lattice point off the codebook
// whose levels all exist: every codebook point at one of the nwant smallest squared distances
// (sum (2 l_k - 2 l_i)^2), ordered by (distance, codebook index), as ggml's neighbour lists.
class IqLattice {
   public:
    // grid: `size` points of `dim` bytes each (the iq_tables.h codebook viewed as bytes)
    IqLattice(const uint8_t* grid, int size, int dim, int bits, int nwant);

    int dim() const { return dim_; }
    int lattice_index(const int8_t* L) const;
    // codebook index of lattice point u, -1 when off the codebook
    int codebook_index(int u) const { return map_[size_t(u)]; }
    const uint8_t* levels(int k) const { return level_.data() + size_t(k) * size_t(dim_); }
    // the neighbours of an off-codebook lattice point u: [begin, end)
    const uint16_t* neighbours_begin(int u) const { return neighbours_.data() + start_[size_t(u)]; }
    const uint16_t* neighbours_end(int u) const { return neighbours_.data() + start_[size_t(u) + 1]; }

   private:
    int dim_, bits_;
    std::vector<uint8_t> level_;       // size x dim levels
    std::vector<int> map_;             // 2^(bits * dim) lattice points -> codebook index or -1
    std::vector<uint32_t> start_;      // neighbour list offsets, 2^(bits * dim) + 1
    std::vector<uint16_t> neighbours_;
};

// The lattice of IQ1_S / IQ1_M (shared codebook), IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S; built
// once on first use (thread-safe static).
const IqLattice& iq_lattice(GGMLType type);

// The importance of each of n weights: imatrix * sqrt(sigma2 + x^2), or x^2 without one.
void iq_block_weights(const float* xb, const float* qw, float sigma2, int n, float* weight);

// |x| of 8-weight points into xval, with each point's sign bits. parity: the 8th sign is implied
// (the count of negatives must be even), so an odd point flips the sign of its least important
// weight (smallest weight * x^2; that xval becomes negative) and signs[k] keeps 7 bits.
void iq_strip_signs(const float* xb, const float* weight, int npoints, bool parity, float* xval, uint8_t* signs);

float iq_max_of(const float* xval, int n);

// sum x^2 over n weights, in order (the quantizers' sigma2 is built from it; inline, so each
// quantizer keeps its own floating-point evaluation).
inline float iq_sum_squares(const float* x, int n) {
    float sum = 0;
    for (int i = 0; i < n; ++i) sum += x[i] * x[i];
    return sum;
}

// How the trial-scale group searches of the IQ2 and IQ3 quantizers differ.
struct IqGroupSearch {
    int n;               // weights per group: 32 or 16
    int kmax_q;          // magnitudes 2l + 1, l < kmax_q
    int trials;          // inverse scales (2 kmax_q - 1 + step * is) / max for is in [-trials, trials]
    float step;
    bool start_on_grid;  // "on codebook" flags before any trial wins
    bool redo_all;       // the final pass re-resolves every point, not only the off-codebook ones
    bool redo_always;    // the final pass runs even when the winner is all on the codebook
};

// One group's search over the magnitudes xval (weights weight): the trial with the largest
// sumqx^2 / sumq2 wins (a point off the codebook takes its nearest neighbour under sqrt weights),
// then points are re-resolved at the winning scale. max: the largest magnitude the trials scale
// (> 0); scale: the scale kept when no trial wins. Writes the n / dim codebook indices; returns
// the scale (negative only if sumqx was).
float iq_search_group(const IqLattice& g, const IqGroupSearch& how, const float* xval, const float* weight, float max,
                      float scale, int* index);

}  // namespace lowbit

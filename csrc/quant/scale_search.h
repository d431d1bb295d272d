// scale_search.h: ggml's scale searches shared by the k-quants, IQ4 and the legacy imatrix
// quantizers (implemented in scale_search.cpp), and the small packing helpers of the k-quants.
//
// All of them decide bytes, so they follow ggml's float operation order exactly; see
// scale_search.cpp for what each one minimizes.
#pragma once
#include <cstdint>
#include <cstring>

namespace lowbit {

// Below this a group counts as all-zero (ggml's GROUP_MAX_EPS).
constexpr float kGroupMaxEps = 1e-15f;

// Round to nearest, ties to even, for |f| <= 2^22: adding 1.5*2^23 leaves the integer in the
// low mantissa bits (ggml's nearest_int). Never traps; garbage in (NaN) gives garbage out.
inline int nearest_int(float f) {
    const float v = f + 12582912.f;
    int32_t bits;
    std::memcpy(&bits, &v, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

// Symmetric: L[i] in [0, 2*nmax), x ~ scale * (L - nmax). rmse_type 1 weights by x^2 (or qw).
float make_qx_quants(int n, int nmax, const float* x, int8_t* L, int rmse_type, const float* qw);
// Symmetric 3-bit search of Q3_K's reference path: L[i] in [0, 2*nmax).
float make_q3_quants(int n, int nmax, const float* x, int8_t* L, bool do_rmse);
// Asymmetric: L[i] in [0, nmax], x ~ scale * L - *the_min; weights given.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                       bool use_mad);
// As make_qkx2_quants, for the imatrix paths (weights may be nullptr: then x^2).
float make_qkx3_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L,
                       float* the_min, uint8_t* Laux, float rmin, float rdelta, int nstep,
                       bool use_mad);
// Positive values to L[i] in [0, nmax] with weights: quantizes the sub-block scales themselves.
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* quant_weights);

// Q3_K scales: 16 six-bit values (stored with bias 32) in 12 bytes; see blocks.h.
void unpack_q3_K_scales(const uint8_t* packed, int* scales);   // -> scale - 32
void pack_q3_K_scale(uint8_t* packed, int j, int biased);      // ORs sub-block j in (zero first)
// Q4_K / Q5_K scales: 8 six-bit scales and mins in 12 bytes.
void unpack_scale_min_k4(int j, const uint8_t* packed, uint8_t* sc, uint8_t* m);
void pack_scales_mins_k4(uint8_t* packed, const uint8_t* ls, const uint8_t* lm);
// 2-bit codes of 256 weights into 64 bytes (Q2_K qs / low bits of Q3_K).
void pack_2bit_k(const uint8_t* L, uint8_t* qs);

}  // namespace lowbit

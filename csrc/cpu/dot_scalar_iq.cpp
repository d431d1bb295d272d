// dot_scalar_iq.cpp: the reference (spec) dot products of the i-quants (IQ1_S IQ1_M IQ2_XXS IQ2_XS
// IQ2_S IQ3_XXS IQ3_S) and ternary formats (TQ1_0 TQ2_0) against q8_K activations, and of the FP4
// formats (MXFP4 NVFP4) against q8_0.
//
// Per super-block the integer sum is exact: isum = sum over groups of (odd group scale) * (group's
// sum of grid * sign * q8); IQ1's +-1/8 grid shift joins it as 8 * grid_sum + delta * q8_sum,
// so no fraction is ever rounded. Then, per super-block in order,
//   sumf += (d_w * d_a) * float(isum)            and the result is kFinal[type] * sumf,
// with kFinal the grid's common factor (IQ2: 1/8, IQ3_XXS: 1/4, IQ1: 1/8, others 1). The SIMD
// kernels compute the same integers; for the IQ1 / IQ2 / IQ3 families they repeat these float
// operations, so they equal this bit for bit, while for TQ1_0 / TQ2_0 and FP4 they scale in
// vector lanes and sum once per row (tier 1, dot_iq_x86_256.h). FP4 x q8_0: per 32-weight block
// (NVFP4: per 16-weight sub-block)
//   sumf += (d_a * d_w) * float(isum).
#pragma GCC optimize("fp-contract=off")
#include <cstring>

#include "cpu/kernels.h"
#include "quant/iq_common.h"

namespace lowbit::cpu::scalar {
namespace {

inline int sign8(uint8_t signs, int j) { return (signs >> j) & 1 ? -1 : 1; }

// sum_j grid[j] * sign_j * q8[j] over one 8-weight point.
inline int point8(const uint8_t* grid, uint8_t signs, const int8_t* q8) {
    int s = 0;
    for (int j = 0; j < 8; ++j) s += grid[j] * sign8(signs, j) * q8[j];
    return s;
}

// One 8-weight point made of two 4-weight IQ3 grid points.
inline int point4x2(const uint8_t* g1, const uint8_t* g2, uint8_t signs, const int8_t* q8) {
    int s = 0;
    for (int j = 0; j < 4; ++j) s += g1[j] * sign8(signs, j) * q8[j] + g2[j] * sign8(signs, j + 4) * q8[j + 4];
    return s;
}

}  // namespace

float vec_dot_iq2_xxs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_xxs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int g = 0; g < 8; ++g) {
            uint32_t aux[2];
            std::memcpy(aux, w[b].qs + 4 * g, 8);
            int s = 0;
            for (int l = 0; l < 4; ++l)
                s += point8(grid_bytes(kIq2xxsGrid, (aux[0] >> (8 * l)) & 0xFF), kSignsIq2xs[(aux[1] >> (7 * l)) & 127],
                            a[b].qs + 32 * g + 8 * l);
            isum += int(2 * (aux[1] >> 28) + 1) * s;
        }
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return 0.125f * sumf;
}

float vec_dot_iq2_xs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_xs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int g = 0; g < 8; ++g) {
            int s[2] = {0, 0};
            for (int l = 0; l < 4; ++l) {
                const uint16_t q = w[b].qs[4 * g + l];
                s[l / 2] += point8(grid_bytes(kIq2xsGrid, q & 511), kSignsIq2xs[q >> 9], a[b].qs + 32 * g + 8 * l);
            }
            isum += (2 * (w[b].scales[g] & 0xF) + 1) * s[0] + (2 * (w[b].scales[g] >> 4) + 1) * s[1];
        }
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return 0.125f * sumf;
}

float vec_dot_iq2_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq2_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const uint8_t* signs = w[b].qs + QK_K / 8;
        int isum = 0;
        for (int g = 0; g < 8; ++g) {
            int s[2] = {0, 0};
            for (int l = 0; l < 4; ++l) {
                const int index = w[b].qs[4 * g + l] | ((w[b].qh[g] << (8 - 2 * l)) & 0x300);
                s[l / 2] += point8(grid_bytes(kIq2sGrid, index), signs[4 * g + l], a[b].qs + 32 * g + 8 * l);
            }
            isum += (2 * (w[b].scales[g] & 0xF) + 1) * s[0] + (2 * (w[b].scales[g] >> 4) + 1) * s[1];
        }
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return 0.125f * sumf;
}

float vec_dot_iq3_xxs(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq3_xxs*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int g = 0; g < 8; ++g) {
            uint32_t aux;
            std::memcpy(&aux, w[b].qs + QK_K / 4 + 4 * g, 4);
            const uint8_t* q3 = w[b].qs + 8 * g;
            int s = 0;
            for (int l = 0; l < 4; ++l)
                s += point4x2(grid_bytes(kIq3xxsGrid, q3[2 * l]), grid_bytes(kIq3xxsGrid, q3[2 * l + 1]),
                              kSignsIq2xs[(aux >> (7 * l)) & 127], a[b].qs + 32 * g + 8 * l);
            isum += int(2 * (aux >> 28) + 1) * s;
        }
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return 0.25f * sumf;
}

float vec_dot_iq3_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq3_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int g = 0; g < 8; ++g) {
            const int qh = w[b].qh[g];
            const uint8_t* qs = w[b].qs + 8 * g;
            int s = 0;
            for (int l = 0; l < 4; ++l)
                s += point4x2(grid_bytes(kIq3sGrid, qs[2 * l] | ((qh << (8 - 2 * l)) & 256)),
                              grid_bytes(kIq3sGrid, qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256)),
                              w[b].signs[4 * g + l], a[b].qs + 32 * g + 8 * l);
            isum += (2 * ((w[b].scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1) * s;
        }
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return sumf;
}

namespace {
// sum_j grid[j] * q8[j] over one IQ1 point (grid values -1, 0, 1).
inline int point_iq1(int index, const int8_t* q8) {
    const auto* grid = reinterpret_cast<const int8_t*>(grid_bytes(kIq1sGrid, index));
    int s = 0;
    for (int j = 0; j < 8; ++j) s += grid[j] * q8[j];
    return s;
}
inline int sum8(const int8_t* q8) {
    int s = 0;
    for (int j = 0; j < 8; ++j) s += q8[j];
    return s;
}
}  // namespace

float vec_dot_iq1_s(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq1_s*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;   // 8 * (grid + delta) . q8, scaled per group
        for (int g = 0; g < 8; ++g) {
            const int qh = w[b].qh[g];
            int s = 0;
            for (int l = 0; l < 4; ++l) s += point_iq1(w[b].qs[4 * g + l] | (((qh >> (3 * l)) & 7) << 8), a[b].qs + 32 * g + 8 * l);
            const int q8sum = a[b].bsums[2 * g] + a[b].bsums[2 * g + 1];
            isum += (2 * ((qh >> 12) & 7) + 1) * (8 * s + (qh & 0x8000 ? -q8sum : q8sum));
        }
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return 0.125f * sumf;
}

float vec_dot_iq1_m(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_iq1_m*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        uint16_t sc[4];
        std::memcpy(sc, w[b].scales, 8);
        int isum = 0;
        for (int g = 0; g < 8; ++g) {
            int s[2] = {0, 0};
            for (int l = 0; l < 4; ++l) {
                const int nib = (w[b].qh[2 * g + l / 2] >> (4 * (l % 2))) & 0xF;
                const int8_t* q8 = a[b].qs + 32 * g + 8 * l;
                const int q8sum = sum8(q8);
                s[l / 2] += 8 * point_iq1(w[b].qs[4 * g + l] | ((nib & 7) << 8), q8) + (nib & 8 ? -q8sum : q8sum);
            }
            isum += (2 * ((sc[g / 2] >> (6 * (g % 2))) & 7) + 1) * s[0] + (2 * ((sc[g / 2] >> (6 * (g % 2) + 3)) & 7) + 1) * s[1];
        }
        sumf += (fp16_to_fp32(iq1m_scale_bits(w[b])) * a[b].d) * float(isum);
    }
    return 0.125f * sumf;
}

float vec_dot_tq1_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_tq1_0*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const int8_t* q8 = a[b].qs;
        int isum = 0;
        for (int k = 0; k < 5; ++k)
            for (int m = 0; m < 32; ++m) isum += (tq1_digit(w[b].qs[m], k) - 1) * q8[32 * k + m];
        for (int k = 0; k < 5; ++k)
            for (int m = 0; m < 16; ++m) isum += (tq1_digit(w[b].qs[32 + m], k) - 1) * q8[160 + 16 * k + m];
        for (int k = 0; k < 4; ++k)
            for (int m = 0; m < 4; ++m) isum += (tq1_digit(w[b].qh[m], k) - 1) * q8[240 + 4 * k + m];
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return sumf;
}

float vec_dot_tq2_0(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_tq2_0*>(vw);
    const auto* a = static_cast<const block_q8_K*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        int isum = 0;
        for (int c = 0; c < 2; ++c)
            for (int k = 0; k < 4; ++k)
                for (int m = 0; m < 32; ++m)
                    isum += (((w[b].qs[32 * c + m] >> (2 * k)) & 3) - 1) * a[b].qs[128 * c + 32 * k + m];
        sumf += (fp16_to_fp32(w[b].d) * a[b].d) * float(isum);
    }
    return sumf;
}

float vec_dot_mxfp4(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_mxfp4*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_MXFP4; ++b) {
        int isum = 0;
        for (int j = 0; j < 16; ++j)
            isum += kValuesMxfp4[w[b].qs[j] & 0xF] * a[b].qs[j] + kValuesMxfp4[w[b].qs[j] >> 4] * a[b].qs[j + 16];
        sumf += (fp16_to_fp32(a[b].d) * e8m0_to_fp32_half(w[b].e)) * float(isum);
    }
    return sumf;
}

float vec_dot_nvfp4(int n, const void* vw, const void* va) {
    const auto* w = static_cast<const block_nvfp4*>(vw);
    const auto* a = static_cast<const block_q8_0*>(va);
    float sumf = 0.0f;
    for (int b = 0; b < n / QK_NVFP4; ++b) {
        for (int s = 0; s < 4; ++s) {
            const block_q8_0& y = a[2 * b + s / 2];
            const int8_t* q8 = y.qs + 16 * (s % 2);
            int isum = 0;
            for (int j = 0; j < 8; ++j) {
                const uint8_t q = w[b].qs[8 * s + j];
                isum += kValuesMxfp4[q & 0xF] * q8[j] + kValuesMxfp4[q >> 4] * q8[j + 8];
            }
            sumf += (fp16_to_fp32(y.d) * ue4m3_to_fp32_half(w[b].d[s])) * float(isum);
        }
    }
    return sumf;
}

}  // namespace lowbit::cpu::scalar

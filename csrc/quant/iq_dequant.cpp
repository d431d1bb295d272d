// iq_dequant.cpp: scalar dequantizers of the i-quants (IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS
// IQ3_S), the ternary (TQ1_0 TQ2_0) and FP4 (MXFP4 NVFP4) formats: the spec for their dot kernels.
// Layouts in quant/blocks.h. Float operations in ggml's / gguf.quants' order (the group scale
// first, d * (0.5 + s) * 0.25, then times the grid value), so the results agree to the bit.
#pragma GCC optimize("fp-contract=off")

#include "quant/iq_common.h"
#include "quant/reference.h"

namespace lowbit {

namespace {
inline float sign_of(uint8_t signs, int j) { return (signs >> j) & 1 ? -1.0f : 1.0f; }
}  // namespace

void dequantize_row_iq2_xxs(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq2_xxs*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int g = 0; g < QK_K / 32; ++g) {
            uint32_t aux[2];
            std::memcpy(aux, x[i].qs + 4 * g, 8);
            const float db = d * (0.5f + float(aux[1] >> 28)) * 0.25f;
            for (int l = 0; l < 4; ++l, y += 8) {
                const uint8_t* grid = grid_bytes(kIq2xxsGrid, (aux[0] >> (8 * l)) & 0xFF);
                const uint8_t signs = kSignsIq2xs[(aux[1] >> (7 * l)) & 127];
                for (int j = 0; j < 8; ++j) y[j] = db * float(grid[j]) * sign_of(signs, j);
            }
        }
    }
}

void dequantize_row_iq2_xs(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq2_xs*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int g = 0; g < QK_K / 32; ++g) {
            const float db[2] = {d * (0.5f + float(x[i].scales[g] & 0xF)) * 0.25f,
                                 d * (0.5f + float(x[i].scales[g] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l, y += 8) {
                const uint16_t q = x[i].qs[4 * g + l];
                const uint8_t* grid = grid_bytes(kIq2xsGrid, q & 511);
                const uint8_t signs = kSignsIq2xs[q >> 9];
                for (int j = 0; j < 8; ++j) y[j] = db[l / 2] * float(grid[j]) * sign_of(signs, j);
            }
        }
    }
}

void dequantize_row_iq2_s(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq2_s*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        const uint8_t* signs = x[i].qs + QK_K / 8;
        for (int g = 0; g < QK_K / 32; ++g) {
            const float db[2] = {d * (0.5f + float(x[i].scales[g] & 0xF)) * 0.25f,
                                 d * (0.5f + float(x[i].scales[g] >> 4)) * 0.25f};
            for (int l = 0; l < 4; ++l, y += 8) {
                const int index = x[i].qs[4 * g + l] | ((x[i].qh[g] << (8 - 2 * l)) & 0x300);
                const uint8_t* grid = grid_bytes(kIq2sGrid, index);
                for (int j = 0; j < 8; ++j) y[j] = db[l / 2] * float(grid[j]) * sign_of(signs[4 * g + l], j);
            }
        }
    }
}

void dequantize_row_iq3_xxs(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq3_xxs*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        const uint8_t* qs = x[i].qs;
        for (int g = 0; g < QK_K / 32; ++g) {
            uint32_t aux;
            std::memcpy(&aux, x[i].qs + QK_K / 4 + 4 * g, 4);
            const float db = d * (0.5f + float(aux >> 28)) * 0.5f;
            for (int l = 0; l < 4; ++l, y += 8) {
                const uint8_t signs = kSignsIq2xs[(aux >> (7 * l)) & 127];
                const uint8_t* grid1 = grid_bytes(kIq3xxsGrid, qs[8 * g + 2 * l]);
                const uint8_t* grid2 = grid_bytes(kIq3xxsGrid, qs[8 * g + 2 * l + 1]);
                for (int j = 0; j < 4; ++j) {
                    y[j] = db * float(grid1[j]) * sign_of(signs, j);
                    y[j + 4] = db * float(grid2[j]) * sign_of(signs, j + 4);
                }
            }
        }
    }
}

void dequantize_row_iq3_s(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq3_s*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int g = 0; g < QK_K / 32; ++g) {
            const float db = d * float(1 + 2 * ((x[i].scales[g / 2] >> (4 * (g % 2))) & 0xF));
            for (int l = 0; l < 4; ++l, y += 8) {
                const uint8_t signs = x[i].signs[4 * g + l];
                const int qh = x[i].qh[g];
                const uint8_t* grid1 = grid_bytes(kIq3sGrid, x[i].qs[8 * g + 2 * l] | ((qh << (8 - 2 * l)) & 256));
                const uint8_t* grid2 = grid_bytes(kIq3sGrid, x[i].qs[8 * g + 2 * l + 1] | ((qh << (7 - 2 * l)) & 256));
                for (int j = 0; j < 4; ++j) {
                    y[j] = db * float(grid1[j]) * sign_of(signs, j);
                    y[j + 4] = db * float(grid2[j]) * sign_of(signs, j + 4);
                }
            }
        }
    }
}

void dequantize_row_iq1_s(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq1_s*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int g = 0; g < QK_K / 32; ++g) {
            const int qh = x[i].qh[g];
            const float dl = d * float(2 * ((qh >> 12) & 7) + 1);
            const float delta = qh & 0x8000 ? -kIq1Delta : kIq1Delta;
            for (int l = 0; l < 4; ++l, y += 8) {
                const auto* grid = reinterpret_cast<const int8_t*>(
                    grid_bytes(kIq1sGrid, x[i].qs[4 * g + l] | (((qh >> (3 * l)) & 7) << 8)));
                for (int j = 0; j < 8; ++j) y[j] = dl * (float(grid[j]) + delta);
            }
        }
    }
}

void dequantize_row_iq1_m(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_iq1_m*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(iq1m_scale_bits(x[i]));
        uint16_t sc[4];
        std::memcpy(sc, x[i].scales, 8);
        for (int g = 0; g < QK_K / 32; ++g) {
            const float dl[2] = {d * float(2 * ((sc[g / 2] >> (6 * (g % 2))) & 7) + 1),
                                 d * float(2 * ((sc[g / 2] >> (6 * (g % 2) + 3)) & 7) + 1)};
            for (int l = 0; l < 4; ++l, y += 8) {
                const int nib = (x[i].qh[2 * g + l / 2] >> (4 * (l % 2))) & 0xF;
                const auto* grid = reinterpret_cast<const int8_t*>(
                    grid_bytes(kIq1sGrid, x[i].qs[4 * g + l] | ((nib & 7) << 8)));
                const float delta = nib & 8 ? -kIq1Delta : kIq1Delta;
                for (int j = 0; j < 8; ++j) y[j] = dl[l / 2] * (float(grid[j]) + delta);
            }
        }
    }
}

void dequantize_row_tq1_0(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_tq1_0*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int k = 0; k < 5; ++k)
            for (int m = 0; m < 32; ++m) *y++ = float(tq1_digit(x[i].qs[m], k) - 1) * d;
        for (int k = 0; k < 5; ++k)
            for (int m = 0; m < 16; ++m) *y++ = float(tq1_digit(x[i].qs[32 + m], k) - 1) * d;
        for (int k = 0; k < 4; ++k)
            for (int m = 0; m < 4; ++m) *y++ = float(tq1_digit(x[i].qh[m], k) - 1) * d;
    }
}

void dequantize_row_tq2_0(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_tq2_0*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(x[i].d);
        for (int c = 0; c < 2; ++c)
            for (int k = 0; k < 4; ++k)
                for (int m = 0; m < 32; ++m) *y++ = float(((x[i].qs[32 * c + m] >> (2 * k)) & 3) - 1) * d;
    }
}

void dequantize_row_mxfp4(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_mxfp4*>(in);
    for (int64_t i = 0; i < n / QK_MXFP4; ++i, y += QK_MXFP4) {
        const float d = e8m0_to_fp32_half(x[i].e);
        for (int j = 0; j < QK_MXFP4 / 2; ++j) {
            y[j] = float(kValuesMxfp4[x[i].qs[j] & 0xF]) * d;
            y[j + QK_MXFP4 / 2] = float(kValuesMxfp4[x[i].qs[j] >> 4]) * d;
        }
    }
}

void dequantize_row_nvfp4(const void* in, float* y, int64_t n) {
    const auto* x = static_cast<const block_nvfp4*>(in);
    for (int64_t i = 0; i < n / QK_NVFP4; ++i) {
        for (int s = 0; s < QK_NVFP4 / QK_NVFP4_SUB; ++s, y += QK_NVFP4_SUB) {
            const float d = ue4m3_to_fp32_half(x[i].d[s]);
            for (int j = 0; j < QK_NVFP4_SUB / 2; ++j) {
                const uint8_t q = x[i].qs[8 * s + j];
                y[j] = float(kValuesMxfp4[q & 0xF]) * d;
                y[j + QK_NVFP4_SUB / 2] = float(kValuesMxfp4[q >> 4]) * d;
            }
        }
    }
}

}  // namespace lowbit

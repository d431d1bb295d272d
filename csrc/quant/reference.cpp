// reference.cpp: scalar dequantizers of every computable type, and the quantizers that need no
// scale search (float types, legacy formats without imatrix, Q8_K). The spec for the SIMD and
// CUDA kernels.
//
// Byte-exactness: the legacy quantizers reproduce ggml's quantize_row_*_ref and gguf-py's
// numpy ports (gguf.quants.quantize) bit for bit: d is taken from the element of largest
// magnitude (the first one on ties), products and sums happen in float32 in ggml's order,
// rounding is truncation of (v + 0.5) / roundf (half away from zero), and scales go to fp16 with
// round-to-nearest-even. The dequantizers use gguf.quants' / ggml's float operation order
// (d*q - m, (d*sc)*q, ...), so they agree to the bit.
#pragma GCC optimize("fp-contract=off")  // a fused multiply-add would change rounding

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "common.h"
#include "quant/blocks.h"
#include "quant/reference.h"
#include "quant/scale_search.h"

namespace lowbit {

// ================================ float types =================================================

void dequantize_row_f32(const void* in, float* out, int64_t n) {
    std::memcpy(out, in, size_t(n) * sizeof(float));
}

void dequantize_row_f16(const void* in, float* out, int64_t n) {
    const uint8_t* bytes = static_cast<const uint8_t*>(in);
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = fp16_to_fp32(h);
    }
}

void dequantize_row_bf16(const void* in, float* out, int64_t n) {
    const uint8_t* bytes = static_cast<const uint8_t*>(in);
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        out[i] = bf16_to_fp32(h);
    }
}

void quantize_row_f32(const float* x, void* out, int64_t n, const float*) {
    std::memcpy(out, x, size_t(n) * sizeof(float));
}

void quantize_row_f16(const float* x, void* out, int64_t n, const float*) {
    uint8_t* bytes = static_cast<uint8_t*>(out);
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
    }
}

void quantize_row_bf16(const float* x, void* out, int64_t n, const float*) {
    uint8_t* bytes = static_cast<uint8_t*>(out);
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_bf16(x[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
    }
}

// ================================ legacy formats ==============================================

namespace {

// The element of largest magnitude (first on ties), with its sign: legacy and q8 scales use it.
float signed_absmax(const float* x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; ++j) {
        if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
    }
    return max;
}

void min_max(const float* x, int n, float* min_out, float* max_out) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < n; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    *min_out = min;
    *max_out = max;
}

// Inverse of pack_5bit: the 32 codes of one block.
void unpack_5bit(const uint8_t* qs, const uint8_t* qh_bytes, int* q) {
    uint32_t qh;
    std::memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < 16; ++j) {
        q[j] = (qs[j] & 0x0F) | int(((qh >> j) & 1) << 4);
        q[j + 16] = (qs[j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
    }
}

}  // namespace

// 5-bit codes q[0..31] -> low nibbles in qs (q[j] | q[j+16] << 4) and bit 4 of q[j] in qh bit j.
void pack_5bit(const uint8_t* q, uint8_t* qs, uint8_t* qh_bytes) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        qs[j] = uint8_t((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
        qh |= uint32_t((q[j] & 0x10) >> 4) << j;
        qh |= uint32_t((q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    std::memcpy(qh_bytes, &qh, 4);
}

void pack_nibbles(const uint8_t* L, uint8_t* qs) {
    for (int j = 0; j < 16; ++j) qs[j] = uint8_t(L[j] | (L[j + 16] << 4));
}

void quantize_row_q4_0(const float* x, void* out, int64_t n, const float* imatrix) {
    if (imatrix) return quantize_row_q4_0_imatrix(x, out, n, imatrix);
    block_q4_0* y = static_cast<block_q4_0*>(out);
    for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
        const float d = signed_absmax(x, QK4_0) / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const uint8_t q0 = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
            const uint8_t q1 = uint8_t(std::min(15, int(int8_t(x[j + 16] * id + 8.5f))));
            y[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

void quantize_row_q4_1(const float* x, void* out, int64_t n, const float* imatrix) {
    if (imatrix) return quantize_row_q4_1_imatrix(x, out, n, imatrix);
    block_q4_1* y = static_cast<block_q4_1*>(out);
    for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
        float min, max;
        min_max(x, QK4_1, &min, &max);
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const uint8_t q0 = uint8_t(std::min(15, int(int8_t((x[j] - min) * id + 0.5f))));
            const uint8_t q1 = uint8_t(std::min(15, int(int8_t((x[j + 16] - min) * id + 0.5f))));
            y[i].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

void quantize_row_q5_0(const float* x, void* out, int64_t n, const float* imatrix) {
    if (imatrix) return quantize_row_q5_0_imatrix(x, out, n, imatrix);
    block_q5_0* y = static_cast<block_q5_0*>(out);
    for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
        const float d = signed_absmax(x, QK5_0) / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        uint8_t q[QK5_0];
        for (int j = 0; j < QK5_0; ++j) q[j] = uint8_t(std::min(31, int(int8_t(x[j] * id + 16.5f))));
        pack_5bit(q, y[i].qs, y[i].qh);
    }
}

void quantize_row_q5_1(const float* x, void* out, int64_t n, const float* imatrix) {
    if (imatrix) return quantize_row_q5_1_imatrix(x, out, n, imatrix);
    block_q5_1* y = static_cast<block_q5_1*>(out);
    for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
        float min, max;
        min_max(x, QK5_1, &min, &max);
        const float d = (max - min) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        y[i].m = fp32_to_fp16(min);
        uint8_t q[QK5_1];
        for (int j = 0; j < QK5_1; ++j) q[j] = uint8_t(std::min(31, int((x[j] - min) * id + 0.5f)));
        pack_5bit(q, y[i].qs, y[i].qh);
    }
}

// Q8_0 ignores the imatrix (as ggml does): round-to-nearest on a 127-step grid is already optimal.
void quantize_row_q8_0(const float* x, void* out, int64_t n, const float*) {
    block_q8_0* y = static_cast<block_q8_0*>(out);
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = int8_t(std::round(x[j] * id));
    }
}

void dequantize_row_q4_0(const void* in, float* out, int64_t n) {
    const block_q4_0* b = static_cast<const block_q4_0*>(in);
    for (int64_t i = 0; i < n / QK4_0; ++i, out += QK4_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            out[j] = float((b[i].qs[j] & 0x0F) - 8) * d;
            out[j + 16] = float((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequantize_row_q4_1(const void* in, float* out, int64_t n) {
    const block_q4_1* b = static_cast<const block_q4_1*>(in);
    for (int64_t i = 0; i < n / QK4_1; ++i, out += QK4_1) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            out[j] = float(b[i].qs[j] & 0x0F) * d + m;
            out[j + 16] = float(b[i].qs[j] >> 4) * d + m;
        }
    }
}

void dequantize_row_q5_0(const void* in, float* out, int64_t n) {
    const block_q5_0* b = static_cast<const block_q5_0*>(in);
    for (int64_t i = 0; i < n / QK5_0; ++i, out += QK5_0) {
        const float d = fp16_to_fp32(b[i].d);
        int q[QK5_0];
        unpack_5bit(b[i].qs, b[i].qh, q);
        for (int j = 0; j < QK5_0; ++j) out[j] = float(q[j] - 16) * d;
    }
}

void dequantize_row_q5_1(const void* in, float* out, int64_t n) {
    const block_q5_1* b = static_cast<const block_q5_1*>(in);
    for (int64_t i = 0; i < n / QK5_1; ++i, out += QK5_1) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        int q[QK5_1];
        unpack_5bit(b[i].qs, b[i].qh, q);
        for (int j = 0; j < QK5_1; ++j) out[j] = float(q[j]) * d + m;
    }
}

void dequantize_row_q8_0(const void* in, float* out, int64_t n) {
    const block_q8_0* b = static_cast<const block_q8_0*>(in);
    for (int64_t i = 0; i < n / QK8_0; ++i, out += QK8_0) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK8_0; ++j) out[j] = float(b[i].qs[j]) * d;
    }
}

// ================================ IQ4 (dequantize only; quantize in iq4.cpp) ==================

void dequantize_row_iq4_nl(const void* in, float* out, int64_t n) {
    const block_iq4_nl* b = static_cast<const block_iq4_nl*>(in);
    for (int64_t i = 0; i < n / QK4_NL; ++i, out += QK4_NL) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK4_NL / 2; ++j) {
            out[j] = d * float(kvalues_iq4nl[b[i].qs[j] & 0x0F]);
            out[j + 16] = d * float(kvalues_iq4nl[b[i].qs[j] >> 4]);
        }
    }
}

void dequantize_row_iq4_xs(const void* in, float* out, int64_t n) {
    const block_iq4_xs* b = static_cast<const block_iq4_xs*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const uint8_t* qs = b[i].qs;
        for (int ib = 0; ib < QK_K / 32; ++ib, qs += 16, out += 32) {
            const int ls = ((b[i].scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) |
                           (((b[i].scales_h >> (2 * ib)) & 3) << 4);
            const float dl = d * float(ls - 32);
            for (int j = 0; j < 16; ++j) {
                out[j] = dl * float(kvalues_iq4nl[qs[j] & 0x0F]);
                out[j + 16] = dl * float(kvalues_iq4nl[qs[j] >> 4]);
            }
        }
    }
}

// ================================ k-quant dequantizers ========================================

// Q2_K: 16 sub-blocks of 16; qs byte l of 32-byte half h packs weights h*128 + 32*s + l (s = 0..3
// in bit pairs); scale byte: low nibble scale, high nibble min.
void dequantize_row_q2_K(const void* in, float* out, int64_t n) {
    const block_q2_K* b = static_cast<const block_q2_K*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        for (int j = 0; j < QK_K; ++j) {
            const int sub = j / 16;
            const int half = j / 128, shift = 2 * ((j % 128) / 32), l = j % 32;
            const int q = (b[i].qs[32 * half + l] >> shift) & 3;
            const float dl = d * float(b[i].scales[sub] & 0x0F);
            const float ml = dmin * float(b[i].scales[sub] >> 4);
            out[j] = dl * float(q) - ml;
        }
        out += QK_K;
    }
}

void dequantize_row_q3_K(const void* in, float* out, int64_t n) {
    const block_q3_K* b = static_cast<const block_q3_K*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        int scales[16];
        unpack_q3_K_scales(b[i].scales, scales);
        for (int j = 0; j < QK_K; ++j) {
            const int half = j / 128, pair = (j % 128) / 32, l = j % 32;
            const int low = (b[i].qs[32 * half + l] >> (2 * pair)) & 3;
            const bool high = (b[i].hmask[l] >> (4 * half + pair)) & 1;
            const float dl = d * float(scales[j / 16]);
            out[j] = dl * float(low - (high ? 0 : 4));
        }
        out += QK_K;
    }
}

void dequantize_row_q4_K(const void* in, float* out, int64_t n) {
    const block_q4_K* b = static_cast<const block_q4_K*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        for (int sub = 0; sub < 8; ++sub, out += 32) {
            uint8_t sc, m;
            unpack_scale_min_k4(sub, b[i].scales, &sc, &m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            const uint8_t* q = b[i].qs + 32 * (sub / 2);
            const int shift = 4 * (sub % 2);
            for (int l = 0; l < 32; ++l) out[l] = d1 * float((q[l] >> shift) & 0x0F) - m1;
        }
    }
}

void dequantize_row_q5_K(const void* in, float* out, int64_t n) {
    const block_q5_K* b = static_cast<const block_q5_K*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        for (int sub = 0; sub < 8; ++sub, out += 32) {
            uint8_t sc, m;
            unpack_scale_min_k4(sub, b[i].scales, &sc, &m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            const uint8_t* q = b[i].qs + 32 * (sub / 2);
            const int shift = 4 * (sub % 2);
            for (int l = 0; l < 32; ++l) {
                const int code = ((q[l] >> shift) & 0x0F) | (((b[i].qh[l] >> sub) & 1) << 4);
                out[l] = d1 * float(code) - m1;
            }
        }
    }
}

// Q6_K: weight j of half h (128 each): low 4 bits from ql[64h + (j%64)] (nibble j/64 of the half),
// high 2 bits from qh[32h + j%32] bit pair (j%128)/32.
void dequantize_row_q6_K(const void* in, float* out, int64_t n) {
    const block_q6_K* b = static_cast<const block_q6_K*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK_K; ++j) {
            const int half = j / 128, r = j % 128;
            const int low = (b[i].ql[64 * half + r % 64] >> (4 * (r / 64))) & 0x0F;
            const int high = (b[i].qh[32 * half + r % 32] >> (2 * (r / 32))) & 3;
            const float dl = d * float(b[i].scales[j / 16]);
            out[j] = dl * float((low | (high << 4)) - 32);
        }
        out += QK_K;
    }
}

// ================================ Q8_K (activations) ==========================================

void quantize_row_q8_K(const float* x, void* out, int64_t n, const float*) {
    block_q8_K* y = static_cast<block_q8_K*>(out);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        const float max = signed_absmax(x, QK_K);
        if (max == 0.0f) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; ++j) {
            y[i].qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
        }
        for (int s = 0; s < QK_K / 16; ++s) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * s + l];
            y[i].bsums[s] = int16_t(sum);
        }
        y[i].d = 1 / iscale;
    }
}

void dequantize_row_q8_K(const void* in, float* out, int64_t n) {
    const block_q8_K* b = static_cast<const block_q8_K*>(in);
    for (int64_t i = 0; i < n / QK_K; ++i, out += QK_K) {
        for (int j = 0; j < QK_K; ++j) out[j] = b[i].d * float(b[i].qs[j]);
    }
}

}  // namespace lowbit

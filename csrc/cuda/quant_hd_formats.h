// quant_hd_formats.h: Fmt<type> for every weight format (included by cuda/quant_hd.h; the contract
// of decode / dot / dotf is written there). Layouts in quant/blocks.h; the comments here say only
// which weights chunk c holds. Every function reads the block through `const uint8_t*` and byte
// offsets of the blocks.h structs, so it works on unaligned copies (shared-memory tiles) too.
#pragma once
#include <cstddef>

namespace lowbit::cuda {

template <GGMLType T>
struct Fmt;

#define LOWBIT_FMT_HEAD(T, ELEMS, BYTES, FLOAT_ACT)                                 \
    static constexpr GGMLType kType = GGMLType::T;                                  \
    static constexpr int kElems = ELEMS, kBytes = BYTES, kChunks = ELEMS / 32;      \
    static constexpr bool kFloatAct = FLOAT_ACT;

// ---- float formats: 32 values form one "block" ---------------------------------------------

template <>
struct Fmt<GGMLType::F32> {
    LOWBIT_FMT_HEAD(F32, 32, 128, true)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) y[j] = f32_bits(ld32(b + 4 * j));
    }
    LOWBIT_HD static float dotf(const uint8_t* b, int, const float* x) {
        float s = 0.0f;
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) s += f32_bits(ld32(b + 4 * j)) * x[j];
        return s;
    }
};

template <>
struct Fmt<GGMLType::F16> {
    LOWBIT_FMT_HEAD(F16, 32, 64, true)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) y[j] = h2f(ld16(b + 2 * j));
    }
    LOWBIT_HD static float dotf(const uint8_t* b, int, const float* x) {
        float s = 0.0f;
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) s += h2f(ld16(b + 2 * j)) * x[j];
        return s;
    }
};

template <>
struct Fmt<GGMLType::BF16> {
    LOWBIT_FMT_HEAD(BF16, 32, 64, true)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) y[j] = bf2f(ld16(b + 2 * j));
    }
    LOWBIT_HD static float dotf(const uint8_t* b, int, const float* x) {
        float s = 0.0f;
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) s += bf2f(ld16(b + 2 * j)) * x[j];
        return s;
    }
};

// ---- legacy 32-blocks: chunk 0 is the block ------------------------------------------------

template <>
struct Fmt<GGMLType::Q4_0> {
    LOWBIT_FMT_HEAD(Q4_0, 32, 18, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        const float d = h2f(ld16(b));
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) {
            y[j] = float((b[2 + j] & 0x0F) - 8) * d;
            y[j + 16] = float((b[2 + j] >> 4) - 8) * d;
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables&) {
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) sumi += ((b[2 + j] & 0xF) - 8) * a.qs[j] + ((b[2 + j] >> 4) - 8) * a.qs[j + 16];
        return float(sumi) * (h2f(ld16(b)) * a.d);
    }
};

template <>
struct Fmt<GGMLType::Q4_1> {
    LOWBIT_FMT_HEAD(Q4_1, 32, 20, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        const float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) {
            y[j] = float(b[4 + j] & 0x0F) * d + m;
            y[j + 16] = float(b[4 + j] >> 4) * d + m;
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables&) {
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) sumi += (b[4 + j] & 0xF) * a.qs[j] + (b[4 + j] >> 4) * a.qs[j + 16];
        return float(sumi) * (h2f(ld16(b)) * a.d) + float(a.sum) * (h2f(ld16(b + 2)) * a.d);
    }
};

// 5-bit codes of Q5_0 / Q5_1: qs at `qs`, the 32 fifth bits as one little-endian word at `qh`.
LOWBIT_HD int q5_code(const uint8_t* qs, uint32_t qh, int j) {
    return j < 16 ? (qs[j] & 0xF) | int(((qh >> j) & 1) << 4) : (qs[j - 16] >> 4) | int(((qh >> j) & 1) << 4);
}

template <>
struct Fmt<GGMLType::Q5_0> {
    LOWBIT_FMT_HEAD(Q5_0, 32, 22, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        const float d = h2f(ld16(b));
        const uint32_t qh = ld32(b + 2);
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) y[j] = float(q5_code(b + 6, qh, j) - 16) * d;
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables&) {
        const uint32_t qh = ld32(b + 2);
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) sumi += (q5_code(b + 6, qh, j) - 16) * a.qs[j];
        return float(sumi) * (h2f(ld16(b)) * a.d);
    }
};

template <>
struct Fmt<GGMLType::Q5_1> {
    LOWBIT_FMT_HEAD(Q5_1, 32, 24, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        const float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        const uint32_t qh = ld32(b + 4);
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) y[j] = float(q5_code(b + 8, qh, j)) * d + m;
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables&) {
        const uint32_t qh = ld32(b + 4);
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) sumi += q5_code(b + 8, qh, j) * a.qs[j];
        return float(sumi) * (h2f(ld16(b)) * a.d) + float(a.sum) * (h2f(ld16(b + 2)) * a.d);
    }
};

template <>
struct Fmt<GGMLType::Q8_0> {
    LOWBIT_FMT_HEAD(Q8_0, 32, 34, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables&) {
        const float d = h2f(ld16(b));
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) y[j] = float(int8_t(b[2 + j])) * d;
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables&) {
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 32; ++j) sumi += int8_t(b[2 + j]) * a.qs[j];
        return float(sumi) * (h2f(ld16(b)) * a.d);
    }
};

template <>
struct Fmt<GGMLType::IQ4_NL> {
    LOWBIT_FMT_HEAD(IQ4_NL, 32, 18, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables& t) {
        const float d = h2f(ld16(b));
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) {
            y[j] = d * float(t.iq4nl[b[2 + j] & 0x0F]);
            y[j + 16] = d * float(t.iq4nl[b[2 + j] >> 4]);
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables& t) {
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) sumi += t.iq4nl[b[2 + j] & 0xF] * a.qs[j] + t.iq4nl[b[2 + j] >> 4] * a.qs[j + 16];
        return float(sumi) * (h2f(ld16(b)) * a.d);
    }
};

template <>
struct Fmt<GGMLType::MXFP4> {
    LOWBIT_FMT_HEAD(MXFP4, 32, 17, false)
    LOWBIT_HD static void decode(const uint8_t* b, int, float* y, const GridTables& t) {
        const float d = e8m0_half(b[0]);
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) {
            y[j] = float(t.fp4[b[1 + j] & 0xF]) * d;
            y[j + 16] = float(t.fp4[b[1 + j] >> 4]) * d;
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int, const block_q8a& a, const GridTables& t) {
        int sumi = 0;
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) sumi += t.fp4[b[1 + j] & 0xF] * a.qs[j] + t.fp4[b[1 + j] >> 4] * a.qs[j + 16];
        return (a.d * e8m0_half(b[0])) * float(sumi);
    }
};

// NVFP4: 64 weights, 4 sub-blocks of 16 (E4M3 scales d[0..3], codes at 4 + 8s); chunk c = subs 2c, 2c+1.
template <>
struct Fmt<GGMLType::NVFP4> {
    LOWBIT_FMT_HEAD(NVFP4, 64, 36, false)
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        LOWBIT_UNROLL for (int h = 0; h < 2; ++h) {
            const int s = 2 * c + h;
            const float d = ue4m3_half(b[s]);
            LOWBIT_UNROLL for (int j = 0; j < 8; ++j) {
                const uint32_t q = b[4 + 8 * s + j];
                y[16 * h + j] = float(t.fp4[q & 0xF]) * d;
                y[16 * h + j + 8] = float(t.fp4[q >> 4]) * d;
            }
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        float sumf = 0.0f;
        LOWBIT_UNROLL for (int h = 0; h < 2; ++h) {
            const int s = 2 * c + h;
            int isum = 0;
            LOWBIT_UNROLL for (int j = 0; j < 8; ++j) {
                const uint32_t q = b[4 + 8 * s + j];
                isum += t.fp4[q & 0xF] * a.qs[16 * h + j] + t.fp4[q >> 4] * a.qs[16 * h + j + 8];
            }
            sumf += (a.d * ue4m3_half(b[s])) * float(isum);
        }
        return sumf;
    }
};

}  // namespace lowbit::cuda

#include "cuda/quant_hd_kquants.h"
#include "cuda/quant_hd_iquants.h"

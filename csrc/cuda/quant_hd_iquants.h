// quant_hd_iquants.h: Fmt<type> of the lattice i-quants (IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS
// IQ3_S) and the ternary formats (TQ1_0 TQ2_0): super-blocks of 256, chunk c = group c of 32
// weights (included by cuda/quant_hd_formats.h; contract in quant_hd.h). Dots: the group's exact
// integer sum times its odd scale, then (d_w * d_a) * float(isum) * kFinal as cpu/dot_scalar_iq.cpp.
#pragma once

namespace lowbit::cuda {

// sum_j grid[j] * sign_j * q8[j] over one point of 8 bytes (g1: bytes 0-3 and g2: 4-7 for IQ3).
LOWBIT_HD int point8(uint64_t grid, uint32_t signs, const int8_t* q8) {
    int s = 0;
    LOWBIT_UNROLL for (int j = 0; j < 8; ++j) s += int(grid_byte(grid, j)) * (sign_bit(signs, j) ? -q8[j] : q8[j]);
    return s;
}
LOWBIT_HD uint64_t grid_pair(uint32_t g1, uint32_t g2) { return uint64_t(g1) | (uint64_t(g2) << 32); }

// One 8-weight point decoded: db * grid * sign (the dequantizers' order: scale first).
LOWBIT_HD void decode_point8(float db, uint64_t grid, uint32_t signs, float* y) {
    LOWBIT_UNROLL for (int j = 0; j < 8; ++j) y[j] = db * float(grid_byte(grid, j)) * fsign(signs, j);
}

template <>
struct Fmt<GGMLType::IQ2_XXS> {
    LOWBIT_FMT_HEAD(IQ2_XXS, 256, 66, false)
    // group c: aux0 = 4 grid indices (bytes), aux1 = 4 x 7 sign-index bits + 4-bit scale on top
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const uint32_t aux0 = ld32(b + 2 + 8 * c), aux1 = ld32(b + 6 + 8 * c);
        const float db = h2f(ld16(b)) * (0.5f + float(aux1 >> 28)) * 0.25f;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l)
            decode_point8(db, t.iq2xxs[(aux0 >> (8 * l)) & 0xFF], t.ksigns[(aux1 >> (7 * l)) & 127], y + 8 * l);
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        const uint32_t aux0 = ld32(b + 2 + 8 * c), aux1 = ld32(b + 6 + 8 * c);
        int s = 0;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l)
            s += point8(t.iq2xxs[(aux0 >> (8 * l)) & 0xFF], t.ksigns[(aux1 >> (7 * l)) & 127], a.qs + 8 * l);
        return 0.125f * ((h2f(ld16(b)) * a.d) * float(int(2 * (aux1 >> 28) + 1) * s));
    }
};

// IQ2_XS: point l: uint16 at 2 + 2 (4c + l): 9-bit grid index, 7-bit sign index; scales at 66.
template <>
struct Fmt<GGMLType::IQ2_XS> {
    LOWBIT_FMT_HEAD(IQ2_XS, 256, 74, false)
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const float d = h2f(ld16(b));
        const uint32_t sc = b[66 + c];
        const float db[2] = {d * (0.5f + float(sc & 0xF)) * 0.25f, d * (0.5f + float(sc >> 4)) * 0.25f};
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) {
            const uint32_t q = ld16(b + 2 + 2 * (4 * c + l));
            decode_point8(db[l / 2], t.iq2xs[q & 511], t.ksigns[q >> 9], y + 8 * l);
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        int s[2] = {0, 0};
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) {
            const uint32_t q = ld16(b + 2 + 2 * (4 * c + l));
            s[l / 2] += point8(t.iq2xs[q & 511], t.ksigns[q >> 9], a.qs + 8 * l);
        }
        const uint32_t sc = b[66 + c];
        const int isum = int(2 * (sc & 0xF) + 1) * s[0] + int(2 * (sc >> 4) + 1) * s[1];
        return 0.125f * ((h2f(ld16(b)) * a.d) * float(isum));
    }
};

// IQ2_S: point l: index qs[4c + l] | 2 bits of qh[c] << 8, signs = plain byte qs[32 + 4c + l].
template <>
struct Fmt<GGMLType::IQ2_S> {
    LOWBIT_FMT_HEAD(IQ2_S, 256, 82, false)
    LOWBIT_HD static uint32_t index(const uint8_t* b, int c, int l) {
        return b[2 + 4 * c + l] | ((uint32_t(b[66 + c]) << (8 - 2 * l)) & 0x300);
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const float d = h2f(ld16(b));
        const uint32_t sc = b[74 + c];
        const float db[2] = {d * (0.5f + float(sc & 0xF)) * 0.25f, d * (0.5f + float(sc >> 4)) * 0.25f};
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) decode_point8(db[l / 2], t.iq2s[index(b, c, l)], b[2 + 32 + 4 * c + l], y + 8 * l);
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        int s[2] = {0, 0};
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) s[l / 2] += point8(t.iq2s[index(b, c, l)], b[2 + 32 + 4 * c + l], a.qs + 8 * l);
        const uint32_t sc = b[74 + c];
        const int isum = int(2 * (sc & 0xF) + 1) * s[0] + int(2 * (sc >> 4) + 1) * s[1];
        return 0.125f * ((h2f(ld16(b)) * a.d) * float(isum));
    }
};

// IQ3_XXS: 8 grid indices (4 weights each) at qs[8c..], aux word at qs[64 + 4c] (qs at byte 2).
template <>
struct Fmt<GGMLType::IQ3_XXS> {
    LOWBIT_FMT_HEAD(IQ3_XXS, 256, 98, false)
    LOWBIT_HD static uint64_t grid(const uint8_t* b, int c, int l, const GridTables& t) {
        return grid_pair(t.iq3xxs[b[2 + 8 * c + 2 * l]], t.iq3xxs[b[2 + 8 * c + 2 * l + 1]]);
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const uint32_t aux = ld32(b + 2 + 64 + 4 * c);
        const float db = h2f(ld16(b)) * (0.5f + float(aux >> 28)) * 0.5f;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) decode_point8(db, grid(b, c, l, t), t.ksigns[(aux >> (7 * l)) & 127], y + 8 * l);
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        const uint32_t aux = ld32(b + 2 + 64 + 4 * c);
        int s = 0;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) s += point8(grid(b, c, l, t), t.ksigns[(aux >> (7 * l)) & 127], a.qs + 8 * l);
        return 0.25f * ((h2f(ld16(b)) * a.d) * float(int(2 * (aux >> 28) + 1) * s));
    }
};

// IQ3_S: qs at 2, qh at 66, signs at 74, scales at 106; 9-bit indices qs[8c + k] | bit k of qh[c].
template <>
struct Fmt<GGMLType::IQ3_S> {
    LOWBIT_FMT_HEAD(IQ3_S, 256, 110, false)
    LOWBIT_HD static uint64_t grid(const uint8_t* b, int c, int l, const GridTables& t) {
        const uint32_t qh = b[66 + c];
        return grid_pair(t.iq3s[b[2 + 8 * c + 2 * l] | ((qh << (8 - 2 * l)) & 256)],
                         t.iq3s[b[2 + 8 * c + 2 * l + 1] | ((qh << (7 - 2 * l)) & 256)]);
    }
    LOWBIT_HD static int scale(const uint8_t* b, int c) { return 1 + 2 * ((b[106 + c / 2] >> (4 * (c % 2))) & 0xF); }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const float db = h2f(ld16(b)) * float(scale(b, c));
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) decode_point8(db, grid(b, c, l, t), b[74 + 4 * c + l], y + 8 * l);
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        int s = 0;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) s += point8(grid(b, c, l, t), b[74 + 4 * c + l], a.qs + 8 * l);
        return (h2f(ld16(b)) * a.d) * float(scale(b, c) * s);
    }
};

// sum_j grid[j] * q8[j] over one IQ1 point (grid bytes are int8 -1 / 0 / 1).
LOWBIT_HD int point_iq1(uint64_t grid, const int8_t* q8) {
    int s = 0;
    LOWBIT_UNROLL for (int j = 0; j < 8; ++j) s += int(int8_t(grid_byte(grid, j))) * q8[j];
    return s;
}
LOWBIT_HD void decode_iq1(float dl, uint64_t grid, float delta, float* y) {
    LOWBIT_UNROLL for (int j = 0; j < 8; ++j) y[j] = dl * (float(int8_t(grid_byte(grid, j))) + delta);
}

// IQ1_S: qs at 2, qh words at 34: index qs[4c + l] | 3 bits of qh[c] << 8; scale bits 12-14, sign 15.
template <>
struct Fmt<GGMLType::IQ1_S> {
    LOWBIT_FMT_HEAD(IQ1_S, 256, 50, false)
    LOWBIT_HD static uint64_t grid(const uint8_t* b, int c, int l, uint32_t qh, const GridTables& t) {
        return t.iq1s[b[2 + 4 * c + l] | (((qh >> (3 * l)) & 7) << 8)];
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const uint32_t qh = ld16(b + 34 + 2 * c);
        const float dl = h2f(ld16(b)) * float(2 * ((qh >> 12) & 7) + 1);
        const float delta = qh & 0x8000 ? -kIq1Delta : kIq1Delta;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) decode_iq1(dl, grid(b, c, l, qh, t), delta, y + 8 * l);
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        const uint32_t qh = ld16(b + 34 + 2 * c);
        int s = 0;
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) s += point_iq1(grid(b, c, l, qh, t), a.qs + 8 * l);
        const int isum = int(2 * ((qh >> 12) & 7) + 1) * (8 * s + (qh & 0x8000 ? -a.sum : a.sum));
        return 0.125f * ((h2f(ld16(b)) * a.d) * float(isum));
    }
};

// IQ1_M: qs at 0, qh at 32 (a nibble per point: 3 index bits + delta sign), scales at 48.
template <>
struct Fmt<GGMLType::IQ1_M> {
    LOWBIT_FMT_HEAD(IQ1_M, 256, 56, false)
    LOWBIT_HD static uint32_t nib(const uint8_t* b, int c, int l) { return (b[32 + 2 * c + l / 2] >> (4 * (l % 2))) & 0xF; }
    LOWBIT_HD static int scale(const uint8_t* b, int c, int h) {
        return 2 * int((ld16(b + 48 + 2 * (c / 2)) >> (6 * (c % 2) + 3 * h)) & 7) + 1;
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const float d = h2f(codes::iq1m_scale_bits(b + 48));
        const float dl[2] = {d * float(scale(b, c, 0)), d * float(scale(b, c, 1))};
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) {
            const uint32_t n = nib(b, c, l);
            decode_iq1(dl[l / 2], t.iq1s[b[4 * c + l] | ((n & 7) << 8)], n & 8 ? -kIq1Delta : kIq1Delta, y + 8 * l);
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        int s[2] = {0, 0};
        LOWBIT_UNROLL for (int l = 0; l < 4; ++l) {
            const uint32_t n = nib(b, c, l);
            const int q8sum = sum_i8(a.qs + 8 * l, 8);
            s[l / 2] += 8 * point_iq1(t.iq1s[b[4 * c + l] | ((n & 7) << 8)], a.qs + 8 * l) + (n & 8 ? -q8sum : q8sum);
        }
        const int isum = scale(b, c, 0) * s[0] + scale(b, c, 1) * s[1];
        return 0.125f * ((h2f(codes::iq1m_scale_bits(b + 48)) * a.d) * float(isum));
    }
};

// TQ1_0: the base-3 digit of weight l of chunk c (layout in blocks.h): c < 5: digit c of qs[l];
// c = 5, 6: digit 2(c-5) + l/16 of qs[32 + l%16]; c = 7: l < 16 digit 4 of qs[32 + l], else digit
// (l-16)/4 of qh[(l-16)%4].
template <>
struct Fmt<GGMLType::TQ1_0> {
    LOWBIT_FMT_HEAD(TQ1_0, 256, 54, false)
    LOWBIT_HD static int trit(const uint8_t* b, int c, int l) {
        if (c < 5) return tq1_digit(b[l], c) - 1;
        if (c < 7) return tq1_digit(b[32 + l % 16], 2 * (c - 5) + l / 16) - 1;
        if (l < 16) return tq1_digit(b[32 + l], 4) - 1;
        return tq1_digit(b[48 + (l - 16) % 4], (l - 16) / 4) - 1;
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables&) {
        const float d = h2f(ld16(b + 52));
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) y[l] = float(trit(b, c, l)) * d;
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables&) {
        int isum = 0;
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) isum += trit(b, c, l) * a.qs[l];
        return (h2f(ld16(b + 52)) * a.d) * float(isum);
    }
};

// TQ2_0: weight l of chunk c = bits 2 (c%4) of qs[32 (c/4) + l].
template <>
struct Fmt<GGMLType::TQ2_0> {
    LOWBIT_FMT_HEAD(TQ2_0, 256, 66, false)
    LOWBIT_HD static int trit(const uint8_t* b, int c, int l) { return ((b[32 * (c / 4) + l] >> (2 * (c % 4))) & 3) - 1; }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables&) {
        const float d = h2f(ld16(b + 64));
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) y[l] = float(trit(b, c, l)) * d;
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables&) {
        int isum = 0;
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) isum += trit(b, c, l) * a.qs[l];
        return (h2f(ld16(b + 64)) * a.d) * float(isum);
    }
};

// Every format with a device path, in GGML id order: X(GGMLType name) once each.
#define LOWBIT_CUDA_FORMATS(X)                                                                      \
    X(F32) X(F16) X(Q4_0) X(Q4_1) X(Q5_0) X(Q5_1) X(Q8_0) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K) \
    X(IQ2_XXS) X(IQ2_XS) X(IQ3_XXS) X(IQ1_S) X(IQ4_NL) X(IQ3_S) X(IQ2_S) X(IQ4_XS) X(IQ1_M)       \
    X(BF16) X(TQ1_0) X(TQ2_0) X(MXFP4) X(NVFP4)

}  // namespace lowbit::cuda

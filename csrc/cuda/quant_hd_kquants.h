// quant_hd_kquants.h: Fmt<type> of the k-quants (Q2_K..Q6_K) and IQ4_XS: super-blocks of 256,
// chunk c = weights 32c .. 32c+31 (included by cuda/quant_hd_formats.h; contract in quant_hd.h).
// Per chunk the dot is the spec's per-super-block formula, dall * isum - dmin * summs, over that
// chunk's integer sums (cpu/dot_scalar.cpp).
#pragma once

namespace lowbit::cuda {

#define LOWBIT_OFF(blk, field) offsetof(blk, field)

// Q2_K: chunk c = sub-blocks 2c, 2c+1; bit pair c%4 of qs[32 (c/4) + l].
template <>
struct Fmt<GGMLType::Q2_K> {
    LOWBIT_FMT_HEAD(Q2_K, 256, 84, false)
    static constexpr size_t kSc = LOWBIT_OFF(block_q2_K, scales), kQs = LOWBIT_OFF(block_q2_K, qs),
                            kD = LOWBIT_OFF(block_q2_K, d), kDmin = LOWBIT_OFF(block_q2_K, dmin);
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables&) {
        const float d = h2f(ld16(b + kD)), dmin = h2f(ld16(b + kDmin));
        const int half = c / 4, shift = 2 * (c % 4);
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) {
            const int sub = 2 * c + l / 16;
            const int q = (b[kQs + 32 * half + l] >> shift) & 3;
            const float dl = d * float(b[kSc + sub] & 0x0F);
            const float ml = dmin * float(b[kSc + sub] >> 4);
            y[l] = dl * float(q) - ml;
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables&) {
        const int half = c / 4, shift = 2 * (c % 4);
        int isum = 0, summs = 0;
        LOWBIT_UNROLL for (int h = 0; h < 2; ++h) {
            const int sub = 2 * c + h;
            int isuml = 0;
            LOWBIT_UNROLL for (int l = 0; l < 16; ++l) isuml += a.qs[16 * h + l] * ((b[kQs + 32 * half + 16 * h + l] >> shift) & 3);
            isum += (b[kSc + sub] & 0xF) * isuml;
            summs += sum_i8(a.qs + 16 * h, 16) * (b[kSc + sub] >> 4);
        }
        const float dall = a.d * h2f(ld16(b + kD)), dmin = a.d * h2f(ld16(b + kDmin));
        return dall * float(isum) - dmin * float(summs);
    }
};

// Q3_K: chunk c = sub-blocks 2c, 2c+1; low bits: pair c%4 of qs[32 (c/4) + l], high bit: bit
// 4 (c/4) + c%4 of hmask[l].
template <>
struct Fmt<GGMLType::Q3_K> {
    LOWBIT_FMT_HEAD(Q3_K, 256, 110, false)
    static constexpr size_t kHm = LOWBIT_OFF(block_q3_K, hmask), kQs = LOWBIT_OFF(block_q3_K, qs),
                            kSc = LOWBIT_OFF(block_q3_K, scales), kD = LOWBIT_OFF(block_q3_K, d);
    LOWBIT_HD static int code(const uint8_t* b, int c, int l) {
        const int half = c / 4, pair = c % 4;
        const int low = (b[kQs + 32 * half + l] >> (2 * pair)) & 3;
        const int high = (b[kHm + l] >> (4 * half + pair)) & 1;
        return low - (high ? 0 : 4);
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables&) {
        const float d = h2f(ld16(b + kD));
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) {
            const float dl = d * float(q3k_scale(b + kSc, 2 * c + l / 16));
            y[l] = dl * float(code(b, c, l));
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables&) {
        int isum = 0;
        LOWBIT_UNROLL for (int h = 0; h < 2; ++h) {
            int isuml = 0;
            LOWBIT_UNROLL for (int l = 16 * h; l < 16 * h + 16; ++l) isuml += a.qs[l] * code(b, c, l);
            isum += q3k_scale(b + kSc, 2 * c + h) * isuml;
        }
        return (a.d * h2f(ld16(b + kD))) * float(isum);
    }
};

// Q4_K / Q5_K: chunk c = sub-block c: nibble c%2 of qs[32 (c/2) + l] (Q5_K: bit c of qh[l] on top).
template <GGMLType T, typename Block, bool kFifth>
struct FmtQ45K {
    static constexpr GGMLType kType = T;
    static constexpr int kElems = 256, kBytes = int(sizeof(Block)), kChunks = 8;
    static constexpr bool kFloatAct = false;
    static constexpr size_t kSc = LOWBIT_OFF(Block, scales), kQs = LOWBIT_OFF(Block, qs);
    LOWBIT_HD static int code(const uint8_t* b, int c, int l) {
        int q = (b[kQs + 32 * (c / 2) + l] >> (4 * (c % 2))) & 0xF;
        if constexpr (kFifth) q |= ((b[4 + K_SCALE_SIZE + l] >> c) & 1) << 4;   // qh follows scales
        return q;
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables&) {
        const float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
        int sc, m;
        scale_min_k4(c, b + kSc, sc, m);
        const float d1 = d * float(sc), m1 = dmin * float(m);
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) y[l] = d1 * float(code(b, c, l)) - m1;
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables&) {
        int sc, m;
        scale_min_k4(c, b + kSc, sc, m);
        int isuml = 0;
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) isuml += a.qs[l] * code(b, c, l);
        const float dall = a.d * h2f(ld16(b)), dmin = a.d * h2f(ld16(b + 2));
        return dall * float(sc * isuml) - dmin * float(m * a.sum);
    }
};
template <> struct Fmt<GGMLType::Q4_K> : FmtQ45K<GGMLType::Q4_K, block_q4_K, false> {};
template <> struct Fmt<GGMLType::Q5_K> : FmtQ45K<GGMLType::Q5_K, block_q5_K, true> {};
static_assert(offsetof(block_q5_K, qh) == 4 + K_SCALE_SIZE, "Q5_K qh offset");

// Q6_K: chunk c = sub-blocks 2c, 2c+1; low 4 bits: nibble (c%4)/2 of ql[64 (c/4) + 32 (c%2) + l],
// high 2 bits: pair c%4 of qh[32 (c/4) + l].
template <>
struct Fmt<GGMLType::Q6_K> {
    LOWBIT_FMT_HEAD(Q6_K, 256, 210, false)
    static constexpr size_t kQl = LOWBIT_OFF(block_q6_K, ql), kQh = LOWBIT_OFF(block_q6_K, qh),
                            kSc = LOWBIT_OFF(block_q6_K, scales), kD = LOWBIT_OFF(block_q6_K, d);
    LOWBIT_HD static int code(const uint8_t* b, int c, int l) {
        const int half = c / 4, quarter = c % 4;
        const int low = (b[kQl + 64 * half + 32 * (quarter & 1) + l] >> (4 * (quarter >> 1))) & 0xF;
        const int high = (b[kQh + 32 * half + l] >> (2 * quarter)) & 3;
        return (low | (high << 4)) - 32;
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables&) {
        const float d = h2f(ld16(b + kD));
        LOWBIT_UNROLL for (int l = 0; l < 32; ++l) {
            const float dl = d * float(int8_t(b[kSc + 2 * c + l / 16]));
            y[l] = dl * float(code(b, c, l));
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables&) {
        int isum = 0;
        LOWBIT_UNROLL for (int h = 0; h < 2; ++h) {
            int isuml = 0;
            LOWBIT_UNROLL for (int l = 16 * h; l < 16 * h + 16; ++l) isuml += a.qs[l] * code(b, c, l);
            isum += int8_t(b[kSc + 2 * c + h]) * isuml;
        }
        return (a.d * h2f(ld16(b + kD))) * float(isum);
    }
};

// IQ4_XS: chunk c = sub-block c, codes as IQ4_NL at qs + 16c, 6-bit scale bias 32.
template <>
struct Fmt<GGMLType::IQ4_XS> {
    LOWBIT_FMT_HEAD(IQ4_XS, 256, 136, false)
    static constexpr size_t kSl = LOWBIT_OFF(block_iq4_xs, scales_l), kQs = LOWBIT_OFF(block_iq4_xs, qs);
    LOWBIT_HD static int scale(const uint8_t* b, int c) {
        return (((b[kSl + c / 2] >> (4 * (c % 2))) & 0xF) | (((ld16(b + 2) >> (2 * c)) & 3) << 4)) - 32;
    }
    LOWBIT_HD static void decode(const uint8_t* b, int c, float* y, const GridTables& t) {
        const float dl = h2f(ld16(b)) * float(scale(b, c));
        const uint8_t* qs = b + kQs + 16 * c;
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) {
            y[j] = dl * float(t.iq4nl[qs[j] & 0x0F]);
            y[j + 16] = dl * float(t.iq4nl[qs[j] >> 4]);
        }
    }
    LOWBIT_HD static float dot(const uint8_t* b, int c, const block_q8a& a, const GridTables& t) {
        const uint8_t* qs = b + kQs + 16 * c;
        int isuml = 0;
        LOWBIT_UNROLL for (int j = 0; j < 16; ++j) isuml += t.iq4nl[qs[j] & 0xF] * a.qs[j] + t.iq4nl[qs[j] >> 4] * a.qs[j + 16];
        return (a.d * h2f(ld16(b))) * float(scale(b, c) * isuml);
    }
};

}  // namespace lowbit::cuda

// blocks.h: GGML tensor type ids and the byte layout of every block format lowbit computes
// with. Byte-compatible with GGUF files; shared by the C++ and CUDA sources.
//
// A block packs `QK` consecutive weights of one row. Scales are IEEE half (stored as raw
// uint16_t, see fp16_to_fp32 in common.h) except Q8_K, whose scale is a float.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lowbit {

// GGML type ids as stored in GGUF tensor infos.
enum class GGMLType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
    IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
    TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40,
};

// Every type id a GGUF file may carry, with its block geometry. Parsing needs only this;
// which types lowbit can compute with is the type table in quant/types.h.
struct GGMLTypeSize {
    GGMLType type;
    const char* name;
    uint32_t block_elems;  // weights per block
    uint32_t block_bytes;  // bytes per block
};

inline constexpr GGMLTypeSize kGGMLTypeSizes[] = {
    {GGMLType::F32, "F32", 1, 4},           {GGMLType::F16, "F16", 1, 2},
    {GGMLType::Q4_0, "Q4_0", 32, 18},       {GGMLType::Q4_1, "Q4_1", 32, 20},
    {GGMLType::Q5_0, "Q5_0", 32, 22},       {GGMLType::Q5_1, "Q5_1", 32, 24},
    {GGMLType::Q8_0, "Q8_0", 32, 34},       {GGMLType::Q8_1, "Q8_1", 32, 40},
    {GGMLType::Q2_K, "Q2_K", 256, 84},      {GGMLType::Q3_K, "Q3_K", 256, 110},
    {GGMLType::Q4_K, "Q4_K", 256, 144},     {GGMLType::Q5_K, "Q5_K", 256, 176},
    {GGMLType::Q6_K, "Q6_K", 256, 210},     {GGMLType::Q8_K, "Q8_K", 256, 292},
    {GGMLType::IQ2_XXS, "IQ2_XXS", 256, 66}, {GGMLType::IQ2_XS, "IQ2_XS", 256, 74},
    {GGMLType::IQ3_XXS, "IQ3_XXS", 256, 98}, {GGMLType::IQ1_S, "IQ1_S", 256, 50},
    {GGMLType::IQ4_NL, "IQ4_NL", 32, 18},   {GGMLType::IQ3_S, "IQ3_S", 256, 110},
    {GGMLType::IQ2_S, "IQ2_S", 256, 82},    {GGMLType::IQ4_XS, "IQ4_XS", 256, 136},
    {GGMLType::I8, "I8", 1, 1},             {GGMLType::I16, "I16", 1, 2},
    {GGMLType::I32, "I32", 1, 4},           {GGMLType::I64, "I64", 1, 8},
    {GGMLType::F64, "F64", 1, 8},           {GGMLType::IQ1_M, "IQ1_M", 256, 56},
    {GGMLType::BF16, "BF16", 1, 2},         {GGMLType::TQ1_0, "TQ1_0", 256, 54},
    {GGMLType::TQ2_0, "TQ2_0", 256, 66},    {GGMLType::MXFP4, "MXFP4", 32, 17},
    {GGMLType::NVFP4, "NVFP4", 64, 36},
};

// nullptr for an id that is not a GGML type.
inline const GGMLTypeSize* ggml_type_size(uint32_t id) {
    for (const auto& t : kGGMLTypeSizes)
        if (static_cast<uint32_t>(t.type) == id) return &t;
    return nullptr;
}

constexpr int QK4_0 = 32, QK4_1 = 32, QK5_0 = 32, QK5_1 = 32, QK8_0 = 32, QK4_NL = 32;
constexpr int QK_MXFP4 = 32, QK_NVFP4 = 64, QK_NVFP4_SUB = 16;
constexpr int QK_K = 256;          // super-block of the k-quants
constexpr int K_SCALE_SIZE = 12;   // packed 6-bit scales/mins of Q4_K and Q5_K

// ---- legacy formats: one scale (and min) per 32 weights -------------------------------------

// Q4_0: 4.5 bpw. w = d * (q - 8), q in [0,15]; qs[j] holds weight j (low nibble) and j+16 (high).
struct block_q4_0 { uint16_t d; uint8_t qs[QK4_0 / 2]; };
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

// Q4_1: 5.0 bpw. w = d * q + m, q in [0,15]; nibble order as Q4_0.
struct block_q4_1 { uint16_t d; uint16_t m; uint8_t qs[QK4_1 / 2]; };
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

// Q5_0: 5.5 bpw. w = d * (q - 16), q in [0,31]; low 4 bits as Q4_0, bit 4 of weight j in qh bit j.
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; };
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

// Q5_1: 6.0 bpw. w = d * q + m, q in [0,31]; bits as Q5_0.
struct block_q5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; };
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

// Q8_0: 8.5 bpw. w = d * q, q in [-127,127]. Also the activation format of legacy dots.
struct block_q8_0 { uint16_t d; int8_t qs[QK8_0]; };
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

// IQ4_NL: 4.5 bpw. w = d * kvalues_iq4nl[q]; nibble order as Q4_0.
struct block_iq4_nl { uint16_t d; uint8_t qs[QK4_NL / 2]; };
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl size");

// Non-linear 4-bit grid of IQ4_NL / IQ4_XS.
inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                              1,    13,   25,  38,  53,  69,  89,  113};

// ---- k-quants: super-blocks of 256 with per-sub-block scales --------------------------------

// Q2_K: 2.625 bpw. 16 sub-blocks of 16: w = d*(sc&15)*q - dmin*(sc>>4), q in [0,3].
// qs: 4 weights per byte; byte l of 32-byte half h holds weights h*128 + 32*shift/2 + l.
struct block_q2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d; uint16_t dmin; };
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");

// Q3_K: 3.4375 bpw. 16 sub-blocks of 16, 6-bit signed scales (packed in 12 bytes, bias 32):
// w = d*(sc-32)*(q - (hmask bit ? 0 : 4)), q = 2 low bits from qs.
struct block_q3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; };
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");

// Q4_K: 4.5 bpw. 8 sub-blocks of 32, 6-bit scale and min each (packed in 12 bytes):
// w = d*sc*q - dmin*m, q in [0,15]; qs byte l of 32-byte chunk c: sub-block 2c (low) and 2c+1 (high).
struct block_q4_K { uint16_t d; uint16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

// Q5_K: 5.5 bpw. As Q4_K plus a fifth bit per weight in qh, q in [0,31].
struct block_q5_K { uint16_t d; uint16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

// Q6_K: 6.5625 bpw. 16 sub-blocks of 16, int8 scales: w = d*sc*(q-32), q = 4 low bits (ql) | 2 high (qh).
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");

// Q8_K: activation format of the k-quant dots (never stored in files). float scale,
// bsums[i] = sum of qs[16i .. 16i+15] (lets kernels fold in per-sub-block mins cheaply).
struct block_q8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };
static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

// IQ4_XS: 4.25 bpw. 8 sub-blocks of 32 with 6-bit scales (low 4 bits in scales_l nibbles,
// high 2 bits in scales_h), bias 32: w = d*(ls-32)*kvalues_iq4nl[q]; nibble order per sub-block as Q4_0.
struct block_iq4_xs { uint16_t d; uint16_t scales_h; uint8_t scales_l[QK_K / 64]; uint8_t qs[QK_K / 2]; };
static_assert(sizeof(block_iq4_xs) == 136, "block_iq4_xs size");

// ---- i-quants on lattice codebooks (tables in quant/iq_tables.h) -----------------------------
// A super-block of 256 is 8 groups of 32; weights come in points of 8 (or 4) that index a
// codebook of magnitudes, with separate sign bits. "ksigns" (kSignsIq2xs) expands 7 stored sign
// bits to 8: the 8th makes the number of negative weights in the point even.

// IQ2_XXS: 2.0625 bpw. Group g = qs[4g .. 4g+3] as two uint32 (a0, a1): byte l of a0 indexes
// kIq2xxsGrid for point l, bits 7l..7l+6 of a1 are its ksigns index, a1 >> 28 the 4-bit scale s:
// w = d * (0.5 + s) * 0.25 * grid * sign.
struct block_iq2_xxs { uint16_t d; uint16_t qs[QK_K / 8]; };
static_assert(sizeof(block_iq2_xxs) == 66, "block_iq2_xxs size");

// IQ2_XS: 2.3125 bpw. qs[4g + l]: bits 0..8 index kIq2xsGrid (512), bits 9..15 the ksigns
// index; scales[g]: low nibble scales points 0-1, high nibble points 2-3: w = d*(0.5+s)*0.25*grid*sign.
struct block_iq2_xs { uint16_t d; uint16_t qs[QK_K / 8]; uint8_t scales[QK_K / 32]; };
static_assert(sizeof(block_iq2_xs) == 74, "block_iq2_xs size");

// IQ2_S: 2.5625 bpw. Point l of group g indexes kIq2sGrid (1024) with qs[4g+l] | bits 2l..2l+1 of
// qh[g] << 8; its 8 signs are the plain bits of qs[32 + 4g + l] (no parity); scales as IQ2_XS.
struct block_iq2_s { uint16_t d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t scales[QK_K / 32]; };
static_assert(sizeof(block_iq2_s) == 82, "block_iq2_s size");

// IQ3_XXS: 3.0625 bpw. qs[0..63]: one kIq3xxsGrid (256) index per 4 weights, 8 per group; then per
// group a uint32 at qs[64 + 4g]: bits 7l.. the ksigns index of point pair l (8 weights), >> 28 the
// scale s: w = d * (0.5 + s) * 0.5 * grid * sign.
struct block_iq3_xxs { uint16_t d; uint8_t qs[3 * QK_K / 8]; };
static_assert(sizeof(block_iq3_xxs) == 98, "block_iq3_xxs size");

// IQ3_S: 3.4375 bpw. 4-weight point k of group g indexes kIq3sGrid (512) with qs[8g+k] | bit k of
// qh[g] << 8; signs are plain bits of signs[4g + k/2]; scales[g/2] nibble (g&1) is s:
// w = d * (1 + 2s) * grid * sign.
struct block_iq3_s { uint16_t d; uint8_t qs[QK_K / 4]; uint8_t qh[QK_K / 32]; uint8_t signs[QK_K / 8]; uint8_t scales[QK_K / 64]; };
static_assert(sizeof(block_iq3_s) == 110, "block_iq3_s size");

// IQ1_S: 1.5625 bpw. Point l of group g indexes kIq1sGrid (2048, values -1/0/1) with
// qs[4g+l] | bits 3l..3l+2 of qh[g] << 8; qh[g] bits 12..14 scale s, bit 15 the delta sign:
// w = d * (2s + 1) * (grid +- 0.125).
struct block_iq1_s { uint16_t d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; };
static_assert(sizeof(block_iq1_s) == 50, "block_iq1_s size");

// IQ1_M: 1.75 bpw, no separate d: the fp16 super-block scale is the top nibbles of the four
// uint16 in scales (nibble of word k = bits 4k..4k+3 of d). Point l of group g: index
// qs[4g+l] | 3 bits of qh[2g + l/2] (low nibble for even l, high for odd) << 8, bit 3 of that nibble
// the delta sign; 3-bit scales per 16 weights: word g/2, bits 6(g%2) (points 0-1) and +3 (2-3).
struct block_iq1_m { uint8_t qs[QK_K / 8]; uint8_t qh[QK_K / 16]; uint8_t scales[QK_K / 32]; };
static_assert(sizeof(block_iq1_m) == 56, "block_iq1_m size");
constexpr float kIq1Delta = 0.125f;   // IQ1_S / IQ1_M grid shift

// ---- ternary --------------------------------------------------------------------------------

// TQ1_0: 1.6875 bpw, w = d * (t - 1), t in {0,1,2}. Base-3 digits in bytes stored as
// ceil(v * 256 / 243): digit k of byte q is ((uint8)(q * 3^k) * 3) >> 8. qs[0..31]: 5 digits
// each for weights 32k + m (k = digit, m = byte); qs[32..47]: weights 160 + 16k + m; qh[0..3]:
// 4 digits each for weights 240 + 4k + m.
struct block_tq1_0 { uint8_t qs[48]; uint8_t qh[4]; uint16_t d; };
static_assert(sizeof(block_tq1_0) == 54, "block_tq1_0 size");

// TQ2_0: 2.0625 bpw, w = d * (t - 1), t 2 bits: bits 2k of qs[32c + m] = weight 128c + 32k + m.
struct block_tq2_0 { uint8_t qs[QK_K / 4]; uint16_t d; };
static_assert(sizeof(block_tq2_0) == 66, "block_tq2_0 size");

// ---- FP4 ------------------------------------------------------------------------------------

// MXFP4: 4.25 bpw. E8M0 exponent e, E2M1 codes (kValuesMxfp4 = doubled values), nibble order as
// Q4_0: w = 2^(e - 128) * kValuesMxfp4[q].
struct block_mxfp4 { uint8_t e; uint8_t qs[QK_MXFP4 / 2]; };
static_assert(sizeof(block_mxfp4) == 17, "block_mxfp4 size");

// NVFP4: 4.5 bpw. 4 sub-blocks of 16 with unsigned E4M3 scales d[s]; sub-block s in qs[8s..8s+7],
// weight j in the low nibble of byte j, j+8 in the high one: w = ue4m3(d[s]) / 2 * kValuesMxfp4[q].
struct block_nvfp4 { uint8_t d[QK_NVFP4 / QK_NVFP4_SUB]; uint8_t qs[QK_NVFP4 / 2]; };
static_assert(sizeof(block_nvfp4) == 36, "block_nvfp4 size");

}  // namespace lowbit

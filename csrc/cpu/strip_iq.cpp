// strip_iq.cpp: strip decoders (strip_iq.h) of the i-quant, ternary and FP4 types.
//
// Each writes a run of one weight row as u = bias + integer weight (natural element order) and one
// float scale dw per strip block, with weight = dw * (u - bias):
//   type     block  integer weight                        dw                        bias
//   IQ2_XXS  32     grid {8,25,43} * sign                 d * (2s + 1) / 8          64
//   IQ2_XS   16     grid {8,25,43} * sign                 d * (2s + 1) / 8          64
//   IQ2_S    16     grid {8,25,43} * sign                 d * (2s + 1) / 8          64
//   IQ3_XXS  32     grid {4..62} * sign                   d * (2s + 1) / 4          64
//   IQ3_S    32     grid {1..15} * sign                   d * (2s + 1)              64
//   IQ1_S    32     8 * grid{-1,0,1} +- 1                 d * (2s + 1) / 8          64
//   IQ1_M    16     8 * grid{-1,0,1} +- 1                 d * (2s + 1) / 8          64
//   TQ1_0    32     t - 1                                 d                         64
//   TQ2_0    32     t - 1                                 d                         64
//   MXFP4    32     kValuesMxfp4 (doubled E2M1)           2^(e - 128)               64
//   NVFP4    16     kValuesMxfp4                          ue4m3(d_s) / 2            64
// These are the integers of the scalar spec (dot_scalar_iq.cpp), so every block sum is exact; the
// float steps follow the strip GEMM's order (tier 1 to the spec, kernels.h).
// Decoding runs once per strip and matmul call (a few % of a prefill GEMM), so it is plain C++
// with 8 weights per uint64 (bytes never carry: bias +- magnitude stays in 2..126). (IQ4_XS has a
// packed layout: its strips come from packed_src_avx512.cpp.)
#include "cpu/strip_iq.h"

#include <array>
#include <cstring>

#include "quant/iq_common.h"

namespace lowbit::cpu {
namespace {

constexpr int kBias = 64;
constexpr uint64_t kBiasBytes = 0x4040404040404040ull;

// 8 sign bits -> 8 bytes, 0xFF where the bit is set.
constexpr std::array<uint64_t, 256> make_sign_bytes() {
    std::array<uint64_t, 256> t{};
    for (int i = 0; i < 256; ++i)
        for (int j = 0; j < 8; ++j) t[i] |= uint64_t((i >> j) & 1 ? 0xFF : 0) << (8 * j);
    return t;
}
constexpr std::array<uint64_t, 256> kSignBytes = make_sign_bytes();

// The 7 stored sign bits of the IQ2 / IQ3_XXS formats (ksigns: parity completes the 8th).
constexpr std::array<uint64_t, 128> make_ksign_bytes() {
    std::array<uint64_t, 128> t{};
    for (int i = 0; i < 128; ++i) t[i] = kSignBytes[kSignsIq2xs[i]];
    return t;
}
constexpr std::array<uint64_t, 128> kKsignBytes = make_ksign_bytes();

// IQ1 grid points as bytes 8 * (g + 1) in {0, 8, 16}.
constexpr std::array<uint64_t, 2048> make_iq1_bytes() {
    std::array<uint64_t, 2048> t{};
    for (int i = 0; i < 2048; ++i)
        for (int j = 0; j < 8; ++j) {
            const auto g = int8_t(uint8_t(kIq1sGrid[i] >> (8 * j)));
            t[i] |= uint64_t(8 * (g + 1)) << (8 * j);
        }
    return t;
}
constexpr std::array<uint64_t, 2048> kIq1Bytes = make_iq1_bytes();

// bias + sign * magnitude for 8 weights (magnitudes <= 62, sign_bytes 0xFF where negative).
inline uint64_t signed_point(uint64_t magnitudes, uint64_t sign_bytes) {
    return kBiasBytes + (magnitudes & ~sign_bytes) - (magnitudes & sign_bytes);
}

inline void put8(uint8_t* u, uint64_t v) { std::memcpy(u, &v, 8); }

template <typename Block>
const Block& super_block(const uint8_t* row, int run) {
    return reinterpret_cast<const Block*>(row)[run];
}

void run_iq2_xxs(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq2_xxs>(row, run);
    const float d = fp16_to_fp32(x.d);
    for (int g = 0; g < 8; ++g) {
        uint32_t aux[2];
        std::memcpy(aux, x.qs + 4 * g, 8);
        for (int l = 0; l < 4; ++l)
            put8(u + 32 * g + 8 * l, signed_point(kIq2xxsGrid[(aux[0] >> (8 * l)) & 0xFF], kKsignBytes[(aux[1] >> (7 * l)) & 127]));
        dw[g] = d * float(2 * (aux[1] >> 28) + 1) * 0.125f;
    }
}

void run_iq2_xs(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq2_xs>(row, run);
    const float d = fp16_to_fp32(x.d);
    for (int g = 0; g < 8; ++g) {
        for (int l = 0; l < 4; ++l) {
            const uint16_t q = x.qs[4 * g + l];
            put8(u + 32 * g + 8 * l, signed_point(kIq2xsGrid[q & 511], kKsignBytes[q >> 9]));
        }
        dw[2 * g] = d * float(2 * (x.scales[g] & 0xF) + 1) * 0.125f;
        dw[2 * g + 1] = d * float(2 * (x.scales[g] >> 4) + 1) * 0.125f;
    }
}

void run_iq2_s(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq2_s>(row, run);
    const float d = fp16_to_fp32(x.d);
    const uint8_t* signs = x.qs + QK_K / 8;
    for (int g = 0; g < 8; ++g) {
        for (int l = 0; l < 4; ++l) {
            const int index = x.qs[4 * g + l] | ((x.qh[g] << (8 - 2 * l)) & 0x300);
            put8(u + 32 * g + 8 * l, signed_point(kIq2sGrid[index], kSignBytes[signs[4 * g + l]]));
        }
        dw[2 * g] = d * float(2 * (x.scales[g] & 0xF) + 1) * 0.125f;
        dw[2 * g + 1] = d * float(2 * (x.scales[g] >> 4) + 1) * 0.125f;
    }
}

void run_iq3_xxs(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq3_xxs>(row, run);
    const float d = fp16_to_fp32(x.d);
    for (int g = 0; g < 8; ++g) {
        uint32_t aux;
        std::memcpy(&aux, x.qs + QK_K / 4 + 4 * g, 4);
        const uint8_t* q3 = x.qs + 8 * g;
        for (int l = 0; l < 4; ++l) {
            const uint64_t mag = kIq3xxsGrid[q3[2 * l]] | uint64_t(kIq3xxsGrid[q3[2 * l + 1]]) << 32;
            put8(u + 32 * g + 8 * l, signed_point(mag, kKsignBytes[(aux >> (7 * l)) & 127]));
        }
        dw[g] = d * float(2 * (aux >> 28) + 1) * 0.25f;
    }
}

void run_iq3_s(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq3_s>(row, run);
    const float d = fp16_to_fp32(x.d);
    for (int g = 0; g < 8; ++g) {
        const int qh = x.qh[g];
        const uint8_t* qs = x.qs + 8 * g;
        for (int l = 0; l < 4; ++l) {
            const uint64_t mag = kIq3sGrid[qs[2 * l] | ((qh << (8 - 2 * l)) & 256)] |
                                 uint64_t(kIq3sGrid[qs[2 * l + 1] | ((qh << (7 - 2 * l)) & 256)]) << 32;
            put8(u + 32 * g + 8 * l, signed_point(mag, kSignBytes[x.signs[4 * g + l]]));
        }
        dw[g] = d * float(2 * ((x.scales[g / 2] >> (4 * (g % 2))) & 0xF) + 1);
    }
}

// IQ1: u = 8 (g + 1) + (56 +- 1) = bias + 8 g +- 1, bytes 55..73.
inline uint64_t iq1_point(int index, bool minus) {
    return kIq1Bytes[index] + (minus ? 0x3737373737373737ull : 0x3939393939393939ull);
}

void run_iq1_s(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq1_s>(row, run);
    const float d = fp16_to_fp32(x.d);
    for (int g = 0; g < 8; ++g) {
        const int qh = x.qh[g];
        for (int l = 0; l < 4; ++l)
            put8(u + 32 * g + 8 * l, iq1_point(x.qs[4 * g + l] | (((qh >> (3 * l)) & 7) << 8), qh & 0x8000));
        dw[g] = d * float(2 * ((qh >> 12) & 7) + 1) * 0.125f;
    }
}

void run_iq1_m(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_iq1_m>(row, run);
    const float d = fp16_to_fp32(iq1m_scale_bits(x));
    uint16_t sc[4];
    std::memcpy(sc, x.scales, 8);
    for (int g = 0; g < 8; ++g) {
        for (int l = 0; l < 4; ++l) {
            const int nib = (x.qh[2 * g + l / 2] >> (4 * (l % 2))) & 0xF;
            put8(u + 32 * g + 8 * l, iq1_point(x.qs[4 * g + l] | ((nib & 7) << 8), nib & 8));
        }
        dw[2 * g] = d * float(2 * ((sc[g / 2] >> (6 * (g % 2))) & 7) + 1) * 0.125f;
        dw[2 * g + 1] = d * float(2 * ((sc[g / 2] >> (6 * (g % 2) + 3)) & 7) + 1) * 0.125f;
    }
}

void run_tq1_0(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_tq1_0>(row, run);
    for (int k = 0; k < 5; ++k)
        for (int m = 0; m < 32; ++m) u[32 * k + m] = uint8_t(kBias - 1 + tq1_digit(x.qs[m], k));
    for (int k = 0; k < 5; ++k)
        for (int m = 0; m < 16; ++m) u[160 + 16 * k + m] = uint8_t(kBias - 1 + tq1_digit(x.qs[32 + m], k));
    for (int k = 0; k < 4; ++k)
        for (int m = 0; m < 4; ++m) u[240 + 4 * k + m] = uint8_t(kBias - 1 + tq1_digit(x.qh[m], k));
    const float d = fp16_to_fp32(x.d);
    for (int b = 0; b < 8; ++b) dw[b] = d;
}

void run_tq2_0(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = super_block<block_tq2_0>(row, run);
    for (int c = 0; c < 2; ++c)
        for (int k = 0; k < 4; ++k)
            for (int m = 0; m < 32; ++m) u[128 * c + 32 * k + m] = uint8_t(kBias - 1 + ((x.qs[32 * c + m] >> (2 * k)) & 3));
    const float d = fp16_to_fp32(x.d);
    for (int b = 0; b < 8; ++b) dw[b] = d;
}

// 16 bytes of nibbles through a 16-entry value table: low nibbles to lo[0..15], high to hi[0..15]
// (lo and hi 8 apart for NVFP4's 8-byte sub-blocks, 16 apart for 32-blocks).
template <int kHalf>
inline void nibble_values(const uint8_t* qs, const int8_t* values, int bias, uint8_t* out) {
    for (int j = 0; j < kHalf; ++j) {
        out[j] = uint8_t(bias + values[qs[j] & 0xF]);
        out[j + kHalf] = uint8_t(bias + values[qs[j] >> 4]);
    }
}

void run_mxfp4(const uint8_t* row, int run, int count, uint8_t* u, float* dw) {
    const auto* x = reinterpret_cast<const block_mxfp4*>(row) + 8 * run;
    for (int i = 0; i < count; ++i) {
        nibble_values<16>(x[i].qs, kValuesMxfp4, kBias, u + 32 * i);
        dw[i] = e8m0_to_fp32_half(x[i].e);
    }
}

void run_nvfp4(const uint8_t* row, int run, int count, uint8_t* u, float* dw) {
    const auto* x = reinterpret_cast<const block_nvfp4*>(row) + 4 * run;
    for (int i = 0; i < count; ++i) {   // sub-block i % 4 of block i / 4
        const block_nvfp4& b = x[i / 4];
        nibble_values<8>(b.qs + 8 * (i % 4), kValuesMxfp4, kBias, u + 16 * i);
        dw[i] = ue4m3_to_fp32_half(b.d[i % 4]);
    }
}

template <StripRunFn Run, int Block>
void decode_strip(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    avx512::strip_decode_from_runs(n, w, row_bytes, nrows, strip, Block, Run);
}

template <StripRunFn Run, int Block, int Bias>
constexpr StripKernels strip_of() {
    return {decode_strip<Run, Block>, Block == 16 ? avx512::strip_gemm_b16 : avx512::strip_gemm_b32, Block, Bias};
}

}  // namespace

void avx512::add_iq_strips(KernelSet& k) {
    k[GGMLType::IQ2_XXS].strip = strip_of<run_iq2_xxs, 32, kBias>();
    k[GGMLType::IQ2_XS].strip = strip_of<run_iq2_xs, 16, kBias>();
    k[GGMLType::IQ2_S].strip = strip_of<run_iq2_s, 16, kBias>();
    k[GGMLType::IQ3_XXS].strip = strip_of<run_iq3_xxs, 32, kBias>();
    k[GGMLType::IQ3_S].strip = strip_of<run_iq3_s, 32, kBias>();
    k[GGMLType::IQ1_S].strip = strip_of<run_iq1_s, 32, kBias>();
    k[GGMLType::IQ1_M].strip = strip_of<run_iq1_m, 16, kBias>();
    k[GGMLType::TQ1_0].strip = strip_of<run_tq1_0, 32, kBias>();
    k[GGMLType::TQ2_0].strip = strip_of<run_tq2_0, 32, kBias>();
    k[GGMLType::MXFP4].strip = strip_of<run_mxfp4, 32, kBias>();
    k[GGMLType::NVFP4].strip = strip_of<run_nvfp4, 16, kBias>();
}

}  // namespace lowbit::cpu

// iq_common.h: small decoders shared by the i-quant / ternary / FP4 dequantizers (quant/) and
// dot kernels (cpu/): scale encodings that are not plain fp16, and the ternary digit rule.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "quant/blocks.h"
#include "quant/iq_tables.h"

namespace lowbit {

// E8M0 exponent e -> 2^(e - 128): half the MX scale, because kValuesMxfp4 holds doubled values.
// e 0 and 1 are subnormal (2^-128, 2^-127).
inline float e8m0_to_fp32_half(uint8_t e) {
    const uint32_t bits = e < 2 ? uint32_t(0x00200000) << e : uint32_t(e - 1) << 23;
    return fp32_from_bits(bits);
}

// Unsigned E4M3 (bias 7, no sign; 0x7F decodes as 0) -> value / 2 (kValuesMxfp4 convention).
inline float ue4m3_to_fp32_half(uint8_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const int exp = (x >> 3) & 0xF, man = x & 0x7;
    const float raw = exp == 0 ? std::ldexp(float(man), -9) : std::ldexp(1.0f + float(man) / 8.0f, exp - 7);
    return raw * 0.5f;
}

// IQ1_M's fp16 super-block scale, spread over the top nibbles of the four scale words.
inline uint16_t iq1m_scale_bits(const block_iq1_m& b) {
    uint16_t sc[4];
    std::memcpy(sc, b.scales, 8);
    return uint16_t((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
}

// Digit k (0..4) of a TQ1_0 byte: the byte is ceil(v * 256 / 243) for v = sum t_k 3^(4-k), so
// multiplying by 3^k (mod 256) moves digit k to the top and * 3 >> 8 reads it.
inline int tq1_digit(uint8_t q, int k) {
    static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
    const uint8_t shifted = uint8_t(q * kPow3[k]);
    return (int(shifted) * 3) >> 8;
}

// Codebook points as bytes (the tables keep element j in byte j; x86 is little endian).
inline const uint8_t* grid_bytes(const uint64_t* table, int index) {
    return reinterpret_cast<const uint8_t*>(table + index);
}
inline const uint8_t* grid_bytes(const uint32_t* table, int index) {
    return reinterpret_cast<const uint8_t*>(table + index);
}

}  // namespace lowbit

// scale_codes.h: the scale encodings of MXFP4 / NVFP4 / IQ1_M that are not plain fp16, and
// TQ1_0's base-3 digit rule, as pure bit arithmetic: one definition for the CPU code (through
// quant/iq_common.h) and the CUDA block functions (cuda/quant_hd.h), compiled by either compiler.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LOWBIT_CODES_FN __host__ __device__ __forceinline__
#else
#define LOWBIT_CODES_FN inline
#endif

namespace lowbit::codes {

LOWBIT_CODES_FN float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

// E8M0 exponent e -> 2^(e - 128): half the MX scale, because kValuesMxfp4 holds doubled values.
// e 0 and 1 are subnormal (2^-128, 2^-127).
LOWBIT_CODES_FN float e8m0_half(uint32_t e) {
    return f32_from_bits(e < 2 ? uint32_t(0x00200000) << e : (e - 1) << 23);
}

// Unsigned E4M3 (bias 7, no sign; 0x7F decodes as 0) -> value / 2 (kValuesMxfp4 convention),
// built from bits: every value is exact (man 2^-9 for exponent 0, else (1 + man/8) 2^(exp-7)).
LOWBIT_CODES_FN float ue4m3_half(uint32_t x) {
    if (x == 0 || x == 0x7F) return 0.0f;
    const uint32_t exp = (x >> 3) & 0xF, man = x & 0x7;
    const float raw = exp == 0 ? float(man) * f32_from_bits(uint32_t(127 - 9) << 23)
                               : f32_from_bits(((exp - 7 + 127) << 23) | (man << 20));
    return raw * 0.5f;
}

// Digit k (0..4) of a TQ1_0 byte: the byte is ceil(v * 256 / 243) for v = sum t_k 3^(4-k), so
// multiplying by 3^k (mod 256) moves digit k to the top and * 3 >> 8 reads it.
LOWBIT_CODES_FN int tq1_digit(uint32_t q, int k) {
    const uint32_t pow3 = k == 0 ? 1 : k == 1 ? 3 : k == 2 ? 9 : k == 3 ? 27 : 81;
    return int(((q * pow3) & 0xFF) * 3) >> 8;
}

// IQ1_M's fp16 super-block scale, spread over the top nibbles of its four little-endian scale
// words (`scales`: the block's 8 scale bytes).
LOWBIT_CODES_FN uint16_t iq1m_scale_bits(const uint8_t* scales) {
    auto word = [scales](int i) { return uint32_t(scales[2 * i]) | (uint32_t(scales[2 * i + 1]) << 8); };
    return uint16_t((word(0) >> 12) | ((word(1) >> 8) & 0x00f0) | ((word(2) >> 4) & 0x0f00) | (word(3) & 0xf000));
}

}  // namespace lowbit::codes

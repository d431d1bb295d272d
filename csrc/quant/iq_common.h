// iq_common.h: small decoders shared by the i-quant / ternary / FP4 dequantizers (quant/) and
// dot kernels (cpu/): scale encodings that are not plain fp16, and the ternary digit rule.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "quant/blocks.h"
#include "quant/iq_tables.h"
#include "quant/scale_codes.h"

namespace lowbit {

// The scale codes and the ternary digit rule (quant/scale_codes.h, shared with the CUDA kernels).
inline float e8m0_to_fp32_half(uint8_t e) { return codes::e8m0_half(e); }
inline float ue4m3_to_fp32_half(uint8_t x) { return codes::ue4m3_half(x); }
inline uint16_t iq1m_scale_bits(const block_iq1_m& b) { return codes::iq1m_scale_bits(b.scales); }
inline int tq1_digit(uint8_t q, int k) { return codes::tq1_digit(q, k); }

// Codebook points as bytes (the tables keep element j in byte j; x86 is little endian).
inline const uint8_t* grid_bytes(const uint64_t* table, int index) {
    return reinterpret_cast<const uint8_t*>(table + index);
}
inline const uint8_t* grid_bytes(const uint32_t* table, int index) {
    return reinterpret_cast<const uint8_t*>(table + index);
}

}  // namespace lowbit

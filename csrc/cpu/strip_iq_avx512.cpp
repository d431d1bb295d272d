// strip_iq_avx512.cpp: the AVX-512 strip run decoder of IQ4_XS (strip_iq.h), the one type whose
// plain C++ decoder (a table load per weight) was a measurable part of a prefill GEMM (~10 % at
// 512 rows vs ~1-4 % for the lattice types). Same bytes as that decoder: u = 128 + kvalues_iq4nl
// per nibble, sub-block s of 32 = low nibbles of qs[16s .. 16s + 15] then their high nibbles.
#include <cstring>

#include <immintrin.h>

#include "cpu/strip_iq.h"
#include "quant/iq_common.h"

namespace lowbit::cpu::avx512 {

void strip_run_iq4_xs(const uint8_t* row, int run, int, uint8_t* u, float* dw) {
    const auto& x = reinterpret_cast<const block_iq4_xs*>(row)[run];
    alignas(16) int8_t table[16];
    for (int i = 0; i < 16; ++i) table[i] = int8_t(kvalues_iq4nl[i] + 128);   // as u8: 1 .. 241
    const __m512i t = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(table)));
    const __m512i m = _mm512_set1_epi8(0x0F);
    // qwords of lo (0-7) and hi (8-15) in sub-block order: [lo 2k, lo 2k+1, hi 2k, hi 2k+1] per sub-block k
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (int h = 0; h < 2; ++h) {   // sub-blocks 4h .. 4h + 3
        const __m512i q = _mm512_loadu_si512(x.qs + 64 * h);
        const __m512i lo = _mm512_shuffle_epi8(t, _mm512_and_si512(q, m));
        const __m512i hi = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(q, 4), m));
        _mm512_storeu_si512(u + 128 * h, _mm512_permutex2var_epi64(lo, first, hi));
        _mm512_storeu_si512(u + 128 * h + 64, _mm512_permutex2var_epi64(lo, second, hi));
    }
    const float d = fp16_to_fp32(x.d);
    for (int s = 0; s < 8; ++s) {
        const int ls = ((x.scales_l[s / 2] >> (4 * (s % 2))) & 0xF) | (((x.scales_h >> (2 * s)) & 3) << 4);
        dw[s] = d * float(ls - 32);
    }
}

}  // namespace lowbit::cpu::avx512

// x86_basics.h: the few one-line helpers every x86 kernel file uses (fp16 -> f32, unaligned
// 128 / 256-bit loads, horizontal sums of 8 int32 / 8 floats), for dot_x86_256.h, dot_iq_x86_256.h
// and dot_avx512_common.h.
// They land in the includer's LOWBIT_SIMD_NS namespace with internal linkage: the same inline
// function compiled under two sets of ISA flags must never become one symbol (dot_x86_256.h).
#pragma once
#include <immintrin.h>

#include <cstdint>

#ifndef LOWBIT_SIMD_NS
#error "define LOWBIT_SIMD_NS before including x86_basics.h"
#endif

namespace lowbit::cpu::LOWBIT_SIMD_NS {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }  // exact, as fp16_to_fp32

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

inline float hsum_f32(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

}  // namespace
}  // namespace lowbit::cpu::LOWBIT_SIMD_NS

// dot_avx512.cpp: the AVX-512 (F/BW/VL/DQ/VNNI) kernel set: 512-bit multi-row kernels for
// every type (one template per type, NR = 1..8 activation rows; the single-row dot is NR = 1, so
// mat-mat and mat-vec agree bit for bit). The 256-bit kernels of dot_x86_256.h (vpdpbusd build)
// serve the activation quantizers and the tails of the legacy dots (n % 256).
//
// Shapes: legacy dots take 8 blocks per batch, two blocks per zmm ([b lo|b hi|b+1 lo|b+1 hi]);
// k-quant dots decode a super-block into 4 zmm of 64 unsigned values plus 4 zmm of int16 scale
// words (one sub-block per 128-bit lane or per 256-bit half), then per row
// maddubs (u8 x s8 -> s16 pairs) + dpwssd (x scale -> s32), one reduction, the scalar float step.
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx512
#define LOWBIT_VNNI 1
#define LOWBIT_FN(name) name##_256
#include "cpu/dot_x86_256.h"

#include <cstddef>

namespace lowbit::cpu::avx512 {
namespace {

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// 16-bit logical right shift by A in the low 256 bits and by B in the high 256 bits: an
// immediate shift plus a masked one (vpsrlvw is several uops on Zen).
template <int A, int B>
inline __m512i srli_halves(__m512i x) {
    static_assert(B >= A, "high half shifts at least as far");
    const __m512i lo = A ? _mm512_srli_epi16(x, A) : x;
    return B > A ? _mm512_mask_srli_epi16(lo, __mmask32(0xFFFF0000u), lo, B - A) : lo;
}

// Two 32-byte runs (at p and p + stride) as one zmm.
inline __m512i load2x256(const uint8_t* p, size_t stride) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(load256(p)), load256(p + stride), 1);
}

// Activation pair of blocks b, b+1 as one zmm (32 quants each).
inline __m512i act_pair(const block_q8_0* a) { return load2x256(reinterpret_cast<const uint8_t*>(a[0].qs), sizeof(block_q8_0)); }

// sum (u - bias) * y over 4-element groups, with u in [0, 255] and bias * y folded as a second dpbusd.
inline __m512i dot_biased(__m512i u, __m512i y, __m512i bias) {
    const __m512i z = _mm512_setzero_si512();
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(z, u, y), _mm512_dpbusd_epi32(z, bias, y));
}

// Q4_0 / IQ4_NL nibbles of blocks b, b+1: [b lo | b hi | b+1 lo | b+1 hi] (16 bytes each).
inline __m512i nibble_pair(const uint8_t* qs0, const uint8_t* qs1) {
    const __m512i both = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(load128(qs0)), 0xFF00, load128(qs1));
    const __m512i hi = _mm512_mask_srli_epi16(both, __mmask32(0xFF00FF00u), both, 4);  // lanes 1, 3
    return _mm512_and_si512(hi, _mm512_set1_epi8(0x0F));
}

// The fp16 fields at byte `Off` of 8 consecutive blocks of `Stride` bytes, as 8 words: up to four
// masked 64-byte loads (never past the 8 blocks) and word permutes instead of 8 scalar inserts.
template <size_t Stride, size_t Off>
inline __m128i gather_h8(const void* base) {
    static_assert(Stride % 2 == 0 && Off % 2 == 0 && 7 * Stride + Off + 2 <= 256, "fields must be word aligned");
    constexpr size_t kBytes = 7 * Stride + Off + 2;  // bytes up to the last field's end
    constexpr bool kHigh = 7 * Stride + Off >= 128;  // some field lies in bytes 128..255
    struct Idx { int16_t lo[32], hi[32]; __mmask32 high_words; };
    constexpr Idx idx = [] {
        Idx t{};
        for (int k = 0; k < 8; ++k) {
            const int word = int((k * Stride + Off) / 2);
            if (word < 64) t.lo[k] = int16_t(word);
            else { t.hi[k] = int16_t(word - 64); t.high_words |= __mmask32(1u << k); }
        }
        return t;
    }();
    const auto* p = static_cast<const uint8_t*>(base);
    auto load = [p](size_t i) {
        const size_t lo = 64 * i;
        const __mmask64 m = kBytes >= lo + 64 ? ~__mmask64(0) : kBytes <= lo ? 0 : (__mmask64(1) << (kBytes - lo)) - 1;
        return _mm512_maskz_loadu_epi8(m, p + lo);
    };
    __m512i r = _mm512_permutex2var_epi16(load(0), _mm512_loadu_si512(idx.lo), load(1));
    if constexpr (kHigh)
        r = _mm512_mask_blend_epi16(idx.high_words, r, _mm512_permutex2var_epi16(load(2), _mm512_loadu_si512(idx.hi), load(3)));
    return _mm512_castsi512_si128(r);
}

template <typename Block>
inline __m128i gather_d8(const Block* x) {  // the fp16 scales of 8 consecutive blocks
    return gather_h8<sizeof(Block), offsetof(Block, d)>(x);
}

template <typename Block>
inline __m128i gather_m8(const Block* x) {  // the fp16 mins of 8 consecutive blocks
    return gather_h8<sizeof(Block), offsetof(Block, m)>(x);
}

// Q5 nibbles of blocks b, b+1 with the fifth bits (qh, bit j = element j) added as 16.
template <typename Block>
inline __m512i q5_pair(const Block* x) {
    uint32_t h0, h1;
    std::memcpy(&h0, x[0].qh, 4);
    std::memcpy(&h1, x[1].qh, 4);
    const __mmask64 hi = __mmask64(h0) | (__mmask64(h1) << 32);
    const __m512i nib = nibble_pair(x[0].qs, x[1].qs);
    return _mm512_mask_add_epi8(nib, hi, nib, _mm512_set1_epi8(16));
}

inline const block_q8_0* act_row_q8_0(const void* act, size_t stride, int r) {
    return reinterpret_cast<const block_q8_0*>(static_cast<const uint8_t*>(act) + size_t(r) * stride);
}

// Legacy blocks x q8_0 for NR activation rows: batches of 8 blocks; `decode(w)` turns blocks
// b, b+1 into one zmm of unsigned values u (weight = u - bias), shared by all rows; per row one
// f32 accumulator. Tail blocks (nb % 8) go through the 256-bit kernel `tail`.
// With kMin (Q4_1, Q5_1: weight = d*u + m) `bias` is unused and the min adds m * da * sum(y).
template <int NR, bool kMin = false, typename WBlock, typename Decode>
inline void legacy_rows_512(int n, const WBlock* w, const void* act, size_t stride, float* out, Decode decode,
                            __m512i bias, float (*tail)(int, const void*, const void*)) {
    const int nb = n / QK8_0, nb8 = nb / 8 * 8;
    __m512 acc[NR][2];  // two chains per row: blocks 0-1, 4-5 and 2-3, 6-7 of each batch
    for (int r = 0; r < NR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int b = 0; b < nb8; b += 8) {
        const __m256 wd8 = _mm256_cvtph_ps(gather_d8(w + b));
        __m256 wm8 = _mm256_setzero_ps();
        if constexpr (kMin) wm8 = _mm256_cvtph_ps(gather_m8(w + b));
        __m512i wq[4];
        for (int k = 0; k < 4; ++k) wq[k] = decode(&w[b + 2 * k]);
        for (int r = 0; r < NR; ++r) {
            const block_q8_0* a = act_row_q8_0(act, stride, r) + b;
            const __m256 ad8 = _mm256_cvtph_ps(gather_d8(a));
            const __m512 d16 = _mm512_castps256_ps512(_mm256_mul_ps(wd8, ad8));
            __m512 m16 = _mm512_setzero_ps();
            if constexpr (kMin) m16 = _mm512_castps256_ps512(_mm256_mul_ps(wm8, ad8));
            for (int k = 0; k < 4; ++k) {
                const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi32(2 * k), _mm256_set1_epi32(2 * k + 1), 1);
                const __m512i y = act_pair(a + 2 * k);
                if constexpr (kMin) {
                    const __m512i z = _mm512_setzero_si512();
                    const __m512i p = _mm512_dpbusd_epi32(z, wq[k], y), sy = _mm512_dpbusd_epi32(z, _mm512_set1_epi8(1), y);
                    __m512& ac = acc[r][k & 1];
                    ac = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(sel, d16), ac);
                    ac = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sy), _mm512_permutexvar_ps(sel, m16), ac);
                } else {
                    const __m512i p = dot_biased(wq[k], y, bias);
                    acc[r][k & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(sel, d16), acc[r][k & 1]);
                }
            }
        }
    }
    for (int r = 0; r < NR; ++r) {
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
        if (nb8 < nb) sum += tail((nb - nb8) * QK8_0, &w[nb8], act_row_q8_0(act, stride, r) + nb8);
        out[r] = sum;
    }
}

// Calls Kernel<NR>(args...) for a run-time nrows in [1, kMaxDotRows].
#define LOWBIT_ROWS_SWITCH(kernel, nrows, ...)            \
    switch (nrows) {                                      \
        case 1: kernel<1>(__VA_ARGS__); break;            \
        case 2: kernel<2>(__VA_ARGS__); break;            \
        case 3: kernel<3>(__VA_ARGS__); break;            \
        case 4: kernel<4>(__VA_ARGS__); break;            \
        case 5: kernel<5>(__VA_ARGS__); break;            \
        case 6: kernel<6>(__VA_ARGS__); break;            \
        case 7: kernel<7>(__VA_ARGS__); break;            \
        default: kernel<8>(__VA_ARGS__); break;           \
    }

// More than 4 rows: two passes (register pressure); the per-row arithmetic is unchanged.
#define LOWBIT_SPLIT_ROWS(NR, fn)                                                 \
    if constexpr (NR > 4) {                                                       \
        fn<4>(n, w, act, stride, out);                                            \
        fn<NR - 4>(n, w, static_cast<const uint8_t*>(act) + 4 * stride, stride, out + 4); \
        return;                                                                   \
    }

template <int NR>
void q4_0_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q4_0_rows_n)
    legacy_rows_512<NR>(n, static_cast<const block_q4_0*>(w), act, stride, out,
                        [](const block_q4_0* x) { return nibble_pair(x[0].qs, x[1].qs); },
                        _mm512_set1_epi8(8), vec_dot_q4_0_256);
}

template <int NR>
void q4_1_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q4_1_rows_n)
    legacy_rows_512<NR, true>(n, static_cast<const block_q4_1*>(w), act, stride, out,
                              [](const block_q4_1* x) { return nibble_pair(x[0].qs, x[1].qs); },
                              _mm512_setzero_si512(), vec_dot_q4_1_256);
}

template <int NR>
void q5_0_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q5_0_rows_n)
    legacy_rows_512<NR>(n, static_cast<const block_q5_0*>(w), act, stride, out,
                        [](const block_q5_0* x) { return q5_pair(x); }, _mm512_set1_epi8(16), vec_dot_q5_0_256);
}

template <int NR>
void q5_1_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q5_1_rows_n)
    legacy_rows_512<NR, true>(n, static_cast<const block_q5_1*>(w), act, stride, out,
                              [](const block_q5_1* x) { return q5_pair(x); }, _mm512_setzero_si512(),
                              vec_dot_q5_1_256);
}

template <int NR>
void q8_0_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q8_0_rows_n)
    legacy_rows_512<NR>(n, static_cast<const block_q8_0*>(w), act, stride, out,
                        [](const block_q8_0* x) {  // w + 128 is unsigned
                            const __m512i q = load2x256(reinterpret_cast<const uint8_t*>(x[0].qs), sizeof(block_q8_0));
                            return _mm512_xor_si512(q, _mm512_set1_epi8(char(0x80)));
                        },
                        _mm512_set1_epi8(char(0x80)), vec_dot_q8_0_256);
}

template <int NR>
void iq4_nl_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, iq4_nl_rows_n)
    legacy_rows_512<NR>(n, static_cast<const block_iq4_nl*>(w), act, stride, out,
                        [](const block_iq4_nl* x) {  // table value + 128 is unsigned
                            const __m512i table = _mm512_broadcast_i32x4(load128(kvalues_iq4nl));
                            const __m512i v = _mm512_shuffle_epi8(table, nibble_pair(x[0].qs, x[1].qs));
                            return _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80)));
                        },
                        _mm512_set1_epi8(char(0x80)), vec_dot_iq4_nl_256);
}

inline const block_q8_K* act_row_q8_K(const void* act, size_t stride, int r) {
    return reinterpret_cast<const block_q8_K*>(static_cast<const uint8_t*>(act) + size_t(r) * stride);
}

// Q4_K: per super-block the 4 nibble vectors (64 weights each) and their scale-word vectors are
// decoded once; each row then needs 4 x (maddubs + dpwssd), its min sum and the float update.
// Word-permute index: 128-bit lane j (8 words) takes word s0 + j.
inline __m512i lane_index4(int s0) {
    const __m256i lo = _mm256_inserti128_si256(_mm256_set1_epi16(short(s0)), _mm_set1_epi16(short(s0 + 1)), 1);
    const __m256i hi = _mm256_inserti128_si256(_mm256_set1_epi16(short(s0 + 2)), _mm_set1_epi16(short(s0 + 3)), 1);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The 12 packed bytes of Q4_K / Q5_K scales -> bytes 0..7 the 6-bit scales, 8..15 the mins
// (same values as unpack_k4_scales). Reads 16 bytes: the 4 after the scales are quant bytes.
inline __m128i unpack_k4_scales_v(const uint8_t* packed) {
    const __m128i s = load128(packed);
    // low bits: sc j<4: s[j] & 63, sc j>=4: s[j+4] & 15, m j<4: s[j+4] & 63, m j>=4: s[j+4] >> 4
    const __m128i a = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i a_hi = _mm_and_si128(_mm_srli_epi16(a, 4), _mm_set1_epi8(0x0F));
    const __m128i lo_mask = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
    const __m128i lo = _mm_or_si128(_mm_and_si128(a, lo_mask),
                                    _mm_and_si128(a_hi, _mm_setr_epi32(0, 0, 0, -1)));
    // high bits (j >= 4): sc: (s[j-4] >> 6) << 4, m: (s[j] >> 6) << 4
    const __m128i bsrc = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    return _mm_or_si128(lo, _mm_and_si128(_mm_srli_epi16(bsrc, 2), _mm_set1_epi8(0x30)));
}

// sum over the 8 sub-blocks of mins16[s] * (bsums[2s] + bsums[2s+1]).
inline int k4_min_sum_v(__m128i mins16, const int16_t* bsums) {
    const __m256i b = load256(bsums);
    const __m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    __m128i s = _mm_madd_epi16(mins16, pairs);
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// kQ5: Q5_K, whose fifth bit of sub-block s is bit s of qh[l].
template <int NR, bool kQ5, typename Block>
void k4_rows(int n, const Block* w, const void* act, size_t stride, float* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m128i sm = unpack_k4_scales_v(w[b].scales);
        const __m128i mins16 = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
        // scale words sc[0..7] in every 128-bit lane; per chunk c a byte shuffle picks sc[2c]
        // for the low 256 bits (low nibbles) and sc[2c+1] for the high 256 bits.
        const __m512i sc_all = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(sm));
        __m512i q[4], scale[4];
        __m512i qh2 = _mm512_setzero_si512();
        if constexpr (kQ5) qh2 = _mm512_broadcast_i64x4(load256(w[b].qh));
        for (int c = 0; c < 4; ++c) {
            q[c] = _mm512_and_si512(srli_halves<0, 4>(_mm512_broadcast_i64x4(load256(w[b].qs + 32 * c))), m4);
            if constexpr (kQ5) {  // bit 2c (low half) / 2c+1 (high half) of qh, moved to bit 4
                const __m512i t = _mm512_srli_epi16(qh2, unsigned(2 * c));
                const __m512i h = _mm512_and_si512(_mm512_mask_srli_epi16(t, __mmask32(0xFFFF0000u), t, 1), _mm512_set1_epi8(1));
                q[c] = _mm512_or_si512(q[c], _mm512_slli_epi16(h, 4));
            }
            const int lo = 0x0100 * (4 * c + 1) + 4 * c, hi = lo + 0x0202;  // byte pairs of words 2c, 2c+1
            scale[c] = _mm512_shuffle_epi8(sc_all, _mm512_inserti64x4(_mm512_set1_epi16(short(lo)), _mm256_set1_epi16(short(hi)), 1));
        }
        const float wd = h2f(w[b].d), wdmin = h2f(w[b].dmin);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const int summs = k4_min_sum_v(mins16, a->bsums);
            __m512i acc = _mm512_setzero_si512();
            for (int c = 0; c < 4; ++c) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q[c], load512(a->qs + 64 * c)), scale[c]);
            const int isum = _mm512_reduce_add_epi32(acc);
            const float dall = a->d * wd, dmin = a->d * wdmin;
            sumf[r] += dall * float(isum) - dmin * float(summs);
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

template <int NR>
void q4_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    k4_rows<NR, false>(n, static_cast<const block_q4_K*>(w), act, stride, out);
}

template <int NR>
void q5_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    k4_rows<NR, true>(n, static_cast<const block_q5_K*>(w), act, stride, out);
}

// Q2_K: per super-block four vectors of 64 two-bit values (half h, shifts j, j+1); one 16-weight
// sub-block per 128-bit lane, its 4-bit scale picked by a word permute; mins through bsums.
template <int NR>
void q2_K_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const block_q2_K*>(vw);
    const __m512i m3 = _mm512_set1_epi8(3);
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m128i sc8 = load128(w[b].scales);
        const __m512i sc_z = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(0x0F))));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)));
        __m512i q[4], scale[4];  // group g = 2h + j/2: elements 64g .. 64g+63 = sub-blocks 4g .. 4g+3
        for (int g = 0; g < 4; ++g) {
            const int h = g / 2, j = 2 * (g % 2);
            const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * j)), _mm256_set1_epi16(short(2 * j + 2)), 1);
            q[g] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(w[b].qs + 32 * h)), shift), m3);
            scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), sc_z);
        }
        const float wd = h2f(w[b].d), wdmin = h2f(w[b].dmin);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const int summs = hsum_i32(_mm256_madd_epi16(mins16, load256(a->bsums)));
            __m512i acc = _mm512_setzero_si512();
            for (int g = 0; g < 4; ++g) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q[g], load512(a->qs + 64 * g)), scale[g]);
            const int isum = _mm512_reduce_add_epi32(acc);
            const float dall = a->d * wd, dmin = a->d * wdmin;
            sumf[r] += dall * float(isum) - dmin * float(summs);
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// The 16 Q3_K sub-block scales (6-bit, bias 32 removed) as int8, vectorised from the 12 packed
// bytes s: scale j = low nibble (j < 8: s[j] & 15, else s[j-8] >> 4) | ((s[8 + j%4] >> 2*(j/4)) & 3) << 4.
// Reads 16 bytes (the 4 after the scales are the fp16 d and are ignored).
inline __m128i unpack_q3_K_scales_v(const uint8_t* packed) {
    const __m128i s = load128(packed);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i l = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(l, m4), _mm_and_si128(_mm_srli_epi16(_mm_unpackhi_epi64(l, l), 4), m4));
    const __m128i h = _mm_shuffle_epi8(s, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11));
    const __m128i h2 = _mm_and_si128(_mm_srlv_epi16(h, _mm_setr_epi16(0, 0, 2, 2, 4, 4, 6, 6)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(h2, 4)), _mm_set1_epi8(32));
}

// Q3_K: values q' = q + 4 * hbit in [0, 7] (weight = q' - 4); the -4 goes through bsums.
template <int NR>
void q3_K_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const block_q3_K*>(vw);
    const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m128i sc8 = unpack_q3_K_scales_v(w[b].scales);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        const __m512i sc_z = _mm512_castsi256_si512(sc16);
        const __m512i hm = _mm512_broadcast_i64x4(load256(w[b].hmask));
        __m512i q[4], scale[4];  // group g = 2h + sh/2: elements 128h + 32sh .. +63
        for (int g = 0; g < 4; ++g) {
            const int h = g / 2, sh = 2 * (g % 2);
            const __m512i qshift = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * sh)), _mm256_set1_epi16(short(2 * sh + 2)), 1);
            const __m512i hshift = _mm512_inserti64x4(_mm512_set1_epi16(short(4 * h + sh)), _mm256_set1_epi16(short(4 * h + sh + 1)), 1);
            const __m512i q2 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(w[b].qs + 32 * h)), qshift), m3);
            const __m512i hb = _mm512_and_si512(_mm512_srlv_epi16(hm, hshift), one);
            q[g] = _mm512_or_si512(q2, _mm512_slli_epi16(hb, 2));
            scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), sc_z);
        }
        const float wd = h2f(w[b].d);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const int offset = hsum_i32(_mm256_madd_epi16(sc16, load256(a->bsums)));  // sum sc * bsum
            __m512i acc = _mm512_setzero_si512();
            for (int g = 0; g < 4; ++g) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q[g], load512(a->qs + 64 * g)), scale[g]);
            const int isum = _mm512_reduce_add_epi32(acc) - 4 * offset;
            sumf[r] += (a->d * wd) * float(isum);
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// IQ4_XS: two 32-weight sub-blocks per vector; |value| and its sign mask are decoded once, each
// row negates its activations where the weight is negative (sign trick) and multiplies.
template <int NR>
void iq4_xs_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const block_iq4_xs*>(vw);
    const __m512i table = _mm512_broadcast_i32x4(load128(kvalues_iq4nl));
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        // the 8 scales ls - 32 as words: low 4 bits from scales_l nibbles, high 2 from scales_h
        uint32_t sl;
        std::memcpy(&sl, w[b].scales_l, 4);
        const __m128i l4 = _mm_cvtsi32_si128(int(sl));
        const __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(l4, _mm_set1_epi8(0x0F)),
                                             _mm_and_si128(_mm_srli_epi16(l4, 4), _mm_set1_epi8(0x0F)));
        const __m128i hi = _mm_and_si128(_mm_srlv_epi16(_mm_set1_epi16(short(w[b].scales_h)),
                                                        _mm_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14)), _mm_set1_epi16(3));
        const __m128i ls = _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(lo), _mm_slli_epi16(hi, 4)), _mm_set1_epi16(32));
        const __m512i sc_all = _mm512_broadcast_i32x4(ls);
        __m512i mag[4], scale[4];
        __mmask64 neg[4];
        for (int p = 0; p < 4; ++p) {  // sub-blocks 2p, 2p+1 = elements 64p .. 64p+63
            const __m512i v = _mm512_shuffle_epi8(table, nibble_pair(w[b].qs + 32 * p, w[b].qs + 32 * p + 16));
            mag[p] = _mm512_abs_epi8(v);
            neg[p] = _mm512_movepi8_mask(v);
            const int lo_pick = 0x0100 * (4 * p + 1) + 4 * p, hi_pick = lo_pick + 0x0202;  // words 2p, 2p+1
            scale[p] = _mm512_shuffle_epi8(sc_all, _mm512_inserti64x4(_mm512_set1_epi16(short(lo_pick)), _mm256_set1_epi16(short(hi_pick)), 1));
        }
        const float wd = h2f(w[b].d);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            __m512i acc = _mm512_setzero_si512();
            for (int p = 0; p < 4; ++p) {
                const __m512i y = load512(a->qs + 64 * p);
                const __m512i ys = _mm512_mask_sub_epi8(y, neg[p], _mm512_setzero_si512(), y);
                acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(mag[p], ys), scale[p]);
            }
            sumf[r] += (a->d * wd) * float(_mm512_reduce_add_epi32(acc));
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// Q6_K: per half super-block two vectors of 64 six-bit values; per 128-bit lane one sub-block scale.
template <int NR>
void q6_K_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const block_q6_K*>(vw);
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x30);
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < n / QK_K; ++b) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(load128(w[b].scales));
        const __m512i sc_z = _mm512_castsi256_si512(sc16);
        __m512i q[4], scale[4];  // group g: elements 64g .. 64g+63 = sub-blocks 4g .. 4g+3
        for (int half = 0; half < 2; ++half) {
            const __m512i ql = load512(w[b].ql + 64 * half);  // [ql0 | ql1]
            const __m512i hbits = srli_halves<0, 2>(_mm512_broadcast_i64x4(load256(w[b].qh + 32 * half)));
            q[2 * half] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_slli_epi16(hbits, 4), m2));
            q[2 * half + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(hbits, m2));
        }
        for (int g = 0; g < 4; ++g) {
            const int s0 = 4 * g;
            const __m512i idx = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_set1_epi16(short(s0)), _mm_set1_epi16(short(s0 + 1)), 1)),
                _mm256_inserti128_si256(_mm256_set1_epi16(short(s0 + 2)), _mm_set1_epi16(short(s0 + 3)), 1), 1);
            scale[g] = _mm512_permutexvar_epi16(idx, sc_z);
        }
        const float wd = h2f(w[b].d);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const int offset = hsum_i32(_mm256_madd_epi16(sc16, load256(a->bsums)));  // sum sc * bsum
            __m512i acc = _mm512_setzero_si512();
            for (int g = 0; g < 4; ++g) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q[g], load512(a->qs + 64 * g)), scale[g]);
            const int isum = _mm512_reduce_add_epi32(acc) - 32 * offset;
            sumf[r] += (a->d * wd) * float(isum);
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// Float weights x f32 activations: 2 accumulators of 16 lanes per row; masked tail.
template <int NR, typename Load16, typename LoadTail>
inline void float_rows_512(int n, const void* act, size_t stride, float* out, Load16 load16, LoadTail load_tail) {
    const float* a[NR];
    __m512 acc[NR][2];
    for (int r = 0; r < NR; ++r) {
        a[r] = reinterpret_cast<const float*>(static_cast<const uint8_t*>(act) + size_t(r) * stride);
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 w0 = load16(i), w1 = load16(i + 16);
        for (int r = 0; r < NR; ++r) {
            acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a[r] + i), acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(a[r] + i + 16), acc[r][1]);
        }
    }
    if (i + 16 <= n) {
        const __m512 w0 = load16(i);
        for (int r = 0; r < NR; ++r) acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(a[r] + i), acc[r][0]);
        i += 16;
    }
    if (i < n) {
        const __mmask16 m = __mmask16((1u << (n - i)) - 1);
        const __m512 w0 = load_tail(i, m);
        for (int r = 0; r < NR; ++r) acc[r][1] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, a[r] + i), acc[r][1]);
    }
    for (int r = 0; r < NR; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}

template <int NR>
void f32_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const float*>(vw);
    float_rows_512<NR>(n, act, stride, out, [w](int i) { return _mm512_loadu_ps(w + i); },
                       [w](int i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w + i); });
}

template <int NR>
void f16_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const uint16_t*>(vw);
    float_rows_512<NR>(n, act, stride, out, [w](int i) { return _mm512_cvtph_ps(load256(w + i)); },
                       [w](int i, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i)); });
}

inline __m512 bf16_to_f32(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }

template <int NR>
void bf16_rows_n(int n, const void* vw, const void* act, size_t stride, float* out) {
    const auto* w = static_cast<const uint16_t*>(vw);
    float_rows_512<NR>(n, act, stride, out, [w](int i) { return bf16_to_f32(load256(w + i)); },
                       [w](int i, __mmask16 m) { return bf16_to_f32(_mm256_maskz_loadu_epi16(m, w + i)); });
}

}  // namespace

#define LOWBIT_DOT_AND_ROWS(name)                                                                     \
    float vec_dot_##name(int n, const void* w, const void* a) {                                       \
        float out;                                                                                    \
        name##_rows_n<1>(n, w, a, 0, &out);                                                           \
        return out;                                                                                   \
    }                                                                                                 \
    void name##_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out) {   \
        LOWBIT_ROWS_SWITCH(name##_rows_n, nrows, n, w, act, stride, out)                              \
    }

LOWBIT_DOT_AND_ROWS(q4_0)
LOWBIT_DOT_AND_ROWS(q8_0)
LOWBIT_DOT_AND_ROWS(iq4_nl)
LOWBIT_DOT_AND_ROWS(q4_K)
LOWBIT_DOT_AND_ROWS(q6_K)
LOWBIT_DOT_AND_ROWS(q4_1)
LOWBIT_DOT_AND_ROWS(q5_0)
LOWBIT_DOT_AND_ROWS(q5_1)
LOWBIT_DOT_AND_ROWS(q5_K)
LOWBIT_DOT_AND_ROWS(f32)
LOWBIT_DOT_AND_ROWS(f16)
LOWBIT_DOT_AND_ROWS(bf16)
LOWBIT_DOT_AND_ROWS(q2_K)
LOWBIT_DOT_AND_ROWS(q3_K)
LOWBIT_DOT_AND_ROWS(iq4_xs)

// The activation quantizers stay 256-bit (a small share of a mat-vec).
void quantize_act_q8_0(const float* x, block_q8_0* y, int n) { quantize_act_q8_0_256(x, y, n); }
void quantize_act_q8_K(const float* x, block_q8_K* y, int n) { quantize_act_q8_K_256(x, y, n); }

extern const KernelSet kKernels = {
    "avx512",
    vec_dot_q4_0, vec_dot_q4_1, vec_dot_q5_0, vec_dot_q5_1, vec_dot_q8_0, vec_dot_iq4_nl,
    vec_dot_q2_K, vec_dot_q3_K, vec_dot_q4_K, vec_dot_q5_K, vec_dot_q6_K, vec_dot_iq4_xs,
    vec_dot_f32, vec_dot_f16, vec_dot_bf16,
    quantize_act_q8_0, quantize_act_q8_K,
    q4_0_rows, q4_1_rows, q5_0_rows, q5_1_rows, q8_0_rows, iq4_nl_rows,
    q2_K_rows, q3_K_rows, q4_K_rows, q5_K_rows, q6_K_rows, iq4_xs_rows, f32_rows, f16_rows, bf16_rows,
};

}  // namespace lowbit::cpu::avx512

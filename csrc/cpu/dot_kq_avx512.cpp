// dot_kq_avx512.cpp: the AVX-512 multi-row dots of the k-quants (Q2_K .. Q6_K) and IQ4_XS
// (kernels.h, VecDotRowsFn; the single-row dot is NR = 1, so mat-mat and mat-vec agree bit for
// bit). Split from dot_avx512.cpp; shared helpers in dot_avx512_common.h.
//
// Shapes: legacy dots take 8 blocks per batch, two blocks per zmm ([b lo|b hi|b+1 lo|b+1 hi]);
// k-quant dots decode a super-block into 4 zmm of 64 unsigned values plus int16 scale words (one
// sub-block per 128-bit lane or per 256-bit half), then per row maddubs (u8 x s8 -> s16 pairs) +
// dpwssd (x scale -> s32); Q4_K / Q5_K / Q6_K instead dpbusd (u8 x s8 -> s32 sums of 4, small
// enough for int16), two super-blocks' sums packed into words, one dpwssd by the scales (k4_group).
// Super-blocks go in groups of 4: their integer sums (and min sums) are reduced by one transpose-add
// tree, the scalar float step runs on 4 lanes with the same operations, and its results are added
// in super-block order, so the result is still the scalar spec's bit for bit (n % 1024 tail: one
// super-block at a time; Q4_K / Q5_K: one partial group of 1..3).
#pragma GCC optimize("fp-contract=off")
#include "cpu/dot_avx512_common.h"
#include "common.h"

namespace lowbit::cpu::avx512 {
namespace {

// Per 128-bit lane sum pairs of sub-block products: 16 int32 whose total is the block's isum.
inline __m512i k4_products(const __m512i q[4], const __m512i scale[4], const int8_t* y) {
    __m512i acc = _mm512_setzero_si512();
    for (int c = 0; c < 4; ++c) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(q[c], load512(y + 64 * c)), scale[c]);
    return acc;
}

// The lane sums of four int32 vectors: [sum a[0], sum a[1], sum a[2], sum a[3]].
inline __m128i reduce4_epi32(const __m512i a[4]) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
    // every 128-bit lane: partial sums [a0, a1, a2, a3]
    const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// [sum of the low 256 bits of m01, of its high 256 bits, the same two of m23].
inline __m128i reduce_halves_epi32(__m512i m01, __m512i m23) {
    const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi32(m01, m23), _mm512_unpackhi_epi32(m01, m23));
    const __m512i s2 = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_ENUM(0x4E)));  // lane: [m01, m23, m01, m23]
    const __m512i h = _mm512_add_epi32(s2, _mm512_shuffle_i64x2(s2, s2, _MM_SHUFFLE(2, 3, 0, 1)));
    // lane 0: [m01 low, m23 low, ..], lane 2: [m01 high, m23 high, ..]
    return _mm_unpacklo_epi32(_mm512_castsi512_si128(h), _mm512_extracti32x4_epi32(h, 2));
}

// sum + t[0] + t[1] + t[2] + t[3], added in that order (the scalar spec's super-block order).
inline float add4_in_order(float sum, __m128 t) {
    __m128 s = _mm_set_ss(sum);
    s = _mm_add_ss(s, t);
    s = _mm_add_ss(s, _mm_movehdup_ps(t));
    s = _mm_add_ss(s, _mm_movehl_ps(t, t));
    s = _mm_add_ss(s, _mm_shuffle_ps(t, t, _MM_SHUFFLE(3, 3, 3, 3)));
    return _mm_cvtss_f32(s);
}

inline uint32_t load_u32(const void* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// sum + t[0] + .. + t[C-1], added in that order (the scalar spec's super-block order).
template <int C>
inline float add_in_order(float sum, __m128 t) {
    if constexpr (C == 4) return add4_in_order(sum, t);
    __m128 s = _mm_add_ss(_mm_set_ss(sum), t);
    if constexpr (C > 1) s = _mm_add_ss(s, _mm_movehdup_ps(t));
    if constexpr (C > 2) s = _mm_add_ss(s, _mm_movehl_ps(t, t));
    return _mm_cvtss_f32(s);
}

// The bsums of activation super-blocks j, j + 1 (32 words) as one zmm; those at or past C read as 0.
template <int C>
LOWBIT_HOT __m512i bsums_pair(const block_q8_K* a, int j) {
    const auto* bs = reinterpret_cast<const uint8_t*>(a[j].bsums);
    if (j + 1 < C) return load2x256(bs, sizeof(block_q8_K));
    if (j < C) return _mm512_zextsi256_si512(load256(bs));
    return _mm512_setzero_si512();
}

// fp16 (d, dmin) of C (1..4) super-blocks of a k-quant with mins -> [d0..d3 | dmin0..dmin3] (0 past C).
template <int C, typename Block>
LOWBIT_HOT __m256 min_k_wdd(const Block* w) {
    auto dd_of = [w](int j) { return j < C ? int(load_u32(&w[j].d)) : 0; };
    const __m128i dd = _mm_setr_epi32(dd_of(0), dd_of(1), dd_of(2), dd_of(3));
    return _mm256_permutexvar_ps(_mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7), _mm256_cvtph_ps(dd));
}

// One row's float step of C (1..4) super-blocks of a k-quant with mins (Q2_K, Q4_K, Q5_K): sums =
// [isum 0..3 | summs 0..3], a = the row's first activation super-block. Per super-block dall *
// isum - dmin * summs on 4 lanes (lanes past C: 0, nothing past the C super-blocks is read), then
// added in super-block order (the scalar spec's operations and order).
template <int C>
LOWBIT_HOT float min_k_float_row(float sum, __m256 wdd, const block_q8_K* a, __m256i sums) {
    auto ad_of = [a](int j) { return j < C ? a[j].d : 0.0f; };
    const __m128 ad = _mm_setr_ps(ad_of(0), ad_of(1), ad_of(2), ad_of(3));
    const __m256 p = _mm256_mul_ps(_mm256_mul_ps(_mm256_set_m128(ad, ad), wdd), _mm256_cvtepi32_ps(sums));  // [dall * isum | dmin * summs]
    return add_in_order<C>(sum, _mm_sub_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1)));
}

// The float step of 4 super-blocks (Q2_K) for NR rows: acc[r][j] totals isum of super-block j,
// mw01 / mw23 hold the 16 min words of super-blocks 0, 1 (2, 3) matching bsums.
template <int NR, typename Block>
LOWBIT_HOT void min_k_float4(const Block* w, const void* act, size_t stride, int b, const __m512i (*acc)[4], __m512i mw01,
                             __m512i mw23, float* sumf) {
    const __m256 wdd = min_k_wdd<4>(w);
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
        const __m128i isum = reduce4_epi32(acc[r]);
        const __m128i summs = reduce_halves_epi32(_mm512_madd_epi16(mw01, bsums_pair<4>(a, 0)),
                                                  _mm512_madd_epi16(mw23, bsums_pair<4>(a, 2)));
        sumf[r] = min_k_float_row<4>(sumf[r], wdd, a, _mm256_inserti128_si256(_mm256_castsi128_si256(isum), summs, 1));
    }
}

// Q4_K / Q5_K products of a pair of super-blocks (2p, 2p+1): per chunk c and row, dpbusd gives
// 16 dwords of 4 products each (|.| <= 4 * 31 * 128 < 2^15, so packs_epi32 keeps them exactly);
// the two super-blocks' dwords are packed into words (per 128-bit lane: 4 of 2p, then 4 of 2p+1)
// and dpwssd multiplies them by their sub-block scales (kK4ScaleIdx) into the pair's accumulator:
// per 128-bit lane dwords 0-1 total super-block 2p, 2-3 super-block 2p+1.
// Scale-word index of pair p, chunk c: lane k (sub-block 2c in lanes 0-1, 2c+1 in lanes 2-3), word i
// -> word 8 * (2p + i / 4) + sub-block of sc_words (128-bit lane j = super-block j's 8 scales).
struct K4ScaleIdx { int16_t w[2][4][32]; };
constexpr K4ScaleIdx kK4ScaleIdx = [] {
    K4ScaleIdx t{};
    for (int p = 0; p < 2; ++p)
        for (int c = 0; c < 4; ++c)
            for (int k = 0; k < 4; ++k)
                for (int i = 0; i < 8; ++i) t.w[p][c][8 * k + i] = int16_t(8 * (2 * p + i / 4) + 2 * c + k / 2);
    return t;
}();

// [isum 0..3 | summs 0..3] from the pair accumulators acc01, acc23 (above) and the min products
// m01 / m23 (dwords 0-7: super-block 0 / 2, 8-15: super-block 1 / 3): 128-bit shuffles and adds.
LOWBIT_HOT __m256i k4_sums8(__m512i acc01, __m512i acc23, __m512i m01, __m512i m23) {
    auto pick = [](__m512i x, __m512i y, auto imm) {
        return _mm512_castps_si512(_mm512_shuffle_ps(_mm512_castsi512_ps(x), _mm512_castsi512_ps(y), decltype(imm)::value));
    };
    using Even = std::integral_constant<int, 0x88>;  // [x0, x2, y0, y2] per lane
    using Odd = std::integral_constant<int, 0xDD>;   // [x1, x3, y1, y3]
    const __m512i is = _mm512_add_epi32(pick(acc01, acc23, Even{}), pick(acc01, acc23, Odd{}));  // lane: [s0 s1 s2 s3]
    const __m512i ms = _mm512_add_epi32(pick(m01, m23, Even{}), pick(m01, m23, Odd{}));  // lanes 0-1: [m0 m0 m2 m2], 2-3: [m1 m1 m3 m3]
    const __m512i z = _mm512_add_epi32(_mm512_shuffle_i64x2(is, ms, _MM_SHUFFLE(2, 0, 1, 0)),
                                       _mm512_shuffle_i64x2(is, ms, _MM_SHUFFLE(3, 1, 3, 2)));
    // z: [is0 + is2, is1 + is3, ms0 + ms1 = [m0 m0 m2 m2], ms2 + ms3 = [m1 m1 m3 m3]]
    const __m512i lo = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 1, 2, 3, 8, 12, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0), z);
    const __m512i hi = _mm512_permutexvar_epi32(_mm512_setr_epi32(4, 5, 6, 7, 9, 13, 11, 15, 0, 0, 0, 0, 0, 0, 0, 0), z);
    return _mm256_add_epi32(_mm512_castsi512_si256(lo), _mm512_castsi512_si256(hi));
}

// Super-blocks b .. b+C-1 (C = 1..4) of a Q4_K / Q5_K row for NR rows: chunk by chunk, each pair of
// super-blocks decoded once for all rows; the integer sums of the C super-blocks are reduced
// together and the float step runs on 4 lanes with the scalar spec's operations (dall * isum -
// dmin * summs per super-block), then adds into sumf in super-block order.
template <int NR, bool kQ5, int C, typename Block>
LOWBIT_HOT void k4_group(const Block* w, const void* act, size_t stride, int b, float* sumf) {
    const __m512i sm = unpack_k4_scales_x4(w, C);  // lane j: super-block j
    const __m512i sc_words = _mm512_unpacklo_epi8(sm, _mm512_setzero_si512());
    const __m512i zero = _mm512_setzero_si512();
    __m512i acc[NR][2];
    for (int p = 0; p < 2; ++p) {
        for (int r = 0; r < NR; ++r) acc[r][p] = zero;
        if (2 * p >= C) continue;
        const bool second = 2 * p + 1 < C;
        for (int c = 0; c < 4; ++c) {
            const __m512i q0 = k4_chunk<kQ5>(w[2 * p], c);
            const __m512i q1 = second ? k4_chunk<kQ5>(w[2 * p + 1], c) : zero;
            const __m512i scale = _mm512_permutexvar_epi16(_mm512_loadu_si512(kK4ScaleIdx.w[p][c]), sc_words);
            for (int r = 0; r < NR; ++r) {
                const block_q8_K* a = act_row_q8_K(act, stride, r) + b + 2 * p;
                const __m512i p0 = _mm512_dpbusd_epi32(zero, q0, load512(a[0].qs + 64 * c));
                const __m512i p1 = second ? _mm512_dpbusd_epi32(zero, q1, load512(a[1].qs + 64 * c)) : zero;
                acc[r][p] = _mm512_dpwssd_epi32(acc[r][p], _mm512_packs_epi32(p0, p1), scale);
            }
        }
    }
    // the mins of super-blocks 0, 1 (2, 3) as 2 x 16 words, each twice: min s pairs with bsums 2s, 2s+1
    const __m512i mins_dup = _mm512_unpackhi_epi8(sm, sm);
    const __m512i mw01 = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(mins_dup));
    const __m512i mw23 = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(mins_dup, 1));
    const __m256 wdd = min_k_wdd<C>(w);
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
        const __m256i sums = k4_sums8(acc[r][0], acc[r][1], _mm512_madd_epi16(mw01, bsums_pair<C>(a, 0)),
                                      _mm512_madd_epi16(mw23, bsums_pair<C>(a, 2)));
        sumf[r] = min_k_float_row<C>(sumf[r], wdd, a, sums);
    }
}

// The last count (1..3) super-blocks of a row as one group (kept out of line: inlined, it made the
// main loop of k4_rows slower).
template <int NR, bool kQ5, typename Block>
__attribute__((noinline)) void k4_partial_group(int count, const Block* w, const void* act, size_t stride, int b, float* sumf) {
    prefetch_ahead(w, count * sizeof(Block));
    switch (count) {
        case 1: k4_group<NR, kQ5, 1>(w, act, stride, b, sumf); break;
        case 2: k4_group<NR, kQ5, 2>(w, act, stride, b, sumf); break;
        default: k4_group<NR, kQ5, 3>(w, act, stride, b, sumf); break;
    }
}

// Groups of 4 super-blocks, then the last nsb % 4 as one partial group (short rows, such as a
// MoE expert's 768 columns = 3 super-blocks, take the 4-lane path too).
template <int NR, bool kQ5, typename Block>
void k4_rows(int n, const Block* w, const void* act, size_t stride, float* out) {
    const int nsb = n / QK_K, nsb4 = nsb / 4 * 4;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < nsb4; b += 4) {
        prefetch_ahead(w + b, 4 * sizeof(Block));
        k4_group<NR, kQ5, 4>(w + b, act, stride, b, sumf);
    }
    if (nsb4 < nsb) k4_partial_group<NR, kQ5>(nsb - nsb4, w + nsb4, act, stride, nsb4, sumf);
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

template <int NR>
void q4_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q4_K_rows_n)
    k4_rows<NR, false>(n, static_cast<const block_q4_K*>(w), act, stride, out);
}

template <int NR>
void q5_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q5_K_rows_n)
    k4_rows<NR, true>(n, static_cast<const block_q5_K*>(w), act, stride, out);
}

// Q2_K: per super-block four vectors of 64 two-bit values (half h, shifts j, j+1); one 16-weight
// sub-block per 128-bit lane, its 4-bit scale picked by a word permute; mins through bsums.
// Returns the 16 mins as words (min s pairs with bsums[s]).
inline __m256i q2_K_decode(const block_q2_K& x, __m512i q[4], __m512i scale[4]) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i sc8 = load128(x.scales);
    const __m512i sc_z = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, _mm_set1_epi8(0x0F))));
    for (int g = 0; g < 4; ++g) {  // group g = 2h + j/2: elements 64g .. 64g+63 = sub-blocks 4g .. 4g+3
        const int h = g / 2, j = 2 * (g % 2);
        const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * j)), _mm256_set1_epi16(short(2 * j + 2)), 1);
        q[g] = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(x.qs + 32 * h)), shift), m3);
        scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), sc_z);
    }
    return _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0x0F)));
}

template <int NR>
void q2_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q2_K_rows_n)
    const auto* x = static_cast<const block_q2_K*>(w);
    const int nsb = n / QK_K, nsb4 = nsb / 4 * 4;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < nsb4; b += 4) {  // groups of 4 super-blocks, as k4_group4
        prefetch_ahead(x + b, 4 * sizeof(block_q2_K));
        __m512i acc[NR][4];
        __m256i mins[4];
        for (int j = 0; j < 4; ++j) {
            __m512i q[4], scale[4];
            mins[j] = q2_K_decode(x[b + j], q, scale);
            for (int r = 0; r < NR; ++r) acc[r][j] = k4_products(q, scale, (act_row_q8_K(act, stride, r) + b + j)->qs);
        }
        const __m512i mw01 = _mm512_inserti64x4(_mm512_castsi256_si512(mins[0]), mins[1], 1);
        const __m512i mw23 = _mm512_inserti64x4(_mm512_castsi256_si512(mins[2]), mins[3], 1);
        min_k_float4<NR>(x + b, act, stride, b, acc, mw01, mw23, sumf);
    }
    for (int b = nsb4; b < nsb; ++b) {  // the last nsb % 4 super-blocks one at a time
        prefetch_ahead(x + b, sizeof(block_q2_K));
        __m512i q[4], scale[4];
        const __m256i mins16 = q2_K_decode(x[b], q, scale);
        const float wd = h2f(x[b].d), wdmin = h2f(x[b].dmin);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const int summs = hsum_i32(_mm256_madd_epi16(mins16, load256(a->bsums)));
            const int isum = _mm512_reduce_add_epi32(k4_products(q, scale, a->qs));
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
    const __m128i s = _mm_maskz_loadu_epi8(0x0FFF, packed);   // the 12 bytes only: d ends the block
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i l = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m128i low = _mm_unpacklo_epi64(_mm_and_si128(l, m4), _mm_and_si128(_mm_srli_epi16(_mm_unpackhi_epi64(l, l), 4), m4));
    const __m128i h = _mm_shuffle_epi8(s, _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11));
    const __m128i h2 = _mm_and_si128(_mm_srlv_epi16(h, _mm_setr_epi16(0, 0, 2, 2, 4, 4, 6, 6)), _mm_set1_epi8(3));
    return _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(h2, 4)), _mm_set1_epi8(32));
}

// Q3_K, Q6_K, IQ4_XS add (a.d * d) * isum per super-block. decode(x) runs once per super-block
// for all rows; products(decoded, a) gives 16 int32 lanes totalling that row's isum. Groups of 4
// super-blocks reduce their sums together and run the float step on 4 lanes, then add into
// sumf in super-block order: the scalar spec's operations and order (bit-exact).
template <int NR, typename Block, typename Decode, typename Products>
inline void scaled_k_rows(int n, const Block* x, const void* act, size_t stride, float* out, Decode decode,
                          Products products) {
    // more than 4 rows: 4 x NR accumulators would not fit the registers, one super-block at a time
    const int nsb = n / QK_K, nsb4 = NR <= 4 ? nsb / 4 * 4 : 0;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    if constexpr (NR <= 4) for (int b = 0; b < nsb4; b += 4) {
        prefetch_ahead(x + b, 4 * sizeof(Block));
        __m512i acc[NR][4];
        for (int j = 0; j < 4; ++j) {
            const auto dec = decode(x[b + j]);
            for (int r = 0; r < NR; ++r) acc[r][j] = products(dec, act_row_q8_K(act, stride, r) + b + j);
        }
        const __m128 wd = _mm_cvtph_ps(_mm_setr_epi16(short(x[b].d), short(x[b + 1].d), short(x[b + 2].d), short(x[b + 3].d), 0, 0, 0, 0));
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            const __m128 ad = _mm_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d);
            sumf[r] = add4_in_order(sumf[r], _mm_mul_ps(_mm_mul_ps(ad, wd), _mm_cvtepi32_ps(reduce4_epi32(acc[r]))));
        }
    }
    for (int b = nsb4; b < nsb; ++b) {  // the last nsb % 4 super-blocks (all for NR > 4) one at a time
        prefetch_ahead(x + b, sizeof(Block));
        const auto dec = decode(x[b]);
        const float wd = h2f(x[b].d);
        for (int r = 0; r < NR; ++r) {
            const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
            sumf[r] += (a->d * wd) * float(_mm512_reduce_add_epi32(products(dec, a)));
        }
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

// Q3_K: values q' = q + 4 * hbit in [0, 7] (weight = q' - 4); the -4 goes through bsums.
struct Q3KDecoded { __m512i q[4], scale[4]; __m256i sc16; };

inline Q3KDecoded q3_K_decode(const block_q3_K& x) {
    const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
    Q3KDecoded d;
    d.sc16 = _mm256_cvtepi8_epi16(unpack_q3_K_scales_v(x.scales));
    const __m512i sc_z = _mm512_castsi256_si512(d.sc16);
    const __m512i hm = _mm512_broadcast_i64x4(load256(x.hmask));
    for (int g = 0; g < 4; ++g) {  // group g = 2h + sh/2: elements 128h + 32sh .. +63
        const int h = g / 2, sh = 2 * (g % 2);
        const __m512i qshift = _mm512_inserti64x4(_mm512_set1_epi16(short(2 * sh)), _mm256_set1_epi16(short(2 * sh + 2)), 1);
        const __m512i hshift = _mm512_inserti64x4(_mm512_set1_epi16(short(4 * h + sh)), _mm256_set1_epi16(short(4 * h + sh + 1)), 1);
        const __m512i q2 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(x.qs + 32 * h)), qshift), m3);
        const __m512i hb = _mm512_and_si512(_mm512_srlv_epi16(hm, hshift), one);
        d.q[g] = _mm512_or_si512(q2, _mm512_slli_epi16(hb, 2));
        d.scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), sc_z);
    }
    return d;
}

// 16 int32 lanes totalling sum sc * q' * y - Shift-scaled sum sc * bsum (Q3_K: 4 = 1 << 2,
// Q6_K: 32 = 1 << 5): the offset joins the lanes instead of a reduction of its own.
template <int Shift, typename Decoded>
inline __m512i offset_products(const Decoded& d, const block_q8_K* a) {
    __m512i acc = _mm512_setzero_si512();
    for (int g = 0; g < 4; ++g) acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(d.q[g], load512(a->qs + 64 * g)), d.scale[g]);
    const __m256i offset = _mm256_madd_epi16(d.sc16, load256(a->bsums));  // sc * bsum pairs
    return _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(offset, Shift)));
}

template <int NR>
void q3_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q3_K_rows_n)  // grouped super-blocks in both passes (faster than per super-block here)
    scaled_k_rows<NR>(n, static_cast<const block_q3_K*>(w), act, stride, out, q3_K_decode, offset_products<2, Q3KDecoded>);
}

// IQ4_XS: two 32-weight sub-blocks per vector; |value| and its sign mask are decoded once, each
// row negates its activations where the weight is negative (sign trick) and multiplies.
struct Iq4xsDecoded { __m512i mag[4], scale[4]; __mmask64 neg[4]; };

inline Iq4xsDecoded iq4_xs_decode(const block_iq4_xs& x) {
    const __m512i table = _mm512_broadcast_i32x4(load128(kvalues_iq4nl));
    // the 8 scales ls - 32 as words: low 4 bits from scales_l nibbles, high 2 from scales_h
    const __m128i l4 = _mm_cvtsi32_si128(int(load_u32(x.scales_l)));
    const __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(l4, _mm_set1_epi8(0x0F)),
                                         _mm_and_si128(_mm_srli_epi16(l4, 4), _mm_set1_epi8(0x0F)));
    const __m128i hi = _mm_and_si128(_mm_srlv_epi16(_mm_set1_epi16(short(x.scales_h)),
                                                    _mm_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14)), _mm_set1_epi16(3));
    const __m128i ls = _mm_sub_epi16(_mm_or_si128(_mm_cvtepu8_epi16(lo), _mm_slli_epi16(hi, 4)), _mm_set1_epi16(32));
    const __m512i sc_all = _mm512_broadcast_i32x4(ls);
    Iq4xsDecoded d;
    for (int p = 0; p < 4; ++p) {  // sub-blocks 2p, 2p+1 = elements 64p .. 64p+63
        const __m512i v = _mm512_shuffle_epi8(table, nibble_pair(x.qs + 32 * p, x.qs + 32 * p + 16));
        d.mag[p] = _mm512_abs_epi8(v);
        d.neg[p] = _mm512_movepi8_mask(v);
        const int lo_pick = 0x0100 * (4 * p + 1) + 4 * p, hi_pick = lo_pick + 0x0202;  // words 2p, 2p+1
        d.scale[p] = _mm512_shuffle_epi8(sc_all, _mm512_inserti64x4(_mm512_set1_epi16(short(lo_pick)), _mm256_set1_epi16(short(hi_pick)), 1));
    }
    return d;
}

// 16 int32 lanes whose total is the super-block's integer sum.
inline __m512i iq4_xs_products(const Iq4xsDecoded& d, const block_q8_K* a) {
    __m512i acc = _mm512_setzero_si512();
    for (int p = 0; p < 4; ++p) {
        const __m512i y = load512(a->qs + 64 * p);
        const __m512i ys = _mm512_mask_sub_epi8(y, d.neg[p], _mm512_setzero_si512(), y);
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(d.mag[p], ys), d.scale[p]);
    }
    return acc;
}

template <int NR>
void iq4_xs_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    // no row split: for NR > 4 one super-block at a time beats two grouped passes here
    scaled_k_rows<NR>(n, static_cast<const block_iq4_xs*>(w), act, stride, out, iq4_xs_decode, iq4_xs_products);
}


// Q6_K groups of 4 super-blocks as Q4_K's (k4_group): per chunk and row dpbusd of the unsigned q (|sum of 4| <= 4 *
// 63 * 128 < 2^15: packs is exact), two super-blocks' sums packed into words and scaled by one
// dpwssd; the -32 offset (32 * sum sc * bsum) reduced beside the sums (k4_sums8's min lanes) and
// taken off the integer sums: the same isum, and the float step (a.d * d) * isum of the spec.
// Scale-word index of chunk g in a pair's 32 scale words (word 16 i + s: sub-block s of the
// pair's super-block i): lane k (sub-block 4g + k), words 0-3 super-block 0, 4-7 super-block 1.
struct Q6ScaleIdx { int16_t w[4][32]; };
constexpr Q6ScaleIdx kQ6ScaleIdx = [] {
    Q6ScaleIdx t{};
    for (int g = 0; g < 4; ++g)
        for (int k = 0; k < 4; ++k)
            for (int i = 0; i < 8; ++i) t.w[g][8 * k + i] = int16_t(16 * (i / 4) + 4 * g + k);
    return t;
}();

template <int NR>
LOWBIT_HOT void q6_K_group4(const block_q6_K* x, const void* act, size_t stride, int b, float* sumf) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i acc[NR][2], off[NR][2];
    for (int p = 0; p < 2; ++p) {
        __m512i q0[4], q1[4];
        q6_K_quants(x[2 * p], q0);
        q6_K_quants(x[2 * p + 1], q1);
        const __m512i scw = _mm512_cvtepi8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(load128(x[2 * p].scales)),
                                                                         load128(x[2 * p + 1].scales), 1));
        for (int r = 0; r < NR; ++r) {
            acc[r][p] = zero;
            off[r][p] = _mm512_madd_epi16(scw, bsums_pair<4>(act_row_q8_K(act, stride, r) + b, 2 * p));
        }
        for (int g = 0; g < 4; ++g) {
            const __m512i scale = _mm512_permutexvar_epi16(_mm512_loadu_si512(kQ6ScaleIdx.w[g]), scw);
            for (int r = 0; r < NR; ++r) {
                const block_q8_K* a = act_row_q8_K(act, stride, r) + b + 2 * p;
                const __m512i p0 = _mm512_dpbusd_epi32(zero, q0[g], load512(a[0].qs + 64 * g));
                const __m512i p1 = _mm512_dpbusd_epi32(zero, q1[g], load512(a[1].qs + 64 * g));
                acc[r][p] = _mm512_dpwssd_epi32(acc[r][p], _mm512_packs_epi32(p0, p1), scale);
            }
        }
    }
    const __m128 wd = _mm_cvtph_ps(_mm_setr_epi16(short(x[0].d), short(x[1].d), short(x[2].d), short(x[3].d), 0, 0, 0, 0));
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(act, stride, r) + b;
        const __m256i sums = k4_sums8(acc[r][0], acc[r][1], off[r][0], off[r][1]);  // [sum sc q y | sum sc bsum]
        const __m128i isum = _mm_sub_epi32(_mm256_castsi256_si128(sums), _mm_slli_epi32(_mm256_extracti128_si256(sums, 1), 5));
        const __m128 ad = _mm_setr_ps(a[0].d, a[1].d, a[2].d, a[3].d);
        sumf[r] = add4_in_order(sumf[r], _mm_mul_ps(_mm_mul_ps(ad, wd), _mm_cvtepi32_ps(isum)));
    }
}

// One Q6_K super-block for NR rows (a row's last n_sb % 4): maddubs + dpwssd per chunk and the
// -32 offset in the same lanes (offset_products), reduced alone. Faster here than a partial group
// (a MoE expert's down rows, 3 super-blocks: ~8% at NR 2), whose packs and dpwssd run half empty.
template <int NR>
inline void q6_K_one(const block_q6_K& x, const block_q8_K* a0, size_t stride, float* sumf) {
    struct { __m512i q[4], scale[4]; __m256i sc16; } dec;
    q6_K_quants(x, dec.q);
    dec.sc16 = _mm256_cvtepi8_epi16(load128(x.scales));
    for (int g = 0; g < 4; ++g) dec.scale[g] = _mm512_permutexvar_epi16(lane_index4(4 * g), _mm512_castsi256_si512(dec.sc16));
    const float wd = h2f(x.d);
    for (int r = 0; r < NR; ++r) {
        const block_q8_K* a = act_row_q8_K(a0, stride, r);
        sumf[r] += (a->d * wd) * float(_mm512_reduce_add_epi32(offset_products<5>(dec, a)));
    }
}

template <int NR>
void q6_K_rows_n(int n, const void* w, const void* act, size_t stride, float* out) {
    LOWBIT_SPLIT_ROWS(NR, q6_K_rows_n)
    const auto* x = static_cast<const block_q6_K*>(w);
    const int nsb = n / QK_K, nsb4 = nsb / 4 * 4;
    float sumf[NR];
    for (int r = 0; r < NR; ++r) sumf[r] = 0.0f;
    for (int b = 0; b < nsb4; b += 4) {
        prefetch_ahead(x + b, 4 * sizeof(block_q6_K));
        q6_K_group4<NR>(x + b, act, stride, b, sumf);
    }
    for (int b = nsb4; b < nsb; ++b) {
        prefetch_ahead(x + b, sizeof(block_q6_K));
        q6_K_one<NR>(x[b], act_row_q8_K(act, stride, 0) + b, stride, sumf);
    }
    for (int r = 0; r < NR; ++r) out[r] = sumf[r];
}

}  // namespace

LOWBIT_DOT_AND_ROWS(q4_K)
LOWBIT_DOT_AND_ROWS(q6_K)
LOWBIT_DOT_AND_ROWS(q5_K)
LOWBIT_DOT_AND_ROWS(q2_K)
LOWBIT_DOT_AND_ROWS(q3_K)
LOWBIT_DOT_AND_ROWS(iq4_xs)

}  // namespace lowbit::cpu::avx512

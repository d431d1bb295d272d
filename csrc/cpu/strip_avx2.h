// strip_avx2.h: the AVX2 strip GEMM (kernels.h, StripLayout) and packed GEMMs (PackedLayout) of
// the types with a packed layout (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS): prefill, small
// batches and one-token decode on CPUs without AVX-512, all with the same integer sums and float
// steps. Included by dot_avx2.cpp only, after dot_x86_256.h (load256, load128, bits_to_bytes_32).
//
// The strips are the AVX-512 ones (16 weight rows interleaved by dword, per block the rows'
// scales and mins) and so are the activation groups; a 256-bit register holds 8 of the 16 rows,
// so the GEMM runs the strip as two halves. Without VNNI a u8 x s8 dword is maddubs (pairs into
// int16) + madd (pairs into int32). maddubs saturates past 32767, so:
//   unsigned weights (u <= 15 / 31 / 63: Q4_0 Q4_1 Q4_K, Q5_0 Q5_1 Q5_K, Q6_K; 7: Q2_K Q3_K) add
//     the int16 pair sums of kSum groups before one madd: kSum * 2 * umax * 128 <= 32767 (8, 4,
//     2 groups; Q2_K / Q3_K: a 16-element block's 4);
//   Q8_0, IQ4_NL and IQ4_XS keep their signed weights (bias 0, not AVX-512's 128, whose u reach 255) and
//     take the sign trick per group, |w| x (a with w's sign), one madd per group.
// Every block sum is exact in int32, as AVX-512's, and the float steps per block are its steps in
// its order (x = float(isum) * d_a; acc = fma(x, dw, acc); with a min acc = fma(mw, s_a, acc)):
// tier 1 to the scalar spec, and by construction the AVX-512 GEMM's outputs (not tested: no
// machine here has run both sets since this was written).
#pragma once
#include <algorithm>

#include "cpu/weight_stream.h"

#if LOWBIT_VNNI
#error "strip_avx2.h is the maddubs strip GEMM: include it from dot_avx2.cpp only"
#endif

namespace lowbit::cpu::avx2 {
namespace {

// ---- the GEMM ---------------------------------------------------------------------------------
// One GEMM over a weight source: Src gives, per strip block b, group g and half h (8 rows), the
// rows' u bytes (signed weights where kSum == 0) and their scales and mins:
//   Src::kBlock     elements per strip block (32, or 16 for Q6_K)
//   Src::kSum       groups whose maddubs int16 pair sums add before one madd (0: signed weights,
//                   the sign trick and one madd per group)
//   Src::kMin       whether mw is read
//   Src::kUnroll    blocks per run of the loop (b0 a multiple of it, block b0 + bi)
//   u(b0, bi, g, h), dw(b0, bi, h), mw(b0, bi, h), and step(): the source's bytes per strip block
//   (requests ahead)
// Decoded strips (StripLayout) are one source; packed strips (PackedLayout, read in place) the
// others, which also name their kType and the strip's kBias (u - weight), so a token's mat-vec on packed rows and a prefill through decoded strips take the same
// integer sums and float steps: the same bits, batched or not.
template <int Block, int kSumGroups, bool kHasMin>
struct DecodedSrc {
    static constexpr int kBlock = Block, kSum = kSumGroups;
    static constexpr bool kMin = kHasMin;
    static constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block);
    const uint8_t* s;
    static constexpr int kUnroll = 1;
    DecodedSrc(const void* strip, int) : s(static_cast<const uint8_t*>(strip)) {}
    __m256i u(int b, int, int g, int h) const { return _mm256_load_si256(reinterpret_cast<const __m256i*>(s + b * kBytes + 64 * g + 32 * h)); }
    __m256 dw(int b, int, int h) const { return _mm256_load_ps(reinterpret_cast<const float*>(s + b * kBytes + kD + 32 * h)); }
    __m256 mw(int b, int, int h) const { return _mm256_load_ps(reinterpret_cast<const float*>(s + b * kBytes + kD + 64 + 32 * h)); }
    int64_t step() const { return kBytes; }
};

// Packed legacy strips (kernels.h PackedLayout): Q4 nibbles (part k: group k low, group k + 4
// high), Q5 the same plus qh words (bits 32h.. of word g: group g of rows 8h..8h+7), Q8 signed
// bytes by group, IQ4_NL Q4's nibbles as codebook indices (the signed values, |w| <= 127, take
// Q8_0's sign trick); fp16 scales and mins per block and row. kBias: the strip's u - weight.
template <GGMLType T>
struct PackedLegacySrc {
    static constexpr GGMLType kType = T;
    static constexpr bool kQ5 = T == GGMLType::Q5_0 || T == GGMLType::Q5_1, kQ8 = T == GGMLType::Q8_0;
    static constexpr bool kNL = T == GGMLType::IQ4_NL;   // Q4_0's nibbles, each looked up in kvalues_iq4nl: signed
    static constexpr int kBlock = 32, kSum = kQ8 || kNL ? 0 : kQ5 ? 4 : 8;
    static constexpr bool kMin = T == GGMLType::Q4_1 || T == GGMLType::Q5_1;
    static constexpr int kBias = T == GGMLType::Q4_0 ? 8 : T == GGMLType::Q5_0 ? 16 : 0;
    static constexpr int64_t kQs = kQ8 ? 512 : 256;
    static constexpr int kUnroll = 1;
    const uint8_t *qs, *qh, *d, *m;
    int64_t bytes_per_block;
    PackedLegacySrc(const void* strip, int n) {
        const PackedLayout L(T, n);
        const auto* s = static_cast<const uint8_t*>(strip);
        qs = s + L.qs, qh = s + L.qh, d = s + L.d, m = s + L.m;
        bytes_per_block = L.bytes_per_block(n, kBlock);
    }
    __m256i u(int b, int, int g, int h) const {
        if constexpr (kQ8) return load256(qs + b * kQs + 64 * g + 32 * h);
        const __m256i q = load256(qs + b * kQs + 64 * (g % 4) + 32 * h);
        __m256i v = _mm256_and_si256(g < 4 ? q : _mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
        if constexpr (kNL) return iq4nl_values(v);
        if constexpr (kQ5)
            v = _mm256_or_si256(v, _mm256_and_si256(bits_to_bytes_32(qh + b * 64 + 8 * g + 4 * h), _mm256_set1_epi8(0x10)));
        return v;
    }
    __m256 dw(int b, int, int h) const { return _mm256_cvtph_ps(load128(d + b * 32 + 16 * h)); }
    __m256 mw(int b, int, int h) const { return _mm256_cvtph_ps(load128(m + b * 32 + 16 * h)); }
    int64_t step() const { return bytes_per_block; }
};

// Packed k-quant strips (kernels.h PackedLayout): per super-block a record of dword runs (run w:
// dword w of the 16 rows), then fp16 d (and dmin) per super-block and row. Strip block b is
// sub-block b % (256 / kBlock) of super-block b / (256 / kBlock).
// The 6-bit (Q4_K, Q5_K) and int8 (Q6_K) scales are taken out of their runs per lane; dw and mw
// are the products d * sc and -dmin * m (AVX-512's decoders' floats).
// What every packed super-block source shares (kernels.h PackedRecordView: the records, fp16 d
// and m arrays, bytes per strip block): a record's run w for rows 8h..8h+7, scale shifts, halves.
struct PackedRecords : PackedRecordView {
    PackedRecords(GGMLType t, const void* strip, int n, int block) : PackedRecordView(t, strip, n, block) {}
    // Run w of super-block sb (at record offset off), rows 8h..8h+7.
    __m256i run(int sb, int64_t off, int w, int h) const { return load256(rec + sb * sb_bytes + off + 64 * w + 32 * h); }
    // Every dword lane of v shifted right by c (a scale field out of its run).
    static __m256i srl32(__m256i v, int c) { return _mm256_srl_epi32(v, _mm_cvtsi32_si128(c)); }
    // The fp16 values of super-block sb's rows 8h..8h+7 in array p (d or m).
    __m256 half_f16(const uint8_t* p, int sb, int h) const { return _mm256_cvtph_ps(load128(p + (int64_t(sb) * kStripRows + 8 * h) * 2)); }
    int64_t step() const { return bytes_per_block; }
};

template <GGMLType T>
struct PackedKqSrc : PackedRecords {
    static constexpr GGMLType kType = T;
    static constexpr bool kQ5 = T == GGMLType::Q5_K, kQ6 = T == GGMLType::Q6_K;
    static constexpr int kBlock = kQ6 ? 16 : 32;
    static constexpr int kSum = kQ6 ? 2 : kQ5 ? 4 : 8;
    static constexpr bool kMin = !kQ6;
    static constexpr int kBias = kQ6 ? 32 : 0;
    static constexpr int kPerSb = QK_K / kBlock;
    // Blocks per run of the GEMM loop, unrolled so that a sub-block's shifts are immediates and a
    // super-block's d / dmin conversions are shared (b0: a multiple of it; bi < kUnroll).
    static constexpr int kUnroll = kQ6 ? 4 : 8;
    static constexpr int64_t kQh = 2048, kScales = kQ6 ? 3072 : kQ5 ? 2560 : 2048;
    PackedKqSrc(const void* strip, int n) : PackedRecords(T, strip, n, kBlock) {}
    __m256i u(int b0, int bi, int g, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        if constexpr (kQ6) {
            const int e = 16 * s + 4 * g, hf = e / 128, j = (e % 128) / 32, l = e % 32;   // Q6_K's element order
            const __m256i ql = run(sb, 0, 16 * hf + 8 * (j % 2) + l / 4, h), qh = run(sb, kQh, 8 * hf + l / 4, h);
            const __m256i lo = _mm256_and_si256(j < 2 ? ql : _mm256_srli_epi16(ql, 4), _mm256_set1_epi8(0x0F));
            const __m128i sh = _mm_cvtsi32_si128(2 * j);
            return _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(_mm256_srl_epi16(qh, sh), 4), _mm256_set1_epi8(0x30)));
        } else {
            const __m256i q = run(sb, 0, 8 * (s / 2) + g, h);   // low nibbles: sub-block 2c, high: 2c + 1
            __m256i v = _mm256_and_si256(s % 2 ? _mm256_srli_epi16(q, 4) : q, _mm256_set1_epi8(0x0F));
            if constexpr (kQ5) {
                const __m256i qh = _mm256_srl_epi16(run(sb, kQh, g, h), _mm_cvtsi32_si128(s));
                v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(1)), 4));
            }
            return v;
        }
    }
    // Q4_K / Q5_K: the 6-bit scale (min_part false) or min of sub-block s per lane.
    __m256i k4_scale(int sb, int s, int h, bool min_part) const {
        const __m256i d0 = run(sb, kScales, 0, h), d1 = run(sb, kScales, 1, h), d2 = run(sb, kScales, 2, h);
        const __m256i m6 = _mm256_set1_epi32(63), m4 = _mm256_set1_epi32(15), m2 = _mm256_set1_epi32(3);
        if (s < 4) return _mm256_and_si256(srl32(min_part ? d1 : d0, 8 * s), m6);
        const int t = s - 4;
        const __m256i low = _mm256_and_si256(srl32(d2, 8 * t + (min_part ? 4 : 0)), m4);
        const __m256i high = _mm256_and_si256(srl32(min_part ? d1 : d0, 8 * t + 6), m2);
        return _mm256_or_si256(low, _mm256_slli_epi32(high, 4));
    }
    __m256 dw(int b0, int bi, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        if constexpr (kQ6) {
            const __m256i sc = _mm256_srai_epi32(_mm256_sll_epi32(run(sb, kScales, s / 4, h), _mm_cvtsi32_si128(24 - 8 * (s % 4))), 24);
            return _mm256_mul_ps(half_f16(d, sb, h), _mm256_cvtepi32_ps(sc));
        } else {
            return _mm256_mul_ps(_mm256_cvtepi32_ps(k4_scale(sb, s, h, false)), half_f16(d, sb, h));
        }
    }
    __m256 mw(int b0, int bi, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const __m256 neg_dmin = _mm256_xor_ps(half_f16(m, sb, h), _mm256_set1_ps(-0.0f));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(k4_scale(sb, s, h, true)), neg_dmin);
    }
};

// Packed Q2_K / Q3_K strips (kernels.h PackedLayout): strip block b (16 elements) is sub-block
// s = b % 16 of super-block b / 16. Element e = 128 hf + 32 j + l of a super-block is bits 2j..2j+1
// of qs byte 32 hf + l (Q3_K: plus 4 when bit 4 hf + j of hmask byte l is set), so group g of
// sub-block s (4 consecutive l) is one qs dword run (and one hmask run): u = q2 (| hbit << 2), bias
// 0 / 4, u <= 7: the int16 pair sums of a block's 4 groups add before one madd. Scales per lane:
// Q2_K 4-bit scale and min bytes (dw = d * sc, mw = -dmin * m), Q3_K the 6-bit scales of its 12
// bytes (dw = d * (sc - 32)); every product exact in f32.
template <GGMLType T>
struct PackedQ23Src : PackedRecords {
    static constexpr GGMLType kType = T;
    static constexpr bool kQ3 = T == GGMLType::Q3_K;
    static constexpr int kBlock = 16, kSum = 4, kBias = kQ3 ? 4 : 0, kPerSb = QK_K / 16, kUnroll = 16;   // a whole super-block: every shift an immediate
    static constexpr bool kMin = !kQ3;
    static constexpr int64_t kQs = kQ3 ? 512 : 256, kScales = kQ3 ? 1536 : 0;
    PackedQ23Src(const void* strip, int n) : PackedRecords(T, strip, n, kBlock) {}
    __m256i u(int b0, int bi, int g, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const int e = 16 * s + 4 * g, hf = e / 128, j = (e % 128) / 32, l = e % 32;
        const __m256i q = run(sb, kQs, 8 * hf + l / 4, h);
        __m256i v = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j)), _mm256_set1_epi8(3));
        if constexpr (kQ3) {   // hmask bit 4 hf + j moved to bit 2 with one shift
            const __m256i hm = run(sb, 0, l / 4, h);
            const int c = 4 * hf + j - 2;
            const __m256i hs = c >= 0 ? _mm256_srl_epi16(hm, _mm_cvtsi32_si128(c)) : _mm256_sll_epi16(hm, _mm_cvtsi32_si128(-c));
            v = _mm256_or_si256(v, _mm256_and_si256(hs, _mm256_set1_epi8(4)));
        }
        return v;
    }
    __m256 dw(int b0, int bi, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        __m256i sc;
        if constexpr (kQ3) {   // byte s of ggml's unpacked scales: low 4 bits from dword (s / 4) % 2, high 2 from dword 2
            const __m256i lo = _mm256_and_si256(srl32(run(sb, kScales, (s / 4) % 2, h), 8 * (s % 4) + 4 * (s / 8)), _mm256_set1_epi32(15));
            const __m256i hi = _mm256_and_si256(srl32(run(sb, kScales, 2, h), 8 * (s % 4) + 2 * (s / 4)), _mm256_set1_epi32(3));
            sc = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
        } else {
            sc = _mm256_and_si256(srl32(run(sb, kScales, s / 4, h), 8 * (s % 4)), _mm256_set1_epi32(15));
        }
        return _mm256_mul_ps(half_f16(d, sb, h), _mm256_cvtepi32_ps(sc));
    }
    __m256 mw(int b0, int bi, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const __m256i mn = _mm256_and_si256(srl32(run(sb, kScales, s / 4, h), 8 * (s % 4) + 4), _mm256_set1_epi32(15));
        return _mm256_mul_ps(_mm256_xor_ps(half_f16(m, sb, h), _mm256_set1_ps(-0.0f)), _mm256_cvtepi32_ps(mn));
    }
};

// Packed IQ4_XS strips (kernels.h PackedLayout): the k-quant record (qs[32][16][4], then
// scales_l[1][16][4]), fp16 d per super-block and row, and the rows' uint16 scales_h where the
// k-quants keep dmin. Strip block b is sub-block s = b % 8 of super-block b / 8: its nibbles are qs
// dwords 4s..4s+3 (low: elements 0..15, high: 16..31, as Q4_0), looked up in kvalues_iq4nl
// (signed: Q8_0's sign trick), and dw = d * (ls - 32), exact in f32 (ls: the 6-bit scale).
struct PackedIq4xsSrc : PackedRecords {
    static constexpr GGMLType kType = GGMLType::IQ4_XS;
    static constexpr int kBlock = 32, kSum = 0, kBias = 0, kPerSb = QK_K / 32, kUnroll = 8;
    static constexpr bool kMin = false;
    static constexpr int64_t kScalesL = 2048;
    PackedIq4xsSrc(const void* strip, int n) : PackedRecords(kType, strip, n, kBlock) {}
    __m256i u(int b0, int bi, int g, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const __m256i q = run(sb, 0, 4 * s + g % 4, h);
        const __m256i v = _mm256_and_si256(g < 4 ? q : _mm256_srli_epi16(q, 4), _mm256_set1_epi8(0x0F));
        return iq4nl_values(v);
    }
    __m256 dw(int b0, int bi, int h) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const __m256i sl = run(sb, kScalesL, 0, h);   // scales_l dword of rows 8h..8h+7
        const __m256i hi = _mm256_cvtepu16_epi32(load128(m + (int64_t(sb) * kStripRows + 8 * h) * 2));   // scales_h
        const __m256i lo4 = _mm256_and_si256(srl32(sl, 4 * s), _mm256_set1_epi32(15));
        const __m256i hi2 = _mm256_and_si256(srl32(hi, 2 * s), _mm256_set1_epi32(3));
        const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(lo4, _mm256_slli_epi32(hi2, 4)), _mm256_set1_epi32(32));
        return _mm256_mul_ps(half_f16(d, sb, h), _mm256_cvtepi32_ps(ls));
    }
    __m256 mw(int, int, int) const { return _mm256_setzero_ps(); }
};

// Activation slots s0 .. s0 + NR against halves h0 .. h0 + H of the weight rows:
// out[r * kStripRows + 8 h + j] for slot s0 + r. With `ahead`, block b also requests the lines
// [b, b + 1) * step of ahead (up to ahead_end): over a call, one strip's bytes ahead.
template <class Src, int NR, int H>
__attribute__((always_inline)) inline void gemm_tile(int n, const Src& src, const uint8_t* act, int s0, int h0,
                                                     float* out, const uint8_t* ahead, const uint8_t* ahead_end) {
    constexpr int Block = Src::kBlock, kGroups = Block / 4, kSum = Src::kSum;
    constexpr int64_t kAct = StripActLayout::block_bytes(Block), kCorr = StripActLayout::corr(Block),
                      kAd = StripActLayout::d(Block), kAs = StripActLayout::s(Block);
    auto i32 = [](const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; };
    auto f32 = [](const uint8_t* p) { float v; std::memcpy(&v, p, 4); return v; };
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t step = ahead ? src.step() : 0;
    __m256 acc[H][NR];
    for (int h = 0; h < H; ++h)
        for (int r = 0; r < NR; ++r) acc[h][r] = _mm256_setzero_ps();
    for (int b0 = 0; b0 < n / Block; b0 += Src::kUnroll)
#pragma GCC unroll 16
    for (int bi = 0; bi < Src::kUnroll; ++bi) {   // a run of kUnroll blocks: bi known to the compiler
        const int b = b0 + bi;
        const SpreadRequests<> rq(ahead, ahead_end, b, step);
        const uint8_t* pa = act + int64_t(b) * kAct + 4 * s0;                 // slot s0's corr / d / s lanes
        const uint8_t* qa = act + int64_t(b) * kAct + int64_t(s0) * Block;   // slot s0's quants
        __m256i isum[H][NR];
        for (int h = 0; h < H; ++h)
            for (int r = 0; r < NR; ++r) isum[h][r] = _mm256_set1_epi32(i32(pa + kCorr + 4 * r));
        if constexpr (kSum == 0) {
            for (int g = 0; g < kGroups; ++g)
                for (int h = 0; h < H; ++h) {
                    if (h == 0) rq.slot(g);
                    const __m256i w = src.u(b0, bi, g, h0 + h), aw = _mm256_sign_epi8(w, w);
                    for (int r = 0; r < NR; ++r) {
                        const __m256i a = _mm256_sign_epi8(_mm256_set1_epi32(i32(qa + r * Block + 4 * g)), w);
                        isum[h][r] = _mm256_add_epi32(isum[h][r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, a), ones));
                    }
                }
        } else {
            for (int g0 = 0; g0 < kGroups; g0 += kSum) {
                __m256i s16[H][NR];
                for (int g = g0; g < g0 + kSum; ++g)
                    for (int h = 0; h < H; ++h) {
                        if (h == 0) rq.slot(g);
                        const __m256i w = src.u(b0, bi, g, h0 + h);
                        for (int r = 0; r < NR; ++r) {
                            const __m256i p = _mm256_maddubs_epi16(w, _mm256_set1_epi32(i32(qa + r * Block + 4 * g)));
                            s16[h][r] = g == g0 ? p : _mm256_add_epi16(s16[h][r], p);
                        }
                    }
                for (int h = 0; h < H; ++h)
                    for (int r = 0; r < NR; ++r) isum[h][r] = _mm256_add_epi32(isum[h][r], _mm256_madd_epi16(s16[h][r], ones));
            }
        }
        rq.rest(kGroups);
        for (int h = 0; h < H; ++h) {
            const __m256 dw = src.dw(b0, bi, h0 + h);
            for (int r = 0; r < NR; ++r)
                acc[h][r] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(isum[h][r]), _mm256_set1_ps(f32(pa + kAd + 4 * r))), dw, acc[h][r]);
            if constexpr (Src::kMin) {
                const __m256 mw = src.mw(b0, bi, h0 + h);
                for (int r = 0; r < NR; ++r) acc[h][r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(f32(pa + kAs + 4 * r)), acc[h][r]);
            }
        }
    }
    for (int h = 0; h < H; ++h)
        for (int r = 0; r < NR; ++r) _mm256_storeu_ps(out + r * kStripRows + 8 * (h0 + h), acc[h][r]);
}

// StripGemmFn on a source: one or two slots over both halves at once (a decode step: each weight
// byte read once), more in passes of up to four slots, half by half (3 x NR + 3 registers).
template <class Src>
void src_gemm(int n, const void* strip, const void* act_group, int nact, float* out, const uint8_t* ahead = nullptr,
              const uint8_t* ahead_end = nullptr) {
    const Src src(strip, n);
    const auto* a = static_cast<const uint8_t*>(act_group);
    if (nact == 1) return gemm_tile<Src, 1, 2>(n, src, a, 0, 0, out, ahead, ahead_end);
    if (nact == 2) return gemm_tile<Src, 2, 2>(n, src, a, 0, 0, out, ahead, ahead_end);
    for (int r0 = 0; r0 < nact; r0 += 4) {
        float* o = out + r0 * kStripRows;
        for (int h = 0; h < 2; ++h) {
            switch (std::min(4, nact - r0)) {
                case 1: gemm_tile<Src, 1, 1>(n, src, a, r0, h, o, nullptr, nullptr); break;
                case 2: gemm_tile<Src, 2, 1>(n, src, a, r0, h, o, nullptr, nullptr); break;
                case 3: gemm_tile<Src, 3, 1>(n, src, a, r0, h, o, nullptr, nullptr); break;
                default: gemm_tile<Src, 4, 1>(n, src, a, r0, h, o, nullptr, nullptr); break;
            }
        }
    }
}
template <class Src>
void src_gemm_fn(int n, const void* strip, const void* act_group, int nact, float* out) {
    src_gemm<Src>(n, strip, act_group, nact, out);
}
// StripGemvFn: one token on a packed strip, requesting the strip's bytes from `ahead` on.
template <class Src>
void src_gemv_fn(int n, const void* strip, const void* act_group, int nact, float* out, const void* ahead,
                 const void* ahead_end) {
    src_gemm<Src>(n, strip, act_group, nact, out, static_cast<const uint8_t*>(ahead), static_cast<const uint8_t*>(ahead_end));
}
// StripDecodeFn from a packed strip (weight_rows: its first byte; all 16 rows): its groups, scales
// and mins written out as a decoded strip.
template <class Src>
void src_to_strip(int n, const void* packed, size_t, int, void* strip_out) {
    const Src src(packed, n);
    constexpr int Block = Src::kBlock;
    constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block);
    auto* s = static_cast<uint8_t*>(strip_out);
    for (int b0 = 0; b0 < n / Block; b0 += Src::kUnroll)
        for (int bi = 0; bi < Src::kUnroll; ++bi)
            for (int h = 0; h < 2; ++h) {
                const int64_t b = b0 + bi;
                for (int g = 0; g < Block / 4; ++g)
                    _mm256_store_si256(reinterpret_cast<__m256i*>(s + b * kBytes + 64 * g + 32 * h), src.u(b0, bi, g, h));
                _mm256_store_ps(reinterpret_cast<float*>(s + b * kBytes + kD + 32 * h), src.dw(b0, bi, h));
                _mm256_store_ps(reinterpret_cast<float*>(s + b * kBytes + kD + 64 + 32 * h),
                                Src::kMin ? src.mw(b0, bi, h) : _mm256_setzero_ps());
            }
}

// StripDecodeFn from GGML rows (unpacked weights: LOWBIT_REPACK=0, cpu.matmul): the rows packed
// into the thread's buffer (kernels.h pack_rows, a byte permutation), then read as a packed strip,
// so the packed sources above are the one decoder of every type.
template <class Src>
void strip_decode(int n, const void* weights, size_t row_bytes, int nrows, void* strip_out) {
    src_to_strip<Src>(n, pack_rows_scratch(Src::kType, nrows, n, weights, row_bytes), 0, kStripRows, strip_out);
}

// Src::kType's entry: the strip GEMM on decoded strips (their source: DecodedSrc of the same
// block, sum groups and mins), and the packed GEMMs of Src.
template <class Src>
void add_strip(KernelSet& k) {
    using Decoded = DecodedSrc<Src::kBlock, Src::kSum, Src::kMin>;
    StripKernels& sk = k[Src::kType].strip;
    sk = {strip_decode<Src>, src_gemm_fn<Decoded>, Src::kBlock, Src::kBias};
    sk.packed = src_gemm_fn<Src>;
    sk.packed_to_strip = src_to_strip<Src>;
    sk.packed_gemv = src_gemv_fn<Src>;
}

// The strip entries of the AVX2 set: (decode, gemm, block, bias) as kernels.h's StripKernels, and
// their packed GEMMs (the packed rows read in place). Only types with a packed layout get a strip:
// a type whose decode stayed a dot per row would take another float order batched than alone.
void add_strips_avx2(KernelSet& k) {
    add_strip<PackedLegacySrc<GGMLType::Q4_0>>(k);
    add_strip<PackedLegacySrc<GGMLType::Q4_1>>(k);
    add_strip<PackedLegacySrc<GGMLType::Q5_0>>(k);
    add_strip<PackedLegacySrc<GGMLType::Q5_1>>(k);
    add_strip<PackedLegacySrc<GGMLType::Q8_0>>(k);
    add_strip<PackedLegacySrc<GGMLType::IQ4_NL>>(k);
    add_strip<PackedKqSrc<GGMLType::Q4_K>>(k);
    add_strip<PackedKqSrc<GGMLType::Q5_K>>(k);
    add_strip<PackedKqSrc<GGMLType::Q6_K>>(k);
    add_strip<PackedIq4xsSrc>(k);
    add_strip<PackedQ23Src<GGMLType::Q2_K>>(k);
    add_strip<PackedQ23Src<GGMLType::Q3_K>>(k);
}

}  // namespace
}  // namespace lowbit::cpu::avx2

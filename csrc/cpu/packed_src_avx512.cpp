// packed_src_avx512.cpp: the AVX-512 strip entries of IQ4_NL, IQ4_XS, Q2_K and Q3_K on packed
// strips (kernels.h, PackedLayout): one GEMM over a weight source, strip_avx2.h's design with a
// zmm holding all 16 rows of a group and VNNI dpbusd for the u8 x s8 dwords. Each source turns the
// packed bytes into the strip GEMM's unsigned values in registers:
//   IQ4_NL  Q4_0's packed nibbles, one vpshufb into kvalues_iq4nl + 128         bias 128
//   IQ4_XS  its k-quant-style record (qs runs, scales_l run; scales_h in m)     bias 128
//   Q2_K    2-bit fields of the qs runs, 4-bit scales and mins                  bias 0, min
//   Q3_K    the same plus hmask bit 2 (u <= 7), 6-bit scales - 32               bias 4
// The one-token gemv, the few-row GEMM, packed -> StripLayout (for prefill: the decoded strips
// then go through strip_avx512.cpp's strip GEMM and packed_avx512.cpp's pair GEMM) and the GGML
// rows -> strip decoder (the rows packed, then read as a packed strip: one decoder per type).
//
// Arithmetic: the strip GEMM's (strip_avx512.cpp, strip_gemm_n): per block and output lane an
// exact int32 sum started at the activation's corr (-bias * sum(a)), then acc = fma(float(isum) *
// d_a, dw, acc) and, with a min, acc = fma(mw, s_a, acc), blocks in order; dw = d * sc and mw =
// -dmin * m are exact f32 products of the fp16 scales. So every path here gives the strip GEMM's
// bits on the decoded strip, and the AVX2 set's (same sums and steps; test_packed checks both).
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include <algorithm>

#include "cpu/dot_avx512_common.h"   // LOWBIT_HOT, with_act_rows, act_i32 / act_f32, iq4nl_u8_table
#include "cpu/kernels.h"
#include "cpu/strip_iq.h"
#include "cpu/weight_stream.h"

namespace lowbit::cpu::avx512 {
namespace {

// The fp16 values of the 16 rows at p, as f32.
LOWBIT_HOT __m512 f16x16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

// Nibbles of q: the low ones (high = false) or the high ones, as bytes 0..15.
LOWBIT_HOT __m512i nibbles(__m512i q, bool high) {
    return _mm512_and_si512(high ? _mm512_srli_epi16(q, 4) : q, _mm512_set1_epi8(0x0F));
}

// ---- the sources ---------------------------------------------------------------------------------
// A source gives, per strip block b = b0 + bi (b0 a multiple of kUnroll, bi < kUnroll, so that
// an unrolled run's shifts are immediates) and group g, the 16 rows' unsigned values u(b0, bi, g),
// their scales dw(b0, bi) and mins mw(b0, bi), and step(): the strip's bytes per block (requests
// ahead). kType, kBlock, kBias (u - weight) and kMin name the strip entry.

// Packed IQ4_NL strips: Q4_0's arrays (qs part k: group k low nibbles, group k + 4 high; fp16 d).
struct Iq4nlSrc {
    static constexpr GGMLType kType = GGMLType::IQ4_NL;
    static constexpr int kBlock = 32, kBias = 128, kUnroll = 1;
    static constexpr bool kMin = false;
    const uint8_t *qs, *d;
    int64_t bytes_per_block;
    __m512i table;
    Iq4nlSrc(const void* strip, int n) : table(iq4nl_u8_table()) {
        const PackedLayout L(kType, n);
        qs = static_cast<const uint8_t*>(strip) + L.qs, d = static_cast<const uint8_t*>(strip) + L.d;
        bytes_per_block = L.bytes_per_block(n, kBlock);
    }
    LOWBIT_HOT __m512i u(int b, int, int g) const {
        return _mm512_shuffle_epi8(table, nibbles(_mm512_loadu_si512(qs + int64_t(b) * 256 + 64 * (g % 4)), g >= 4));
    }
    LOWBIT_HOT __m512 dw(int b, int) const { return f16x16(d + int64_t(b) * 32); }
    LOWBIT_HOT __m512 mw(int, int) const { return _mm512_setzero_ps(); }
    int64_t step() const { return bytes_per_block; }
};

// What the super-block sources share (kernels.h PackedRecordView): run w of a record.
struct Records : PackedRecordView {
    Records(GGMLType t, const void* strip, int n, int block) : PackedRecordView(t, strip, n, block) {}
    LOWBIT_HOT __m512i run(int sb, int64_t off, int w) const { return _mm512_loadu_si512(rec + sb * sb_bytes + off + 64 * w); }
    int64_t step() const { return bytes_per_block; }
};

// Packed IQ4_XS: strip block b is sub-block s = b % 8 of super-block b / 8; its nibbles are qs runs
// 4s..4s+3 (low: elements 0..15, high: 16..31); dw = d * (ls - 32), ls = 4 bits of the scales_l
// dword | 2 bits of the uint16 scales_h << 4.
struct Iq4xsSrc : Records {
    static constexpr GGMLType kType = GGMLType::IQ4_XS;
    static constexpr int kBlock = 32, kBias = 128, kPerSb = QK_K / 32, kUnroll = 8;
    static constexpr bool kMin = false;
    static constexpr int64_t kScalesL = 2048;
    __m512i table;
    Iq4xsSrc(const void* strip, int n) : Records(kType, strip, n, kBlock), table(iq4nl_u8_table()) {}
    LOWBIT_HOT __m512i u(int b0, int bi, int g) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        return _mm512_shuffle_epi8(table, nibbles(run(sb, 0, 4 * s + g % 4), g >= 4));
    }
    LOWBIT_HOT __m512 dw(int b0, int bi) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const __m512i lo4 = _mm512_and_si512(_mm512_srli_epi32(run(sb, kScalesL, 0), 4 * s), _mm512_set1_epi32(15));
        const __m512i sh = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + int64_t(sb) * 32)));
        const __m512i hi2 = _mm512_and_si512(_mm512_srli_epi32(sh, 2 * s), _mm512_set1_epi32(3));
        const __m512i ls = _mm512_sub_epi32(_mm512_or_si512(lo4, _mm512_slli_epi32(hi2, 4)), _mm512_set1_epi32(32));
        return _mm512_mul_ps(f16x16(d + int64_t(sb) * 32), _mm512_cvtepi32_ps(ls));
    }
    LOWBIT_HOT __m512 mw(int, int) const { return _mm512_setzero_ps(); }
};

// Packed Q2_K / Q3_K: strip block b (16 elements) is sub-block s = b % 16 of super-block b / 16.
// Element e = 128 hf + 32 j + l of a super-block is bits 2j..2j+1 of qs byte 32 hf + l (Q3_K:
// plus 4 when bit 4 hf + j of hmask byte l is set), so group g of sub-block s is one qs run (and
// one hmask run). Q2_K: dw = d * sc, mw = -dmin * m (its 4-bit scale and min bytes); Q3_K: dw =
// d * (sc - 32) (6 bits from its 12 scale bytes).
template <GGMLType T>
struct Q23Src : Records {
    static constexpr GGMLType kType = T;
    static constexpr bool kQ3 = T == GGMLType::Q3_K;
    static constexpr int kBlock = 16, kBias = kQ3 ? 4 : 0, kPerSb = QK_K / 16, kUnroll = 16;
    static constexpr bool kMin = !kQ3;
    static constexpr int64_t kQs = kQ3 ? 512 : 256, kScales = kQ3 ? 1536 : 0;
    Q23Src(const void* strip, int n) : Records(T, strip, n, kBlock) {}
    LOWBIT_HOT __m512i u(int b0, int bi, int g) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const int e = 16 * s + 4 * g, hf = e / 128, j = (e % 128) / 32, l = e % 32;
        __m512i v = _mm512_and_si512(_mm512_srli_epi16(run(sb, kQs, 8 * hf + l / 4), 2 * j), _mm512_set1_epi8(3));
        if constexpr (kQ3) {   // hmask bit 4 hf + j moved to bit 2 with one shift
            const __m512i hm = run(sb, 0, l / 4);
            const int c = 4 * hf + j - 2;
            const __m512i hs = c >= 0 ? _mm512_srli_epi16(hm, c) : _mm512_slli_epi16(hm, -c);
            v = _mm512_or_si512(v, _mm512_and_si512(hs, _mm512_set1_epi8(4)));
        }
        return v;
    }
    LOWBIT_HOT __m512 dw(int b0, int bi) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        __m512i sc;
        if constexpr (kQ3) {   // byte s of ggml's unpacked scales: low 4 bits from dword (s / 4) % 2, high 2 from dword 2
            const __m512i lo = _mm512_and_si512(_mm512_srli_epi32(run(sb, kScales, (s / 4) % 2), 8 * (s % 4) + 4 * (s / 8)), _mm512_set1_epi32(15));
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(run(sb, kScales, 2), 8 * (s % 4) + 2 * (s / 4)), _mm512_set1_epi32(3));
            sc = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
        } else {
            sc = _mm512_and_si512(_mm512_srli_epi32(run(sb, kScales, s / 4), 8 * (s % 4)), _mm512_set1_epi32(15));
        }
        return _mm512_mul_ps(f16x16(d + int64_t(sb) * 32), _mm512_cvtepi32_ps(sc));
    }
    LOWBIT_HOT __m512 mw(int b0, int bi) const {
        const int sb = b0 / kPerSb, s = b0 % kPerSb + bi;
        const __m512i mn = _mm512_and_si512(_mm512_srli_epi32(run(sb, kScales, s / 4), 8 * (s % 4) + 4), _mm512_set1_epi32(15));
        return _mm512_mul_ps(_mm512_xor_ps(f16x16(m + int64_t(sb) * 32), _mm512_set1_ps(-0.0f)), _mm512_cvtepi32_ps(mn));
    }
};

// ---- the GEMM ----------------------------------------------------------------------------------
// NR activation rows x the strip's 16 rows; C independent dpbusd chains per row (latency, for one
// or two rows). With `ahead` (the one-token gemv), block b also requests lines [b, b + 1) * step
// of ahead and the same lines kGemvFar further (weight_stream.h).
template <class Src, int NR>
__attribute__((hot)) void src_gemm_n(int n, const void* strip, const void* act_group, float* out,
                                     const uint8_t* ahead = nullptr, const uint8_t* ahead_end = nullptr) {
    constexpr int B = Src::kBlock, G = B / 4, C = std::min(G, NR <= 2 ? 4 : NR <= 4 ? 2 : 1);
    constexpr int64_t kAct = StripActLayout::block_bytes(B), kCorr = StripActLayout::corr(B),
                      kAd = StripActLayout::d(B), kAs = StripActLayout::s(B);
    const Src src(strip, n);
    const auto* a0 = static_cast<const uint8_t*>(act_group);
    const int64_t step = ahead ? src.step() : 0;
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int b0 = 0; b0 < n / B; b0 += Src::kUnroll)
#pragma GCC unroll 16
        for (int bi = 0; bi < Src::kUnroll; ++bi) {
            const int b = b0 + bi;
            const SpreadRequests<> rq(ahead, ahead_end, b, step);
            const uint8_t* pa = a0 + int64_t(b) * kAct;
            __m512i isum[NR][C];
            for (int r = 0; r < NR; ++r) {
                isum[r][0] = _mm512_set1_epi32(act_i32(pa + kCorr + 4 * r));
                for (int c = 1; c < C; ++c) isum[r][c] = _mm512_setzero_si512();
            }
            for (int g = 0; g < G; ++g) {
                rq.slot(g);
                const __m512i w = src.u(b0, bi, g);
                for (int r = 0; r < NR; ++r)
                    isum[r][g % C] = _mm512_dpbusd_epi32(isum[r][g % C], w, _mm512_set1_epi32(act_i32(pa + r * B + 4 * g)));
            }
            rq.rest(G);
            const __m512 dw = src.dw(b0, bi);
            for (int r = 0; r < NR; ++r) {
                __m512i s = isum[r][0];
                for (int c = 1; c < C; ++c) s = _mm512_add_epi32(s, isum[r][c]);
                acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(act_f32(pa + kAd + 4 * r))), dw, acc[r]);
            }
            if constexpr (Src::kMin) {
                const __m512 mw = src.mw(b0, bi);
                for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(act_f32(pa + kAs + 4 * r)), acc[r]);
            }
        }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

// StripKernels::packed: up to kStripAct rows.
template <class Src>
void src_gemm(int n, const void* strip, const void* act_group, int nact, float* out) {
    with_act_rows(nact, [&]<int NR>() { src_gemm_n<Src, NR>(n, strip, act_group, out); });
}

// StripKernels::packed_gemv: one token (its q8 row, or its hi and lo rows).
template <class Src>
void src_gemv(int n, const void* strip, const void* act_group, int nact, float* out, const void* ahead, const void* ahead_end) {
    const auto *a = static_cast<const uint8_t*>(ahead), *e = static_cast<const uint8_t*>(ahead_end);
    if (nact == 1) src_gemm_n<Src, 1>(n, strip, act_group, out, a, e);
    else src_gemm_n<Src, 2>(n, strip, act_group, out, a, e);
}

// StripKernels::packed_to_strip: a packed strip (all 16 rows) -> a StripLayout strip, the same u,
// dw and mw the packed GEMM uses (mw 0 without a min).
template <class Src>
void src_to_strip(int n, const void* packed, size_t, int, void* strip_out) {
    constexpr int B = Src::kBlock;
    constexpr int64_t kBytes = StripLayout::block_bytes(B), kD = StripLayout::u_bytes(B), kM = kD + 4 * kStripRows;
    const Src src(packed, n);
    auto* s = static_cast<uint8_t*>(strip_out);
    for (int b0 = 0; b0 < n / B; b0 += Src::kUnroll)
#pragma GCC unroll 16
        for (int bi = 0; bi < Src::kUnroll; ++bi) {
            uint8_t* o = s + int64_t(b0 + bi) * kBytes;
            for (int g = 0; g < B / 4; ++g) _mm512_store_si512(o + 64 * g, src.u(b0, bi, g));
            _mm512_store_ps(o + kD, src.dw(b0, bi));
            _mm512_store_ps(o + kM, Src::kMin ? src.mw(b0, bi) : _mm512_setzero_ps());
        }
}

// StripKernels::decode from GGML rows (unpacked weights: LOWBIT_REPACK=0, cpu.matmul): the rows
// packed into the thread's buffer (kernels.h pack_rows, a byte permutation), then read as a packed
// strip, so the source is the type's one decoder.
template <class Src>
void src_decode(int n, const void* weights, size_t row_bytes, int nrows, void* strip_out) {
    src_to_strip<Src>(n, pack_rows_scratch(Src::kType, nrows, n, weights, row_bytes), 0, kStripRows, strip_out);
}

template <class Src>
void add_src_strip(KernelSet& k, StripGemmFn gemm) {
    StripKernels& sk = k[Src::kType].strip;
    sk = {src_decode<Src>, gemm, Src::kBlock, Src::kBias};
    sk.packed = src_gemm<Src>;
    sk.packed_to_strip = src_to_strip<Src>;
    sk.packed_gemv = src_gemv<Src>;
}

}  // namespace

void add_packed_src_strips(KernelSet& k) {
    add_src_strip<Iq4nlSrc>(k, strip_gemm_b32);
    add_src_strip<Iq4xsSrc>(k, strip_gemm_b32);
    add_src_strip<Q23Src<GGMLType::Q2_K>>(k, strip_gemm_b16_min);
    add_src_strip<Q23Src<GGMLType::Q3_K>>(k, strip_gemm_b16);
}

}  // namespace lowbit::cpu::avx512

// strip_avx512.cpp: the AVX-512 strip GEMM (kernels.h, StripLayout) of the legacy types, Q4_K,
// Q5_K and Q6_K: their strip decoders, the GEMM, and the pieces the i-quant strips reuse
// (strip_iq.h). Split from dot_avx512.cpp; shared helpers in dot_avx512_common.h.
#pragma GCC optimize("fp-contract=off")
#include "cpu/dot_avx512_common.h"
#include "cpu/strip_iq.h"

namespace lowbit::cpu::avx512 {
namespace {

// ---- strip GEMM (kernels.h, StripLayout) ------------------------------------------------------
// Decoding: per row, the values of a run of blocks (8 legacy blocks or one super-block) go
// through the dot kernels' decoders into a row of u bytes (natural element order, as the
// activation qs); the 16 rows x 64 dwords of the run are then transposed in registers so that
// dword g of block b of every row lands in one zmm (and the rows' scales and mins likewise).
// Runs once per strip and matmul call: for the small batches of a decode step (8-16 activation
// rows) it costs about a third of the GEMM, so it has to stay shuffles, not gathers.

// In-register transpose of 16 rows x 16 dwords: on return r[k] holds dword k of every input row
// (row j in lane j). Unpacks pair rows into 2x2, then 4x4 dword blocks inside 128-bit lanes;
// two lane shuffles gather each column's four 4-row pieces.
LOWBIT_HOT void transpose16x16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int k = 0; k < 8; ++k) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int q = 0; q < 4; ++q) {   // u[4q + m], lane l: dword 4l + m of rows 4q..4q+3
        u[4 * q + 0] = _mm512_unpacklo_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 1] = _mm512_unpackhi_epi64(t[4 * q], t[4 * q + 2]);
        u[4 * q + 2] = _mm512_unpacklo_epi64(t[4 * q + 1], t[4 * q + 3]);
        u[4 * q + 3] = _mm512_unpackhi_epi64(t[4 * q + 1], t[4 * q + 3]);
    }
    for (int m = 0; m < 4; ++m) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xDD);
        const __m512i v2 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88), v3 = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xDD);
        r[m] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[8 + m] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        r[4 + m] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[12 + m] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

// Scatter one run of `blocks` blocks of Block elements each, decoded for all 16 rows (u: rows 256
// bytes apart; dw, mw: per row the scale and min of each block, 16 floats a row), into strip
// blocks b0, b0 + 1, ...
template <int Block, bool kMins>
LOWBIT_HOT void strip_scatter(const uint8_t (*u)[256], const float (*dw)[16], const float (*mw)[16], int b0,
                              int blocks, uint8_t* strip) {
    constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block), kM = kD + 4 * kStripRows;
    constexpr int kGroups = Block / 4;   // dwords per block and row
    __m512i r[16];
    for (int tile = 0; tile < 4; ++tile) {   // dwords 16 tile .. 16 tile + 15 of the run
        if (16 * tile >= blocks * kGroups) break;
        for (int j = 0; j < kStripRows; ++j) r[j] = _mm512_load_si512(u[j] + 64 * tile);
        transpose16x16_epi32(r);
        for (int k = 0; k < 16; ++k) {
            const int c = 16 * tile + k, i = c / kGroups;   // dword c of the run: group c % kGroups of block i
            if (i < blocks) _mm512_store_si512(strip + size_t(b0 + i) * kBytes + 64 * (c % kGroups), r[k]);
        }
    }
    for (int part = 0; part < (kMins ? 2 : 1); ++part) {   // scales, then mins (never read without kMin)
        const float (*src)[16] = part == 0 ? dw : mw;
        for (int j = 0; j < kStripRows; ++j) r[j] = _mm512_castps_si512(_mm512_loadu_ps(src[j]));
        transpose16x16_epi32(r);
        for (int i = 0; i < blocks; ++i) _mm512_store_si512(strip + size_t(b0 + i) * kBytes + (part == 0 ? kD : kM), r[i]);
    }
}

// Decodes a strip in runs of 256 elements (kRun blocks of Block elements; the last run of a legacy
// row may hold fewer blocks): decode(row bytes, run, count, q, dw, mw) gives each row's run as 4 zmm
// (natural order) and the scale and min of its `count` blocks; strip_scatter interleaves them.
template <int Block, int kRun, bool kMins, typename DecodeRun>
void strip_decode_runs(int n, const void* w, size_t row_bytes, int nrows, void* strip, DecodeRun decode) {
    static_assert(Block * kRun == 256, "runs of 256 elements");
    const int nb = n / Block;
    static_assert(kRun <= 16, "a run's scales transpose as 16 x 16");
    alignas(64) uint8_t u[kStripRows][256] = {};
    alignas(64) float dw[kStripRows][16] = {}, mw[kStripRows][16] = {};
    for (int b = 0; b < nb; b += kRun) {
        const int count = std::min(kRun, nb - b);
        for (int j = 0; j < nrows; ++j) {
            __m512i q[4];
            decode(static_cast<const uint8_t*>(w) + size_t(j) * row_bytes, b / kRun, count, q, dw[j], mw[j]);
            for (int k = 0; k < 4; ++k) _mm512_store_si512(u[j] + 64 * k, q[k]);
        }
        strip_scatter<Block, kMins>(u, dw, mw, b, count, static_cast<uint8_t*>(strip));
    }
}

// Legacy types: runs of 8 blocks through the panel decoders.
template <bool kMin, typename LBlock, typename Decode>
void strip_decode(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    strip_decode_runs<QK8_0, 8, kMin>(n, w, row_bytes, nrows, strip,
                                [](const uint8_t* row, int run, int count, __m512i q[4], float* dw, float* mw) {
        const auto* x = reinterpret_cast<const LBlock*>(row) + 8 * run;
        Decode{}(x, q, count);
        _mm256_storeu_ps(dw, _mm256_cvtph_ps(gather_d8(x, count)));   // exact fp16 -> f32, 0 beyond count
        if constexpr (kMin) _mm256_storeu_ps(mw, _mm256_cvtph_ps(gather_m8(x, count)));
    });
}

// k-quants: one super-block per run; `decode(x, q, dw, mw)` gives its 4 zmm and the scale and min
// of each of its QK_K / Block blocks.
template <int Block, bool kMins, typename KBlock, typename Decode>
void strip_decode_k(int n, const void* w, size_t row_bytes, int nrows, void* strip, Decode decode) {
    strip_decode_runs<Block, QK_K / Block, kMins>(n, w, row_bytes, nrows, strip,
                                           [&](const uint8_t* row, int run, int, __m512i q[4], float* dw, float* mw) {
        decode(reinterpret_cast<const KBlock*>(row)[run], q, dw, mw);
    });
}

// Q4_K / Q5_K: w = d * sc_s * q - dmin * m_s per sub-block s of 32 (6-bit scales and mins).
template <bool kQ5, typename KBlock>
void strip_decode_k4(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    strip_decode_k<32, true, KBlock>(n, w, row_bytes, nrows, strip, [](const KBlock& x, __m512i q[4], float* dw, float* mw) {
        k4_quants<kQ5>(x, q);
        // the 8 scales and 8 mins (bytes 0..15) times d and -dmin, 16 lanes at once (the same products)
        const __m512 sm = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm512_castsi512_si128(unpack_k4_scales_x4(&x, 1))));
        const __m512 dd = _mm512_insertf32x8(_mm512_set1_ps(h2f(x.d)), _mm256_set1_ps(-h2f(x.dmin)), 1);
        const __m512 p = _mm512_mul_ps(sm, dd);
        _mm256_storeu_ps(dw, _mm512_castps512_ps256(p));
        _mm256_storeu_ps(mw, _mm512_extractf32x8_ps(p, 1));
    });
}

// Q6_K: w = d * sc_s * (q - 32) per sub-block s of 16 (int8 scales).
void strip_decode_q6_K(int n, const void* w, size_t row_bytes, int nrows, void* strip) {
    strip_decode_k<16, false, block_q6_K>(n, w, row_bytes, nrows, strip, [](const block_q6_K& x, __m512i q[4], float* dw, float* mw) {
        q6_K_quants(x, q);
        const float d = h2f(x.d);
        for (int s = 0; s < 16; ++s) {
            dw[s] = d * float(x.scales[s]);
            mw[s] = 0.0f;
        }
    });
}

// NR activation rows x the strip's 16 weight rows. Per block and row: Block / 4 dpbusd (the
// activation dword broadcast from memory; the accumulator starts at corr = -bias * sum(qs)), one
// convert, one multiply by the activation scale, one FMA by the 16 weight scales (+ one FMA of the
// mins against d_a * sum(qs) with kMin): for 32-blocks ~4x fewer non-dpbusd operations per MAC
// than the panel kernel, whose lanes split blocks instead of outputs.
template <int Block, int NR, bool kMin>
LOWBIT_HOT void strip_gemm_n(int n, const void* strip, const void* act_group, float* out) {
    const int nb = n / Block;
    constexpr int64_t kBytes = StripLayout::block_bytes(Block), kD = StripLayout::u_bytes(Block), kM = kD + 4 * kStripRows;
    constexpr int64_t kAct = StripActLayout::block_bytes(Block), kCorr = StripActLayout::corr(Block),
                      kAd = StripActLayout::d(Block), kAs = StripActLayout::s(Block);
    const auto* s0 = static_cast<const uint8_t*>(strip);
    const auto* p0 = static_cast<const uint8_t*>(act_group);
    auto i32 = [](const uint8_t* p) { return *reinterpret_cast<const int32_t*>(p); };
    auto f32 = [](const uint8_t* p) { return *reinterpret_cast<const float*>(p); };
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const uint8_t* sb = s0 + size_t(b) * kBytes;
        const uint8_t* pa = p0 + size_t(b) * kAct;
        __m512i isum[NR], isum2[NR];   // two chains per row (even / odd groups): dpbusd latency
        for (int r = 0; r < NR; ++r) {
            isum[r] = _mm512_set1_epi32(i32(pa + kCorr + 4 * r));
            isum2[r] = _mm512_setzero_si512();
        }
        for (int g = 0; g < Block / 4; g += 2) {
            const __m512i w0 = _mm512_load_si512(sb + 64 * g), w1 = _mm512_load_si512(sb + 64 * g + 64);
            for (int r = 0; r < NR; ++r) {
                isum[r] = _mm512_dpbusd_epi32(isum[r], w0, _mm512_set1_epi32(i32(pa + r * Block + 4 * g)));
                isum2[r] = _mm512_dpbusd_epi32(isum2[r], w1, _mm512_set1_epi32(i32(pa + r * Block + 4 * g + 4)));
            }
        }
        for (int r = 0; r < NR; ++r) isum[r] = _mm512_add_epi32(isum[r], isum2[r]);
        const __m512 dw = _mm512_load_ps(reinterpret_cast<const float*>(sb + kD));
        for (int r = 0; r < NR; ++r)
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(f32(pa + kAd + 4 * r))), dw, acc[r]);
        if constexpr (kMin) {
            const __m512 mw = _mm512_load_ps(reinterpret_cast<const float*>(sb + kM));
            for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(f32(pa + kAs + 4 * r)), acc[r]);
        }
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

template <int Block, bool kMin>
void strip_gemm(int n, const void* strip, const void* act_group, int nact, float* out) {
    with_act_rows(nact, [&]<int NR>() { strip_gemm_n<Block, NR, kMin>(n, strip, act_group, out); });
}

}  // namespace

// The strip pieces the i-quant strips reuse (strip_iq.h): a strip decoded run by run through
// a StripRunFn, and the no-min GEMMs.
void strip_decode_from_runs(int n, const void* w, size_t row_bytes, int nrows, void* strip, int block, StripRunFn run) {
    auto adapt = [run](const uint8_t* row, int r, int count, __m512i q[4], float* dw, float*) {
        alignas(64) uint8_t u[256];
        run(row, r, count, u, dw);
        for (int k = 0; k < 4; ++k) q[k] = _mm512_load_si512(u + 64 * k);
    };
    if (block == 16)
        strip_decode_runs<16, 16, false>(n, w, row_bytes, nrows, strip, adapt);
    else
        strip_decode_runs<32, 8, false>(n, w, row_bytes, nrows, strip, adapt);
}
void strip_gemm_b32(int n, const void* strip, const void* act, int nact, float* out) { strip_gemm<32, false>(n, strip, act, nact, out); }
void strip_gemm_b16(int n, const void* strip, const void* act, int nact, float* out) { strip_gemm<16, false>(n, strip, act, nact, out); }
void strip_gemm_b16_min(int n, const void* strip, const void* act, int nact, float* out) { strip_gemm<16, true>(n, strip, act, nact, out); }

void add_strips(KernelSet& k) {
    k[GGMLType::Q4_0].strip = {strip_decode<false, block_q4_0, DecodeQ4>, strip_gemm<32, false>, 32, 8};
    k[GGMLType::Q4_1].strip = {strip_decode<true, block_q4_1, DecodeQ4>, strip_gemm<32, true>, 32, 0};
    k[GGMLType::Q5_0].strip = {strip_decode<false, block_q5_0, DecodeQ5>, strip_gemm<32, false>, 32, 16};
    k[GGMLType::Q5_1].strip = {strip_decode<true, block_q5_1, DecodeQ5>, strip_gemm<32, true>, 32, 0};
    k[GGMLType::Q8_0].strip = {strip_decode<false, block_q8_0, DecodeQ8>, strip_gemm<32, false>, 32, 128};
    k[GGMLType::Q4_K].strip = {strip_decode_k4<false, block_q4_K>, strip_gemm<32, true>, 32, 0};
    k[GGMLType::Q5_K].strip = {strip_decode_k4<true, block_q5_K>, strip_gemm<32, true>, 32, 0};
    k[GGMLType::Q6_K].strip = {strip_decode_q6_K, strip_gemm<16, false>, 16, 32};
}

}  // namespace lowbit::cpu::avx512

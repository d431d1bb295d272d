// packed_q6k_avx512.cpp: the strip GEMMs of packed Q6_K strips (kernels.h, PackedLayout: one
// 3328-byte record per super-block, ql[32][16][4] qh[16][16][4] scales[4][16][4], then the fp16
// d of every super-block): the one-token gemv and the few-row GEMM (packed, packed_gemv), the
// pair GEMM of batched decode (packed_pair) and the packed -> StripLayout decoder.
//
// Arithmetic: the strip GEMM's (dot_avx512.cpp, strip_gemm<16, false>), blocks = the 16-element
// sub-blocks: per block and row an exact int32 sum started at the activation's corr (-32 *
// sum(a)), then acc = fma(float(isum) * d_a, dw, acc), blocks in order, dw = d * sc exact in f32.
// So every kernel here gives the strip GEMM's bits on the unpacked rows.
//
// Cost per super-block of 16 rows (3360 bytes) and activation row: 64 vpdpbusd and 16 float
// steps (3 FP ops each), plus per group of 4 sub-blocks' dwords 11 ops of unpack (below) shared by
// the rows. Measured on one Zen 5 core, strips in L1/L2: ~77 TSC cycles per super-block for one
// row (~40 bytes/cycle: far above a core's share of DRAM), ~100 / ~172 / ~322 for 2 / 4 / 8 rows,
// where the float steps weigh most; they cannot shrink without changing the bits.
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include <algorithm>

#include "cpu/dot_avx512_common.h"   // LOWBIT_HOT
#include "cpu/kernels.h"
#include "cpu/weight_stream.h"

namespace lowbit::cpu::avx512 {
namespace {

constexpr int64_t kRec = 3328, kQh = 2048, kSc = 3072;   // record bytes, offsets of qh and scales
constexpr int kSub = 16;                                  // strip blocks (sub-blocks) per super-block
constexpr int64_t kAct = StripActLayout::block_bytes(16), kCorr = StripActLayout::corr(16),
                  kAd = StripActLayout::d(16);

struct Q6kStrip {
    const uint8_t *rec0, *d;
    Q6kStrip(const void* strip, int nsb) : rec0(static_cast<const uint8_t*>(strip)), d(rec0 + nsb * kRec) {}
    const uint8_t* rec(int64_t sb) const { return rec0 + sb * kRec; }
    // d * 2^-24 of the 16 rows (exact: fp16 d >= 2^-24 in magnitude or 0), see q6k_dw.
    __m512 d_scaled(int64_t sb) const {
        return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 32 * sb))),
                             _mm512_set1_ps(0x1p-24f));
    }
};


// dw of sub-block s = 4w + k of the 16 rows: int8 scale k of scale dword w (sc4[w]) moved alone to
// the top byte of each lane (one vpshufb: sc * 2^24, exact in int32 and in f32), times d * 2^-24:
// the product is d * sc exactly (at most 19 significant bits), the strip decoder's dw.
LOWBIT_HOT __m512 q6k_dw(const __m512i sc4[4], int s, __m512 d_scaled) {
    const int k = s & 3;
    auto top = [k](int j) { return int((uint32_t(4 * j + k) << 24) | 0x808080u); };   // byte k of dword j -> byte 3, 0 below
    const __m512i idx = _mm512_set4_epi32(top(3), top(2), top(1), top(0));
    return _mm512_mul_ps(d_scaled, _mm512_cvtepi32_ps(_mm512_shuffle_epi8(sc4[s >> 2], idx)));
}

// Bit select: x where m has ones, y elsewhere (one vpternlogd).
LOWBIT_HOT __m512i select(__m512i m, __m512i x, __m512i y) { return _mm512_ternarylogic_epi32(m, x, y, 0xCA); }

// The unsigned values (q, 0..63) of group g (elements 4g..4g+3) of the four sub-blocks 8h + 2Q +
// part (Q = 0..3) of the 16 rows, which share ql dwords (Q = 0, 2: low / high nibbles of ql
// dword 16h + 4part + g; Q = 1, 3: of dword 16h + 8 + 4part + g) and qh dword 8h + 4part + g
// (bits 2Q, 2Q + 1 of each byte). hA = qh & 0x33 holds Q = 0's high bits at 0-1 and Q = 2's at 4-5
// with 6-7 clear, hB = qh & 0xCC Q = 1's at 2-3 and Q = 3's at 6-7; the 16-bit shifts that move
// them to 4-5 (and the nibbles to 0-3) only drag bits of the neighbour byte into bits 0-3, which
// the select takes from the nibble: 2 ands, 5 shifts, 4 selects.
LOWBIT_HOT void q6k_groups4(const uint8_t* rec, int h, int part, int g, __m512i u[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i ql0 = _mm512_loadu_si512(rec + 64 * (16 * h + 4 * part + g));
    const __m512i ql1 = _mm512_loadu_si512(rec + 64 * (16 * h + 8 + 4 * part + g));
    const __m512i qh = _mm512_loadu_si512(rec + kQh + 64 * (8 * h + 4 * part + g));
    const __m512i hA = _mm512_and_si512(qh, _mm512_set1_epi8(0x33)), hB = _mm512_and_si512(qh, _mm512_set1_epi8(char(0xCC)));
    u[0] = select(m4, ql0, _mm512_slli_epi16(hA, 4));
    u[1] = select(m4, ql1, _mm512_slli_epi16(hB, 2));
    u[2] = select(m4, _mm512_srli_epi16(ql0, 4), hA);
    u[3] = select(m4, _mm512_srli_epi16(ql1, 4), _mm512_srli_epi16(hB, 2));
}

// The strip GEMM's float step of one block for NR rows (activation slots 0 .. NR - 1).
template <int NR>
LOWBIT_HOT void float_step(__m512 acc[NR], const __m512i isum[NR], const uint8_t* pa, __m512 dw) {
    for (int r = 0; r < NR; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[r]), _mm512_set1_ps(act_f32(pa + kAd + 4 * r))),
                                 dw, acc[r]);
}

// Where a call's requests go: `span` bytes from `ahead` (not past `end`), spread evenly over the
// strip's super-blocks, so they trickle in while it is multiplied.
struct Ahead {
    const uint8_t *p = nullptr, *end = nullptr;
    int64_t span = 0;
    int64_t step(int nsb) const { return p ? (span + nsb - 1) / nsb : 0; }
};

// Bytes of one packed strip of nsb super-blocks (PackedLayout).
inline int64_t q6k_strip_bytes(int nsb) { return (nsb * (kRec + 32) + 63) / 64 * 64; }

// NR <= 4 activation rows: per half super-block, the four sub-blocks that share ql / qh dwords
// are summed together for part 0, then part 1; the 8 blocks' float steps run in order after both.
template <int NR>
__attribute__((hot)) void q6k_rows(int n, const void* strip, const void* act_group, float* out, Ahead ahead) {
    static_assert(NR >= 1 && NR <= 4, "Q6_K: up to 4 rows a pass");
    const int nsb = n / QK_K;
    const Q6kStrip S(strip, nsb);
    const auto* pa0 = static_cast<const uint8_t*>(act_group);
    const int64_t step = ahead.step(nsb);
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int sb = 0; sb < nsb; ++sb) {
        const SpreadRequests<4> rq(ahead.p, ahead.end, sb, step);
        const uint8_t* rec = S.rec(sb);
        __m512i sc4[4];
        for (int i = 0; i < 4; ++i) sc4[i] = _mm512_loadu_si512(rec + kSc + 64 * i);
        const __m512 ds = S.d_scaled(sb);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* pa = pa0 + (kSub * sb + 8 * h) * kAct;   // block 8h + s8 of the super-block
            __m512i isum[8][NR];
#pragma GCC unroll 2
            for (int part = 0; part < 2; ++part) {
                for (int q = 0; q < 4; ++q)
                    for (int r = 0; r < NR; ++r)
                        isum[2 * q + part][r] = _mm512_set1_epi32(act_i32(pa + (2 * q + part) * kAct + kCorr + 4 * r));
#pragma GCC unroll 4
                for (int g = 0; g < 4; ++g) {
                    rq.slot(8 * h + 4 * part + g);
                    __m512i u[4];
                    q6k_groups4(rec, h, part, g, u);
                    for (int q = 0; q < 4; ++q)
                        for (int r = 0; r < NR; ++r)
                            isum[2 * q + part][r] = _mm512_dpbusd_epi32(
                                isum[2 * q + part][r], u[q], _mm512_set1_epi32(act_i32(pa + (2 * q + part) * kAct + r * 16 + 4 * g)));
                }
            }
#pragma GCC unroll 8
            for (int s8 = 0; s8 < 8; ++s8) float_step<NR>(acc, isum[s8], pa + s8 * kAct, q6k_dw(sc4, 8 * h + s8, ds));
        }
        rq.rest(16);
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

// One super-block of a packed strip -> 16 StripLayout blocks at o (u bytes, dw, a zero min): the
// u and dw the GEMMs here use.
LOWBIT_HOT void q6k_decode_sb(const Q6kStrip& S, int64_t sb, uint8_t* o) {
    constexpr int64_t kBytes = StripLayout::block_bytes(16), kD = StripLayout::u_bytes(16), kM = kD + 4 * kStripRows;
    const uint8_t* rec = S.rec(sb);
    for (int h = 0; h < 2; ++h)
        for (int part = 0; part < 2; ++part)
            for (int g = 0; g < 4; ++g) {
                __m512i u[4];
                q6k_groups4(rec, h, part, g, u);
                for (int q = 0; q < 4; ++q) _mm512_store_si512(o + (8 * h + 2 * q + part) * kBytes + 64 * g, u[q]);
            }
    __m512i sc4[4];
    for (int i = 0; i < 4; ++i) sc4[i] = _mm512_loadu_si512(rec + kSc + 64 * i);
    const __m512 ds = S.d_scaled(sb);
    for (int s = 0; s < kSub; ++s) {
        _mm512_store_ps(o + s * kBytes + kD, q6k_dw(sc4, s, ds));
        _mm512_store_ps(o + s * kBytes + kM, _mm512_setzero_ps());
    }
}

// 5..8 activation rows: per super-block the 16 blocks of u bytes and dw are decoded once into
// an L1 scratch (q6k_decode_sb), then each block's 4 groups feed NR dpbusd chains: the unpack is
// paid once for all rows (two passes of q6k_rows paid it twice).
template <int NR>
__attribute__((hot)) void q6k_rows_wide(int n, const void* strip, const void* act_group, float* out, Ahead ahead) {
    static_assert(NR > 4 && NR <= kStripAct, "Q6_K wide: 5..8 rows");
    constexpr int64_t kBytes = StripLayout::block_bytes(16), kD = StripLayout::u_bytes(16);
    const int nsb = n / QK_K;
    const Q6kStrip S(strip, nsb);
    const auto* pa0 = static_cast<const uint8_t*>(act_group);
    const int64_t step = ahead.step(nsb);
    alignas(64) uint8_t scratch[kSub * kBytes];
    __m512 acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
    for (int sb = 0; sb < nsb; ++sb) {
        request_ahead(ahead.p, ahead.end, sb, step);
        request_far(ahead.p, ahead.end, sb, step);
        q6k_decode_sb(S, sb, scratch);
#pragma GCC unroll 2
        for (int b = 0; b < kSub; ++b) {
            const uint8_t* u = scratch + b * kBytes;
            const uint8_t* pa = pa0 + (kSub * sb + b) * kAct;
            __m512i isum[NR];
            for (int r = 0; r < NR; ++r) isum[r] = _mm512_set1_epi32(act_i32(pa + kCorr + 4 * r));
            for (int g = 0; g < 4; ++g) {
                const __m512i w = _mm512_load_si512(u + 64 * g);
                for (int r = 0; r < NR; ++r) isum[r] = _mm512_dpbusd_epi32(isum[r], w, _mm512_set1_epi32(act_i32(pa + r * 16 + 4 * g)));
            }
            float_step<NR>(acc, isum, pa, _mm512_load_ps(u + kD));
        }
    }
    for (int r = 0; r < NR; ++r) _mm512_storeu_ps(out + r * kStripRows, acc[r]);
}

// nact (1..kStripAct) rows on one strip.
void q6k_rows_n(int n, const void* strip, const void* act_group, int nact, float* out, Ahead ahead = {}) {
    switch (nact) {
        case 1: return q6k_rows<1>(n, strip, act_group, out, ahead);
        case 2: return q6k_rows<2>(n, strip, act_group, out, ahead);
        case 3: return q6k_rows<3>(n, strip, act_group, out, ahead);
        case 4: return q6k_rows<4>(n, strip, act_group, out, ahead);
        case 5: return q6k_rows_wide<5>(n, strip, act_group, out, ahead);
        case 6: return q6k_rows_wide<6>(n, strip, act_group, out, ahead);
        case 7: return q6k_rows_wide<7>(n, strip, act_group, out, ahead);
        default: return q6k_rows_wide<8>(n, strip, act_group, out, ahead);
    }
}

// StripKernels::packed: up to kStripAct activation rows.
void q6k_gemm(int n, const void* strip, const void* act_group, int nact, float* out) {
    q6k_rows_n(n, strip, act_group, nact, out);
}

// StripKernels::packed_gemv: one token (its q8 row, or its hi and lo rows); one strip's bytes
// from `ahead` requested while this strip is multiplied.
void q6k_gemv(int n, const void* strip, const void* act_group, int nact, float* out, const void* ahead, const void* ahead_end) {
    const Ahead a{static_cast<const uint8_t*>(ahead), static_cast<const uint8_t*>(ahead_end), q6k_strip_bytes(n / QK_K)};
    if (nact == 1) q6k_rows<1>(n, strip, act_group, out, a);
    else q6k_rows<2>(n, strip, act_group, out, a);
}

// StripKernels::packed_pair: the two strips strip_stride bytes apart one after the other (for
// Q6_K the unpack, not the activation loads, is what the generic pair GEMM's shared loads would
// save on, and its per-group unpack cost more), the next call's prefetch_bytes requested over the
// first strip's super-blocks.
void q6k_pair(int n, const void* strip, size_t strip_stride, const void* act_group, int nact, float* out,
              const void* prefetch, size_t prefetch_bytes) {
    const auto* pf = prefetch_bytes ? static_cast<const uint8_t*>(prefetch) : nullptr;
    const Ahead first{pf, pf ? pf + prefetch_bytes : nullptr, int64_t(prefetch_bytes)};
    for (int s = 0; s < 2; ++s)
        q6k_rows_n(n, static_cast<const uint8_t*>(strip) + s * strip_stride, act_group, nact, out + s * kStripAct * kStripRows,
                   s == 0 ? first : Ahead{});
}

// StripKernels::packed_to_strip: a packed strip -> a StripLayout strip (row_bytes, nrows unused).
void q6k_to_strip(int n, const void* packed, size_t, int, void* strip) {
    const int nsb = n / QK_K;
    const Q6kStrip S(packed, nsb);
    for (int sb = 0; sb < nsb; ++sb) q6k_decode_sb(S, sb, static_cast<uint8_t*>(strip) + sb * kSub * StripLayout::block_bytes(16));
}

}  // namespace

// Registered by packed_avx512.cpp's add_packed_gemms.
void add_packed_q6k_gemms(KernelSet& k) {
    k[GGMLType::Q6_K].strip.packed = q6k_gemm;
    k[GGMLType::Q6_K].strip.packed_to_strip = q6k_to_strip;
    k[GGMLType::Q6_K].strip.packed_gemv = q6k_gemv;
    k[GGMLType::Q6_K].strip.packed_pair = q6k_pair;
}

}  // namespace lowbit::cpu::avx512

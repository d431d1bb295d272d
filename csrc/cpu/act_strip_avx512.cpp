// act_strip_avx512.cpp: activation rows quantized straight into strip GEMM slots (kernels.h,
// QuantizeStripFn), AVX-512.
//
// The spec is dispatch.cpp's quantize_strip_row: quantize_act_q8_0 / q8_K, at two-pass precision
// the residual (x - dequant) * kActLoScale quantized the same way, then build_strip_act_row for
// each. That takes a prefill's every activation row through five passes over memory (quantize,
// residual, regroup, quantize, regroup) with the regrouping in baseline x86-64 code; here each
// source block is loaded once, quantized, its residual taken in registers and quantized, and
// both rows' quants, sums and scales written to their slots: the same bytes (every step is the
// spec's arithmetic in the spec's order: one rounding each, contraction off, integer sums exact).
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include <cstring>

#include "common.h"
#include "cpu/kernels.h"

namespace lowbit::cpu::avx512 {
namespace {

// One strip block's slot from its Block / 16 vectors of int32 quants (each in [-128, 127]): the
// quants as bytes, corr = -bias * sum, d, s = d * sum (StripActLayout).
template <int Block>
inline void put_slot(uint8_t* dst, int slot, const __m512i* q, float d, int bias) {
    __m512i acc = q[0];
    for (int k = 1; k < Block / 16; ++k) acc = _mm512_add_epi32(acc, q[k]);
    const int32_t sum = _mm512_reduce_add_epi32(acc);
    for (int k = 0; k < Block / 16; ++k)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + slot * Block + 16 * k), _mm512_cvtsepi32_epi8(q[k]));
    const int32_t corr = -bias * sum;
    const float s = d * float(sum);
    std::memcpy(dst + StripActLayout::corr(Block) + 4 * slot, &corr, 4);
    std::memcpy(dst + StripActLayout::d(Block) + 4 * slot, &d, 4);
    std::memcpy(dst + StripActLayout::s(Block) + 4 * slot, &s, 4);
}

// r = (x - d q) * kActLoScale, 16 elements (the spec's residual: one rounding per operation).
inline __m512 abs16(__m512 v) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), v); }

inline __m512 residual16(__m512 x, __m512i q, float d) {
    const __m512 dq = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(q));
    return _mm512_mul_ps(_mm512_sub_ps(x, dq), _mm512_set1_ps(kActLoScale));
}

// One q8_0 block (32 elements, as quantize_act_q8_0: d = amax / 127 stored as fp16, q =
// round_even(x / d) computed as x * (1 / d)) into slot `slot` of the strip block(s) at dst
// (Block 16: two, bb bytes apart); r (or null): its residual.
template <int Block>
inline void q8_0_block(const float* x, uint8_t* dst, int slot, int bias, float* r) {
    const __m512 v[2] = {_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)};
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(abs16(v[0]), abs16(v[1])));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float d16 = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));   // the block's stored scale
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q[2] = {_mm512_cvtps_epi32(_mm512_mul_ps(v[0], vid)), _mm512_cvtps_epi32(_mm512_mul_ps(v[1], vid))};
    if constexpr (Block == 32) {
        put_slot<32>(dst, slot, q, d16, bias);
    } else {
        put_slot<16>(dst, slot, q, d16, bias);
        put_slot<16>(dst + StripActLayout::block_bytes(16), slot, q + 1, d16, bias);
    }
    if (r) {
        _mm512_storeu_ps(r, residual16(v[0], q[0], d16));
        _mm512_storeu_ps(r + 16, residual16(v[1], q[1], d16));
    }
}

// One q8_K super-block (256 elements, as quantize_act_q8_K: iscale = -127 / the first element of
// largest magnitude, q = min(round_even(iscale x), 127), d = 1 / iscale; all zero when amax is 0)
// into slot `slot` of its 256 / Block strip blocks from dst; r (or null): its residual.
template <int Block>
inline void q8_K_block(const float* x, uint8_t* dst, int slot, int bias, float* r) {
    constexpr int64_t bb = StripActLayout::block_bytes(Block);
    __m512 amax16 = _mm512_setzero_ps();
    for (int k = 0; k < QK_K; k += 16) amax16 = _mm512_max_ps(amax16, abs16(_mm512_loadu_ps(x + k)));
    const float amax = _mm512_reduce_max_ps(amax16);
    float iscale = 0.0f, d = 0.0f;
    if (amax != 0.0f) {
        int first = 0;
        for (int k = 0; k < QK_K; k += 16) {
            const __mmask16 eq = _mm512_cmp_ps_mask(abs16(_mm512_loadu_ps(x + k)), _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (eq) { first = k + __builtin_ctz(unsigned(eq)); break; }
        }
        iscale = -127.0f / x[first];
        d = 1.0f / iscale;
    }
    const __m512 vs = _mm512_set1_ps(iscale);
    const __m512i top = _mm512_set1_epi32(127);
    for (int k = 0; k < QK_K; k += Block, dst += bb) {
        __m512i q[Block / 16];
        for (int j = 0; j < Block / 16; ++j) {
            const __m512 v = _mm512_loadu_ps(x + k + 16 * j);
            q[j] = amax != 0.0f ? _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(vs, v)), top) : _mm512_setzero_si512();
            if (r) _mm512_storeu_ps(r + k + 16 * j, residual16(v, q[j], d));
        }
        put_slot<Block>(dst, slot, q, d, bias);
    }
}

// A row of n elements into `slot` (and its residual into slot + 1), one source block at a time:
// the residual of a block stays in L1 between its two quantizations.
template <int QK, int Block>
void strip_row(const float* x, int64_t n, int bias, bool two_pass, void* group, int slot) {
    constexpr int64_t step = QK / Block * StripActLayout::block_bytes(Block);   // strip bytes per source block
    auto* dst = static_cast<uint8_t*>(group);
    alignas(64) float r[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, dst += step) {
        if constexpr (QK == QK8_0) q8_0_block<Block>(x, dst, slot, bias, two_pass ? r : nullptr);
        else q8_K_block<Block>(x, dst, slot, bias, two_pass ? r : nullptr);
        if (!two_pass) continue;
        if constexpr (QK == QK8_0) q8_0_block<Block>(r, dst, slot + 1, bias, nullptr);
        else q8_K_block<Block>(r, dst, slot + 1, bias, nullptr);
    }
}

void quantize_strip_q8_0(const float* x, int64_t n, int block, int bias, bool two_pass, void* group, int slot) {
    if (block == 32) return strip_row<QK8_0, 32>(x, n, bias, two_pass, group, slot);
    if (block == 16) return strip_row<QK8_0, 16>(x, n, bias, two_pass, group, slot);
    throw ValueError(str("strip GEMM block of ", block, " elements is not 16 or 32"));
}

void quantize_strip_q8_K(const float* x, int64_t n, int block, int bias, bool two_pass, void* group, int slot) {
    if (block == 32) return strip_row<QK_K, 32>(x, n, bias, two_pass, group, slot);
    if (block == 16) return strip_row<QK_K, 16>(x, n, bias, two_pass, group, slot);
    throw ValueError(str("strip GEMM block of ", block, " elements is not 16 or 32"));
}

}  // namespace

void add_strip_quantizers(KernelSet& k) {
    k.quantize_strip_q8_0 = quantize_strip_q8_0;
    k.quantize_strip_q8_K = quantize_strip_q8_K;
}

}  // namespace lowbit::cpu::avx512

// dot_avx512.cpp: the AVX-512 (F/BW/VL/DQ/VNNI) kernel set: the legacy types' panel kernels
// (Q8PanelLayout; mat-vec also takes 1..4 weight rows per call with the same per-output
// operations), the float rows, and the set itself (make_kernels). The k-quant and IQ4_XS rows are
// in dot_kq_avx512.cpp, the strip GEMMs (kernels.h; legacy types, Q4_K, Q5_K, Q6_K) that matmul
// takes for >= 16 x rows in strip_avx512.cpp, the packed strip GEMMs in packed_avx512.cpp, shared
// helpers in dot_avx512_common.h. The 256-bit kernels of dot_x86_256.h (vpdpbusd build) serve the
// activation quantizers; legacy rows end in a masked partial batch (n % 256).
//
// Shapes: legacy dots take 8 blocks per batch, two blocks per zmm ([b lo|b hi|b+1 lo|b+1 hi]).
#pragma GCC optimize("fp-contract=off")
#define LOWBIT_SIMD_NS avx512
#define LOWBIT_VNNI 1
#define LOWBIT_FN(name) name##_256
#include "cpu/dot_x86_256.h"
#include "cpu/strip_iq.h"
#include "cpu/dot_avx512_common.h"
#include "common.h"

#include <algorithm>
#include <cstring>
#include <cstddef>
#include <type_traits>
#include <vector>

namespace lowbit::cpu::avx512 {
namespace {

// Legacy blocks: NW weight rows (row_bytes apart) x NR panel rows (kernels.h): batches of 8
// blocks; `decode(w + b, wq, count)` turns the batch's first `count` blocks of one weight row
// into 4 zmm of unsigned values u (weight = u - bias; wq[k] = blocks b+2k, b+2k+1 laid out as
// nibble_pair), shared by all panel rows; one f32 accumulator chain per (weight row, panel row).
// Everything that depends on the activations alone comes precomputed from the panel: one
// 512-bit load per pair of blocks, the bias term folded into the dpbusd accumulator (corr), the
// block scales as floats and, with kMin (Q4_1, Q5_1: weight = d*u + m), the min term as one 8-lane
// FMA per batch against d * sum(qs), added to the low lanes before the final sum. Per output and
// pair: two loads, one dpbusd, one convert, one permute, one FMA. The last batch of a row (nb % 8
// blocks) runs the same code with masked loads: blocks past the row's end read as scale 0 and
// quants 0 and are never touched, so they add exactly 0, and only the pairs holding real blocks
// are multiplied. Every output's operations are the same whatever NW and NR (reduce4_ps), so a
// mat-vec through NW weight rows equals the mat-mat's one-weight-row calls bit for bit; several
// weight rows per call share the panel loads and the call, and give the core independent chains.
template <int NW, int NR, bool kMin = false, typename WBlock, typename Decode>
LOWBIT_HOT void legacy_panel_512(int n, const WBlock* w0, size_t row_bytes, const void* panel, size_t stride, float* out,
                                 Decode decode) {
    const int nb = n / QK8_0;
    const Q8PanelLayout L(n);
    __m512 acc[NW][NR];
    __m256 macc[NW][NR];
    for (int i = 0; i < NW; ++i)
        for (int r = 0; r < NR; ++r) {
            acc[i][r] = _mm512_setzero_ps();
            macc[i][r] = _mm256_setzero_ps();
        }
    const auto* p0 = static_cast<const uint8_t*>(panel);
    // Each weight row asks for its own bytes `lead` ahead, past its end those of the same row of
    // the next call (a mat-vec's next NW rows): NW streams of kPrefetchAhead / NW bytes in flight,
    // as many as one row's stream (NW = 1: kPrefetchAhead ahead, running into the next rows).
    const size_t lead = kPrefetchAhead, row_end = NW == 1 ? ~size_t(0) : row_bytes;
    auto batch = [&](int b, int count, auto full) {
        constexpr bool kFull = decltype(full)::value;
        const int n_pairs = kFull ? 4 : (count + 1) / 2;
        for (int i = 0; i < NW; ++i) {
            const WBlock* w = reinterpret_cast<const WBlock*>(reinterpret_cast<const uint8_t*>(w0) + i * row_bytes) + b;
            const size_t at = size_t(b) * sizeof(WBlock) + lead;
            prefetch_ahead(w, 8 * sizeof(WBlock), at < row_end ? lead : lead + (NW - 1) * row_bytes);
            const __m256 wd8 = _mm256_cvtph_ps(gather_d8(w, count));
            __m256 wm8 = _mm256_setzero_ps();
            if constexpr (kMin) wm8 = _mm256_cvtph_ps(gather_m8(w, count));
            __m512i wq[4];
            decode(w, wq, count);
            for (int r = 0; r < NR; ++r) {
                const uint8_t* p = p0 + size_t(r) * stride;
                const auto* ad = reinterpret_cast<const float*>(p + L.d) + b;
                const __m512 d16 = _mm512_castps256_ps512(_mm256_mul_ps(wd8, _mm256_loadu_ps(ad)));
                if constexpr (kMin)
                    macc[i][r] = _mm256_fmadd_ps(wm8, _mm256_loadu_ps(reinterpret_cast<const float*>(p + L.s) + b), macc[i][r]);
                const uint8_t* qs = p + L.qs + size_t(b) * QK8_0;
                const uint8_t* corr = p + L.corr + size_t(b) * QK8_0;   // 64 bytes per pair, as qs
                for (int k = 0; k < n_pairs; ++k) {
                    const __m512i sel = _mm512_inserti64x4(_mm512_set1_epi32(2 * k), _mm256_set1_epi32(2 * k + 1), 1);
                    const __m512i c = kMin ? _mm512_setzero_si512() : load512(corr + 64 * k);
                    const __m512i isum = _mm512_dpbusd_epi32(c, wq[k], load512(qs + 64 * k));
                    acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_permutexvar_ps(sel, d16), acc[i][r]);
                }
            }
        }
    };
    int b = 0;
    for (; b + 8 <= nb; b += 8) batch(b, 8, std::true_type{});
    if (b < nb) batch(b, nb - b, std::false_type{});
    constexpr int kOut = NW * NR;
    __m512 v[(kOut + 3) / 4 * 4];
    for (int i = 0; i < NW; ++i)
        for (int r = 0; r < NR; ++r)
            v[i * NR + r] = kMin ? _mm512_add_ps(acc[i][r], _mm512_zextps256_ps512(macc[i][r])) : acc[i][r];
    for (int o = kOut; o < (kOut + 3) / 4 * 4; ++o) v[o] = _mm512_setzero_ps();
    for (int o = 0; o < kOut; o += 4) {
        alignas(16) float s[4];
        _mm_store_ps(s, reduce4_ps(v[o], v[o + 1], v[o + 2], v[o + 3]));
        for (int j = 0; j < 4 && o + j < kOut; ++j) out[o + j] = s[j];
    }
}

// Panel rows (kernels.h) of nrows block_q8_0 rows of n elements, stride bytes apart.
std::vector<uint8_t> panel_of(int n, const void* act, size_t stride, int nrows, int bias) {
    const size_t bytes = size_t(Q8PanelLayout::row_bytes(n));
    std::vector<uint8_t> panel(bytes * size_t(nrows));
    for (int r = 0; r < nrows; ++r)
        build_q8_panel_row(act_row_q8_0(act, stride, r), n, bias, panel.data() + size_t(r) * bytes);
    return panel;
}

constexpr int kPanelPass = 8;   // rows per pass over the weight row

#define LOWBIT_PANEL(name, Block, kMin, Decode)                                                       \
    template <int NR>                                                                              \
    void name##_panel_n(int n, const void* w, const void* act, size_t stride, float* out) {        \
        if constexpr (NR > kPanelPass) {                                                           \
            name##_panel_n<kPanelPass>(n, w, act, stride, out);                                    \
            name##_panel_n<NR - kPanelPass>(n, w, static_cast<const uint8_t*>(act) + kPanelPass * stride, stride, out + kPanelPass); \
            return;                                                                                \
        }                                                                                          \
        legacy_panel_512<1, NR, kMin>(n, static_cast<const Block*>(w), 0, act, stride, out, Decode{}); \
    }                                                                                              \
    void name##_panel(int n, const void* w, const void* act, size_t stride, int nrows, float* out) { \
        with_act_rows(nrows, [&]<int NR>() { name##_panel_n<NR>(n, w, act, stride, out); });      \
    }                                                                                              \
    template <int NW>                                                                              \
    void name##_panel_w(int n, const void* w, size_t row_bytes, const void* act, size_t stride, int nrows, float* out) { \
        if (nrows == 1) legacy_panel_512<NW, 1, kMin>(n, static_cast<const Block*>(w), row_bytes, act, stride, out, Decode{}); \
        else legacy_panel_512<NW, 2, kMin>(n, static_cast<const Block*>(w), row_bytes, act, stride, out, Decode{}); \
    }                                                                                              \
    void name##_panel_wrows(int n, const void* w, size_t row_bytes, int nw, const void* act, size_t stride, \
                            int nrows, float* out) {                                              \
        switch (nw) {                                                                              \
            case 1: name##_panel_w<1>(n, w, row_bytes, act, stride, nrows, out); break;            \
            case 2: name##_panel_w<2>(n, w, row_bytes, act, stride, nrows, out); break;            \
            case 3: name##_panel_w<3>(n, w, row_bytes, act, stride, nrows, out); break;            \
            default: name##_panel_w<4>(n, w, row_bytes, act, stride, nrows, out); break;           \
        }                                                                                          \
    }

LOWBIT_PANEL(q4_0, block_q4_0, false, DecodeQ4)
LOWBIT_PANEL(q4_1, block_q4_1, true, DecodeQ4)
LOWBIT_PANEL(q5_0, block_q5_0, false, DecodeQ5)
LOWBIT_PANEL(q5_1, block_q5_1, true, DecodeQ5)
LOWBIT_PANEL(q8_0, block_q8_0, false, DecodeQ8)
LOWBIT_PANEL(iq4_nl, block_iq4_nl, false, DecodeIQ4NL)

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

// The block_q8_0 entry points of a legacy type: panel rows built here, so they equal the mat-mat bit
// for bit.
#define LOWBIT_PANEL_ENTRIES(name, type)                                                            \
    void name##_rows(int n, const void* w, const void* act, size_t stride, int nrows, float* out) {  \
        const std::vector<uint8_t> panel = panel_of(n, act, stride, nrows, panel_bias(type)); \
        name##_panel(n, w, panel.data(), size_t(Q8PanelLayout::row_bytes(n)), nrows, out);         \
    }                                                                                              \
    float vec_dot_##name(int n, const void* w, const void* a) {                                    \
        float out;                                                                                 \
        name##_rows(n, w, a, 0, 1, &out);                                                          \
        return out;                                                                                \
    }

LOWBIT_PANEL_ENTRIES(q4_0, GGMLType::Q4_0)
LOWBIT_PANEL_ENTRIES(q4_1, GGMLType::Q4_1)
LOWBIT_PANEL_ENTRIES(q5_0, GGMLType::Q5_0)
LOWBIT_PANEL_ENTRIES(q5_1, GGMLType::Q5_1)
LOWBIT_PANEL_ENTRIES(q8_0, GGMLType::Q8_0)
LOWBIT_PANEL_ENTRIES(iq4_nl, GGMLType::IQ4_NL)

LOWBIT_DOT_AND_ROWS(f32)
LOWBIT_DOT_AND_ROWS(f16)
LOWBIT_DOT_AND_ROWS(bf16)


// The activation quantizers stay 256-bit (a small share of a mat-vec).
void quantize_act_q8_0(const float* x, block_q8_0* y, int n) { quantize_act_q8_0_256(x, y, n); }
void quantize_act_q8_K(const float* x, block_q8_K* y, int n) { quantize_act_q8_K_256(x, y, n); }


namespace {
// Entries of the types with panel kernels (legacy 32-blocks); their strip GEMMs: add_strips.
constexpr TypeKernels legacy(VecDotFn dot, VecDotRowsFn rows, PanelRowsFn panel, PanelWRowsFn wrows) {
    return {.dot = dot, .dot_rows = rows, .panel = panel, .panel_wrows = wrows};
}

KernelSet make_kernels() {
    KernelSet k{"avx512", quantize_act_q8_0, quantize_act_q8_K};
    k[GGMLType::Q4_0] = legacy(vec_dot_q4_0, q4_0_rows, q4_0_panel, q4_0_panel_wrows);
    k[GGMLType::Q4_1] = legacy(vec_dot_q4_1, q4_1_rows, q4_1_panel, q4_1_panel_wrows);
    k[GGMLType::Q5_0] = legacy(vec_dot_q5_0, q5_0_rows, q5_0_panel, q5_0_panel_wrows);
    k[GGMLType::Q5_1] = legacy(vec_dot_q5_1, q5_1_rows, q5_1_panel, q5_1_panel_wrows);
    k[GGMLType::Q8_0] = legacy(vec_dot_q8_0, q8_0_rows, q8_0_panel, q8_0_panel_wrows);
    k[GGMLType::IQ4_NL] = legacy(vec_dot_iq4_nl, iq4_nl_rows, iq4_nl_panel, iq4_nl_panel_wrows);
    k[GGMLType::Q2_K] = {.dot = vec_dot_q2_K, .dot_rows = q2_K_rows};
    k[GGMLType::Q3_K] = {.dot = vec_dot_q3_K, .dot_rows = q3_K_rows};
    k[GGMLType::Q4_K] = {.dot = vec_dot_q4_K, .dot_rows = q4_K_rows};
    k[GGMLType::Q5_K] = {.dot = vec_dot_q5_K, .dot_rows = q5_K_rows};
    k[GGMLType::Q6_K] = {.dot = vec_dot_q6_K, .dot_rows = q6_K_rows};
    k[GGMLType::IQ4_XS] = {.dot = vec_dot_iq4_xs, .dot_rows = iq4_xs_rows};
    k[GGMLType::F32] = {.dot = vec_dot_f32, .dot_rows = f32_rows};
    k[GGMLType::F16] = {.dot = vec_dot_f16, .dot_rows = f16_rows};
    k[GGMLType::BF16] = {.dot = vec_dot_bf16, .dot_rows = bf16_rows};
    LOWBIT_IQ_DOT_ONLY_ENTRIES(k);
    add_strips(k);      // strip_avx512.cpp
    add_iq_strips(k);   // strip_iq.cpp
    add_packed_src_strips(k);   // packed_src_avx512.cpp: IQ4_NL IQ4_XS Q2_K Q3_K
    add_packed_gemms(k);
    add_strip_quantizers(k);
    k.auto_two_pass = true;
    return k;
}
}  // namespace

// Built on the first call, which dispatch.cpp makes only where the CPU has the AVX-512 level: the
// compiler fills the set with AVX-512 stores, and as a namespace-scope initializer it ran when the
// module loaded, so `import lowbit` died of SIGILL on AVX2-only CPUs (Zen 3, most Intel clients).
const KernelSet& kernel_set() {
    static const KernelSet k = make_kernels();
    return k;
}

}  // namespace lowbit::cpu::avx512
// kernels.h: the CPU dot-product kernel interface.
//
// A dot multiplies one weight row (n elements, stored as the type's blocks) with one activation
// row. Quantized weights dot against quantized activations:
//   Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL        x  block_q8_0 activations (32 per block)
//   Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS        x  block_q8_K activations (256 per block, with bsums)
//   IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S TQ1_0 TQ2_0   x  block_q8_K
//   MXFP4 NVFP4                            x  block_q8_0
//   F32 F16 BF16                           x  float activations
// n must be a multiple of the weight type's block size (callers check; kernels do not).
//
// Three implementations of every function, one namespace each: scalar (the spec, dot_scalar.cpp),
// avx2 (dot_avx2.cpp) and avx512 (dot_avx512.cpp). The integer sum of every block is exact in all
// of them. Float combination:
//   k-quants and IQ4_XS: per super-block float math in the same order as the scalar spec, so the
//     SIMD result equals the scalar one bit for bit.
//   legacy 32-blocks and F32/F16/BF16: SIMD keeps per-lane float partial sums (different
//     reduction order), so they agree with the scalar spec within tier 1 (tests: <= 2e-7 per
//     block, 1e-7 per element for floats, relative to sum |w_i * a_i|).
//     On AVX-512 the legacy types compute through activation panels (Q8PanelLayout below; the
//     block_q8_0 entry points build one first), still with exact integer block sums.
// Multi-row dots (VecDotRowsFn) give each row exactly what the single-row dot of the same set
// gives, so a mat-mat through them equals a loop of mat-vecs bit for bit in every set. The one
// exception is the strip GEMM (AVX-512: legacy types, Q4_K, Q5_K, Q6_K, through packed_src_avx512.cpp
// IQ4_NL, IQ4_XS, Q2_K, Q3_K, and through strip_iq.h the i-quant / ternary / FP4 types; AVX2,
// strip_avx2.h: the types with a packed layout; StripLayout below), which
// matmul takes for >= 16 x rows: exact int32 block sums, another float order (tier 1 to the spec), and
// outputs independent of threads, tiles and the number of rows in the call.
// Activation quantizers round to nearest-even in every implementation and agree bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace lowbit::cpu {

// One weight row . one activation row (see the table above for the activation format).
using VecDotFn = float (*)(int n, const void* weight_blocks, const void* act);
// Several activation rows at once (prefill): out[i] = dot(weight row, activation row i) for
// i < nrows <= kMaxDotRows, activation rows act_stride bytes apart. Decodes each weight block once
// for all rows; every out[i] equals the single-row dot bit for bit.
using VecDotRowsFn = void (*)(int n, const void* weight_blocks, const void* act, size_t act_stride, int nrows,
                              float* out);
constexpr int kMaxDotRows = 8;
using QuantizeQ8_0Fn = void (*)(const float* x, block_q8_0* y, int n);  // n % 32 == 0
using QuantizeQ8_KFn = void (*)(const float* x, block_q8_K* y, int n);  // n % 256 == 0

// The activation format a weight type dots against.
enum class ActFormat { F32, Q8_0, Q8_K };

// A q8_0 activation panel: the same quantized rows as block_q8_0, regrouped so a 512-bit kernel
// loads them without shuffles and never recomputes what depends on the activations alone. One
// panel row of n elements (n % 32 == 0), padded to np = n rounded up to 256, is
// Q8PanelLayout::row_bytes(n) bytes (a multiple of 64), holding at these offsets:
//   qs    int8 [np]            the quants, 0 beyond n
//   corr  int32[np / 64][16]   per pair of blocks (2k, 2k+1): lanes 0 and 8 = -bias * sum(qs) of
//                              block 2k and 2k+1, other lanes 0 (bias: the weight type's, below)
//   d     f32  [np / 32]       block scales (the fp16 values, exact), 0 beyond n
//   s     f32  [np / 32]       d * sum(qs) per block (exact in f32: 11 x 13 bits)
// With the weight as u - bias (u unsigned), a block's integer sum is dpbusd(corr, u, y) in exact
// int32 arithmetic; types with a min (Q4_1, Q5_1: bias 0) use s for the min term.
struct Q8PanelLayout {
    int64_t np, qs, corr, d, s, bytes;
    explicit Q8PanelLayout(int64_t n)
        : np((n + 255) / 256 * 256), qs(0), corr(np), d(2 * np), s(2 * np + np / 8), bytes(2 * np + np / 4) {}
    static int64_t row_bytes(int64_t n) { return Q8PanelLayout(n).bytes; }
};
// out[i] = dot(weight row, panel row i) for i < nrows <= kMaxDotRows, panel rows stride bytes apart.
using PanelRowsFn = void (*)(int n, const void* weight_blocks, const void* panel, size_t stride, int nrows,
                             float* out);
// Mat-vec (decode) through panels: nw <= kPanelWRows weight rows (row_bytes apart) against nrows <= 2
// panel rows (a token's q8 row, or its hi and lo rows); out[i * nrows + r] = the PanelRowsFn's
// out[r] for weight row i, bit for bit (same operations per output), so a mat-vec through it
// equals the mat-mat's per-row results. Several weight rows per call share the activation loads
// and the call, and give the core independent accumulator chains.
using PanelWRowsFn = void (*)(int n, const void* weight_rows, size_t row_bytes, int nw, const void* panel,
                              size_t stride, int nrows, float* out);
constexpr int kPanelWRows = 4;

// Strip GEMM (mat-mat of many rows; AVX-512, and AVX2 in two 8-row halves): kStripRows weight
// rows decoded once per matmul call into unsigned values u (weight = dw * (u - bias) + mw per block of `block` elements: 32 for
// the legacy types, Q4_K and Q5_K, 16 for Q6_K) and interleaved so that one dpbusd lane holds one
// weight row. Per block, StripLayout::block_bytes(block) bytes:
//   u  uint8[block / 4][kStripRows][4]  group g (elements 4g..4g+3) of rows 0..15: one zmm per group
//   d  f32[kStripRows]                  the rows' block scales dw (d, or d * sub-block scale)
//   m  f32[kStripRows]                  the rows' block mins mw (Q4_1 Q5_1: m; Q4_K Q5_K: -dmin * min)
// Rows past the decoded ones are all zero. The activation rows are StripActLayout rows. A GEMM
// sums each block exactly in int32 (corr included) and accumulates, per block in order and one
// f32 lane per output, dw * (d_a * isum) (+ mw * s_a): a different float order than the dots and
// the panel kernels (tier 1 to the scalar spec).
constexpr int kStripRows = 16;
constexpr int kStripAct = 8;   // activation rows per strip GEMM call at most
struct StripLayout {
    static constexpr int64_t u_bytes(int block) { return int64_t(block) * kStripRows; }
    static constexpr int64_t block_bytes(int block) { return u_bytes(block) + 8 * kStripRows; }
    static int64_t bytes(int64_t n, int block) { return n / block * block_bytes(block); }
};
// Activation rows for a strip GEMM come in groups of kStripAct rows (slots), q8_0 or q8_K rows
// regrouped per block of `block` elements so that a GEMM walks one pointer with fixed offsets.
// Per block, block_bytes(block) bytes:
//   qs    int8 [kStripAct][block]  the quants of each slot
//   corr  int32[kStripAct]         -bias * sum(qs) of the slot's block
//   d     f32  [kStripAct]         the slot's activation scale (q8_0: the block's fp16 d; q8_K: the super-block's)
//   s     f32  [kStripAct]         d * sum(qs)
struct StripActLayout {
    static constexpr int64_t corr(int block) { return int64_t(kStripAct) * block; }
    static constexpr int64_t d(int block) { return corr(block) + 4 * kStripAct; }
    static constexpr int64_t s(int block) { return d(block) + 4 * kStripAct; }
    static constexpr int64_t block_bytes(int block) { return s(block) + 4 * kStripAct; }
    static int64_t group_bytes(int64_t n, int block) { return n / block * block_bytes(block); }
};
// Decode weight rows [0, nrows) (nrows <= kStripRows, row_bytes apart) of n elements into a strip.
using StripDecodeFn = void (*)(int n, const void* weight_rows, size_t row_bytes, int nrows, void* strip);
// out[i * kStripRows + j] = dot(strip row j, slot i of the activation group) for i < nact <= kStripAct.
using StripGemmFn = void (*)(int n, const void* strip, const void* act_group, int nact, float* out);
// prefetch: prefetch_bytes (a multiple of 64) the call requests while it runs, spread over its
// blocks (the next call's weights; null: none).
using StripGemmPairFn = void (*)(int n, const void* strip, size_t strip_stride, const void* act_group, int nact,
                                 float* out, const void* prefetch, size_t prefetch_bytes);
// One token (nact <= 2: its q8 row, or its hi and lo rows) on a packed strip: out as StripGemmFn,
// the same bits as StripKernels::packed. While it walks the strip it also requests, spread evenly
// over its blocks, the strip's own byte count of memory from `ahead` on (stopping at `ahead_end`):
// a decode step's weights come from memory, and a steady stream of requests a fixed distance
// ahead keeps enough reads in flight where one burst per strip overruns L1 (matmul.cpp).
using StripGemvFn = void (*)(int n, const void* strip, const void* act_group, int nact, float* out,
                             const void* ahead, const void* ahead_end);
struct StripKernels {
    StripDecodeFn decode;
    StripGemmFn gemm;
    int block;   // elements per weight scale (32 or 16)
    int bias;    // weight = dw * (u - bias) + mw
    // The same GEMM reading packed strips (PackedLayout below) in place: no decode per call. The
    // integer sums and the float order are gemm's, so its outputs equal gemm's on the decoded strip
    // bit for bit. Null: the type has no packed layout.
    StripGemmFn packed = nullptr;
    // A packed strip (weight_rows: its first byte) -> a strip of this layout, for calls with many
    // activation rows (decoded once, then gemm per group). Null with packed.
    StripDecodeFn packed_to_strip = nullptr;
    // packed on two strips at once (the second strip_stride bytes after the first) against up to
    // kStripAct rows: out[s * kStripAct * kStripRows + i * kStripRows + j] for strip s < 2. Each
    // activation dword is loaded once for both strips' weights (packed_avx512.cpp). Per output the
    // integer sum (exact) and float steps of packed, so the same bits. Null: not available.
    StripGemmPairFn packed_pair = nullptr;
    // gemm on two decoded strips at once, as packed_pair (the same bits as gemm).
    StripGemmPairFn gemm_pair = nullptr;
    // The packed GEMM for one token, with requests ahead (StripGemvFn). Null with packed.
    StripGemvFn packed_gemv = nullptr;
};

// Packed rows: a weight matrix repacked once at load (weights.cpp) so that the strip GEMM reads
// 16 interleaved rows in place instead of decoding them per call (ik_llama.cpp's _R4/_R8 idea, in
// lowbit's strip shape). Same bytes per row as the GGML blocks (plus < 64 bytes of padding per
// strip and a zero-filled partial last strip); pack and unpack are byte permutations, so nothing
// is rounded. One strip of kStripRows rows and nb = n / 32 blocks, four arrays, each 64-aligned:
//   qs  Q4_0 Q4_1 Q5_0 Q5_1 IQ4_NL: uint8[nb][4][kStripRows][4]: dword j of part k = row j's qs[4k..4k+3]
//       (low nibbles: elements 4k..4k+3, high nibbles: elements 16+4k..16+4k+3)
//       Q8_0: int8[nb][8][kStripRows][4]: dword j of part g = row j's qs[4g..4g+3]
//   qh  Q5_0 Q5_1: uint64[nb][8]: bit 4j + i of word g = bit 4 of element 4g + i of row j
//   d   fp16[nb][kStripRows]
//   m   fp16[nb][kStripRows]  Q4_1 Q5_1
// Rows past the matrix's last are zero bytes (scale 0: they add nothing and are never stored).
//
// The k-quants (Q2_K Q3_K Q4_K Q5_K Q6_K, and IQ4_XS alike; ik_llama.cpp's Q4_K_R4 / Q6_K_R4 idea with 16 rows, llama.cpp's
// block_q4_Kx8 with the quants left as they are) keep every byte of their GGML super-blocks too,
// moved dword by dword: nb = n / 256 super-blocks, per super-block b one record of sb_bytes (a
// multiple of 64) at b * sb_bytes, each of its runs `field[w][kStripRows][4]` (dword j of run w =
// row j's field bytes 4w..4w+3), then the fp16 scales of all super-blocks:
//   Q4_K record (2240): qs[32][16][4]  scales[3][16][4]
//   Q5_K record (2752): qs[32][16][4]  qh[8][16][4]  scales[3][16][4]
//   Q6_K record (3328): ql[32][16][4]  qh[16][16][4]  scales[4][16][4]
//   Q2_K record (1280): scales[4][16][4]  qs[16][16][4]
//   Q3_K record (1728): hmask[8][16][4]  qs[16][16][4]  scales[3][16][4]
//   IQ4_XS record (2112): qs[32][16][4]  scales_l[1][16][4]
//   d   fp16[nb][kStripRows] at offset d = nb * sb_bytes
//   m   fp16[nb][kStripRows] at offset m = d + nb * 32: dmin (Q2_K Q4_K Q5_K); IQ4_XS: the uint16 scales_h
// So one zmm load gives the 16 rows' quant dword w (Q4_K: the low nibbles of qs dword 8c + g are
// elements 4g..4g+3 of sub-block 2c, the high nibbles those of sub-block 2c + 1), and the 16 rows'
// 6-bit scales and mins of sub-block s come out of the 3 scale zmm with a shift and a mask per
// lane (s >= 4: two of each), the Q6_K int8 scales with two shifts: the kernels get the strip
// GEMM's dw = d * sc and mw = -dmin * m (exact products in f32) with a few vector ops per
// sub-block. Padding: < 64 bytes per strip (Q6_K with an odd nb).
struct PackedLayout {
    int64_t nb = 0, qs = 0, qh = 0, d = 0, m = 0, strip_bytes = 0;   // offsets of the arrays in a strip
    int64_t sb_bytes = 0;   // k-quants: bytes of a super-block's record (above); 0 for the legacy types
    PackedLayout(GGMLType type, int64_t n);
    static bool has(GGMLType type);   // whether `type` has a packed layout
    // A strip's bytes per strip block of `block` elements (n / block of them), rounded up: the
    // step of a one-token GEMM's requests ahead.
    int64_t bytes_per_block(int64_t n, int block) const { return (strip_bytes + n / block - 1) / (n / block); }
};
// A packed strip of a super-block type (the records above) as its kernels read it: the records,
// the fp16 d and m arrays (m: dmin, or IQ4_XS's scales_h), bytes a record, and the strip's bytes
// per strip block of `block` elements (the step of a one-token GEMM's requests ahead).
struct PackedRecordView {
    const uint8_t *rec, *d, *m;
    int64_t sb_bytes, bytes_per_block;
    PackedRecordView(GGMLType type, const void* strip, int64_t n, int block);
};
// rows x cols of `type` (GGML rows, row_bytes apart) -> ceil(rows / kStripRows) packed strips.
void pack_rows(GGMLType type, int64_t rows, int64_t cols, const void* src, size_t row_bytes, void* dst);
// The same, into the calling thread's scratch (64-aligned, reused by its next call): the strip
// decoders of GGML rows that read them as a packed strip.
const uint8_t* pack_rows_scratch(GGMLType type, int64_t rows, int64_t cols, const void* src, size_t row_bytes);
// Strips [s0, s1) of the packed matrix whose rows are the runs' rows one after the other (e.g. q,
// k and v stacked without a copy), written at dst + s * strip_bytes; strips are independent, so
// threads may pack disjoint ranges of one matrix (model load).
struct RowRun {
    const void* data;   // rows GGML rows, row_bytes apart
    int64_t rows;
};
void pack_strips(GGMLType type, int64_t cols, const RowRun* runs, int n_runs, size_t row_bytes, int64_t s0,
                 int64_t s1, void* dst);
// Strip `s` of a packed matrix back to GGML rows (nrows <= kStripRows, row_bytes apart).
void unpack_strip(GGMLType type, int64_t cols, const void* packed, int64_t s, int nrows, void* dst, size_t row_bytes);
// Row r of a packed matrix back to one GGML row (a tied head's token embedding lookups).
void unpack_row(GGMLType type, int64_t cols, const void* packed, int64_t r, void* dst);
// Bytes of a packed matrix of rows x cols.
inline int64_t packed_bytes(GGMLType type, int64_t rows, int64_t cols) {
    return (rows + kStripRows - 1) / kStripRows * PackedLayout(type, cols).strip_bytes;
}

// What one kernel set has for one weight type (ggml's type_traits_cpu), written per type with
// designated initializers in each ISA file; members left null mean "none": no dot = no kernel for
// the type, no panel / strip = matmul takes the multi-row dots.
//   dot        one weight row . one activation row
//   dot_rows   several activation rows (dot_rows_loop<dot> where the set has nothing better)
//   panel      AVX-512 legacy types: dots against a Q8PanelLayout. Each panel row's result does not
//              depend on nrows or its place in the panel, so a mat-mat through them equals a loop
//              of mat-vecs bit for bit.
//   panel_wrows  the same panels, several weight rows per call (mat-vec; PanelWRowsFn)
//   strip      strip GEMM for mat-mat of many rows (StripLayout; AVX-512, and AVX2 for the
//              types with a packed layout), with the packed GEMMs where the set has them
struct TypeKernels {
    VecDotFn dot = nullptr;
    VecDotRowsFn dot_rows = nullptr;
    PanelRowsFn panel = nullptr;
    PanelWRowsFn panel_wrows = nullptr;
    StripKernels strip = {nullptr, nullptr, 0, 0};
};

constexpr size_t kTypeSlots = 41;   // > every GGMLType id (blocks.h)
static_assert(size_t(GGMLType::NVFP4) < kTypeSlots, "kTypeSlots must exceed every GGMLType id");

// Every kernel for one ISA level, by weight type. Dispatch picks one set; matmul calls through it.
// x (n elements) quantized straight into slot `slot` of a StripActLayout group of n elements
// (block, bias: the strip kernels'), and with two_pass its residual row, (x - dequant(q)) *
// kActLoScale, into slot + 1: the same bytes as the set's quantize_act_q8_0 / q8_K (by the
// function's format), the residual and build_strip_act_row for each row in turn (matmul.cpp's
// quantize_rows, the spec) in one pass over x.
using QuantizeStripFn = void (*)(const float* x, int64_t n, int block, int bias, bool two_pass, void* group, int slot);
// The two-pass activations' lo row holds the residual times this power of two (matmul.h).
constexpr float kActLoScale = 256.0f;

struct KernelSet {
    const char* name = "";   // "scalar", "avx2", "avx512"
    QuantizeQ8_0Fn quantize_q8_0 = nullptr;
    QuantizeQ8_KFn quantize_q8_K = nullptr;
    TypeKernels types[kTypeSlots] = {};
    // Fused quantizers into strip slots (null: quantize_rows composes the steps itself).
    QuantizeStripFn quantize_strip_q8_0 = nullptr;
    QuantizeStripFn quantize_strip_q8_K = nullptr;
    // act_precision "auto" is two-pass where matmul.h says (the AVX-512 set: its packed gemv makes
    // the second pass cheap); false: q8 in every matmul (scalar, AVX2).
    bool auto_two_pass = false;

    const TypeKernels& of(GGMLType t) const {
        static const TypeKernels none;
        return size_t(t) < kTypeSlots ? types[size_t(t)] : none;
    }
    TypeKernels& operator[](GGMLType t) { return types[size_t(t)]; }
};

// The multi-row dot as a loop of single-row dots (types without a dedicated kernel).
template <VecDotFn Dot>
void dot_rows_loop(int n, const void* w, const void* act, size_t act_stride, int nrows, float* out) {
    for (int i = 0; i < nrows; ++i) out[i] = Dot(n, w, static_cast<const uint8_t*>(act) + size_t(i) * act_stride);
}

// The entry of a type whose set has only a single-row dot.
template <VecDotFn Dot>
constexpr TypeKernels dot_only() {
    return TypeKernels{.dot = Dot, .dot_rows = dot_rows_loop<Dot>};
}

// A set in which every type has only its single-row dot (the scalar and AVX2 sets), built from the
// vec_dot_* and quantize_act_* of the namespace it is used in.
#define LOWBIT_DOT_ONLY_SET(set_name)                                          \
    [] {                                                                       \
        KernelSet k{set_name, quantize_act_q8_0, quantize_act_q8_K};           \
        k[GGMLType::Q4_0] = dot_only<vec_dot_q4_0>();                          \
        k[GGMLType::Q4_1] = dot_only<vec_dot_q4_1>();                          \
        k[GGMLType::Q5_0] = dot_only<vec_dot_q5_0>();                          \
        k[GGMLType::Q5_1] = dot_only<vec_dot_q5_1>();                          \
        k[GGMLType::Q8_0] = dot_only<vec_dot_q8_0>();                          \
        k[GGMLType::IQ4_NL] = dot_only<vec_dot_iq4_nl>();                      \
        k[GGMLType::Q2_K] = dot_only<vec_dot_q2_K>();                          \
        k[GGMLType::Q3_K] = dot_only<vec_dot_q3_K>();                          \
        k[GGMLType::Q4_K] = dot_only<vec_dot_q4_K>();                          \
        k[GGMLType::Q5_K] = dot_only<vec_dot_q5_K>();                          \
        k[GGMLType::Q6_K] = dot_only<vec_dot_q6_K>();                          \
        k[GGMLType::IQ4_XS] = dot_only<vec_dot_iq4_xs>();                      \
        k[GGMLType::F32] = dot_only<vec_dot_f32>();                            \
        k[GGMLType::F16] = dot_only<vec_dot_f16>();                            \
        k[GGMLType::BF16] = dot_only<vec_dot_bf16>();                          \
        LOWBIT_IQ_DOT_ONLY_ENTRIES(k);                                         \
        return k;                                                              \
    }()

// The single-row dots of the i-quant, ternary and FP4 types (dot_scalar_iq.cpp and the ISA files;
// their exactness rule is in dot_scalar_iq.cpp: every set equals the scalar spec bit for bit).
#define LOWBIT_IQ_DOT_ONLY_ENTRIES(k)                                          \
    do {                                                                       \
        k[GGMLType::IQ2_XXS] = dot_only<vec_dot_iq2_xxs>();                    \
        k[GGMLType::IQ2_XS] = dot_only<vec_dot_iq2_xs>();                      \
        k[GGMLType::IQ2_S] = dot_only<vec_dot_iq2_s>();                        \
        k[GGMLType::IQ3_XXS] = dot_only<vec_dot_iq3_xxs>();                    \
        k[GGMLType::IQ3_S] = dot_only<vec_dot_iq3_s>();                        \
        k[GGMLType::IQ1_S] = dot_only<vec_dot_iq1_s>();                        \
        k[GGMLType::IQ1_M] = dot_only<vec_dot_iq1_m>();                        \
        k[GGMLType::TQ1_0] = dot_only<vec_dot_tq1_0>();                        \
        k[GGMLType::TQ2_0] = dot_only<vec_dot_tq2_0>();                        \
        k[GGMLType::MXFP4] = dot_only<vec_dot_mxfp4>();                        \
        k[GGMLType::NVFP4] = dot_only<vec_dot_nvfp4>();                        \
    } while (0)

// The ISA-independent facts of a weight type for the CPU kernels (one table, dispatch.cpp).
struct CpuTypeTraits {
    GGMLType type;
    ActFormat act;   // the activation format its dots take
    int bias;        // weight = u - bias with u unsigned, as the panel decoders see it (0: d * u + m)
};
// The traits of `type`, or nullptr when lowbit has no CPU kernel for it.
const CpuTypeTraits* cpu_type_traits(GGMLType type);

// The dot of `type` in `ks`, or nullptr when lowbit has no CPU kernel for that type.
inline VecDotFn kernel_for(const KernelSet& ks, GGMLType type) { return ks.of(type).dot; }
// The weight bias a panel's corr uses for `type` (CpuTypeTraits::bias).
int panel_bias(GGMLType type);
// The strip GEMM of `type` in `ks`, or nullptr.
inline const StripKernels* strip_kernels_for(const KernelSet& ks, GGMLType type) {
    const StripKernels& k = ks.of(type).strip;
    return k.decode && k.gemm ? &k : nullptr;
}
// Whether `ks` reads a packed layout of `type` in place (model load repacks such matrices).
inline bool packs(const KernelSet& ks, GGMLType type) {
    const StripKernels* sk = strip_kernels_for(ks, type);
    return sk && sk->packed && PackedLayout::has(type);
}
// One panel row (layout above) from n / 32 quantized blocks.
void build_q8_panel_row(const block_q8_0* blocks, int64_t n, int bias, void* panel_row);
// Slot `slot` of a StripActLayout group of n elements (block, bias: the strip kernels') from a row
// of q8_0 or q8_K blocks.
void build_strip_act_row(const block_q8_0* blocks, int64_t n, int block, int bias, void* group, int slot);
void build_strip_act_row(const block_q8_K* blocks, int64_t n, int block, int bias, void* group, int slot);
// Activation format of `type`; only meaningful where kernel_for is non-null.
ActFormat act_format(GGMLType type);
// Bytes of one activation row of n elements in `fmt`.
size_t act_row_bytes(ActFormat fmt, int64_t n);
// x (cols,) -> one row of q8_0 or q8_K blocks (fmt: either) with the set's quantizer.
void quantize_act_row(const KernelSet& ks, ActFormat fmt, const float* x, void* dst, int64_t cols);

#define LOWBIT_DECLARE_KERNELS                                                   \
    float vec_dot_q4_0(int n, const void* w, const void* a);                    \
    float vec_dot_q4_1(int n, const void* w, const void* a);                    \
    float vec_dot_q5_0(int n, const void* w, const void* a);                    \
    float vec_dot_q5_1(int n, const void* w, const void* a);                    \
    float vec_dot_q8_0(int n, const void* w, const void* a);                    \
    float vec_dot_iq4_nl(int n, const void* w, const void* a);                  \
    float vec_dot_q2_K(int n, const void* w, const void* a);                    \
    float vec_dot_q3_K(int n, const void* w, const void* a);                    \
    float vec_dot_q4_K(int n, const void* w, const void* a);                    \
    float vec_dot_q5_K(int n, const void* w, const void* a);                    \
    float vec_dot_q6_K(int n, const void* w, const void* a);                    \
    float vec_dot_iq4_xs(int n, const void* w, const void* a);                  \
    float vec_dot_f32(int n, const void* w, const void* a);                     \
    float vec_dot_f16(int n, const void* w, const void* a);                     \
    float vec_dot_bf16(int n, const void* w, const void* a);                    \
    void quantize_act_q8_0(const float* x, block_q8_0* y, int n);               \
    void quantize_act_q8_K(const float* x, block_q8_K* y, int n);               \
    const KernelSet& kernel_set();

// The i-quant / ternary / FP4 dots: dot_scalar_iq.cpp (the spec), dot_iq_avx2.cpp and
// dot_iq_avx512.cpp (dot_iq_x86_256.h), equal to the spec bit for bit.
#define LOWBIT_DECLARE_IQ_KERNELS                                                \
    float vec_dot_iq2_xxs(int n, const void* w, const void* a);                 \
    float vec_dot_iq2_xs(int n, const void* w, const void* a);                  \
    float vec_dot_iq2_s(int n, const void* w, const void* a);                   \
    float vec_dot_iq3_xxs(int n, const void* w, const void* a);                 \
    float vec_dot_iq3_s(int n, const void* w, const void* a);                   \
    float vec_dot_iq1_s(int n, const void* w, const void* a);                   \
    float vec_dot_iq1_m(int n, const void* w, const void* a);                   \
    float vec_dot_tq1_0(int n, const void* w, const void* a);                   \
    float vec_dot_tq2_0(int n, const void* w, const void* a);                   \
    float vec_dot_mxfp4(int n, const void* w, const void* a);                   \
    float vec_dot_nvfp4(int n, const void* w, const void* a);

namespace scalar { LOWBIT_DECLARE_KERNELS LOWBIT_DECLARE_IQ_KERNELS }
namespace avx2 { LOWBIT_DECLARE_KERNELS LOWBIT_DECLARE_IQ_KERNELS }
namespace avx512 {
LOWBIT_DECLARE_KERNELS LOWBIT_DECLARE_IQ_KERNELS
void add_packed_gemms(KernelSet& k);   // packed_avx512.cpp: StripKernels::packed (and packed_gemv) of the legacy types and k-quants
void add_strip_quantizers(KernelSet& k);   // act_strip_avx512.cpp: KernelSet::quantize_strip_q8_0 / q8_K
}

#undef LOWBIT_DECLARE_KERNELS
#undef LOWBIT_DECLARE_IQ_KERNELS

}  // namespace lowbit::cpu

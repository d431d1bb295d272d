// reference.h: the scalar row (de)quantizers of every computable type: the spec that SIMD and
// CUDA kernels are checked against. Signatures match ToFloatFn / FromFloatFn in types.h.
// n is the number of weights in the row, a multiple of the type's block size (callers check).
//
// Where they live: reference.cpp (float types, legacy, Q8_K, all dequantizers),
// kquants.cpp (Q2_K..Q6_K), iq4.cpp (IQ4_NL, IQ4_XS), legacy_imatrix.cpp (legacy with imatrix),
// iq_dequant.cpp (dequantizers of the IQ1/IQ2/IQ3 families, TQ1_0, TQ2_0, MXFP4, NVFP4),
// ternary_fp4.cpp (quantizers of TQ1_0, TQ2_0, MXFP4, NVFP4).
#pragma once
#include <cstdint>

namespace lowbit {

// ---- packing of 32-weight blocks, shared by the quantizers (reference.cpp) ----
// codes 0..15 -> 16 bytes: weight j in the low nibble of byte j, weight j+16 in the high one
void pack_nibbles(const uint8_t* L, uint8_t* qs);
// codes 0..31 -> low nibbles as pack_nibbles, bit 4 of code j in bit j of the 32-bit qh
void pack_5bit(const uint8_t* q, uint8_t* qs, uint8_t* qh_bytes);

// ---- dequantize: blocks -> n floats ----
void dequantize_row_f32(const void* in, float* out, int64_t n);
void dequantize_row_f16(const void* in, float* out, int64_t n);
void dequantize_row_bf16(const void* in, float* out, int64_t n);
void dequantize_row_q4_0(const void* in, float* out, int64_t n);
void dequantize_row_q4_1(const void* in, float* out, int64_t n);
void dequantize_row_q5_0(const void* in, float* out, int64_t n);
void dequantize_row_q5_1(const void* in, float* out, int64_t n);
void dequantize_row_q8_0(const void* in, float* out, int64_t n);
void dequantize_row_q2_K(const void* in, float* out, int64_t n);
void dequantize_row_q3_K(const void* in, float* out, int64_t n);
void dequantize_row_q4_K(const void* in, float* out, int64_t n);
void dequantize_row_q5_K(const void* in, float* out, int64_t n);
void dequantize_row_q6_K(const void* in, float* out, int64_t n);
void dequantize_row_q8_K(const void* in, float* out, int64_t n);
void dequantize_row_iq4_nl(const void* in, float* out, int64_t n);
void dequantize_row_iq4_xs(const void* in, float* out, int64_t n);
void dequantize_row_iq2_xxs(const void* in, float* out, int64_t n);
void dequantize_row_iq2_xs(const void* in, float* out, int64_t n);
void dequantize_row_iq2_s(const void* in, float* out, int64_t n);
void dequantize_row_iq3_xxs(const void* in, float* out, int64_t n);
void dequantize_row_iq3_s(const void* in, float* out, int64_t n);
void dequantize_row_iq1_s(const void* in, float* out, int64_t n);
void dequantize_row_iq1_m(const void* in, float* out, int64_t n);
void dequantize_row_tq1_0(const void* in, float* out, int64_t n);
void dequantize_row_tq2_0(const void* in, float* out, int64_t n);
void dequantize_row_mxfp4(const void* in, float* out, int64_t n);
void dequantize_row_nvfp4(const void* in, float* out, int64_t n);

// ---- quantize: n floats -> blocks (imatrix: n per-column importances or nullptr) ----
void quantize_row_f32(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_f16(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_bf16(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q4_0(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q4_1(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q5_0(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q5_1(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q8_0(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q2_K(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q3_K(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q4_K(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q5_K(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q6_K(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q8_K(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_iq4_nl(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_iq4_xs(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_iq3_xxs(const float* x, void* out, int64_t n, const float* imatrix);   // iq3_quant.cpp
void quantize_row_iq3_s(const float* x, void* out, int64_t n, const float* imatrix);     // iq3_quant.cpp
void quantize_row_iq2_xxs(const float* x, void* out, int64_t n, const float* imatrix);   // iq2_quant.cpp
void quantize_row_iq2_xs(const float* x, void* out, int64_t n, const float* imatrix);    // iq2_quant.cpp
void quantize_row_iq2_s(const float* x, void* out, int64_t n, const float* imatrix);     // iq2_quant.cpp
void quantize_row_iq1_s(const float* x, void* out, int64_t n, const float* imatrix);     // iq1_quant.cpp
void quantize_row_iq1_m(const float* x, void* out, int64_t n, const float* imatrix);     // iq1_quant.cpp
void quantize_row_tq1_0(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_tq2_0(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_mxfp4(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_nvfp4(const float* x, void* out, int64_t n, const float* imatrix);

// ---- legacy formats with an imatrix (legacy_imatrix.cpp); called by quantize_row_q4_0 etc.
void quantize_row_q4_0_imatrix(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q4_1_imatrix(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q5_0_imatrix(const float* x, void* out, int64_t n, const float* imatrix);
void quantize_row_q5_1_imatrix(const float* x, void* out, int64_t n, const float* imatrix);

}  // namespace lowbit

// types.h: the table of block formats lowbit computes with (a subset of kGGMLTypeSizes in
// blocks.h): geometry, row (de)quantizers and the activation format their dot products use.
//
// Row functions work on ONE row of n weights (n a multiple of block_elems; checked by the
// callers in this header, not by the row functions themselves):
//   to_float(blocks, out, n)            dequantize n weights        blocks: n/block_elems blocks
//   from_float(x, blocks, n, imatrix)   quantize n weights          imatrix: n per-column
//                                       importances or nullptr
// from_float makes the bytes llama.cpp's model quantizer (ggml_quantize_chunk) makes:
//   - legacy Q4_0/Q4_1/Q5_0/Q5_1 and k-quants: the *_ref algorithm without imatrix, the
//     importance-weighted *_impl search with one;
//   - IQ4_NL / IQ4_XS: the scale search with ntry = 7 (with or without imatrix);
//   - Q8_0, Q8_K, F16, BF16, F32: imatrix ignored (as in ggml);
//   - TQ1_0, TQ2_0, MXFP4, NVFP4: ggml's *_ref algorithm, imatrix ignored (as in ggml);
//   - IQ3_XXS, IQ3_S, IQ2_S, IQ1_M: llama.cpp's codebook searches (iq3_quant.cpp,
//     iq2_quant.cpp, iq1_quant.cpp), with or without imatrix;
//   - IQ2_XXS, IQ2_XS, IQ1_S: the same, only with an imatrix (requires_imatrix; ggml asserts
//     one): quantize_rows refuses nullptr with ValueError.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/blocks.h"

namespace lowbit {

using ToFloatFn = void (*)(const void* blocks, float* out, int64_t n);
using FromFloatFn = void (*)(const float* x, void* blocks, int64_t n, const float* imatrix);

struct QuantType {
    GGMLType type;
    const char* name;
    int block_elems;         // weights per block
    int block_bytes;         // bytes per block
    ToFloatFn to_float;      // dequantize one row
    FromFloatFn from_float;  // quantize one row
    GGMLType vec_dot_type;   // activation format the CPU dot product pairs it with
    bool uses_imatrix;       // from_float changes its search when given importances
    bool requires_imatrix = false;   // from_float needs importances (ggml_quantize_requires_imatrix)

    double bits_per_weight() const { return 8.0 * block_bytes / block_elems; }
};

// Every computable type, in GGML id order.
const std::vector<QuantType>& quant_types();

// Lookups; both throw ValueError naming the unknown type and listing the supported ones.
const QuantType& quant_type(const std::string& name);  // case-insensitive ("q4_k" == "Q4_K")
const QuantType& quant_type(GGMLType type);
const QuantType* find_quant_type(GGMLType type);        // nullptr when not computable

// Bytes of one row of n weights; ValueError when n is not a positive multiple of the block.
int64_t quant_row_bytes(const QuantType& t, int64_t n);

// Validated whole-tensor entry points (rows are independent; large inputs use threads).
//   x:       rows x n float32, row-major          out: rows x row_bytes
//   imatrix: n importances (>= 0, finite) or nullptr
// quantize_rows rejects NaN/Inf in x for block formats (it would poison scales).
void quantize_rows(const QuantType& t, const float* x, void* out, int64_t rows, int64_t n,
                   const float* imatrix);
void dequantize_rows(const QuantType& t, const void* in, float* out, int64_t rows, int64_t n);

}  // namespace lowbit

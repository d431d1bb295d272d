// types.cpp: the computable type table, lookups, and the validated whole-tensor (de)quantizers.
#include "quant/types.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <thread>

#include "common.h"
#include "quant/reference.h"

namespace lowbit {

namespace {

std::vector<QuantType> make_table() {
    using T = GGMLType;
    // type, name, block elems, block bytes, to_float, from_float, vec_dot_type, uses_imatrix
    std::vector<QuantType> table = {
        {T::F32, "F32", 1, 4, dequantize_row_f32, quantize_row_f32, T::F32, false},
        {T::F16, "F16", 1, 2, dequantize_row_f16, quantize_row_f16, T::F32, false},
        {T::Q4_0, "Q4_0", QK4_0, sizeof(block_q4_0), dequantize_row_q4_0, quantize_row_q4_0, T::Q8_0, true},
        {T::Q4_1, "Q4_1", QK4_1, sizeof(block_q4_1), dequantize_row_q4_1, quantize_row_q4_1, T::Q8_0, true},
        {T::Q5_0, "Q5_0", QK5_0, sizeof(block_q5_0), dequantize_row_q5_0, quantize_row_q5_0, T::Q8_0, true},
        {T::Q5_1, "Q5_1", QK5_1, sizeof(block_q5_1), dequantize_row_q5_1, quantize_row_q5_1, T::Q8_0, true},
        {T::Q8_0, "Q8_0", QK8_0, sizeof(block_q8_0), dequantize_row_q8_0, quantize_row_q8_0, T::Q8_0, false},
        {T::Q2_K, "Q2_K", QK_K, sizeof(block_q2_K), dequantize_row_q2_K, quantize_row_q2_K, T::Q8_K, true},
        {T::Q3_K, "Q3_K", QK_K, sizeof(block_q3_K), dequantize_row_q3_K, quantize_row_q3_K, T::Q8_K, true},
        {T::Q4_K, "Q4_K", QK_K, sizeof(block_q4_K), dequantize_row_q4_K, quantize_row_q4_K, T::Q8_K, true},
        {T::Q5_K, "Q5_K", QK_K, sizeof(block_q5_K), dequantize_row_q5_K, quantize_row_q5_K, T::Q8_K, true},
        {T::Q6_K, "Q6_K", QK_K, sizeof(block_q6_K), dequantize_row_q6_K, quantize_row_q6_K, T::Q8_K, true},
        // activation format of the k-quant dots; never stored in files
        {T::Q8_K, "Q8_K", QK_K, sizeof(block_q8_K), dequantize_row_q8_K, quantize_row_q8_K, T::Q8_K, false},
        {T::IQ4_NL, "IQ4_NL", QK4_NL, sizeof(block_iq4_nl), dequantize_row_iq4_nl, quantize_row_iq4_nl, T::Q8_0, true},
        {T::IQ4_XS, "IQ4_XS", QK_K, sizeof(block_iq4_xs), dequantize_row_iq4_xs, quantize_row_iq4_xs, T::Q8_K, true},
        {T::BF16, "BF16", 1, 2, dequantize_row_bf16, quantize_row_bf16, T::F32, false},
        // i-quants on lattice codebooks; the last field: quantizing needs an imatrix
        {T::IQ2_XXS, "IQ2_XXS", QK_K, sizeof(block_iq2_xxs), dequantize_row_iq2_xxs, quantize_row_iq2_xxs, T::Q8_K, true,
         true},
        {T::IQ2_XS, "IQ2_XS", QK_K, sizeof(block_iq2_xs), dequantize_row_iq2_xs, quantize_row_iq2_xs, T::Q8_K, true, true},
        {T::IQ2_S, "IQ2_S", QK_K, sizeof(block_iq2_s), dequantize_row_iq2_s, quantize_row_iq2_s, T::Q8_K, true},
        {T::IQ3_XXS, "IQ3_XXS", QK_K, sizeof(block_iq3_xxs), dequantize_row_iq3_xxs, quantize_row_iq3_xxs, T::Q8_K, true},
        {T::IQ3_S, "IQ3_S", QK_K, sizeof(block_iq3_s), dequantize_row_iq3_s, quantize_row_iq3_s, T::Q8_K, true},
        {T::IQ1_S, "IQ1_S", QK_K, sizeof(block_iq1_s), dequantize_row_iq1_s, quantize_row_iq1_s, T::Q8_K, true, true},
        {T::IQ1_M, "IQ1_M", QK_K, sizeof(block_iq1_m), dequantize_row_iq1_m, quantize_row_iq1_m, T::Q8_K, true},
        {T::TQ1_0, "TQ1_0", QK_K, sizeof(block_tq1_0), dequantize_row_tq1_0, quantize_row_tq1_0, T::Q8_K, false},
        {T::TQ2_0, "TQ2_0", QK_K, sizeof(block_tq2_0), dequantize_row_tq2_0, quantize_row_tq2_0, T::Q8_K, false},
        {T::MXFP4, "MXFP4", QK_MXFP4, sizeof(block_mxfp4), dequantize_row_mxfp4, quantize_row_mxfp4, T::Q8_0, false},
        {T::NVFP4, "NVFP4", QK_NVFP4, sizeof(block_nvfp4), dequantize_row_nvfp4, quantize_row_nvfp4, T::Q8_0, false},
    };
    std::sort(table.begin(), table.end(), [](const QuantType& a, const QuantType& b) { return a.type < b.type; });
    return table;
}

std::string supported_names() {
    std::string names;
    for (const auto& t : quant_types()) names += (names.empty() ? "" : ", ") + std::string(t.name);
    return names;
}

std::string upper(std::string s) {
    for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

// Run fn(first_row, end_row) over [0, rows) on up to hardware_concurrency threads when the job
// is big enough to pay for them.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t n, Fn fn) {
    const int64_t work = rows * n;
    const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
    const int64_t n_threads = std::min<int64_t>({hw, rows, std::max<int64_t>(1, work / (1 << 16))});
    if (n_threads <= 1) return fn(int64_t(0), rows);
    std::vector<std::thread> threads;
    const int64_t chunk = (rows + n_threads - 1) / n_threads;
    for (int64_t t = 1; t < n_threads; ++t) {
        const int64_t begin = t * chunk, end = std::min(rows, begin + chunk);
        if (begin < end) threads.emplace_back(fn, begin, end);
    }
    fn(int64_t(0), std::min(rows, chunk));
    for (auto& th : threads) th.join();
}

bool is_float_type(GGMLType t) { return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16; }

}  // namespace

const std::vector<QuantType>& quant_types() {
    static const std::vector<QuantType> table = make_table();
    return table;
}

const QuantType* find_quant_type(GGMLType type) {
    for (const auto& t : quant_types())
        if (t.type == type) return &t;
    return nullptr;
}

const QuantType& quant_type(const std::string& name) {
    const std::string key = upper(name);
    for (const auto& t : quant_types())
        if (key == t.name) return t;
    throw ValueError(str("unknown quantization type '", name, "'; supported: ", supported_names()));
}

const QuantType& quant_type(GGMLType type) {
    if (const QuantType* t = find_quant_type(type)) return *t;
    const GGMLTypeSize* known = ggml_type_size(static_cast<uint32_t>(type));
    throw ValueError(str("type ", known ? known->name : "id", " (", static_cast<uint32_t>(type),
                         ") is not computable by lowbit; supported: ", supported_names()));
}

int64_t quant_row_bytes(const QuantType& t, int64_t n) {
    LOWBIT_CHECK(n > 0 && n % t.block_elems == 0, ValueError, "row length ", n, " is not a positive multiple of ",
                 t.name, "'s block size ", t.block_elems);
    return n / t.block_elems * t.block_bytes;
}

void quantize_rows(const QuantType& t, const float* x, void* out, int64_t rows, int64_t n, const float* imatrix) {
    LOWBIT_CHECK(t.from_float, ValueError, "lowbit has no quantizer for ", t.name,
                 " (it loads and computes with such tensors; quantize to another type)");
    const int64_t row_bytes = quant_row_bytes(t, n);
    LOWBIT_CHECK(rows >= 0, ValueError, "negative row count ", rows);
    LOWBIT_CHECK(imatrix || !t.requires_imatrix, ValueError, t.name,
                 " needs an importance matrix (imatrix): llama.cpp refuses to quantize it without one");
    if (imatrix) {
        for (int64_t j = 0; j < n; ++j) {
            LOWBIT_CHECK(std::isfinite(imatrix[j]) && imatrix[j] >= 0, ValueError, "imatrix[", j, "] = ", imatrix[j],
                         " is not a finite non-negative importance");
        }
    }
    if (!is_float_type(t.type)) {
        for (int64_t i = 0; i < rows * n; ++i) {
            LOWBIT_CHECK(std::isfinite(x[i]), ValueError, "cannot quantize non-finite value ", x[i], " at row ",
                         i / n, ", column ", i % n, " to ", t.name);
        }
    }
    uint8_t* dst = static_cast<uint8_t*>(out);
    parallel_rows(rows, n, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) t.from_float(x + r * n, dst + r * row_bytes, n, imatrix);
    });
}

void dequantize_rows(const QuantType& t, const void* in, float* out, int64_t rows, int64_t n) {
    const int64_t row_bytes = quant_row_bytes(t, n);
    LOWBIT_CHECK(rows >= 0, ValueError, "negative row count ", rows);
    const uint8_t* src = static_cast<const uint8_t*>(in);
    parallel_rows(rows, n, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) t.to_float(src + r * row_bytes, out + r * n, n);
    });
}

}  // namespace lowbit

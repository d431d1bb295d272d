// bind_quant.cpp: quantize / dequantize rows of the block formats, and the type table.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>
#include <optional>

#include "bindings/bind.h"
#include "common.h"
#include "quant/types.h"

namespace py = pybind11;

namespace lowbit {

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using ByteArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

py::dict type_dict(const QuantType& t) {
    py::dict d;
    d["name"] = t.name;
    d["type_id"] = static_cast<uint32_t>(t.type);
    d["block_size"] = t.block_elems;
    d["type_size"] = t.block_bytes;
    d["bits_per_weight"] = t.bits_per_weight();
    d["vec_dot_type"] = quant_type(t.vec_dot_type).name;
    d["uses_imatrix"] = t.uses_imatrix;
    d["can_quantize"] = t.from_float != nullptr;
    d["requires_imatrix"] = t.requires_imatrix;
    return d;
}

// x: (rows, n) float32 -> (rows, row_bytes) uint8.
py::array_t<uint8_t> quantize(const FloatArray& x, const std::string& type_name,
                              const std::optional<FloatArray>& imatrix) {
    const QuantType& t = quant_type(type_name);
    LOWBIT_CHECK(x.ndim() == 2, ValueError, "quantize expects a 2-D (rows, n) array, got ", x.ndim(), " dimensions");
    const int64_t rows = x.shape(0), n = x.shape(1);
    const int64_t row_bytes = quant_row_bytes(t, n);
    const float* qw = nullptr;
    if (imatrix) {
        LOWBIT_CHECK(imatrix->ndim() == 1 && imatrix->shape(0) == n, ValueError, "imatrix has ",
                     imatrix->size(), " values, expected one per column: ", n);
        qw = imatrix->data();
    }
    checked_mul(rows, row_bytes, "quantize output bytes (rows x row bytes)");
    py::array_t<uint8_t> out({rows, row_bytes});
    uint8_t* dst = out.mutable_data();
    const float* src = x.data();
    {
        py::gil_scoped_release nogil;
        quantize_rows(t, src, dst, rows, n, qw);
    }
    return out;
}

// raw: rows * row_bytes bytes -> (rows, n) float32.
py::array_t<float> dequantize(const ByteArray& raw, const std::string& type_name, int64_t rows, int64_t n) {
    const QuantType& t = quant_type(type_name);
    LOWBIT_CHECK(rows >= 0, ValueError, "negative row count ", rows);
    const int64_t row_bytes = quant_row_bytes(t, n);
    LOWBIT_CHECK(rows == 0 || row_bytes <= std::numeric_limits<int64_t>::max() / rows, ValueError,
                 "shape (", rows, ", ", n, ") is too large");
    LOWBIT_CHECK(raw.size() == rows * row_bytes, ValueError, "raw data has ", raw.size(), " bytes but ", rows,
                 " rows of ", n, " ", t.name, " weights need ", rows * row_bytes, " (", row_bytes, " per row)");
    py::array_t<float> out({rows, n});
    float* dst = out.mutable_data();
    const uint8_t* src = raw.data();
    {
        py::gil_scoped_release nogil;
        // Block structs hold uint16/float fields: give them an aligned copy if the view is not.
        AlignedBuffer<uint8_t> aligned;
        if (reinterpret_cast<uintptr_t>(src) % 4 != 0) {
            aligned.resize(size_t(raw.size()));
            std::memcpy(aligned.data(), src, size_t(raw.size()));
            src = aligned.data();
        }
        dequantize_rows(t, src, dst, rows, n);
    }
    return out;
}

}  // namespace

void bind_quant(py::module_& m) {
    m.def("quant_types", []() {
        py::list out;
        for (const auto& t : quant_types()) out.append(type_dict(t));
        return out;
    }, "Computable block formats: name, type_id, block_size, type_size, bits_per_weight, vec_dot_type.");
    m.def("quant_type_info", [](const std::string& name) { return type_dict(quant_type(name)); }, py::arg("name"));
    m.def("quantize", &quantize, py::arg("x"), py::arg("type"), py::arg("imatrix") = py::none(),
          "Quantize a (rows, n) float32 array row by row; returns (rows, row_bytes) uint8.");
    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("type"), py::arg("rows"), py::arg("n"),
          "Dequantize rows * row_bytes bytes to a (rows, n) float32 array.");
}

}  // namespace lowbit

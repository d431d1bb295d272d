// bind_cuda_host.cpp: the CUDA arithmetic checked on the host, in every build (GPU or not).
//
// cuda_host_check(seed, blocks): cuda/host_check.h's checks as {format: {...}}.
#include <pybind11/stl.h>

#include <vector>

#include "bindings/bind.h"
#include "cuda/host_check.h"
#include "cuda/quant_hd.h"

namespace py = pybind11;

namespace lowbit {
namespace {

py::dict cuda_host_check(uint64_t seed, int blocks) {
    std::vector<cuda::FormatCheck> checks;
    {
        py::gil_scoped_release release;
        checks = cuda::host_check(seed, blocks);
    }
    py::dict out;
    for (const auto& c : checks) {
        py::dict d;
        d["values"] = c.values;
        d["decode_mismatches"] = c.decode_mismatches;
        d["dot_int_mismatches"] = c.dot_int_mismatches;
        d["dot_rel_err"] = c.dot_rel_err;
        out[py::str(c.name)] = d;
    }
    return out;
}

}  // namespace

void bind_cuda_host(py::module_& m) {
    m.def("cuda_host_check", &cuda_host_check, py::arg("seed"), py::arg("blocks") = 8,
          "Check the CUDA block arithmetic (cuda/quant_hd.h) on the host against the scalar spec for every "
          "device format: {format: {decode_mismatches, dot_int_mismatches, dot_rel_err, values}}.");
    m.def("cuda_formats", []() {
        std::vector<std::string> names;
#define LOWBIT_FORMAT_NAME(T) names.push_back(#T);
        LOWBIT_CUDA_FORMATS(LOWBIT_FORMAT_NAME)
#undef LOWBIT_FORMAT_NAME
        return names;
    }, "The weight formats the CUDA backend computes with.");
}

}  // namespace lowbit

// bind_cuda_host.cpp: the CUDA arithmetic checked on the host, in every build (GPU or not), and
// the device self-test entry point (csrc/cuda/selftest.h; "no CUDA" errors without a device).
//
// cuda_host_check(seed, blocks): cuda/host_check.h's checks as {format: {...}}.
#include <pybind11/stl.h>

#include <vector>

#include "bindings/bind.h"
#include "cuda/host_check.h"
#include "cuda/quant_hd.h"
#include "cuda/selftest.h"

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
    m.def("cuda_kv_host_check", [](uint64_t seed, int64_t rows) {
        cuda::KvCheck c;
        {
            py::gil_scoped_release release;
            c = cuda::kv_host_check(seed, rows);
        }
        py::dict d;
        d["values"] = c.values;
        d["q8_quantize_mismatches"] = c.q8_quantize_mismatches;
        d["q8_decode_mismatches"] = c.q8_decode_mismatches;
        d["f16_mismatches"] = c.f16_mismatches;
        return d;
    }, py::arg("seed"), py::arg("rows") = 64,
       "Check the device KV cache's row arithmetic (cuda/kv_hd.h: f16 and q8_0 rows) on the host against the CPU "
       "cache's on random head rows: {values, q8_quantize_mismatches, q8_decode_mismatches, f16_mismatches}.");
    m.def("cuda_formats", []() {
        std::vector<std::string> names;
#define LOWBIT_FORMAT_NAME(T) names.push_back(#T);
        LOWBIT_CUDA_FORMATS(LOWBIT_FORMAT_NAME)
#undef LOWBIT_FORMAT_NAME
        return names;
    }, "The weight formats the CUDA backend computes with.");
    m.def("cuda_selftest", [](uint64_t seed, bool bandwidth) {
        cuda::SelfTestReport r;
        {
            py::gil_scoped_release release;
            r = cuda::run_selftest(seed, bandwidth);
        }
        py::dict out;
        for (const auto& e : r.entries) {
            py::dict d;
            d["max_err"] = e.max_err;
            d["tol"] = e.tol;
            d["gbs"] = e.gbs;
            d["detail"] = e.detail;
            out[py::str(e.name)] = d;
        }
        return py::make_tuple(py::str(r.device), out);
    }, py::arg("seed") = 1, py::arg("bandwidth") = true,
       "Run every CUDA kernel on random data against the CPU path: (device name, {check: {max_err, tol, gbs, "
       "detail}}). Raises lowbit.CudaError without a CUDA build or device.");
    m.def("cuda_copy_gbs", [](size_t bytes) {
        py::gil_scoped_release release;
        return cuda::device_copy_gbs(bytes);
    }, py::arg("bytes") = size_t(1) << 30,
       "GB/s (read + written) of a device-to-device copy of `bytes`; lowbit.CudaError without a device.");
    m.def("cuda_alloc_probe", [](size_t bytes) {
        py::gil_scoped_release release;
        cuda::device_alloc_probe(bytes);
    }, py::arg("bytes"), "Allocate and free `bytes` of device memory; lowbit.CudaError when that fails.");
}

}  // namespace lowbit

// bind_sampling.cpp: lowbit._core.Sampler and the single filters (lowbit.runtime.sampling wraps
// them). Logits are read in place (float32 rows from the engine, float64 from callers), with
// the GIL released while sampling.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "sampling/sampler.h"

namespace py = pybind11;

namespace lowbit {
namespace {
using sampling::Sampler;
using sampling::SamplerParams;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// A 1-D, non-empty, C-contiguous float32 or float64 array (no copy), else ValueError/TypeError.
py::array logits_view(const py::array& logits) {
    if (logits.ndim() != 1 || logits.size() == 0)
        throw ValueError(str("logits must be a non-empty 1-D array, got ", logits.ndim(), " dimensions and ",
                             logits.size(), " entries"));
    const bool f32 = py::isinstance<py::array_t<float>>(logits), f64 = py::isinstance<py::array_t<double>>(logits);
    if (!(f32 || f64) || !(logits.flags() & py::array::c_style))
        throw py::type_error("logits must be a C-contiguous float32 or float64 array");
    return logits;
}

F64Array copy_row(const py::array& x) {
    F64Array out = F64Array::ensure(x);
    if (!out) throw py::type_error("logits must be an array of numbers");
    if (out.ndim() != 1 || out.size() == 0) logits_view(out);   // raises with the shape
    return F64Array(py::array(out).attr("copy")());
}

template <typename Fn>
F64Array filtered_copy(const py::array& x, Fn&& fn) {
    F64Array out = copy_row(x);
    double* row = out.mutable_data();
    const size_t n = size_t(out.size());
    {
        py::gil_scoped_release nogil;
        fn(row, n);
    }
    return out;
}
}  // namespace

void bind_sampling(py::module_& m) {
    py::class_<Sampler>(m, "Sampler", "Token sampler (rules in csrc/sampling/sampler.h); not thread-safe.")
        .def(py::init([](double temperature, int64_t top_k, double top_p, double min_p, double penalty,
                         int64_t last_n, std::vector<uint32_t> seed_words) {
                 SamplerParams p{temperature, top_k, top_p, min_p, penalty, last_n};
                 return new Sampler(p, seed_words);
             }),
             py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
             py::arg("repetition_penalty"), py::arg("repeat_last_n"), py::arg("seed_words"),
             "seed_words: the seed's little-endian uint32 words (numpy's SeedSequence entropy); [] = random")
        .def("sample", [](Sampler& s, const py::array& logits, const std::vector<int64_t>& history) {
                 py::array row = logits_view(logits);
                 const size_t n = size_t(row.size());
                 py::gil_scoped_release nogil;
                 if (row.dtype().itemsize() == 4)
                     return s.sample(static_cast<const float*>(row.data()), n, history.data(), history.size());
                 return s.sample(static_cast<const double*>(row.data()), n, history.data(), history.size());
             }, py::arg("logits"), py::arg("history"))
        .def("filtered_logits", [](const Sampler& s, const py::array& logits, const std::vector<int64_t>& history) {
                 py::array row = logits_view(logits);
                 const size_t n = size_t(row.size());
                 F64Array out(static_cast<py::ssize_t>(n));
                 double* dst = out.mutable_data();
                 py::gil_scoped_release nogil;
                 if (row.dtype().itemsize() == 4)
                     s.filtered_logits(static_cast<const float*>(row.data()), n, history.data(), history.size(), dst);
                 else
                     s.filtered_logits(static_cast<const double*>(row.data()), n, history.data(), history.size(), dst);
                 return out;
             }, py::arg("logits"), py::arg("history"));

    m.def("sampling_repetition_penalty", [](const py::array& x, const std::vector<int64_t>& ids, double penalty) {
        return filtered_copy(x, [&](double* row, size_t n) {
            sampling::apply_repetition_penalty(row, n, {ids.data(), ids.size()}, penalty);
        });
    });
    m.def("sampling_top_k", [](const py::array& x, int64_t k) {
        return filtered_copy(x, [&](double* row, size_t n) { sampling::keep_top_k(row, n, k); });
    });
    m.def("sampling_top_p", [](const py::array& x, double p, size_t min_keep) {
        return filtered_copy(x, [&](double* row, size_t n) { sampling::keep_top_p(row, n, p, min_keep); });
    });
    m.def("sampling_min_p", [](const py::array& x, double p, size_t min_keep) {
        return filtered_copy(x, [&](double* row, size_t n) { sampling::keep_min_p(row, n, p, min_keep); });
    });
    m.def("sampling_softmax", [](const py::array& x) {
        return filtered_copy(x, [&](double* row, size_t n) {
            std::vector<double> in(row, row + n);
            sampling::softmax(in.data(), n, row);
        });
    });
}

}  // namespace lowbit

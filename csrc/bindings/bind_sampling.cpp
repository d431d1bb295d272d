// bind_sampling.cpp: lowbit._core.Sampler and the single filters (lowbit.runtime.sampling wraps
// them). Logits are read in place (float32 rows from the engine, float64 from callers), with
// the GIL released while sampling.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>

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

using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// The row-to-token map of a row restricted to some tokens (Sampler::sample's `ids`): as many as
// the row has entries, strictly ascending; None: the row is the whole vocabulary.
const int64_t* row_ids(const std::optional<IdArray>& ids, size_t n) {
    if (!ids) return nullptr;
    if (ids->ndim() != 1 || size_t(ids->size()) != n)
        throw ValueError(str("ids must be a 1-D array with one token id per logit (", n, "), got ", ids->size()));
    const int64_t* p = ids->data();
    for (size_t i = 1; i < n; ++i)
        if (p[i] <= p[i - 1]) throw ValueError(str("ids must be strictly ascending (at index ", i, ")"));
    return p;
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
                         int64_t last_n, std::vector<uint32_t> seed_words, double presence, double frequency,
                         std::vector<std::pair<int64_t, double>> logit_bias) {
                 SamplerParams p{temperature, top_k, top_p, min_p, penalty, last_n, presence, frequency,
                                 std::move(logit_bias)};
                 return new Sampler(p, seed_words);
             }),
             py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"),
             py::arg("repetition_penalty"), py::arg("repeat_last_n"), py::arg("seed_words"),
             py::arg("presence_penalty") = 0.0, py::arg("frequency_penalty") = 0.0,
             py::arg("logit_bias") = std::vector<std::pair<int64_t, double>>{},
             "seed_words: the seed's little-endian uint32 words (numpy's SeedSequence entropy); [] = random; "
             "logit_bias: (token id, bias) pairs")
        .def("sample", [](Sampler& s, const py::array& logits, const std::vector<int64_t>& history,
                          const std::optional<IdArray>& ids) {
                 py::array row = logits_view(logits);
                 const size_t n = size_t(row.size());
                 const int64_t* map = row_ids(ids, n);
                 py::gil_scoped_release nogil;
                 if (row.dtype().itemsize() == 4)
                     return s.sample(static_cast<const float*>(row.data()), n, history.data(), history.size(), map);
                 return s.sample(static_cast<const double*>(row.data()), n, history.data(), history.size(), map);
             }, py::arg("logits"), py::arg("history"), py::arg("ids") = py::none(),
             "The next token (counted as generated); with ids, logits[j] is token ids[j]'s and a token id is returned")
        .def("accept", &Sampler::accept, py::arg("token"), "Count a token generated without a draw")
        .def_property_readonly("counts", [](const Sampler& s) { return s.counts(); },
                               "{token: times generated} (the presence / frequency penalties' counts)")
        .def("filtered_logits", [](const Sampler& s, const py::array& logits, const std::vector<int64_t>& history,
                                   const std::optional<IdArray>& ids) {
                 py::array row = logits_view(logits);
                 const size_t n = size_t(row.size());
                 const int64_t* map = row_ids(ids, n);
                 F64Array out(static_cast<py::ssize_t>(n));
                 double* dst = out.mutable_data();
                 py::gil_scoped_release nogil;
                 if (row.dtype().itemsize() == 4)
                     s.filtered_logits(static_cast<const float*>(row.data()), n, history.data(), history.size(), dst, map);
                 else
                     s.filtered_logits(static_cast<const double*>(row.data()), n, history.data(), history.size(), dst, map);
                 return out;
             }, py::arg("logits"), py::arg("history"), py::arg("ids") = py::none());

    m.def("sampling_repetition_penalty", [](const py::array& x, const std::vector<int64_t>& ids, double penalty) {
        return filtered_copy(x, [&](double* row, size_t n) {
            sampling::apply_repetition_penalty(row, n, {ids.data(), ids.size()}, penalty);
        });
    });
    m.def("sampling_logit_bias", [](const py::array& x, const std::vector<std::pair<int64_t, double>>& bias) {
        return filtered_copy(x, [&](double* row, size_t n) { sampling::apply_logit_bias(row, n, bias); });
    });
    m.def("sampling_presence_frequency", [](const py::array& x, const sampling::TokenCounts& counts, double presence,
                                            double frequency) {
        return filtered_copy(x, [&](double* row, size_t n) {
            sampling::apply_presence_frequency(row, n, counts, presence, frequency);
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

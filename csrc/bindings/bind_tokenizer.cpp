// bind_tokenizer.cpp: lowbit._core.Tokenizer (lowbit.runtime.tokenizer wraps it), the
// pre-tokenizers and the Unicode class table. Python text crosses as UTF-8 with lone surrogates
// kept ("surrogatepass"), so every str tokenizes; encode runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace py = pybind11;

namespace lowbit {
namespace {
using tokenizer::Tokenizer;
using tokenizer::VocabData;

// str -> its UTF-8 bytes (surrogates as 3 bytes); TypeError for anything else.
py::bytes utf8_of(const py::handle& text, const char* what) {
    if (!PyUnicode_Check(text.ptr()))
        throw py::type_error(str(what, " takes str, not ", Py_TYPE(text.ptr())->tp_name));
    PyObject* b = PyUnicode_AsEncodedString(text.ptr(), "utf-8", "surrogatepass");
    if (!b) throw py::error_already_set();
    return py::reinterpret_steal<py::bytes>(b);
}

py::str str_of(std::string_view bytes) {
    PyObject* s = PyUnicode_DecodeUTF8(bytes.data(), py::ssize_t(bytes.size()), "surrogatepass");
    if (!s) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(s);
}

int32_t checked_id(const Tokenizer& t, int64_t id) {
    LOWBIT_CHECK(id >= 0 && uint64_t(id) < t.n_tokens(), ValueError, "token id ", id,
                 " is out of range for a vocabulary of ", t.n_tokens());
    return int32_t(id);
}

std::unique_ptr<Tokenizer> make_tokenizer(std::string model, std::string pre, std::vector<std::string> tokens,
                                          std::vector<float> scores, std::vector<uint32_t> attrs,
                                          std::vector<std::string> merges, int32_t bos, int32_t eos, int32_t unk,
                                          bool add_bos, bool add_eos, bool add_space_prefix) {
    VocabData v{std::move(model), std::move(pre), std::move(tokens), std::move(scores), std::move(attrs),
                std::move(merges), bos, eos, unk, add_bos, add_eos, add_space_prefix};
    py::gil_scoped_release nogil;
    return std::make_unique<Tokenizer>(std::move(v));
}
}  // namespace

void bind_tokenizer(py::module_& m) {
    py::class_<Tokenizer>(m, "Tokenizer", "llama.cpp-exact SPM / byte-level BPE (csrc/tokenizer/tokenizer.h)")
        .def(py::init(&make_tokenizer), py::arg("model"), py::arg("pre"), py::arg("tokens"), py::arg("scores"),
             py::arg("attrs"), py::arg("merges"), py::arg("bos"), py::arg("eos"), py::arg("unk"),
             py::arg("add_bos"), py::arg("add_eos"), py::arg("add_space_prefix"))
        .def("encode", [](const Tokenizer& t, const py::handle& text, bool add_special, bool parse_special,
                          const std::vector<std::pair<int64_t, int64_t>>& literal_spans) {
                 py::bytes utf8 = utf8_of(text, "encode()");
                 const std::string_view view(PyBytes_AS_STRING(utf8.ptr()), size_t(PyBytes_GET_SIZE(utf8.ptr())));
                 std::vector<int32_t> ids;
                 {
                     py::gil_scoped_release nogil;
                     ids = t.encode(view, add_special, parse_special, literal_spans);
                 }
                 py::list out(ids.size());
                 for (size_t i = 0; i < ids.size(); ++i) PyList_SET_ITEM(out.ptr(), py::ssize_t(i), PyLong_FromLong(ids[i]));
                 return out;
             }, py::arg("text"), py::arg("add_special"), py::arg("parse_special"), py::arg("literal_spans"))
        .def("token_to_bytes", [](const Tokenizer& t, int64_t id, bool special) {
                 return py::bytes(std::string(t.token_to_bytes(checked_id(t, id), special)));
             }, py::arg("id"), py::arg("special"))
        .def("detokenize", [](const Tokenizer& t, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& ids,
                              bool special) {
                 std::vector<int32_t> checked(size_t(ids.size()));
                 for (size_t i = 0; i < checked.size(); ++i) checked[i] = checked_id(t, ids.data()[i]);
                 std::string out;
                 {
                     py::gil_scoped_release nogil;
                     out = t.detokenize(checked.data(), checked.size(), special);
                 }
                 return py::bytes(out);
             }, py::arg("ids"), py::arg("special"))
        .def_property_readonly("n_tokens", &Tokenizer::n_tokens);

    m.def("pre_tokenizers", []() {
        py::dict out;
        for (const std::string& label : tokenizer::pre_tokenizer_labels()) {
            const tokenizer::PreTokenizer* p = tokenizer::find_pre_tokenizer(label);
            out[py::str(label)] = py::dict(py::arg("clean_spaces") = p->clean_spaces,
                                           py::arg("ignore_merges") = p->ignore_merges, py::arg("add_bos") = p->add_bos);
        }
        return out;
    }, "label -> {clean_spaces, ignore_merges, add_bos} of every BPE pre-tokenizer");
    m.def("pre_tokenize", [](const std::string& label, const py::handle& text) {
        const tokenizer::PreTokenizer* p = tokenizer::find_pre_tokenizer(label);
        LOWBIT_CHECK(p != nullptr, ValueError, "unknown pre-tokenizer '", label, "'");
        py::bytes utf8 = utf8_of(text, "split()");
        const std::string_view view(PyBytes_AS_STRING(utf8.ptr()), size_t(PyBytes_GET_SIZE(utf8.ptr())));
        const tokenizer::DecodedText d = tokenizer::decode_utf8(view);
        py::list out;
        for (const tokenizer::Span& s : p->split(d.cpts))
            out.append(str_of(view.substr(d.offsets[s.first], d.offsets[s.second] - d.offsets[s.first])));
        return out;
    }, py::arg("label"), py::arg("text"), "the chunks a pre-tokenizer cuts `text` into");
    m.def("unicode_flags", []() {
        std::string flags(0x110000, '\0');
        for (uint32_t c = 0; c < 0x110000; ++c) flags[c] = char(tokenizer::cpt_flags(c));
        return py::bytes(flags);
    }, "the pre-tokenizers' class bits of every code point (letter 1, number 2, punct 4, mark 8, "
       "symbol 16, space 32)");
}

}  // namespace lowbit

// bind_tokenizer.cpp: lowbit._core.Tokenizer (lowbit.runtime.tokenizer wraps it), the
// pre-tokenizers and the Unicode class table. Python text crosses as UTF-8 with lone surrogates
// kept ("surrogatepass"), so every str tokenizes; encode runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

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

py::str str_of(std::string_view bytes, const char* errors = "surrogatepass") {
    PyObject* s = PyUnicode_DecodeUTF8(bytes.data(), py::ssize_t(bytes.size()), errors);
    if (!s) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(s);
}

int32_t checked_id(const Tokenizer& t, int64_t id) {
    LOWBIT_CHECK(id >= 0 && uint64_t(id) < t.n_tokens(), ValueError, "token id ", id,
                 " is out of range for a vocabulary of ", t.n_tokens());
    return int32_t(id);
}

py::tuple with_warnings(std::unique_ptr<Tokenizer> t, const std::vector<std::string>& warnings) {
    py::list w;
    for (const std::string& text : warnings) w.append(str_of(text));
    return py::make_tuple(std::move(t), w);
}

// A metadata dict's fields (lowbit.runtime.tokenizer.vocab checks their Python types first).
py::tuple from_fields(const py::dict& d) {
    tokenizer::VocabFields f;
    auto get = [&](const char* key) -> py::object { return d.contains(key) ? py::object(d[key]) : py::none(); };
    auto text = [&](const char* key) -> std::optional<std::string> {
        py::object v = get(key);
        return v.is_none() ? std::nullopt : std::optional<std::string>(v.cast<std::string>());
    };
    auto flag = [&](const char* key) -> std::optional<bool> {
        py::object v = get(key);
        return v.is_none() ? std::nullopt : std::optional<bool>(v.cast<bool>());
    };
    f.model = text("model");
    f.pre = text("pre");
    f.chat_template = text("chat_template");
    f.general_name = text("general_name").value_or("");
    f.architecture = text("architecture").value_or("");
    if (!get("tokens").is_none()) f.tokens = get("tokens").cast<std::vector<std::string>>();
    if (!get("merges").is_none()) f.merges = get("merges").cast<std::vector<std::string>>();
    if (!get("scores").is_none()) f.scores = get("scores").cast<std::vector<float>>();
    if (!get("token_types").is_none()) f.token_types = get("token_types").cast<std::vector<int64_t>>();
    f.id_keys = get("id_keys").cast<std::vector<std::pair<std::string, int64_t>>>();
    f.add_space_prefix = flag("add_space_prefix");
    f.add_bos = flag("add_bos");
    f.add_eos = flag("add_eos");
    std::vector<std::string> warnings;
    std::unique_ptr<Tokenizer> t;
    {
        py::gil_scoped_release nogil;
        t = std::make_unique<Tokenizer>(tokenizer::load_vocab(std::move(f), warnings));
    }
    return with_warnings(std::move(t), warnings);
}

py::tuple from_gguf(const std::string& path) {
    std::unique_ptr<GGUFFile> file = open_gguf(path);
    std::vector<std::string> warnings;
    std::unique_ptr<Tokenizer> t;
    {
        py::gil_scoped_release nogil;
        t = std::make_unique<Tokenizer>(tokenizer::load_vocab(tokenizer::vocab_fields_from_gguf(*file), warnings));
    }
    return with_warnings(std::move(t), warnings);
}

py::object optional_str(const std::optional<std::string>& s) {
    return s ? py::object(str_of(*s, "surrogateescape")) : py::object(py::none());
}
}  // namespace

void bind_tokenizer(py::module_& m) {
    py::class_<Tokenizer>(m, "Tokenizer", "llama.cpp-exact SPM / byte-level BPE (csrc/tokenizer/tokenizer.h)")
        .def_static("from_fields", &from_fields, py::arg("fields"),
                    "(Tokenizer, warnings) from a dict: model, pre, tokens, scores, token_types, merges, "
                    "id_keys [(key, id)], add_space_prefix, add_bos, add_eos, chat_template, general_name, "
                    "architecture (strings as UTF-8 bytes)")
        .def_static("from_gguf", &from_gguf, py::arg("path"), "(Tokenizer, warnings) from a GGUF file's metadata")
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
        .def_property_readonly("n_tokens", &Tokenizer::n_tokens)
        .def("piece", [](const Tokenizer& t, int64_t id) {
                 return py::bytes(t.vocab().tokens[size_t(checked_id(t, id))]);
             }, "the token's text as stored in the GGUF (bytes)")
        .def("token_id", [](const Tokenizer& t, const py::bytes& piece) { return t.token_id(std::string(piece)); })
        .def("attr", [](const Tokenizer& t, int64_t id) { return t.vocab().attrs[size_t(checked_id(t, id))]; })
        .def_property_readonly("model", [](const Tokenizer& t) { return t.vocab().model; })
        .def_property_readonly("pre", [](const Tokenizer& t) { return t.vocab().pre; })
        .def_property_readonly("add_bos", [](const Tokenizer& t) { return t.vocab().add_bos; })
        .def_property_readonly("add_eos", [](const Tokenizer& t) { return t.vocab().add_eos; })
        .def_property_readonly("add_space_prefix", [](const Tokenizer& t) { return t.vocab().add_space_prefix; })
        .def_property_readonly("chat_template", [](const Tokenizer& t) { return optional_str(t.vocab().chat_template); })
        .def_property_readonly("general_name", [](const Tokenizer& t) { return str_of(t.vocab().general_name, "surrogateescape"); })
        .def_property_readonly("eog_ids", [](const Tokenizer& t) { return t.vocab().eog_ids; })
        .def_property_readonly("slots", [](const Tokenizer& t) {
            py::dict out;
            for (const auto& [name, id] : t.vocab().slots) out[py::str(name)] = id;
            return out;
        }, "special-id slot -> id (-1 when absent)");

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

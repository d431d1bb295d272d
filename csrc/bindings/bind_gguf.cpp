// bind_gguf.cpp: lowbit._core._GGUFFile, the parsed file for lowbit/gguf_file.py.
// Converts metadata to Python objects here (C API loops: a 262144-string vocab stays fast) and
// hands out tensor bytes as read-only numpy views whose base object owns a reference to the
// mapping, so a view outlives the _GGUFFile (and its close()) safely.
#include <cerrno>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/bind.h"
#include "gguf/gguf.h"
#include "model/config.h"

namespace py = pybind11;

namespace lowbit {

namespace {

py::object steal_or_throw(PyObject* o) {
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(o);
}

// Metadata strings are not UTF-8-checked by the reader: undecodable bytes round-trip as
// surrogates (os.fsdecode's convention) instead of failing the whole dict.
PyObject* new_str(std::string_view s) {
    return PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "surrogateescape");
}

py::object array_to_py(const GGUFArray& a);

// A list of a->count items made by make(i) (a new reference or nullptr on error).
template <typename Make>
py::object build_list(uint64_t count, Make make) {
    py::object list = steal_or_throw(PyList_New(Py_ssize_t(count)));
    for (uint64_t i = 0; i < count; ++i) {
        PyObject* item = make(i);
        if (!item) throw py::error_already_set();
        PyList_SET_ITEM(list.ptr(), Py_ssize_t(i), item);
    }
    return list;
}

py::object array_to_py(const GGUFArray& a) {
    switch (a.elem_type) {
    case GGUFType::UINT8: return build_list(a.count, [&](uint64_t i) { return PyLong_FromUnsignedLong(a.at<uint8_t>(i)); });
    case GGUFType::INT8: return build_list(a.count, [&](uint64_t i) { return PyLong_FromLong(a.at<int8_t>(i)); });
    case GGUFType::UINT16: return build_list(a.count, [&](uint64_t i) { return PyLong_FromUnsignedLong(a.at<uint16_t>(i)); });
    case GGUFType::INT16: return build_list(a.count, [&](uint64_t i) { return PyLong_FromLong(a.at<int16_t>(i)); });
    case GGUFType::UINT32: return build_list(a.count, [&](uint64_t i) { return PyLong_FromUnsignedLong(a.at<uint32_t>(i)); });
    case GGUFType::INT32: return build_list(a.count, [&](uint64_t i) { return PyLong_FromLong(a.at<int32_t>(i)); });
    case GGUFType::UINT64: return build_list(a.count, [&](uint64_t i) { return PyLong_FromUnsignedLongLong(a.at<uint64_t>(i)); });
    case GGUFType::INT64: return build_list(a.count, [&](uint64_t i) { return PyLong_FromLongLong(a.at<int64_t>(i)); });
    case GGUFType::FLOAT32: return build_list(a.count, [&](uint64_t i) { return PyFloat_FromDouble(a.at<float>(i)); });
    case GGUFType::FLOAT64: return build_list(a.count, [&](uint64_t i) { return PyFloat_FromDouble(a.at<double>(i)); });
    case GGUFType::BOOL: return build_list(a.count, [&](uint64_t i) { return PyBool_FromLong(a.raw[i]); });
    case GGUFType::STRING: return build_list(a.count, [&](uint64_t i) { return new_str(a.strings[i]); });
    case GGUFType::ARRAY:
        return build_list(a.count, [&](uint64_t i) { return array_to_py(a.arrays[i]).release().ptr(); });
    }
    throw GGUFError("internal: array of an invalid value type");
}

// Numeric arrays longer than this come back as read-only numpy arrays over the mapping (zero
// copy) instead of lists of Python numbers: a 100 MB array costs nothing until someone reads it.
constexpr uint64_t kArrayAsNumpy = uint64_t(1) << 16;

// The numpy dtype of a numeric GGUF element type ("" for strings, bools and nested arrays).
const char* numpy_dtype(GGUFType t) {
    switch (t) {
    case GGUFType::UINT8: return "<u1"; case GGUFType::INT8: return "<i1";
    case GGUFType::UINT16: return "<u2"; case GGUFType::INT16: return "<i2";
    case GGUFType::UINT32: return "<u4"; case GGUFType::INT32: return "<i4";
    case GGUFType::UINT64: return "<u8"; case GGUFType::INT64: return "<i8";
    case GGUFType::FLOAT32: return "<f4"; case GGUFType::FLOAT64: return "<f8";
    case GGUFType::BOOL: return "?";   // the reader checked every element is 0 or 1
    default: return "";
    }
}

// A read-only 1-D numpy array of `count` items at `data` inside f's mapping (zero copy); the
// capsule keeps the mapping alive as long as the array.
py::array mapped_view(const GGUFFile& f, const py::dtype& dtype, uint64_t count, const void* data) {
    auto* keep = new std::shared_ptr<const MappedFile>(f.mapping());
    py::capsule owner(keep, [](void* p) { delete static_cast<std::shared_ptr<const MappedFile>*>(p); });
    py::array view(dtype, {py::ssize_t(count)}, data, owner);
    py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return view;
}

py::object value_to_py(const GGUFFile& f, const GGUFValue& v) {
    switch (v.type) {
    case GGUFType::STRING: return steal_or_throw(new_str(std::get<std::string_view>(v.data)));
    case GGUFType::ARRAY: {
        const GGUFArray& a = std::get<GGUFArray>(v.data);
        if (a.count > kArrayAsNumpy && *numpy_dtype(a.elem_type))
            return mapped_view(f, py::dtype(numpy_dtype(a.elem_type)), a.count, a.raw);
        return array_to_py(a);
    }
    case GGUFType::BOOL: return py::bool_(std::get<bool>(v.data));
    case GGUFType::FLOAT32: case GGUFType::FLOAT64: return py::float_(std::get<double>(v.data));
    case GGUFType::INT8: case GGUFType::INT16: case GGUFType::INT32: case GGUFType::INT64:
        return py::int_(std::get<int64_t>(v.data));
    default: return py::int_(std::get<uint64_t>(v.data));
    }
}

// Read-only uint8 view of the tensor's bytes.
py::array tensor_bytes(const GGUFFile& f, size_t index) {
    if (index >= f.tensors().size()) throw py::index_error(str("tensor index ", index, " out of range"));
    const TensorInfo& t = f.tensors()[index];
    return mapped_view(f, py::dtype::of<uint8_t>(), t.n_bytes, f.tensor_data(t));
}

}  // namespace

void throw_os_error(const FileOpenError& e, const std::string& path) {
    errno = e.errno_value;
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());
    throw py::error_already_set();
}

std::unique_ptr<GGUFFile> open_gguf(const std::string& path) {
    try {
        py::gil_scoped_release nogil;
        return std::make_unique<GGUFFile>(GGUFFile::open(path));
    } catch (const FileOpenError& e) {
        throw_os_error(e, path);
    }
}

void bind_gguf(py::module_& m) {
    py::class_<GGUFFile>(m, "_GGUFFile", "Parsed GGUF file over a read-only mapping (see lowbit.GGUFFile).")
        .def(py::init(&open_gguf), py::arg("path"))
        .def_property_readonly("path", &GGUFFile::path)
        .def_property_readonly("version", &GGUFFile::version)
        .def_property_readonly("alignment", &GGUFFile::alignment)
        .def_property_readonly("data_offset", &GGUFFile::data_offset)
        .def_property_readonly("file_size", &GGUFFile::file_size)
        .def("metadata", [](const GGUFFile& f) {
            py::dict out;
            for (const GGUFEntry& e : f.metadata())
                out[steal_or_throw(new_str(e.key))] = value_to_py(f, e.value);
            return out;
        }, "dict key -> Python value (ints, floats, bools, str, nested lists; numeric arrays of more than "
           "65536 elements as read-only numpy views of the mapping), in file order")
        .def("metadata_types", [](const GGUFFile& f) {
            py::dict out;
            for (const GGUFEntry& e : f.metadata())
                out[steal_or_throw(new_str(e.key))] = py::str(gguf_type_label(e.value));
            return out;
        }, "dict key -> GGUF value type label such as 'UINT32' or 'ARRAY[STRING]'")
        .def("tensors", [](const GGUFFile& f) {
            py::list out;
            for (const TensorInfo& t : f.tensors()) {
                py::tuple shape(t.n_dims);
                for (int d = 0; d < t.n_dims; ++d) shape[d] = py::int_(t.ne[d]);
                out.append(py::make_tuple(steal_or_throw(new_str(t.name)), py::str(t.type_size->name),
                                          static_cast<uint32_t>(t.type), shape, t.n_elements, t.n_bytes,
                                          f.data_offset() + t.offset));
            }
            return out;
        }, "list of (name, type name, type id, shape ne[0] first, n_elements, nbytes, absolute offset)")
        .def("model_config", [](const GGUFFile& f) { return config_dict(model::load_config(f)); },
             "the engine's validated hyper-parameters (see lowbit._core.model_config)")
        .def("tensor_bytes", &tensor_bytes, py::arg("index"),
             "read-only uint8 numpy view of tensor `index`'s bytes; keeps the mapping alive")
        // The typed getters the C++ model config uses, exposed as-is (tests pin their contract).
        .def("get_u32", &GGUFFile::get_u32).def("get_u64", &GGUFFile::get_u64)
        .def("get_i32", &GGUFFile::get_i32).def("get_i64", &GGUFFile::get_i64)
        .def("get_f32", &GGUFFile::get_f32).def("get_f64", &GGUFFile::get_f64)
        .def("get_bool", &GGUFFile::get_bool).def("get_str", &GGUFFile::get_str)
        .def("get_u32_opt", &GGUFFile::get_u32_opt).def("get_str_opt", &GGUFFile::get_str_opt)
        .def("get_f32_array", &GGUFFile::get_f32_array).def("get_i32_array", &GGUFFile::get_i32_array)
        .def("get_u32_array", &GGUFFile::get_u32_array).def("get_str_array", &GGUFFile::get_str_array)
        .def("array_count", [](const GGUFFile& f, std::string_view key) { return f.get_array(key).count; })
        .def("tensor_info_offset", [](const GGUFFile& f, std::string_view name) { return f.tensor(name).info_offset; });
}

}  // namespace lowbit

// module.cpp: the lowbit._core extension module and the C++ -> Python exception mapping.
#include <pybind11/pybind11.h>

#include "bindings/bind.h"
#include "common.h"

namespace py = pybind11;

namespace {
// The Python classes live in lowbit/errors.py so they have a readable hierarchy
// (GGUFError is a ValueError, CudaError a RuntimeError, ...).
void raise_as(const char* cls, const char* what) {
    py::object errors = py::module_::import("lowbit.errors");
    py::set_error(errors.attr(cls), what);
}
}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "lowbit core: GGUF reader, quantized kernels, decoding engine";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const lowbit::GGUFError& e) { raise_as("GGUFError", e.what());
        } catch (const lowbit::ModelError& e) { raise_as("ModelError", e.what());
        } catch (const lowbit::CudaError& e) { raise_as("CudaError", e.what());
        } catch (const lowbit::Cancelled& e) { raise_as("Cancelled", e.what());
        } catch (const lowbit::InsufficientMemory& e) { raise_as("InsufficientMemory", e.what());
        } catch (const lowbit::ValueError& e) { py::set_error(PyExc_ValueError, e.what());
        } catch (const lowbit::Error& e) { raise_as("LowbitError", e.what());
        }
    });
    lowbit::bind_runtime(m);
    lowbit::bind_gguf(m);
    lowbit::bind_cpu(m);
    lowbit::bind_quant(m);
    lowbit::bind_engine(m);
    lowbit::bind_sampling(m);
    lowbit::bind_tokenizer(m);
    lowbit::bind_cuda_host(m);
    lowbit::bind_cuda_model(m);
}

// bind.h: one registration function per area; module.cpp calls them all. Bindings hold no
// logic: they convert arguments, release the GIL around compute and call into the core.
#pragma once
#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "gguf/gguf.h"
#include "model/config.h"

namespace lowbit {
void bind_runtime(pybind11::module_& m);
void bind_gguf(pybind11::module_& m);
void bind_cpu(pybind11::module_& m);
void bind_quant(pybind11::module_& m);
void bind_engine(pybind11::module_& m);
void bind_sampling(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_cuda_host(pybind11::module_& m);
// The validated ModelConfig as a dict (lowbit._core.model_config, _GGUFFile.model_config).
pybind11::dict config_dict(const model::ModelConfig& c);
// A file that cannot be opened as Python's OSError subclass for its errno (FileNotFoundError,
// PermissionError, IsADirectoryError ...), naming the path.
[[noreturn]] void throw_os_error(const FileOpenError& e, const std::string& path);
// GGUFFile::open with the GIL released; open failures through throw_os_error.
std::unique_ptr<GGUFFile> open_gguf(const std::string& path);
}  // namespace lowbit

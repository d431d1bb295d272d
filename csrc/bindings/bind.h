// bind.h: one registration function per area; module.cpp calls them all. Bindings hold no
// logic: they convert arguments, release the GIL around compute and call into the core.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
void bind_cuda_model(pybind11::module_& m);
// A 1-D integer array (or sequence) of token ids as int32; ValueError names what was wrong
// (bind_engine.cpp).
std::vector<int32_t> token_ids(const pybind11::handle& obj);
// The validated ModelConfig as a dict (lowbit._core.model_config, _GGUFFile.model_config).
pybind11::dict config_dict(const model::ModelConfig& c);
// A file that cannot be opened as Python's OSError subclass for its errno (FileNotFoundError,
// PermissionError, IsADirectoryError ...), naming the path.
[[noreturn]] void throw_os_error(const FileOpenError& e, const std::string& path);
// GGUFFile::open with the GIL released; open failures through throw_os_error.
std::unique_ptr<GGUFFile> open_gguf(const std::string& path);
}  // namespace lowbit

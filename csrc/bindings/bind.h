// bind.h: one registration function per area; module.cpp calls them all. Bindings hold no
// logic: they convert arguments, release the GIL around compute and call into the core.
#pragma once
#include <pybind11/pybind11.h>

#include "model/config.h"

namespace lowbit {
void bind_runtime(pybind11::module_& m);
void bind_gguf(pybind11::module_& m);
void bind_cpu(pybind11::module_& m);
void bind_quant(pybind11::module_& m);
void bind_engine(pybind11::module_& m);
// The validated ModelConfig as a dict (lowbit._core.model_config, _GGUFFile.model_config).
pybind11::dict config_dict(const model::ModelConfig& c);
}  // namespace lowbit

"""lowbit: a local LLM runtime for GGUF models with a C++/CUDA core."""
from __future__ import annotations

from lowbit import _core
from lowbit.errors import (
    Cancelled,
    CudaError,
    GGUFError,
    LowbitError,
    ModelError,
    RegistryError,
    TemplateError,
)
from lowbit.runtime.gguf_file import GGUFFile, GGUFTensorInfo
from lowbit import quant
from lowbit.runtime import registry
from lowbit.runtime.generate import FINISH_REASONS, Generation, GenerationStream
from lowbit.runtime.constraints import Constraint, ConstraintError
from lowbit.runtime.llama import Llama
from lowbit.runtime.model import Model, Session, load
from lowbit.runtime.sampling import SamplingParams
from lowbit.runtime.tokenizer import Tokenizer
from lowbit.quant.quantize import QuantizeError, quantize

__version__ = "0.1.0"


def cpu_features() -> dict:
    """Detected CPU features and the kernel set in use (see ``lowbit.cpu``)."""
    from lowbit.runtime import cpu
    return cpu.features()


def cuda_status() -> dict:
    """Whether this build has CUDA, how many devices it sees and their facts.

    Never raises on a machine without a driver or GPU: ``message`` then says
    ``"no CUDA device (...)"``."""
    return _core.cuda_status()


def get_include() -> str:
    """The folder holding ``lowbit.h``, the C API's header (``cc -I"$(...)"``): the installed
    package's ``lowbit/include``, or in a source checkout the repository's ``include/``."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "include"), os.path.join(here, os.pardir, os.pardir, "include")):
        if os.path.isfile(os.path.join(folder, "lowbit.h")):
            return os.path.normpath(folder)
    raise FileNotFoundError(f"lowbit.h is not installed with this lowbit ({here}); reinstall with `pip install .`")


def get_library() -> str:
    """The path of ``liblowbit.so``, the C API's shared library installed with the package
    (``cc ... -L"$(dirname ...)" -llowbit``); a developer build puts it in ``lowbit/lib`` too."""
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "liblowbit.so")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: this lowbit was installed without the C API "
                                f"(build it with `pip install .` or the CMake build)")
    return path


__all__ = [
    "Cancelled", "CudaError", "GGUFError", "GGUFFile", "GGUFTensorInfo", "LowbitError", "ModelError",
    "FINISH_REASONS", "Generation", "GenerationStream", "Llama", "Model", "RegistryError", "SamplingParams", "Session", "TemplateError", "Tokenizer", "cpu_features", "cuda_status",
    "load", "quant", "quantize", "QuantizeError", "registry", "__version__",
    "Constraint", "ConstraintError", "get_include", "get_library",
]

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


__all__ = [
    "Cancelled", "CudaError", "GGUFError", "GGUFFile", "GGUFTensorInfo", "LowbitError", "ModelError",
    "FINISH_REASONS", "Generation", "GenerationStream", "Llama", "Model", "RegistryError", "SamplingParams", "Session", "TemplateError", "Tokenizer", "cpu_features", "cuda_status",
    "load", "quant", "quantize", "QuantizeError", "registry", "__version__",
    "Constraint", "ConstraintError",
]

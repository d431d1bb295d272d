"""lowbit's exception hierarchy. The C++ core raises these through its exception translator."""


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class GGUFError(LowbitError, ValueError):
    """A GGUF file is malformed, truncated, hostile or uses something unsupported.

    The message names the field, key or tensor and the byte offset where it went wrong."""


class ModelError(LowbitError, ValueError):
    """Model hyper-parameters or tensors do not fit together (or the architecture is unsupported)."""


class TemplateError(LowbitError, ValueError):
    """A chat template failed to render, or tried something the sandbox forbids."""


class RegistryError(LowbitError, ValueError):
    """Unknown model name, failed download or checksum mismatch."""


class CudaError(LowbitError, RuntimeError):
    """A CUDA runtime call failed."""


class Cancelled(LowbitError):
    """Work was stopped by cancel() or by a progress callback returning False."""


class InsufficientMemory(LowbitError, MemoryError):
    """The asked configuration (context length, KV type) needs more memory than is available.

    The message shows the estimate and the largest context that would fit."""

"""CPU kernels: feature detection, kernel-set choice, quantized dot products and matmul.

The heavy lifting is in the C++ core (csrc/cpu); this module converts arguments and keeps one
thread pool per thread count, so repeated calls do not start threads again."""
from __future__ import annotations

import numpy as np

from lowbit import _core

_pools: dict[int, "_core.CpuThreadPool"] = {}


def features() -> dict:
    """Detected CPU flags, the kernel levels this CPU supports and the one in use ('kernels')."""
    return _core.cpu_features()


def set_kernels(name: str) -> None:
    """Use the 'scalar', 'avx2' or 'avx512' kernel set for the whole process (ValueError if
    the CPU lacks it). The default is the best supported, or env LOWBIT_CPU."""
    _core.cpu_set_kernels(name)


def get_kernels() -> str:
    """Name of the kernel set in use."""
    return _core.cpu_get_kernels()


def pool(n_threads: int | None = None) -> "_core.CpuThreadPool":
    """The shared thread pool with n_threads threads (None: one per physical core)."""
    n = 0 if n_threads is None else int(n_threads)
    if n < 0:
        raise ValueError(f"n_threads must be positive or None, got {n_threads}")
    if n not in _pools:
        _pools[n] = _core.CpuThreadPool(n)
    return _pools[n]


def _as_bytes(a) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1)


def matmul(weights, type_name: str, shape: tuple[int, int], x, n_threads: int | None = None,
           act_precision: str = "q8") -> np.ndarray:
    """y = x @ W.T for raw GGML weight bytes of logical shape (rows, cols).

    x: (cols,) or (n, cols) float32; returns (rows,) or (n, rows) float32. Activations are
    quantized to the type's activation format (Q8_0 / Q8_K) first: once with act_precision="q8"
    (as llama.cpp), or as hi + lo q8 rows with "high" (~16-bit activations, csrc/cpu/matmul.h)."""
    rows, cols = (int(v) for v in shape)
    xa = np.ascontiguousarray(x, dtype=np.float32)
    if xa.ndim not in (1, 2):
        raise ValueError(f"x must be (cols,) or (n, cols), got shape {xa.shape}")
    y = _core.cpu_matmul(_as_bytes(weights), type_name, rows, cols, xa.reshape(-1, xa.shape[-1]), pool(n_threads),
                         act_precision)
    return y[0] if xa.ndim == 1 else y


def act_format(type_name: str) -> str:
    """'Q8_0', 'Q8_K' or 'F32': what the activations of a type's dot look like."""
    return _core.cpu_act_format(type_name)


def quantize_act(fmt: str, x) -> np.ndarray:
    """Quantize a float row to activation blocks ('Q8_0' or 'Q8_K'); returns the block bytes."""
    return _core.cpu_quantize_act(fmt, np.ascontiguousarray(x, dtype=np.float32).reshape(-1))


def vec_dot(type_name: str, weights, act) -> float:
    """Dot of one weight row (raw block bytes) with one activation row: quantize_act bytes for
    quantized types, float32 values for F32/F16/BF16."""
    if act_format(type_name) == "F32":
        act = np.ascontiguousarray(act, dtype=np.float32)
    return _core.cpu_vec_dot(type_name, _as_bytes(weights), _as_bytes(act))


def read_bandwidth(n_threads: int | None = None, nbytes: int = 1 << 30, iters: int = 3) -> float:
    """Measured memory read bandwidth (GB/s): n_threads sum a buffer of nbytes, best of iters."""
    return _core.cpu_read_bandwidth(pool(n_threads), int(nbytes), int(iters))

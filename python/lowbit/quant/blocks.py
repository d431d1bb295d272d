"""Block quantization formats (GGUF-compatible): quantize, dequantize, and the type table.

Shapes:
  quantize(x, type)    x: (n,) or (rows, n) float -> uint8 (row_bytes,) or (rows, row_bytes)
  dequantize(raw, type, shape)  raw: bytes-like or uint8 array of prod(shape[:-1]) * row_bytes
                       bytes -> float32 array of ``shape``

Rows are quantized independently (n must be a multiple of the type's block size); the bytes
are what llama.cpp's quantizer writes for the same row (legacy formats and BF16 also equal
``gguf.quants.quantize``). ``imatrix`` is llama.cpp's importance matrix for this tensor: one
non-negative weight per column, steering the k-quant / IQ4 / legacy scale searches; Q8_0, Q8_K
and the float types ignore it.

Q8_K is the activation format of the k-quant dot products (never stored in files); it is listed
so kernels can be tested against it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from lowbit import _core

__all__ = ["quantize", "dequantize", "matmul", "types", "type_info", "row_bytes"]


def types() -> list[dict[str, Any]]:
    """Every computable type: name, type_id, block_size, type_size (bytes per block),
    bits_per_weight, vec_dot_type, uses_imatrix."""
    return _core.quant_types()


def type_info(name: str) -> dict[str, Any]:
    """The entry of ``types()`` for ``name`` (case-insensitive); ValueError lists the known ones."""
    return _core.quant_type_info(name)


def row_bytes(name: str, n: int) -> int:
    """Bytes of one row of ``n`` weights; ValueError unless n is a multiple of the block size."""
    info = type_info(name)
    if n <= 0 or n % info["block_size"]:
        raise ValueError(f"row length {n} is not a positive multiple of {info['name']}'s "
                         f"block size {info['block_size']}")
    return n // info["block_size"] * info["type_size"]


def quantize(x: Any, type: str, imatrix: Any | None = None) -> np.ndarray:
    """Quantize a 1-D row or 2-D (rows, n) array to ``type``; returns uint8 of shape
    (row_bytes,) or (rows, row_bytes). Non-finite values raise ValueError for block formats."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim not in (1, 2):
        raise ValueError(f"quantize expects a 1-D row or a 2-D (rows, n) array, got shape {arr.shape}")
    rows2d = np.ascontiguousarray(arr.reshape(1, -1) if arr.ndim == 1 else arr)
    qw = None
    if imatrix is not None:
        qw = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32))
        if qw.ndim != 1 or qw.shape[0] != rows2d.shape[1]:
            raise ValueError(f"imatrix has shape {qw.shape}, expected ({rows2d.shape[1]},): "
                             "one importance per column")
    out = _core.quantize(rows2d, type, qw)
    return out.reshape(-1) if arr.ndim == 1 else out


def dequantize(raw: Any, type: str, shape: int | Sequence[int]) -> np.ndarray:
    """Dequantize ``raw`` (bytes, memoryview or uint8 array holding whole rows) to float32 of
    ``shape``; the last dimension is the row length. ValueError when the byte count is wrong."""
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    if len(shape) == 0 or any(s < 0 for s in shape):
        raise ValueError(f"bad shape {shape}")
    n = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    if isinstance(raw, np.ndarray):
        data = raw.reshape(-1).view(np.uint8) if raw.dtype != np.uint8 else raw.reshape(-1)
    else:
        data = np.frombuffer(raw, dtype=np.uint8)
    expected = rows * row_bytes(type, n)
    if data.size != expected:
        raise ValueError(f"raw data has {data.size} bytes but shape {shape} of {type_info(type)['name']} "
                         f"needs {expected} ({rows} rows x {expected // max(rows, 1)} bytes)")
    out = _core.dequantize(np.ascontiguousarray(data), type, rows, n)
    return out.reshape(shape)


def matmul(raw_weights: Any, type: str, shape: Sequence[int], x: Any, n_threads: int | None = None,
           act_precision: str = "q8") -> np.ndarray:
    """y = W x with W given as raw blocks of ``type`` and ``shape`` = (rows, cols): the CPU
    kernels of ``lowbit.cpu`` (activations quantized to q8 for quantized types, as llama.cpp,
    or to hi + lo q8 rows with act_precision="high"). ``x`` is (cols,) or (n, cols) float32;
    the result is (rows,) or (n, rows)."""
    from lowbit.runtime.cpu import matmul as _cpu_matmul
    return _cpu_matmul(raw_weights, type, tuple(shape), x, n_threads=n_threads, act_precision=act_precision)


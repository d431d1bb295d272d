"""GPTQ-style error feedback that still writes standard GGUF blocks.

Per weight matrix W (n_out, n_in) with the calibration Hessian H = X^T X / n of its inputs:
walk the input columns block by block (a block = the type's block along a row: 32 weights for
Q4_0..Q8_0 / IQ4_NL, 256 for k-quants / IQ4_XS); quantize the block with the ordinary GGUF
quantizer (importance = diag(H), as imatrix does), then push the block's rounding error onto
the columns not yet quantized with the optimal-brain-surgeon update

    W[:, rest] -= (W_b - Q_b) · Hinv_bb^-1 · Hinv_b,rest
    Hinv_rest  <- Hinv_rr - Hinv_rb · Hinv_bb^-1 · Hinv_br       (the block is now fixed)

so later blocks absorb the error in the directions the activations use. The bytes written are
those of the last quantizer call per block, so every file reads anywhere GGUF reads.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from lowbit.quant import blocks

DAMP = 0.01          # H += DAMP * mean(diag(H)) * I, as GPTQ does


class Hessians:
    """Sum of x x^T of every blk.* matrix input, and the rows summed (float64), by tensor name."""

    def __init__(self, sums: Optional[Dict[str, np.ndarray]] = None, counts: Optional[Dict[str, int]] = None):
        self.sums: Dict[str, np.ndarray] = dict(sums or {})
        self.counts: Dict[str, int] = dict(counts or {})

    def mean(self, name: str) -> Optional[np.ndarray]:
        if name not in self.sums:
            return None
        return self.sums[name] / max(self.counts[name], 1)


def collect_hessians(path: str, text: str, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
                     n_threads: Optional[int] = None,
                     progress: Optional[Callable[[int, int], Optional[bool]]] = None) -> Hessians:
    """Run the calibration text through the engine and sum x x^T per matrix input
    (``calibrate.collect_gram``)."""
    from lowbit.quant.calibrate import collect_gram
    grams = collect_gram(path, text, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads, progress=progress)
    return Hessians({name: g for name, (g, _) in grams.items()}, {name: rows for name, (_, rows) in grams.items()})


def _inverse(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Damped inverse Hessian; dead inputs (never active) get weight 0 and H_jj = 1."""
    h = h.copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    return np.linalg.inv(h)


def gptq_quantize(w: np.ndarray, h: np.ndarray, qtype: str) -> np.ndarray:
    """w: (n_out, n_in) float, h: (n_in, n_in) mean x x^T -> (n_out, row_bytes) uint8 of ``qtype``."""
    block = blocks.type_info(qtype)["block_size"]
    n_out, n_in = w.shape
    if n_in % block:
        raise ValueError(f"row length {n_in} is not a multiple of {qtype}'s block size {block}")
    w = np.array(w, dtype=np.float64)
    importance = np.maximum(np.diag(h), 0).astype(np.float32)
    hinv = _inverse(h, w)
    out = np.empty((n_out, blocks.row_bytes(qtype, n_in)), dtype=np.uint8)
    bytes_per_block = blocks.row_bytes(qtype, block)
    for c0 in range(0, n_in, block):
        c1 = c0 + block
        qb = blocks.quantize(w[:, c0:c1].astype(np.float32), qtype, imatrix=importance[c0:c1])
        out[:, c0 // block * bytes_per_block:c1 // block * bytes_per_block] = qb
        if c1 == n_in:
            break
        err = w[:, c0:c1] - blocks.dequantize(qb, qtype, (n_out, block)).astype(np.float64)
        hbb, hbr = hinv[c0:c1, c0:c1], hinv[c0:c1, c1:]
        step = np.linalg.solve(hbb, hbr)                       # Hinv_bb^-1 Hinv_b,rest
        w[:, c1:] -= err @ step
        hinv[c1:, c1:] -= hinv[c1:, c0:c1] @ step
    return out

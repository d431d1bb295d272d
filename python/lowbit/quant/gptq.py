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

Never worse than imatrix: error feedback fits the calibration chunks, and on few chunks it can fit
them better than it fits text it has not seen. ``collect_hessians`` keeps every HOLDOUT_EVERY-th
chunk apart; ``choose`` quantizes a tensor both ways (GPTQ on the other chunks' Hessian, and
plain importance-weighted rounding with diag of that Hessian, which is what an imatrix of the
same chunks gives) and keeps whichever has the lower output error tr(E H E^T) on the held-out
Hessian.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np

from lowbit.quant import blocks

DAMP = 0.01          # H += DAMP * mean(diag(H)) * I, as GPTQ does
HOLDOUT_EVERY = 4    # every 4th calibration chunk (when there are at least 4) scores, the rest fit


class Hessians:
    """Sum of x x^T of every blk.* matrix input, and the rows summed (float64), by tensor name;
    optionally the same over held-out chunks (``holdout_*``), used only to choose."""

    def __init__(self, sums: Optional[Dict[str, np.ndarray]] = None, counts: Optional[Dict[str, int]] = None,
                 holdout_sums: Optional[Dict[str, np.ndarray]] = None,
                 holdout_counts: Optional[Dict[str, int]] = None):
        self.sums: Dict[str, np.ndarray] = dict(sums or {})
        self.counts: Dict[str, int] = dict(counts or {})
        self.holdout_sums: Dict[str, np.ndarray] = dict(holdout_sums or {})
        self.holdout_counts: Dict[str, int] = dict(holdout_counts or {})

    def mean(self, name: str) -> Optional[np.ndarray]:
        if name not in self.sums:
            return None
        return self.sums[name] / max(self.counts[name], 1)

    def holdout_mean(self, name: str) -> Optional[np.ndarray]:
        if name not in self.holdout_sums or not self.holdout_counts.get(name):
            return None
        return self.holdout_sums[name] / self.holdout_counts[name]


def collect_hessians(path: str, text: str, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
                     n_threads: Optional[int] = None, holdout: bool = True,
                     progress: Optional[Callable[[int, int], Optional[bool]]] = None) -> Hessians:
    """Run the calibration text through the engine and sum x x^T per matrix input
    (``calibrate.collect_gram``); with ``holdout`` every HOLDOUT_EVERY-th chunk goes to the
    held-out sums instead (when there are at least HOLDOUT_EVERY chunks)."""
    from lowbit.quant.calibrate import collect_gram
    fit, held = collect_gram(path, text, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads, progress=progress,
                             holdout_every=HOLDOUT_EVERY if holdout else 0)
    return Hessians({name: g for name, (g, _) in fit.items()}, {name: rows for name, (_, rows) in fit.items()},
                    {name: g for name, (g, _) in held.items()}, {name: rows for name, (_, rows) in held.items()})


def output_loss(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """tr(E H E^T), E = w - w_hat: the mean squared output error over the rows behind H."""
    e = np.asarray(w, dtype=np.float64) - np.asarray(w_hat, dtype=np.float64)
    return float(np.einsum("ij,ij->", e @ h, e))


def choose(w: np.ndarray, h_fit: np.ndarray, h_holdout: Optional[np.ndarray], qtype: str) -> Tuple[np.ndarray, bool]:
    """(bytes, True when GPTQ was kept): GPTQ on h_fit against importance-weighted rounding with
    diag(h_fit), judged on h_holdout (module doc). Without a held-out Hessian, GPTQ."""
    q_gptq = gptq_quantize(w, h_fit, qtype)
    if h_holdout is None:
        return q_gptq, True
    q_plain = blocks.quantize(np.asarray(w, dtype=np.float32), qtype,
                              imatrix=np.maximum(np.diag(h_fit), 0).astype(np.float32))
    shape = np.shape(w)
    loss_gptq = output_loss(w, blocks.dequantize(q_gptq, qtype, shape), h_holdout)
    loss_plain = output_loss(w, blocks.dequantize(q_plain, qtype, shape), h_holdout)
    return (q_gptq, True) if loss_gptq <= loss_plain else (q_plain, False)


def _inverse(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Damped inverse Hessian; dead inputs (never active) get weight 0 and H_jj = 1."""
    h = h.copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    return np.linalg.inv(h)


def gptq_quantize(w: np.ndarray, h: np.ndarray, qtype: str, act_order: bool = True) -> np.ndarray:
    """w: (n_out, n_in) float, h: (n_in, n_in) mean x x^T -> (n_out, row_bytes) uint8 of ``qtype``.

    act_order: blocks are fixed in order of falling importance (their share of diag(H)), as
    GPTQ's act-order does column by column; whole blocks move, so the bytes land in the file's
    own block order and the layout is unchanged."""
    block = blocks.type_info(qtype)["block_size"]
    n_out, n_in = w.shape
    if n_in % block:
        raise ValueError(f"row length {n_in} is not a multiple of {qtype}'s block size {block}")
    n_blocks = n_in // block
    order = np.arange(n_blocks)
    if act_order:
        order = np.argsort(-np.diag(h).reshape(n_blocks, block).sum(axis=1), kind="stable")
    cols = (order[:, None] * block + np.arange(block)[None, :]).reshape(-1)    # permuted column order
    w = np.array(w, dtype=np.float64)[:, cols]
    h = np.asarray(h, dtype=np.float64)[np.ix_(cols, cols)]
    importance = np.maximum(np.diag(h), 0).astype(np.float32)
    hinv = _inverse(h, w)
    bytes_per_block = blocks.row_bytes(qtype, block)
    out = np.empty((n_out, n_blocks, bytes_per_block), dtype=np.uint8)
    for i, b in enumerate(order):
        c0, c1 = i * block, (i + 1) * block
        qb = blocks.quantize(w[:, c0:c1].astype(np.float32), qtype, imatrix=importance[c0:c1])
        out[:, b] = qb
        if c1 == n_in:
            break
        err = w[:, c0:c1] - blocks.dequantize(qb, qtype, (n_out, block)).astype(np.float64)
        hbb, hbr = hinv[c0:c1, c0:c1], hinv[c0:c1, c1:]
        step = np.linalg.solve(hbb, hbr)                       # Hinv_bb^-1 Hinv_b,rest
        w[:, c1:] -= err @ step
        hinv[c1:, c1:] -= hinv[c1:, c0:c1] @ step
    return out.reshape(n_out, n_blocks * bytes_per_block)

"""Calibration statistics from the engine's own forward pass: the importance matrix and GPTQ's
Hessians.

The text runs through the model in chunks (llama-imatrix's chunking: n_ctx tokens, the first
one BOS), each in a fresh context, with an observer attached to the engine
(``csrc/model/observer.h``): the engine reports the float input of every weight matmul under
the GGUF tensor names it multiplies, before activation quantization. Two observers:

- ``SumSquaresObserver``: per input column the sum of x^2 and the rows seen (llama.cpp's imatrix
  collector), saved in llama.cpp's imatrix formats by ``imatrix.IMatrix``;
- ``GramObserver``: X^T X in float64 per input (q/k/v and gate/up share theirs), GPTQ's Hessian.

Only the ``blk.*`` matrices are kept, as llama-imatrix does by default. The engine runs at
``act_precision="high"`` so the activations the statistics see are within KL 1e-6 of float
arithmetic.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from lowbit.quant.imatrix import IMatrix, IMatrixEntry

Progress = Callable[[int, int], Optional[bool]]


def calibration_chunks(tokenizer, text: str, n_ctx: int, n_chunks: Optional[int]) -> List[np.ndarray]:
    from lowbit.quant.evaluate import make_chunks
    return make_chunks(tokenizer.encode(text, add_special=False), n_ctx, n_chunks,
                       tokenizer.bos_id if tokenizer.add_bos else None)


def observe_text(path: str, text: str, observer, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
                 n_threads: Optional[int] = None, progress: Optional[Progress] = None,
                 route: Optional[Callable[[int], object]] = None) -> int:
    """Runs ``text`` through the model at ``path`` in chunks with ``observer`` attached (or, with
    ``route``, route(chunk index)'s observer for each chunk); returns the number of chunks run.
    progress(done, total) after each chunk; False stops early (what was observed so far is kept)."""
    from lowbit import _core
    from lowbit.runtime.cpu import features
    from lowbit.runtime.gguf_file import GGUFFile
    from lowbit.runtime.tokenizer import Tokenizer

    with GGUFFile(path) as g:
        tokenizer = Tokenizer.from_metadata(g.metadata)
    chunks = calibration_chunks(tokenizer, text, n_ctx, n_chunks)
    threads = n_threads or features()["physical_cores"]
    engine = _core.Engine(str(path), n_ctx, threads, n_ctx, "f16", act_precision="high")
    try:
        engine.set_observer(observer)
        attached = observer
        done = 0
        for i, chunk in enumerate(chunks):
            if route is not None and route(i) is not attached:
                attached = route(i)
                engine.set_observer(attached)
            engine.truncate(0)
            engine.eval(chunk)
            done += 1
            if progress is not None and progress(done, len(chunks)) is False:
                break
        return done
    finally:
        engine.close()


def compute_imatrix(path: str, text: str, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
                    n_threads: Optional[int] = None, progress: Optional[Progress] = None) -> IMatrix:
    """llama-imatrix on ``text``: x^2 sums of the inputs of every ``blk.*`` weight matrix over
    chunks of n_ctx tokens (first one BOS)."""
    from lowbit import _core
    observer = _core.SumSquaresObserver()
    im = IMatrix(chunk_size=n_ctx)
    im.chunk_count = observe_text(path, text, observer, n_ctx=n_ctx, n_chunks=n_chunks,
                                  n_threads=n_threads, progress=progress)
    for name, (sums, rows) in observer.entries().items():
        if name.startswith("blk."):
            im.entries[name] = IMatrixEntry(sums[None, :], np.array([float(rows)]))
    return im


def collect_gram(path: str, text: str, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
                 n_threads: Optional[int] = None, progress: Optional[Progress] = None,
                 holdout_every: int = 0) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    """({blk.* tensor name: (X^T X (n_in, n_in) float64, rows)}, the same over held-out chunks)
    of the matrix inputs over the calibration chunks. holdout_every=k > 1: chunks k-1, 2k-1, ...
    are summed apart (when there are at least k chunks; else the held-out part is empty)."""
    from lowbit import _core
    fit, held = _core.GramObserver(), _core.GramObserver()
    route = None
    if holdout_every > 1:
        route = lambda i: held if i % holdout_every == holdout_every - 1 else fit   # noqa: E731
    observe_text(path, text, fit, n_ctx=n_ctx, n_chunks=n_chunks, n_threads=n_threads, progress=progress,
                 route=route)    # fewer than holdout_every chunks: none reaches `held`

    def table(observer) -> Dict[str, tuple]:
        return {name: (observer.gram(name), observer.rows(name))
                for name in sorted(observer.names()) if name.startswith("blk.")}
    return table(fit), table(held)


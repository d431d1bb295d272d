"""Perplexity and KL divergence with llama-perplexity's definitions.

perplexity: the text is tokenized without BOS and cut into chunks of ``n_ctx`` tokens; the first
token of each chunk is replaced by BOS (when the model adds one); the logits at positions
n_ctx/2 .. n_ctx-2 score the next token; ppl = exp(mean NLL), and the error llama.cpp prints is
ppl * std(NLL) / sqrt(N - 1).

KL divergence (``kl_base``): a base model is run on the same chunks; per scored position
KL(base || model) = sum_v p_base(v) (log p_base(v) - log p_model(v)); reported as mean ± error,
median, 99th percentile and max, the RMS of Δp = p_model(next) - p_base(next), and how often
both models' top tokens agree (same-top-1 %).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from lowbit.errors import LowbitError

ROWS_PER_SLICE = 32        # logits rows widened to float64 at once (vocab 262144 -> 64 MiB)
BOOTSTRAP_SAMPLES = 2000   # resamples of the chunks behind every confidence interval
BOOTSTRAP_SEED = 0         # fixed: the same report gives the same interval


@dataclass
class KLStats:
    mean: float
    mean_err: float
    median: float
    p99: float
    max: float
    rms_dp: float           # root mean square of p_model(next) - p_base(next)
    rms_dp_err: float
    same_top1_pct: float
    same_top1_err: float
    base_ppl: float
    mean_ci: Tuple[float, float] = (0.0, 0.0)   # 95 % bootstrap interval of the mean over chunks
    chunk_means: List[float] = field(default_factory=list)   # mean KLD of each chunk


@dataclass
class PerplexityResult:
    ppl: float
    ppl_err: float
    mean_nll: float
    n_scored: int
    n_chunks: int
    n_ctx: int
    seconds: float
    kl: Optional[KLStats] = None
    chunk_ppl: List[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Scores:
    """Per scored position, accumulated over chunks."""
    nll: List[np.ndarray] = field(default_factory=list)
    base_nll: List[np.ndarray] = field(default_factory=list)
    kld: List[np.ndarray] = field(default_factory=list)
    dp: List[np.ndarray] = field(default_factory=list)
    same: List[np.ndarray] = field(default_factory=list)
    chunk_kld: List[float] = field(default_factory=list)   # mean KLD of each chunk


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def check_chunks(n_chunks: Optional[int], what: str = "n_chunks") -> None:
    """None (all) or a positive count; ValueError otherwise (0 and -1 used to mean "all" silently)."""
    if n_chunks is not None and (isinstance(n_chunks, bool) or not isinstance(n_chunks, int) or n_chunks <= 0):
        raise ValueError(f"{what} must be a positive number of chunks or None (all), got {n_chunks!r}")


def make_chunks(tokens: Sequence[int], n_ctx: int, n_chunks: Optional[int], bos: Optional[int]) -> List[np.ndarray]:
    """Chunks of n_ctx tokens (at most n_chunks; None: all), each starting with BOS when ``bos`` is given."""
    check_chunks(n_chunks)
    if n_ctx < 4:
        raise ValueError(f"n_ctx must be at least 4, got {n_ctx}")
    tokens = np.asarray(tokens, dtype=np.int32)
    available = len(tokens) // n_ctx
    if available == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}: "
                         "use more text or a smaller --ctx")
    count = available if n_chunks is None else min(n_chunks, available)
    chunks = []
    for i in range(count):
        c = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
        if bos is not None:
            c[0] = bos
        chunks.append(c)
    return chunks


def _score_chunk(chunk: np.ndarray, logits: np.ndarray, base_logits: Optional[np.ndarray], s: _Scores) -> float:
    n_ctx = len(chunk)
    first = n_ctx // 2
    nll_parts = []
    kld_before = len(s.kld)
    for r0 in range(first, n_ctx - 1, ROWS_PER_SLICE):
        r1 = min(r0 + ROWS_PER_SLICE, n_ctx - 1)
        target = chunk[r0 + 1:r1 + 1]
        rows = np.arange(r1 - r0)
        lp = log_softmax64(logits[r0:r1])
        nll = -lp[rows, target]
        nll_parts.append(nll)
        s.nll.append(nll)
        if base_logits is not None:
            lb = log_softmax64(base_logits[r0:r1])
            pb = np.exp(lb)
            s.kld.append(np.maximum((pb * (lb - lp)).sum(axis=1), 0.0))
            s.base_nll.append(-lb[rows, target])
            s.dp.append(np.exp(lp[rows, target]) - pb[rows, target])
            s.same.append(lp.argmax(axis=1) == lb.argmax(axis=1))
    if base_logits is not None:
        s.chunk_kld.append(float(np.concatenate(s.kld[kld_before:]).mean()))
    return float(np.exp(np.concatenate(nll_parts).mean()))


def bootstrap_means(chunk_values: Sequence[Sequence[float]], n_samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(n_samples, n_series) means over chunks resampled with replacement, the SAME resampled
    chunks for every series (so that series measured on the same chunks are compared paired).
    Every chunk scores the same number of positions, so the mean over positions is the mean of
    the chunk means."""
    v = np.asarray(chunk_values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError("bootstrap needs per-chunk values of at least one chunk for every series")
    idx = np.random.default_rng(seed).integers(0, v.shape[1], size=(n_samples, v.shape[1]))
    return v[:, idx].mean(axis=2).T


def paired_ratio(chunks: Sequence[float], ref_chunks: Sequence[float]) -> Tuple[float, Tuple[float, float]]:
    """mean(chunks) / mean(ref_chunks) and its 95 % interval from resampling the same chunks for
    both (resamples whose reference mean is 0 are left out; none left: nan bounds)."""
    ref = float(np.mean(ref_chunks))
    m = bootstrap_means([chunks, ref_chunks])
    ok = m[:, 1] > 0
    ratio = float(np.mean(chunks)) / ref if ref > 0 else float("nan")
    return ratio, interval(m[ok, 0] / m[ok, 1]) if ok.any() else (float("nan"), float("nan"))


def interval(samples: np.ndarray, level: float = 0.95) -> Tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return float(lo), float(hi)


def _mean_err(x: np.ndarray) -> float:
    if x.size < 2:
        return 0.0
    var = float(np.mean(x * x) - np.mean(x) ** 2)
    return math.sqrt(max(var, 0.0) / (x.size - 1))


def _kl_stats(s: _Scores) -> KLStats:
    kld = np.concatenate(s.kld)
    dp = np.concatenate(s.dp)
    same = np.concatenate(s.same).astype(np.float64)
    base_nll = np.concatenate(s.base_nll)
    rms = math.sqrt(float(np.mean(dp * dp)))
    # error of sqrt(mean(dp^2)) by the delta method, as llama.cpp prints it
    rms_err = _mean_err(dp * dp) / (2 * rms) if rms > 0 else 0.0
    top1 = float(same.mean())
    ci = interval(bootstrap_means([s.chunk_kld])[:, 0])
    return KLStats(mean=float(kld.mean()), mean_err=_mean_err(kld), median=float(np.median(kld)),
                   p99=float(np.percentile(kld, 99)), max=float(kld.max()), rms_dp=rms, rms_dp_err=rms_err,
                   same_top1_pct=100 * top1, same_top1_err=100 * math.sqrt(top1 * (1 - top1) / max(same.size - 1, 1)),
                   base_ppl=float(np.exp(base_nll.mean())), mean_ci=ci, chunk_means=list(s.chunk_kld))


def _load(model: Any, n_ctx: int, n_threads: Optional[int]):
    """A path or registry name -> (Model, owned=True); a loaded model -> (model, False)."""
    if isinstance(model, (str, os.PathLike)):
        from lowbit.runtime.model import load
        return load(os.fspath(model), n_ctx=n_ctx, n_threads=n_threads), True
    return model, False


def perplexity(model: Any, text: str, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
               kl_base: Any = None, n_threads: Optional[int] = None,
               progress: Optional[Callable[[int, int], Optional[bool]]] = None) -> PerplexityResult:
    """PPL of ``model`` (path, registry name or loaded Model) on ``text``; with ``kl_base`` also
    KL-divergence statistics against that model on the same tokens. progress(done, total) is
    called after each chunk (returning False stops with Cancelled)."""
    from lowbit.errors import Cancelled
    t0 = time.monotonic()
    m, own_m = _load(model, n_ctx, n_threads)
    b, own_b = (None, False) if kl_base is None else _load(kl_base, n_ctx, n_threads)
    try:
        tok = m.tokenizer
        tokens = tok.encode(text, add_special=False, parse_special=False)
        if b is not None:
            if b.tokenizer.encode(text, add_special=False, parse_special=False) != tokens:
                raise LowbitError("the base model tokenizes the text differently: KL divergence needs the "
                                  "same vocabulary")
        chunks = make_chunks(tokens, n_ctx, n_chunks, tok.bos_id if tok.add_bos else None)
        s = _Scores()
        chunk_ppl = []
        for i, chunk in enumerate(chunks):
            logits = m.logits(chunk)
            base_logits = None if b is None else b.logits(chunk)
            chunk_ppl.append(_score_chunk(chunk, logits, base_logits, s))
            if progress is not None and progress(i + 1, len(chunks)) is False:
                raise Cancelled(f"perplexity stopped after {i + 1} of {len(chunks)} chunks")
    finally:
        if own_m:
            m.close()
        if own_b:
            b.close()
    nll = np.concatenate(s.nll)
    ppl = float(np.exp(nll.mean()))
    return PerplexityResult(ppl=ppl, ppl_err=ppl * _mean_err(nll), mean_nll=float(nll.mean()),
                            n_scored=int(nll.size), n_chunks=len(chunks), n_ctx=n_ctx,
                            seconds=time.monotonic() - t0, kl=_kl_stats(s) if b is not None else None,
                            chunk_ppl=chunk_ppl)


def format_perplexity(r: PerplexityResult, name: str = "") -> str:
    lines = [f"{name + ': ' if name else ''}PPL = {r.ppl:.4f} +/- {r.ppl_err:.4f} "
             f"({r.n_chunks} chunks of {r.n_ctx}, {r.n_scored} scored tokens, {r.seconds:.1f} s)"]
    if r.kl is not None:
        k = r.kl
        lines += [f"base PPL        = {k.base_ppl:.4f}",
                  f"mean KLD        = {k.mean:.6f} +/- {k.mean_err:.6f} "
                  f"(95% CI over chunks {k.mean_ci[0]:.6f} .. {k.mean_ci[1]:.6f})",
                  f"median KLD      = {k.median:.6f}",
                  f"99th pct KLD    = {k.p99:.6f}",
                  f"max KLD         = {k.max:.6f}",
                  f"RMS dp          = {100 * k.rms_dp:.3f} +/- {100 * k.rms_dp_err:.3f} %",
                  f"same top-1      = {k.same_top1_pct:.2f} +/- {k.same_top1_err:.2f} %"]
    return "\n".join(lines)

"""Sampling as pure functions of logits, and a seeded sampler that chains them.

Chain order follows llama.cpp's default: repetition penalty -> top-k -> top-p -> min-p ->
temperature -> draw. Filters return new float64 logits with removed tokens at -inf; they
never modify their input. ``temperature <= 0`` means greedy.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

import numpy as np

NEG_INF = -np.inf


def check_int(name: str, value, *, minimum: Optional[int] = None) -> int:
    """``value`` as an int, else TypeError (bool, float, str...) or ValueError (< minimum),
    naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_number(name: str, value) -> float:
    """``value`` as a finite float, else TypeError (bool, str, None...) or ValueError (nan, inf)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


RANDOM_SEED = -1   # as llama.cpp's --seed -1: a fresh random seed for each generation


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8      # <= 0 = greedy
    top_k: int = 40               # 0 = off
    top_p: float = 0.95           # 1.0 = off
    min_p: float = 0.05           # 0.0 = off
    repetition_penalty: float = 1.0   # 1.0 = off
    repeat_last_n: int = 64       # window of recent tokens the penalty looks at (-1 = all)
    seed: Optional[int] = None    # None or -1 = random; an int >= 0 = reproducible draws

    def validate(self) -> "SamplingParams":
        """Return self, or raise TypeError/ValueError naming only the bad field and its value,
        e.g. "top_p must be in (0, 1], got 2.0"."""
        check_number("temperature", self.temperature)
        check_int("top_k", self.top_k, minimum=0)
        ranges = (("top_p", "(0, 1]", lambda v: 0.0 < v <= 1.0), ("min_p", "[0, 1]", lambda v: 0.0 <= v <= 1.0),
                  ("repetition_penalty", "(0, inf)", lambda v: v > 0.0))
        for name, interval, ok in ranges:
            value = getattr(self, name)
            if not ok(check_number(name, value)):
                raise ValueError(f"{name} must be in {interval}, got {value!r}")
        check_int("repeat_last_n", self.repeat_last_n, minimum=-1)
        if self.seed is not None:
            check_int("seed", self.seed, minimum=RANDOM_SEED)
        return self

    def with_(self, **changes) -> "SamplingParams":
        return replace(self, **changes).validate()


def _as_logits(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
    return x


def softmax(logits) -> np.ndarray:
    x = _as_logits(logits)
    m = np.max(x)
    if not np.isfinite(m):
        raise ValueError("logits have no finite entry")
    e = np.exp(x - m)
    return e / e.sum()


def repetition_penalty(logits, recent_ids: Iterable[int], penalty: float) -> np.ndarray:
    """llama.cpp's rule: for each distinct recent token, positive logits are divided by the
    penalty and negative ones multiplied by it."""
    x = _as_logits(logits).copy()
    if penalty == 1.0:
        return x
    ids = np.unique(np.fromiter(recent_ids, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < x.size)]
    vals = x[ids]
    x[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return x


def top_k(logits, k: int) -> np.ndarray:
    x = _as_logits(logits)
    if k <= 0 or k >= x.size:
        return x.copy()
    keep = np.argpartition(-x, k - 1)[:k]
    out = np.full_like(x, NEG_INF)
    out[keep] = x[keep]
    return out


def top_p(logits, p: float, min_keep: int = 1) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability mass reaches ``p``."""
    x = _as_logits(logits)
    if p >= 1.0:
        return x.copy()
    probs = softmax(x)
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order])
    n_keep = max(int(np.searchsorted(cum, p) + 1), min_keep)
    out = np.full_like(x, NEG_INF)
    keep = order[:n_keep]
    out[keep] = x[keep]
    return out


def min_p(logits, p: float, min_keep: int = 1) -> np.ndarray:
    """Drop tokens whose probability is below ``p`` times the most likely token's."""
    x = _as_logits(logits)
    if p <= 0.0:
        return x.copy()
    finite = np.isfinite(x)
    threshold = np.max(x) + np.log(p)
    keep = finite & (x >= threshold)
    if keep.sum() < min_keep:
        keep = np.zeros_like(finite)
        keep[np.argsort(-x, kind="stable")[:min_keep]] = True
    return np.where(keep, x, NEG_INF)


def greedy(logits) -> int:
    return int(np.argmax(_as_logits(logits)))


class Sampler:
    """The chain above with its own seeded RNG: the same seed gives the same tokens."""

    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(None if params.seed == RANDOM_SEED else params.seed)

    def filtered_logits(self, logits, history: Sequence[int] = ()) -> np.ndarray:
        p = self.params
        x = _as_logits(logits)
        if p.repetition_penalty != 1.0 and len(history):
            window = history if p.repeat_last_n == -1 else history[-p.repeat_last_n:] if p.repeat_last_n else ()
            x = repetition_penalty(x, window, p.repetition_penalty)
        if p.temperature <= 0:
            return x
        x = top_k(x, p.top_k)
        x = top_p(x, p.top_p)
        x = min_p(x, p.min_p)
        return x / p.temperature

    def sample(self, logits, history: Sequence[int] = ()) -> int:
        p = self.params
        if p.temperature <= 0:
            return greedy(self.filtered_logits(logits, history))
        x = np.asarray(logits)                  # float32 from the engine: no full-vocab copies
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
        if p.repetition_penalty != 1.0 and len(history):
            window = history if p.repeat_last_n == -1 else history[-p.repeat_last_n:] if p.repeat_last_n else ()
            x = repetition_penalty(x, window, p.repetition_penalty)
        # top-k on the full vocabulary, then the rest of the chain on the k candidates only:
        # the same distribution as filtered_logits, without sorting the whole vocabulary.
        if 0 < p.top_k < x.size:
            cand = np.argpartition(x, x.size - p.top_k)[x.size - p.top_k:]
        else:
            cand = np.arange(x.size)
        vals = x[cand].astype(np.float64)
        order = np.argsort(-vals, kind="stable")
        cand, vals = cand[order], vals[order]
        y = top_p(vals, p.top_p)
        y = min_p(y, p.min_p) / p.temperature
        probs = softmax(y)
        return int(cand[self.rng.choice(probs.size, p=probs)])

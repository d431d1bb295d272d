"""Sampling parameters, and the seeded sampler and filters of the C++ core (csrc/sampling).

Chain order: logit bias -> repetition penalty -> presence / frequency penalties -> top-k ->
top-p -> min-p -> temperature -> draw (llama.cpp's default order; llama.cpp's server and vLLM
both add the bias first and penalize the biased logits). The exact rules (ties, min_keep, the
arithmetic) are in csrc/sampling/sampler.h. ``presence_penalty`` / ``frequency_penalty`` are
OpenAI's: over the tokens generated so far (not the prompt), ``x -= count * frequency +
(count > 0) * presence``; ``logit_bias`` maps token ids to values added to their logits. Filters return new float64 logits with removed tokens at -inf; they
never modify their input. ``temperature <= 0`` means greedy. The draw is numpy's
default_rng(seed).choice, reproduced in C++, so a seed gives the tokens it gave before.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from lowbit import _core

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
PENALTY_RANGE = 2.0     # presence / frequency penalties: OpenAI's -2..2
BIAS_RANGE = 100.0      # logit_bias values: OpenAI's -100..100


def bias_pairs(logit_bias) -> List[Tuple[int, float]]:
    """``logit_bias`` ({token id: bias}, ids as ints or decimal strings as in OpenAI's JSON) as
    sorted (id, bias) pairs; TypeError / ValueError naming logit_bias and the bad entry."""
    if logit_bias is None:
        return []
    if not isinstance(logit_bias, Mapping):
        raise TypeError(f"logit_bias must be a mapping of token ids to numbers, got {type(logit_bias).__name__}")
    pairs = {}
    for key, value in logit_bias.items():
        token = key
        if isinstance(key, str) and key.strip().isdigit():
            token = int(key)
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
        bias = check_number(f"logit_bias[{key!r}]", value)
        if not -BIAS_RANGE <= bias <= BIAS_RANGE:
            raise ValueError(f"logit_bias[{key!r}] must be in [-100, 100], got {value!r}")
        pairs[int(token)] = pairs.get(int(token), 0.0) + bias
    return sorted(pairs.items())


def check_bias_ids(params: "SamplingParams", n_vocab: int) -> None:
    """ValueError naming logit_bias when one of its token ids is outside the vocabulary."""
    for token, _ in bias_pairs(params.logit_bias):
        if token >= n_vocab:
            raise ValueError(f"logit_bias: token id {token} is out of range for a vocabulary of {n_vocab}")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8      # <= 0 = greedy
    top_k: int = 40               # 0 = off
    top_p: float = 0.95           # 1.0 = off
    min_p: float = 0.05           # 0.0 = off
    repetition_penalty: float = 1.0   # 1.0 = off
    repeat_last_n: int = 64       # window of recent tokens the penalty looks at (-1 = all)
    seed: Optional[int] = None    # None or -1 = random; an int >= 0 = reproducible draws
    presence_penalty: float = 0.0     # 0 = off; OpenAI's, over the generated tokens
    frequency_penalty: float = 0.0    # 0 = off; OpenAI's, over the generated tokens' counts
    logit_bias: Optional[Mapping[int, float]] = None   # {token id: -100..100 added to its logit}

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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -PENALTY_RANGE <= check_number(name, value) <= PENALTY_RANGE:
                raise ValueError(f"{name} must be in [-2, 2], got {value!r}")
        bias_pairs(self.logit_bias)
        if self.seed is not None:
            check_int("seed", self.seed, minimum=RANDOM_SEED)
        return self

    def with_(self, **changes) -> "SamplingParams":
        return replace(self, **changes).validate()


def _row(logits) -> np.ndarray:
    """``logits`` as a C-contiguous 1-D float32/float64 array: engine rows pass through uncopied."""
    x = np.asarray(logits)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
    return np.ascontiguousarray(x)


def softmax(logits) -> np.ndarray:
    return _core.sampling_softmax(_row(logits))


def repetition_penalty(logits, recent_ids: Iterable[int], penalty: float) -> np.ndarray:
    """llama.cpp's rule: for each distinct recent token, positive logits are divided by the
    penalty and negative ones multiplied by it."""
    return _core.sampling_repetition_penalty(_row(logits), [int(t) for t in recent_ids], float(penalty))


def logit_bias(logits, bias) -> np.ndarray:
    """``bias`` ({token id: value}) added to the logits (an id outside the row: ValueError)."""
    return _core.sampling_logit_bias(_row(logits), bias_pairs(bias))


def presence_frequency_penalty(logits, generated_ids: Iterable[int], presence: float, frequency: float) -> np.ndarray:
    """OpenAI's rule: each token generated c times loses c * frequency + presence."""
    counts = {}
    for t in generated_ids:
        counts[int(t)] = counts.get(int(t), 0) + 1
    return _core.sampling_presence_frequency(_row(logits), counts, float(presence), float(frequency))


def top_k(logits, k: int) -> np.ndarray:
    """The k largest (ties: the lower index); k <= 0 or >= the vocabulary: all."""
    return _core.sampling_top_k(_row(logits), int(k))


def top_p(logits, p: float, min_keep: int = 1) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability mass reaches ``p``."""
    return _core.sampling_top_p(_row(logits), float(p), int(min_keep))


def min_p(logits, p: float, min_keep: int = 1) -> np.ndarray:
    """Drop tokens whose probability is below ``p`` times the most likely token's."""
    return _core.sampling_min_p(_row(logits), float(p), int(min_keep))


def greedy(logits) -> int:
    return int(np.argmax(_row(logits)))


def seed_words(seed: Optional[int]) -> List[int]:
    """A seed as numpy's SeedSequence reads an int: little-endian 32-bit words; [] = random."""
    if seed is None or seed == RANDOM_SEED:
        return []
    words = []
    while True:
        words.append(seed & 0xFFFFFFFF)
        seed >>= 32
        if not seed:
            return words


class Sampler:
    """The chain above with its own seeded RNG: the same seed gives the same tokens.
    Not thread-safe (one sampler per generation: it counts the tokens it draws, which the
    presence / frequency penalties see; ``accept`` counts one chosen without a draw)."""

    def __init__(self, params: SamplingParams):
        self.params = p = params.validate()
        self.core = _core.Sampler(p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty,
                                  p.repeat_last_n, seed_words(p.seed), p.presence_penalty,
                                  p.frequency_penalty, bias_pairs(p.logit_bias))   # also Engine.eval_sample's

    def accept(self, token: int) -> None:
        self.core.accept(int(token))

    def window(self, history: Sequence[int]) -> List[int]:
        """Only the ids the penalty looks at cross into C++ (not the whole history each token)."""
        p = self.params
        if p.repetition_penalty == 1.0 or not len(history) or p.repeat_last_n == 0:
            return []
        window = history if p.repeat_last_n == -1 else history[-p.repeat_last_n:]
        return [int(t) for t in window]

    def filtered_logits(self, logits, history: Sequence[int] = (), ids=None) -> np.ndarray:
        return self.core.filtered_logits(_row(logits), self.window(history), _ids(ids))

    def sample(self, logits, history: Sequence[int] = (), ids=None) -> int:
        """The next token id (counted as generated). ``ids``: ``logits[j]`` is token ``ids[j]``'s
        (ascending; a grammar's allowed tokens): the same draw as the full row with every other
        token at -inf, and a token id comes back."""
        return self.core.sample(_row(logits), self.window(history), _ids(ids))


def _ids(ids) -> Optional[np.ndarray]:
    return None if ids is None else np.ascontiguousarray(ids, dtype=np.int64)

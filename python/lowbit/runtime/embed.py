"""``Model.embed``: pooled, L2-normalised embeddings from the output-normed hidden states.

Pooling follows the GGUF's ``<arch>.pooling_type`` (llama.cpp's enum: 0 none, 1 mean, 2 cls,
3 last, 4 rank): mean averages every token's hidden state, cls takes the first token's, last
the last token's (decoder embedding models such as Qwen3-Embedding). A model that declares
none (or no key) is mean-pooled, with a warning saying so; rank (rerankers) is refused.

Texts run in groups through ``eval_batch`` on sessions of their own (sized to the longest text
seen, reused across calls), so the model's chat cache is never touched; one lock serialises
concurrent ``embed`` calls of one model.
"""
from __future__ import annotations

import threading
import warnings
from typing import List, Optional, Sequence, Union

import numpy as np

from lowbit.runtime.batch import eval_batch

POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
POOLINGS = ("mean", "cls", "last")
GROUP_TEXTS = 8          # texts per batched step at most (one session each)
MIN_SESSION_CTX = 64


def declared_pooling(metadata, arch: str) -> Optional[str]:
    """The pooling the GGUF declares: 'none', 'mean', 'cls', 'last', 'rank', or None without the key."""
    value = metadata.get(f"{arch}.pooling_type")
    if value is None:
        return None
    name = POOLING_NAMES.get(int(value))
    if name is None:
        raise ValueError(f"{arch}.pooling_type {value} is not a known pooling type "
                         f"({', '.join(f'{k} {v}' for k, v in POOLING_NAMES.items())})")
    return name


def pool_rows(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """One embedding from a text's hidden states (n, n_embd)."""
    if pooling == "mean":
        return hidden.mean(axis=0, dtype=np.float64).astype(np.float32)
    return hidden[0] if pooling == "cls" else hidden[-1]


class Embedder:
    """The sessions and pooling choice behind one Model's embed()."""

    def __init__(self, model):
        self.model = model
        self.lock = threading.Lock()
        self.sessions = []               # Sessions of the model, each of n_ctx >= the longest text seen
        self.warned = False

    def pooling(self, override: Optional[str]) -> str:
        if override is not None:
            if override not in POOLINGS:
                raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {override!r}")
            return override
        declared = declared_pooling(self.model.metadata, self.model.architecture)
        if declared == "rank":
            raise ValueError(f"{self.model.path}: pooling_type 'rank' (a reranker) gives scores, not embeddings; "
                             f"pass pooling='mean', 'cls' or 'last' to embed anyway")
        if declared in (None, "none"):
            if not self.warned:
                self.warned = True
                warnings.warn(f"{self.model.architecture}.pooling_type is "
                              f"{'not set' if declared is None else 'none'} in this GGUF; "
                              f"embeddings are mean-pooled", UserWarning, stacklevel=4)
            return "mean"
        return declared

    def _sessions_for(self, count: int, n_ctx: int) -> list:
        if self.sessions and self.sessions[0].n_ctx < n_ctx:
            for s in self.sessions:
                s.close()
            self.sessions = []
        cap = max(MIN_SESSION_CTX, 1 << (n_ctx - 1).bit_length(), self.sessions[0].n_ctx if self.sessions else 0)
        cap = min(cap, self.model.n_ctx)
        while len(self.sessions) < count:
            self.sessions.append(self.model.session(cap))
        return self.sessions[:count]

    def embed(self, texts: Union[str, Sequence[str]], *, pooling: Optional[str], normalize: bool) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"embed: text {i} must be str, got {type(t).__name__}")
        how = self.pooling(pooling)
        m = self.model
        out = np.zeros((len(texts), m._engine.n_embd), dtype=np.float32)
        ids = [m.tokenize(t, add_special=True) for t in texts]
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"embed: text {i} has no tokens (empty, and the model adds no BOS)")
            if len(row) > m.n_ctx:
                raise ValueError(f"embed: text {i} has {len(row)} tokens, more than the context ({m.n_ctx})")
        with self.lock:
            for group in self._groups(ids):
                sessions = self._sessions_for(len(group), max(len(ids[i]) for i in group))
                for s in sessions:
                    s._engine.truncate(0)
                    del s._cached_ids[:]
                hidden = eval_batch([(s, ids[i]) for s, i in zip(sessions, group)], hidden=True)
                for i, h in zip(group, hidden):
                    out[i] = pool_rows(h, how)
        if normalize:
            norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
            out = (out / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def _groups(self, ids: List[List[int]]):
        """Runs of at most GROUP_TEXTS texts whose tokens fit about one pass of n_batch rows."""
        budget = max(self.model._engine.n_batch, 1)
        group, rows = [], 0
        for i, row in enumerate(ids):
            if group and (len(group) == GROUP_TEXTS or rows + len(row) > budget):
                yield group
                group, rows = [], 0
            group.append(i)
            rows += len(row)
        if group:
            yield group

    def close(self) -> None:
        with self.lock:
            for s in self.sessions:
                s.close()
            self.sessions = []

"""Memory estimates before loading (weights by tensor type, KV cache per layer).

weights = sum of the tensors' bytes, grouped by type (params x bits / 8);
KV cache = per layer, cells x kv_heads x (key_length + value_length) x bytes per element,
where sliding-window layers keep only their window.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

# bytes per cached element for each KV cache type
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}

# Which layers use the sliding window, per architecture (as llama.cpp decides): layer i is a
# sliding-window layer unless (i + 1) % pattern == 0. Architectures with a window but no
# pattern here apply it to every layer (Mistral style).
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}


def _per_layer(value, n_layers: int, what: str) -> List[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n_layers:
            raise ValueError(f"{what} has {len(value)} entries for {n_layers} layers")
        return [int(v) for v in value]
    return [int(value)] * n_layers


@dataclass
class Hparams:
    """The attention geometry the KV estimate needs, read from ``<arch>.*`` keys."""
    arch: str
    n_layers: int
    n_ctx_train: int
    n_embd: int
    n_head: List[int]
    n_head_kv: List[int]
    key_length: int
    value_length: int
    sliding_window: Optional[int] = None
    swa_layers: List[bool] = field(default_factory=list)

    @classmethod
    def from_metadata(cls, meta: Mapping) -> "Hparams":
        arch = meta.get("general.architecture")
        if not isinstance(arch, str):
            raise ValueError("metadata has no general.architecture")

        def get(key, default=None):
            v = meta.get(f"{arch}.{key}", default)
            if v is None:
                raise ValueError(f"metadata key {arch}.{key} is missing")
            return v

        n_layers = int(get("block_count"))
        n_embd = int(get("embedding_length"))
        n_head = _per_layer(get("attention.head_count"), n_layers, f"{arch}.attention.head_count")
        n_head_kv = _per_layer(get("attention.head_count_kv", n_head), n_layers,
                               f"{arch}.attention.head_count_kv")
        if any(h <= 0 for h in n_head):
            raise ValueError(f"{arch}.attention.head_count must be positive, got {n_head[:4]}")
        head_dim = n_embd // max(n_head)
        window = meta.get(f"{arch}.attention.sliding_window")
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern", SWA_PATTERN.get(arch))
        if window:
            if isinstance(pattern, (list, tuple)):
                swa = [bool(x) for x in pattern][:n_layers]
            elif pattern:
                swa = [(i + 1) % int(pattern) != 0 for i in range(n_layers)]
            else:
                swa = [True] * n_layers
        else:
            swa = [False] * n_layers
        return cls(arch=arch, n_layers=n_layers, n_ctx_train=int(get("context_length", 0) or 0),
                   n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                   key_length=int(get("attention.key_length", head_dim)),
                   value_length=int(get("attention.value_length", head_dim)),
                   sliding_window=int(window) if window else None, swa_layers=swa)


def kv_cache_bytes(hp: Hparams, n_ctx: int, kv_type: str = "f16") -> int:
    if kv_type not in KV_TYPE_BYTES:
        raise ValueError(f"unknown kv_type {kv_type!r}; choose one of {', '.join(KV_TYPE_BYTES)}")
    if n_ctx <= 0:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    per_elem = KV_TYPE_BYTES[kv_type]
    total = 0.0
    for i in range(hp.n_layers):
        cells = min(n_ctx, hp.sliding_window) if hp.swa_layers[i] and hp.sliding_window else n_ctx
        total += cells * hp.n_head_kv[i] * (hp.key_length + hp.value_length) * per_elem
    return int(total)


def weights_by_type(tensors: Sequence) -> Dict[str, Dict[str, int]]:
    """{type: {"tensors", "params", "bytes"}} from tensor records (``type``, ``n_elements``, ``nbytes``)."""
    out: Dict[str, Dict[str, int]] = {}
    for t in tensors:
        row = out.setdefault(t.type, {"tensors": 0, "params": 0, "bytes": 0})
        row["tensors"] += 1
        row["params"] += int(t.n_elements)
        row["bytes"] += int(t.nbytes)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))


def estimate(meta: Mapping, tensors: Sequence, n_ctx: Optional[int] = None,
             kv_type: str = "f16") -> dict:
    """Weights + KV cache estimate for ``n_ctx`` (default: the model's training context)."""
    hp = Hparams.from_metadata(meta)
    n_ctx = int(n_ctx or hp.n_ctx_train or 2048)
    weights = sum(int(t.nbytes) for t in tensors)
    kv = kv_cache_bytes(hp, n_ctx, kv_type)
    return {"n_ctx": n_ctx, "kv_type": kv_type, "weights_bytes": weights,
            "kv_cache_bytes": kv, "total_bytes": weights + kv,
            "swa_layers": sum(hp.swa_layers), "sliding_window": hp.sliding_window}

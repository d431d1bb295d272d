"""Memory estimates before loading (weights by tensor type, KV cache per layer), and what a decode
step reads.

weights = sum of the tensors' bytes, grouped by type (params x bits / 8);
KV cache = what the engine will allocate, by the core's own rule (``lowbit._core.kv_cache_bytes``,
the function KVCache and the Engine's memory check use): per layer, cells x kv_heads x
(key_length + value_length) x bytes per element, where sliding-window layers keep a ring of
min(n_ctx, window + n_batch) cells.

Decode reads (``decode_reads``): every weight once per token, except the stacked expert tensors
(``*_exps.*``) of a mixture-of-experts model, of which only n_expert_used of n_expert experts are
read, and token_embd, of which one row is read unless it is also the output head. Active
parameters count the experts the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

KV_TYPES = ("f16", "q8_0")
DEFAULT_N_BATCH = 512

@dataclass
class Hparams:
    """What the estimates need from the C++ core's validated model config
    (``lowbit._core.model_config``, kept whole in ``config`` for the core's KV-size rule), so
    counts and sizes are checked against the tensors before anything here sizes a list by them."""
    arch: str
    n_ctx_train: int
    sliding_window: Optional[int] = None
    swa_layers: List[bool] = field(default_factory=list)
    config: Dict = field(default_factory=dict, repr=False)   # the core's model_config() dict

    @classmethod
    def from_config(cls, config: Mapping) -> "Hparams":
        """From the dict ``lowbit._core.model_config(path)`` returns."""
        window = int(config["sliding_window"])
        return cls(arch=config["arch"], n_ctx_train=int(config["n_ctx_train"]), sliding_window=window or None,
                   swa_layers=[bool(b) for b in config["layer_is_swa"]] if window else [],
                   config=dict(config))

    @classmethod
    def from_metadata(cls, meta: Mapping) -> "Hparams":
        """From the metadata of a GGUFFile (``GGUFFile.metadata``, which knows its file);
        ModelError naming the key when the hyper-parameters are wrong or do not fit the tensors."""
        config = getattr(meta, "model_config", None)
        if config is None:
            raise TypeError("Hparams.from_metadata needs GGUFFile.metadata (it validates through the "
                            "file); use Hparams.from_config(lowbit._core.model_config(path))")
        return cls.from_config(config())


def decode_reads(config: Mapping, tensors: Sequence) -> Dict[str, float]:
    """Parameters and bytes by what one decode step touches (module docstring); ``config`` is the
    core's model_config() dict, ``tensors`` records with ``name``, ``n_elements``, ``nbytes``."""
    n_expert, n_used = int(config.get("n_expert", 0)), int(config.get("n_expert_used", 0))
    share = n_used / n_expert if n_expert else 1.0
    tied = not any(t.name == "output.weight" for t in tensors)
    n_vocab = max(int(config.get("n_vocab", 1)), 1)
    params = expert_params = 0
    total_bytes = read_bytes = 0.0
    for t in tensors:
        params += int(t.n_elements)
        total_bytes += int(t.nbytes)
        if "_exps." in t.name:
            expert_params += int(t.n_elements)
            read_bytes += int(t.nbytes) * share
        elif t.name == "token_embd.weight" and not tied:
            read_bytes += int(t.nbytes) / n_vocab
        else:
            read_bytes += int(t.nbytes)
    return {"n_params": params, "expert_params": expert_params,
            "active_params": int(round(params - expert_params * (1.0 - share))),
            "n_expert": n_expert, "n_expert_used": n_used,
            "decode_bytes_per_token": int(round(read_bytes)),
            "decode_read_fraction": read_bytes / total_bytes if total_bytes else 0.0}


def kv_cache_bytes(hp: Hparams, n_ctx: int, kv_type: str = "f16", n_batch: int = DEFAULT_N_BATCH) -> int:
    """Bytes of the KV cache an engine with ``n_ctx`` and ``n_batch`` allocates (to the byte)."""
    from lowbit import _core
    if kv_type not in KV_TYPES:
        raise ValueError(f"unknown kv_type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
    if n_ctx <= 0:
        raise ValueError(f"n_ctx must be positive, got {n_ctx}")
    return int(_core.kv_cache_bytes(hp.config, int(n_ctx), int(n_batch), kv_type))


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
             kv_type: str = "f16", n_batch: int = DEFAULT_N_BATCH) -> dict:
    """Weights + KV cache estimate for ``n_ctx`` (default: the model's training context)."""
    hp = Hparams.from_metadata(meta)
    n_ctx = int(n_ctx or hp.n_ctx_train or 2048)
    weights = sum(int(t.nbytes) for t in tensors)
    kv = kv_cache_bytes(hp, n_ctx, kv_type, n_batch)
    return {**decode_reads(hp.config, tensors), "n_ctx": n_ctx, "kv_type": kv_type, "weights_bytes": weights,
            "kv_cache_bytes": kv, "total_bytes": weights + kv,
            "swa_layers": sum(hp.swa_layers), "sliding_window": hp.sliding_window, "n_batch": n_batch,
            # cells of each sliding-window layer: the window plus one batch, as a ring (the engine's rule)
            "swa_cells": min(n_ctx, (hp.sliding_window or 0) + n_batch) if hp.sliding_window else None}

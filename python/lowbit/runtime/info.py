"""What a GGUF model is, from its metadata and tensor list: the data behind ``lowbit info``."""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from lowbit.runtime.memory import estimate, weights_by_type
from lowbit.runtime.progress import human_bytes

TOKENIZER_KINDS = {
    "gpt2": "BPE (byte-level)", "llama": "SPM (sentencepiece)", "bert": "WPM (wordpiece)",
    "t5": "UGM (unigram)", "rwkv": "RWKV", "no_vocab": "none",
}

# hyper-parameters shown by `info`, as (label, key under "<arch>.")
HPARAM_KEYS = [
    ("context_length", "context_length"), ("embedding_length", "embedding_length"),
    ("block_count", "block_count"), ("feed_forward_length", "feed_forward_length"),
    ("head_count", "attention.head_count"), ("head_count_kv", "attention.head_count_kv"),
    ("key_length", "attention.key_length"), ("value_length", "attention.value_length"),
    ("rope_dimension_count", "rope.dimension_count"), ("rope_freq_base", "rope.freq_base"),
    ("rope_scaling_type", "rope.scaling.type"), ("rope_scaling_factor", "rope.scaling.factor"),
    ("rms_epsilon", "attention.layer_norm_rms_epsilon"), ("sliding_window", "attention.sliding_window"),
    ("vocab_size", "vocab_size"), ("expert_count", "expert_count"),
]


def _length(value) -> Optional[int]:
    return len(value) if isinstance(value, (list, tuple, np.ndarray)) else None


def _shown(value):
    """A metadata value as info shows it: long arrays summarised, not copied into the output."""
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 8:
        return f"[{len(value)} values]"
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return repr(value)      # JSON has no NaN/inf
    return value


def describe(meta: Mapping, tensors: Sequence, *, file_size: int, path: str = "",
             version: Optional[int] = None, n_ctx: Optional[int] = None, kv_type: str = "f16") -> dict:
    """A JSON-ready description: architecture, hyper-parameters, tokenizer, tensor types,
    parameter count, bits per weight, file size and a memory estimate."""
    arch = meta.get("general.architecture", "")
    hparams = {label: _shown(meta[f"{arch}.{key}"]) for label, key in HPARAM_KEYS if f"{arch}.{key}" in meta}
    tokens = meta.get("tokenizer.ggml.tokens")
    tok_model = meta.get("tokenizer.ggml.model")
    tokenizer = {
        "model": tok_model,
        "kind": TOKENIZER_KINDS.get(tok_model, tok_model),
        "pre": meta.get("tokenizer.ggml.pre"),
        "vocab_size": len(tokens) if isinstance(tokens, list) else None,
        "merges": _length(meta.get("tokenizer.ggml.merges")),
        "bos_token_id": _shown(meta.get("tokenizer.ggml.bos_token_id")),
        "eos_token_id": _shown(meta.get("tokenizer.ggml.eos_token_id")),
        "add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
        "chat_template": "tokenizer.chat_template" in meta,
    }
    by_type = weights_by_type(tensors)
    n_params = sum(r["params"] for r in by_type.values())
    n_bytes = sum(r["bytes"] for r in by_type.values())
    for row in by_type.values():
        row["bits_per_weight"] = round(8 * row["bytes"] / row["params"], 4) if row["params"] else 0.0
    out = {
        "path": path, "file_size": file_size, "gguf_version": version,
        "name": meta.get("general.name"), "architecture": arch,
        "file_type": meta.get("general.file_type"),
        "hparams": hparams, "tokenizer": tokenizer,
        "n_tensors": len(tensors), "n_params": n_params, "tensor_bytes": n_bytes,
        "bits_per_weight": round(8 * n_bytes / n_params, 4) if n_params else 0.0,
        "tensor_types": by_type,
    }
    try:
        out["memory"] = estimate(meta, tensors, n_ctx=n_ctx, kv_type=kv_type)
    except ValueError as e:
        out["memory"] = {"error": str(e)}
    return out


def describe_file(path: os.PathLike, *, n_ctx: Optional[int] = None, kv_type: str = "f16") -> dict:
    from lowbit.runtime.gguf_file import GGUFFile
    with GGUFFile(path) as g:
        return describe(g.metadata, g.tensors, file_size=g.file_size, path=str(path),
                        version=g.version, n_ctx=n_ctx, kv_type=kv_type)


def _count(n: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return str(int(n))


def format_info(d: dict, name: str = "") -> str:
    """The human-readable table printed by ``lowbit info``."""
    lines = []
    title = f"{name}  ({d['path']})" if name and name != d["path"] else d["path"]
    lines.append(title)
    rows = [
        ("name", d.get("name") or "-"),
        ("architecture", d["architecture"] or "-"),
        ("file", f"{human_bytes(d['file_size'])}, GGUF v{d['gguf_version']}, {d['n_tensors']} tensors"),
        ("parameters", f"{_count(d['n_params'])} ({d['bits_per_weight']:.2f} bits per weight)"),
    ]
    rows += [(k.replace("_", " "), v) for k, v in d["hparams"].items()]
    t = d["tokenizer"]
    tok = f"{t['kind'] or '-'}"
    if t["pre"]:
        tok += f", pre-tokenizer {t['pre']}"
    if t["vocab_size"] is not None:
        tok += f", {t['vocab_size']} tokens"
    tok += f", bos {t['bos_token_id']}, eos {t['eos_token_id']}"
    tok += ", chat template" if t["chat_template"] else ", no chat template"
    rows.append(("tokenizer", tok))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append("  | type | tensors | parameters | size | bits/weight |")
    lines.append("  |------|--------:|-----------:|-----:|------------:|")
    for typ, r in d["tensor_types"].items():
        lines.append(f"  | {typ} | {r['tensors']} | {_count(r['params'])} | {human_bytes(r['bytes'])} "
                     f"| {r['bits_per_weight']:.2f} |")
    m = d["memory"]
    lines.append("")
    if "error" in m:
        lines.append(f"  memory estimate unavailable: {m['error']}")
    else:
        swa = (f", {m['swa_layers']} sliding-window layers keep a ring of {m['swa_cells']} cells: "
               f"window {m['sliding_window']} + batch {m['n_batch']}" if m["swa_layers"] else "")
        lines.append(f"  memory estimate at n_ctx={m['n_ctx']} (KV cache {m['kv_type']}{swa}):")
        lines.append(f"    weights   {human_bytes(m['weights_bytes'])}")
        lines.append(f"    KV cache  {human_bytes(m['kv_cache_bytes'])}")
        lines.append(f"    total     {human_bytes(m['total_bytes'])}")
        if m["n_expert"]:
            lines.append(f"  experts: {m['n_expert_used']} of {m['n_expert']} per token; parameters "
                         f"{_count(m['n_params'])} total, {_count(m['active_params'])} active")
        lines.append(f"  a decode step reads {human_bytes(m['decode_bytes_per_token'])} of weights "
                     f"({100 * m['decode_read_fraction']:.1f}% of the tensors)")
    return "\n".join(lines)

"""The Python front-end of the vocabulary: a GGUF metadata dict's tokenizer fields, their types
checked with errors naming the key. llama.cpp's vocabulary rules (attributes, special ids and
their text-based detection, add-BOS/EOS defaults, the end-of-generation set) are applied by the
C++ core (csrc/tokenizer/vocab.h), which also reads a GGUF file directly."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from lowbit.errors import ModelError

# Attribute bits (llama.h LLAMA_TOKEN_ATTR_*); a token may carry several.
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1, 2, 4, 8
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 16, 32, 128, 256

SUPPORTED_MODELS = ("llama", "gpt2")

# Special-id keys as llama.cpp reads them (the C++ core applies them in this order).
_ID_KEYS = ["bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "unknown_token_id",
            "seperator_token_id", "padding_token_id", "mask_token_id", "fim_pre_token_id",
            "fim_suf_token_id", "fim_mid_token_id", "fim_pad_token_id", "fim_rep_token_id",
            "fim_sep_token_id", "prefix_token_id", "suffix_token_id", "middle_token_id"]


def _get(meta: dict, key: str, default=None):
    return meta.get("tokenizer.ggml." + key, default)


def _text(value) -> str:
    """A metadata string, whether the reader hands back str or UTF-8 bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


_ITEM_KINDS = {"strings": "SU", "numbers": "iuf", "integers": "iu"}   # numpy dtype kinds
_ITEM_TYPES = {"strings": (str, bytes), "numbers": (int, float), "integers": (int,)}


def _as_list(meta: dict, key: str, n: Optional[int], kind: str) -> Optional[list]:
    """An array value (list, tuple or 1-D numpy array) whose items are all of ``kind``;
    ModelError naming the key otherwise."""
    value = _get(meta, key)
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        if value.size and value.dtype.kind not in _ITEM_KINDS[kind]:
            raise ModelError(f"tokenizer.ggml.{key} must be an array of {kind}, got dtype {value.dtype}")
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise ModelError(f"tokenizer.ggml.{key} must be an array of {kind}, got {type(value).__name__}")
    ok = _ITEM_TYPES[kind]
    bad_types = {t for t in set(map(type, value)) if not issubclass(t, ok) or t is bool}
    if bad_types:
        bad = next(i for i, v in enumerate(value) if type(v) in bad_types)
        raise ModelError(f"tokenizer.ggml.{key} must be an array of {kind}, but item {bad} is "
                         f"{type(value[bad]).__name__}")
    value = list(value)
    if n is not None and len(value) < n:
        raise ModelError(f"tokenizer.ggml.{key} has {len(value)} entries, fewer than the {n} tokens")
    return value


def _read_tokens(meta: dict) -> List[str]:
    tokens = _as_list(meta, "tokens", None, "strings")
    if tokens is None:
        raise ModelError("GGUF metadata has no tokenizer.ggml.tokens (the vocabulary)")
    out = []
    for i, t in enumerate(tokens):
        if isinstance(t, (bytes, bytearray)):
            t = bytes(t).decode("utf-8", "surrogateescape")
        if not isinstance(t, str):
            raise ModelError(f"tokenizer.ggml.tokens[{i}] is {type(t).__name__}, not a string")
        out.append(t if t else f"[EMPTY_{i}]")  # llama.cpp renames empty pieces the same way
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _raw(value) -> bytes:
    """A metadata string as the bytes the core reads (lone surrogates back to their bytes)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


def _read_id_keys(meta: dict) -> List[Tuple[str, int]]:
    out = []
    for key in _ID_KEYS:
        value = _get(meta, key)
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ModelError(f"tokenizer.ggml.{key} must be an integer token id, got {type(value).__name__} "
                             f"{_short(value)}")
        out.append((key, max(min(int(value), 2**63 - 1), -2**63)))
    return out


def vocab_fields(meta: dict) -> dict:
    """The fields of a GGUF metadata dict (as ``_core.Tokenizer.from_fields`` takes them), their
    Python types checked here; what they mean is the core's business (csrc/tokenizer/vocab.h)."""
    def flag(key):
        value = _get(meta, key)
        return None if value is None else bool(value)

    def text(value):
        return None if value is None else _raw(value)
    tokens = _read_tokens(meta) if _get(meta, "tokens") is not None else None
    merges = _as_list(meta, "merges", None, "strings")
    scores = _as_list(meta, "scores", None, "numbers")
    types = _as_list(meta, "token_type", None, "integers")
    return {
        "model": text(_get(meta, "model")), "pre": text(_get(meta, "pre") or None),
        "tokens": None if tokens is None else [_raw(t) for t in tokens],
        "merges": None if merges is None else [_raw(m) for m in merges],
        "scores": None if scores is None else [float(v) for v in scores],
        "token_types": None if types is None else [int(v) for v in types],
        "id_keys": _read_id_keys(meta),
        "add_space_prefix": flag("add_space_prefix"), "add_bos": flag("add_bos_token"),
        "add_eos": flag("add_eos_token"),
        "chat_template": text(meta.get("tokenizer.chat_template")),
        "general_name": text(meta.get("general.name")), "architecture": text(meta.get("general.architecture")),
    }

"""The vocabulary as llama.cpp loads it from GGUF metadata (llama-vocab.cpp, `load`).

Token attributes, the special ids (explicit keys first, then llama.cpp's text-based
detection), add-BOS/EOS defaults per tokenizer model, and the end-of-generation set.
Knows no algorithm: the C++ core (csrc/tokenizer) tokenizes, core.py hands it this vocabulary."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from lowbit.errors import ModelError

# GGUF `tokenizer.ggml.token_type` values (llama.h LLAMA_TOKEN_TYPE_*).
TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 1, 2, 3, 4, 5, 6

# Attribute bits (llama.h LLAMA_TOKEN_ATTR_*); a token may carry several.
ATTR_UNKNOWN, ATTR_UNUSED, ATTR_NORMAL, ATTR_CONTROL = 1, 2, 4, 8
ATTR_USER_DEFINED, ATTR_BYTE, ATTR_LSTRIP, ATTR_RSTRIP = 16, 32, 128, 256

_ATTR_OF_TYPE = {
    TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN, TYPE_CONTROL: ATTR_CONTROL,
    TYPE_USER_DEFINED: ATTR_USER_DEFINED, TYPE_UNUSED: ATTR_UNUSED, TYPE_BYTE: ATTR_BYTE,
}

SUPPORTED_MODELS = ("llama", "gpt2")

# Special-id keys in the order llama.cpp reads them (later keys may overwrite earlier slots).
_ID_KEYS = [
    ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"),
    ("eom", "eom_token_id"), ("unk", "unknown_token_id"), ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"), ("mask", "mask_token_id"),
    ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"),
    ("fim_mid", "fim_mid_token_id"), ("fim_pad", "fim_pad_token_id"),
    ("fim_rep", "fim_rep_token_id"), ("fim_sep", "fim_sep_token_id"),
    ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"), ("fim_mid", "middle_token_id"),
]

# Slots llama.cpp fills by token text when the metadata leaves them unset; a match
# also gains the CONTROL attribute.
_DETECT_BY_TEXT = [
    ("eot", ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
             "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
             "<end_of_utterance>")),
    ("eom", ("<|eom_id|>",)),
    ("fim_pre", ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                 "▁<PRE>", "<|code_prefix|>", "<|prefix|>")),
    ("fim_suf", ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                 "▁<SUF>", "<|code_suffix|>", "<|suffix|>")),
    ("fim_mid", ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                 "▁<MID>", "<|code_middle|>", "<|middle|>")),
    ("fim_pad", ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")),
    ("fim_rep", ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")),
    ("fim_sep", ("<|file_sep|>",)),
]

# Token texts that end generation (llama.cpp's special_eog_ids text list).
EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))


@dataclass
class Vocab:
    """Pieces, scores and attributes of every token, plus the special ids and flags."""
    model: str                      # "llama" (SPM) or "gpt2" (byte-level BPE)
    pre: str                        # pre-tokenizer label (BPE only)
    tokens: List[str]               # [n_vocab] piece text as stored in GGUF
    scores: List[float]             # [n_vocab]
    attrs: List[int]                # [n_vocab] ATTR_* bits
    token_to_id: Dict[str, int]
    merges: List[str]
    ids: Dict[str, int]             # slot name -> id, -1 when absent
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    eog_ids: frozenset
    chat_template: Optional[str]
    general_name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


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


def _initial_ids(model: str) -> Dict[str, int]:
    ids = {slot: -1 for slot, _ in _ID_KEYS}
    if model == "llama":
        ids.update(bos=1, eos=2, unk=0)
    else:  # gpt2
        ids.update(bos=11, eos=11)
    return ids


def _read_ids(meta: dict, model: str, n: int) -> Dict[str, int]:
    ids = _initial_ids(model)
    for slot in ids:
        if ids[slot] >= n:
            ids[slot] = -1  # a default outside the vocabulary is disabled
    for slot, key in _ID_KEYS:
        value = _get(meta, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(f"tokenizer.ggml.{key} must be an integer token id, got {type(value).__name__} "
                             f"{_short(value)}")
        if 0 <= value < n:
            ids[slot] = value
        else:
            warnings.warn(f"tokenizer.ggml.{key} = {value} is outside the vocabulary of {n}; "
                          f"keeping {ids[slot]}")
    return ids


def _detect_specials(tokens: List[str], token_to_id: Dict[str, int], attrs: List[int],
                     ids: Dict[str, int]) -> None:
    """llama.cpp's text-based detection of eot/eom/fim ids (only for unset slots)."""
    for slot, names in _DETECT_BY_TEXT:
        if ids[slot] != -1:
            continue
        found = [token_to_id[name] for name in names if name in token_to_id]
        # llama.cpp walks a hash map, so which of several matches wins is unspecified;
        # every match gains CONTROL, and the lowest id takes the slot here.
        for tid in found:
            attrs[tid] |= ATTR_CONTROL
        if found:
            ids[slot] = min(found)


def _eog_ids(tokens: List[str], token_to_id: Dict[str, int], attrs: List[int],
             ids: Dict[str, int]) -> frozenset:
    eog = {ids[s] for s in ("fim_pad", "fim_rep", "fim_sep") if ids[s] != -1}
    for text in EOG_TEXTS:
        tid = token_to_id.get(text)
        if tid is not None:
            eog.add(tid)
            attrs[tid] |= ATTR_CONTROL
    for name in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
        if name in token_to_id:  # gpt-oss: always rendered
            attrs[token_to_id[name]] = ATTR_USER_DEFINED
    eog.update(ids[s] for s in ("eos", "eot", "eom") if ids[s] != -1)
    texts = {tokens[t]: t for t in eog}
    if "<|end|>" in texts and (("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
                               or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)):
        eog.discard(texts["<|end|>"])  # gpt-oss / solar-open: <|end|> is not the end
        attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
    if "<|tool_response>" in texts and "</s>" in texts:
        eog.discard(texts["</s>"])     # gemma4 / paddleocr: </s> is ordinary text
        attrs[texts["</s>"]] = ATTR_NORMAL
    return frozenset(eog)


def _strip_attrs(meta: dict, tokens: List[str], token_to_id: Dict[str, int], attrs: List[int]) -> None:
    """Per-model lstrip/rstrip attributes llama.cpp sets by name (phi-3, jina, modern-bert)."""
    name = _text(meta.get("general.name", "")).lower()
    pre = _text(_get(meta, "pre", "") or "")
    arch = _text(meta.get("general.architecture", ""))
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        if "<mask>" in token_to_id:
            attrs[token_to_id["<mask>"]] |= ATTR_LSTRIP
    elif "phi-3" in name or "phi3" in name:
        for tid, a in enumerate(attrs):
            if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                attrs[tid] |= ATTR_RSTRIP
        for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if text in token_to_id:
                tid = token_to_id[text]
                attrs[tid] = (attrs[tid] | ATTR_RSTRIP) if on else (attrs[tid] & ~ATTR_RSTRIP)
    elif "modern-bert" in name and "[MASK]" in token_to_id:
        attrs[token_to_id["[MASK]"]] |= ATTR_LSTRIP


def load_vocab(meta: dict, pre_table: dict) -> Vocab:
    """Build the Vocab from a GGUF metadata dict; ``pre_table`` maps BPE pre labels to settings."""
    model = _get(meta, "model")
    if model is None:
        raise ModelError("GGUF metadata has no tokenizer.ggml.model; supported tokenizer models: "
                         + ", ".join(SUPPORTED_MODELS))
    model = _text(model)
    if model not in SUPPORTED_MODELS:
        raise ModelError(f"unsupported tokenizer model {model!r}; supported: " + ", ".join(SUPPORTED_MODELS))
    tokens = _read_tokens(meta)
    n = len(tokens)
    if n == 0:
        raise ModelError("tokenizer.ggml.tokens is empty")
    token_to_id: Dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in token_to_id:
            raise ModelError(f"duplicate token in vocabulary: {t!r} has ids {token_to_id[t]} and {i}")
        token_to_id[t] = i
    scores = [float(s) for s in (_as_list(meta, "scores", n, "numbers") or [0.0] * n)[:n]]
    types = _as_list(meta, "token_type", n, "integers")
    attrs = [ATTR_NORMAL] * n if types is None else [_ATTR_OF_TYPE.get(int(t), 0) for t in types[:n]]

    pre = _text(_get(meta, "pre", "") or "")
    add_space_prefix, add_bos, add_eos = False, False, False
    merges: List[str] = []
    if model == "llama":
        add_space_prefix, add_bos = True, True
    else:
        merges = [_text(m) for m in (_as_list(meta, "merges", None, "strings") or [])]
        if _get(meta, "merges") is None:
            raise ModelError("BPE tokenizer (tokenizer.ggml.model = 'gpt2') has no tokenizer.ggml.merges")
        if not pre:
            warnings.warn("GGUF has no tokenizer.ggml.pre; using the 'default' pre-tokenizer as llama.cpp does")
            pre = "default"
        if pre not in pre_table:
            raise ModelError(f"unsupported BPE pre-tokenizer {pre!r}; supported: " + ", ".join(sorted(pre_table)))
        add_bos = pre_table[pre].add_bos
    add_space_prefix = bool(_get(meta, "add_space_prefix", add_space_prefix))

    ids = _read_ids(meta, model, n)
    add_bos = bool(_get(meta, "add_bos_token", add_bos))
    add_eos = bool(_get(meta, "add_eos_token", add_eos))
    for flag, slot in ((add_bos, "bos"), (add_eos, "eos")):
        if flag and ids[slot] == -1:
            raise ModelError(f"tokenizer.ggml.add_{slot}_token is true but there is no {slot} token id")
    _detect_specials(tokens, token_to_id, attrs, ids)
    for tid, text in enumerate(tokens):
        if attrs[tid] & ATTR_CONTROL and "unused" in text:
            attrs[tid] |= ATTR_UNUSED
    eog = _eog_ids(tokens, token_to_id, attrs, ids)
    _strip_attrs(meta, tokens, token_to_id, attrs)
    template = meta.get("tokenizer.chat_template")
    return Vocab(model=model, pre=pre if model == "gpt2" else "", tokens=tokens, scores=scores,
                 attrs=attrs, token_to_id=token_to_id, merges=merges, ids=ids, add_bos=add_bos,
                 add_eos=add_eos, add_space_prefix=add_space_prefix, eog_ids=eog,
                 chat_template=_text(template) if template is not None else None,
                 general_name=_text(meta.get("general.name", "")))

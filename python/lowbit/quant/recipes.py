"""Which type each tensor gets: llama.cpp's quantization recipes (``llama_tensor_get_type``).

A *recipe* is a llama.cpp file type (``Q4_K_M``, ``Q3_K_S``, ``Q8_0``, ``F16`` ...): a default
block type plus per-tensor rules that keep the sensitive tensors at higher precision:
  - the output matrix (and the token embedding when it is tied to the output) -> Q6_K, or Q8_0
    when its rows do not fit 256-weight blocks;
  - attn_v / ffn_down get more bits in the layers ``use_more_bits`` picks (first and last
    eighth, every third layer between) for Q4_K_M / Q5_K_M, more for Q2_K / Q3_K_*;
  - attn_output gets Q3_K / Q4_K / Q5_K for Q2_K / Q3_K_M / Q3_K_L;
  - the n_gqa >= 4, n_expert and 70B rules of llama.cpp.
  - TQ1_0 / TQ2_0: an untied token embedding -> Q4_K;
  - IQ3_XS / IQ3_S / IQ3_M (default IQ3_S): attn_v -> Q4_K (IQ3_M always, the others at n_gqa >= 4);
    IQ3_XS: attn_q, attn_k and the middle three quarters of ffn_gate / ffn_up -> IQ3_XXS; IQ3_M:
    attn_output and the first eighth of ffn_down -> Q4_K;
  - MXFP4_MOE: expert tensors (3-D, more than one expert) -> MXFP4, every other matrix (output and
    embedding included) -> Q8_0.
  - the low-bit i-quant files IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S (default IQ2_XS), IQ2_M
    (default IQ2_S): output -> Q5_K; untied embedding -> Q2_K (IQ2_S / IQ2_M: IQ3_S); attn_v ->
    Q4_K at n_gqa >= 4 or >= 4 experts, else Q2_K (IQ2_S / IQ2_M: IQ3_S); the first eighth of
    ffn_down (by counter) likewise; attn_output -> IQ2_XXS for IQ1_*, IQ3_S for IQ2_S / IQ2_M.
  - IQ3_XXS: output -> Q5_K, untied embedding and attn_output -> IQ3_S, attn_q / attn_k -> IQ2_S;
    attn_v -> Q4_K at n_gqa >= 4, else IQ3_XXS with an imatrix and IQ3_S without; without an
    imatrix ffn_down -> Q4_K in the first eighth of layers, Q3_K after.
Rows whose length is not a multiple of the chosen type's block size fall back (Q4_K -> Q5_0,
Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K / Q3_K / TQ1_0 / TQ2_0 -> Q4_0, IQ4_XS and the IQ1/IQ2/IQ3
types -> IQ4_NL, F16 when even 32 does not divide the row), each with a notice.

Counters (the i-th attn_v, the i-th ffn_down) run over the tensors in llama.cpp's order: by
layer number, then by name, as its loader's weight map iterates.

Single types that are not llama.cpp file types (``Q3_K``, ``Q4_K``, ``Q5_K``) and ``pure=True``
give every quantizable tensor the one type (fallbacks still apply).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# llama.cpp's llama_ftype ids (general.file_type) and each one's default tensor type.
FILE_TYPES: Dict[str, Tuple[int, str]] = {
    "F32": (0, "F32"), "F16": (1, "F16"), "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"),
    "Q8_0": (7, "Q8_0"), "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q2_K": (10, "Q2_K"),
    "Q3_K_S": (11, "Q3_K"), "Q3_K_M": (12, "Q3_K"), "Q3_K_L": (13, "Q3_K"),
    "Q4_K_S": (14, "Q4_K"), "Q4_K_M": (15, "Q4_K"), "Q5_K_S": (16, "Q5_K"), "Q5_K_M": (17, "Q5_K"),
    "Q6_K": (18, "Q6_K"), "IQ4_NL": (25, "IQ4_NL"), "IQ4_XS": (30, "IQ4_XS"), "BF16": (32, "BF16"),
    "TQ1_0": (36, "TQ1_0"), "TQ2_0": (37, "TQ2_0"), "MXFP4_MOE": (38, "MXFP4"),
    "IQ3_XS": (22, "IQ3_S"), "IQ3_S": (26, "IQ3_S"), "IQ3_M": (27, "IQ3_S"),
    "IQ2_XXS": (19, "IQ2_XXS"), "IQ2_XS": (20, "IQ2_XS"), "IQ3_XXS": (23, "IQ3_XXS"), "IQ1_S": (24, "IQ1_S"),
    "IQ2_S": (28, "IQ2_XS"), "IQ2_M": (29, "IQ2_S"), "IQ1_M": (31, "IQ1_M"),
}
# Single block types that are not file types of their own: every tensor gets the type
# (general.file_type records the _M recipe of that family, as llama-quantize --pure does).
PURE_ONLY: Dict[str, Tuple[int, str]] = {"Q3_K": (12, "Q3_K"), "Q4_K": (15, "Q4_K"), "Q5_K": (17, "Q5_K")}

FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_SIZES = {"F32": 1, "F16": 1, "BF16": 1, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
               "IQ4_NL": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256,
               "TQ1_0": 256, "TQ2_0": 256, "MXFP4": 32, "IQ3_XXS": 256, "IQ3_S": 256, "IQ2_XXS": 256,
               "IQ2_XS": 256, "IQ2_S": 256, "IQ1_S": 256, "IQ1_M": 256}
# llama.cpp's tensor_type_fallback: a type whose block does not divide the row -> this one (a
# 32-block type that does not fit goes to F16).
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL",
            "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ2_XXS": "IQ4_NL",
            "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL", "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL"}

# Substrings that keep a 2-D "*weight" tensor unquantized (llama.cpp's tensor_allows_quantization).
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")


def resolve_recipe(name: str) -> Tuple[str, int, str, bool]:
    """``name`` (case-insensitive) -> (canonical name, llama ftype id, default type, pure-only).
    ValueError lists the accepted names."""
    key = str(name).upper()
    if key in FILE_TYPES:
        return (key, *FILE_TYPES[key], False)
    if key in PURE_ONLY:
        return (key, *PURE_ONLY[key], True)
    raise ValueError(f"unknown quantization type {name!r}; choose one of {', '.join(known_types())}")


def known_types() -> List[str]:
    return list(FILE_TYPES) + list(PURE_ONLY)


def allows_quantization(name: str, n_dims: int) -> bool:
    """Whether llama.cpp would quantize this tensor at all: 2-D+ ``*weight`` tensors that are not
    norms, routers, position embeddings or the small special matrices of some architectures."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if name in _NEVER_QUANTIZED_EXACT:
        return False
    return not any(s in name for s in _NEVER_QUANTIZED)


# Tensor types llama.cpp's model quantizer refuses to write without an importance matrix
# (tensor_requires_imatrix; the token embedding and the output matrix are exempt).
IMATRIX_REQUIRED = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")


def requires_imatrix(name: str, dst_type: str) -> bool:
    return dst_type in IMATRIX_REQUIRED and category(name) not in ("token_embd", "output")


def category(name: str) -> str:
    """llama.cpp's broad tensor categories (tensor_get_category)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for cat, needle in (("attn_qkv", "attn_qkv.weight"), ("attn_kv_b", "attn_kv_b.weight"),
                        ("attn_v", "attn_v.weight"), ("attn_k", "attn_k.weight"), ("attn_q", "attn_q.weight"),
                        ("attn_output", "attn_output.weight"), ("ffn_up", "ffn_up"),
                        ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if needle in name:
            return cat
    return "other"


@dataclass(frozen=True)
class ModelFacts:
    """The hyper-parameters llama.cpp's rules look at."""
    arch: str
    n_layer: int
    n_gqa: int          # n_head / n_head_kv of layer 0 (integer division, 0 when unknown)
    n_expert: int
    is_70b: bool        # llama.cpp's LLM_TYPE_70B: llama with 80 layers and GQA

    @classmethod
    def from_metadata(cls, meta: Mapping) -> "ModelFacts":
        """From the core's validated config (``GGUFFile.metadata.model_config()``) for the
        architectures the engine runs; the keys themselves only for others (files lowbit can
        quantize for llama.cpp but not run), read defensively."""
        from lowbit.runtime import engine_architectures
        arch = str(meta.get("general.architecture", ""))
        config = getattr(meta, "model_config", None)
        if config is not None and arch in engine_architectures():
            c = config()
            n_head, n_head_kv = int(c["n_head"]), int(c["n_head_kv"])
            return cls(arch, int(c["n_layers"]), n_head // n_head_kv, 0,
                       arch == "llama" and int(c["n_layers"]) == 80 and n_head != n_head_kv)

        def first(v, default=0) -> int:
            if isinstance(v, (list, tuple, np.ndarray)):
                v = v[0] if len(v) else default
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                return default       # not a count: the rules fall back as for a missing key
            return int(v)

        n_layer = first(meta.get(f"{arch}.block_count"), 0)
        n_head = first(meta.get(f"{arch}.attention.head_count"), 0)
        n_head_kv = first(meta.get(f"{arch}.attention.head_count_kv"), n_head)
        n_gqa = n_head // n_head_kv if n_head_kv else 0
        n_expert = first(meta.get(f"{arch}.expert_count"), 0)
        return cls(arch, n_layer, n_gqa, n_expert, arch == "llama" and n_layer == 80 and n_head != n_head_kv)


@dataclass
class TensorPlan:
    name: str
    shape: Tuple[int, ...]      # GGUF order: shape[0] is the row length
    src_type: str
    dst_type: str
    notice: Optional[str] = None


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_order(names: Sequence[str]) -> List[int]:
    """Indices of ``names`` in the order llama.cpp's loader iterates weights: layer, then name."""
    return sorted(range(len(names)), key=lambda i: (_layer_of(names[i]), names[i]))


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


@dataclass
class _Counters:
    n_attn_v: int = 0
    n_ffn: int = 0
    i_attn_v: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    tied: bool = True


def _layer_info(i_counter: int, n_layer: int, name: str, facts: ModelFacts) -> Tuple[int, int]:
    if facts.n_expert > 1:       # experts are not consecutive: read the layer from the name
        layer = _layer_of(name)
        if not 0 <= layer < n_layer:
            raise ValueError(f"cannot determine the layer of tensor {name} (n_layer {n_layer})")
        return layer, n_layer
    return i_counter, n_layer


def _mixture_type(t: str, name: str, shape: Sequence[int], ftype: str, cat: str, facts: ModelFacts,
                  c: _Counters, has_imatrix: bool) -> str:
    """llama_tensor_get_type_impl for the file types lowbit writes; ``t`` is the default type."""
    if cat == "output" or (c.tied and cat == "token_embd"):
        if ftype == "MXFP4_MOE" or facts.arch == "falcon" or shape[0] % BLOCK_SIZES[t] != 0:
            return "Q8_0"
        if ftype in LOW_BIT_FILES or ftype == "IQ3_XXS":
            return "Q5_K"
        return t if t == "Q8_0" else "Q6_K"
    if ftype == "MXFP4_MOE":     # expert tensors (3-D, several experts) -> MXFP4, the rest Q8_0
        experts = len(shape) > 2 and shape[2] > 1
        if facts.arch == "bailingmoe3":
            experts = experts and cat in ("ffn_up", "ffn_gate", "ffn_down")
        return "MXFP4" if experts else "Q8_0"
    if cat == "token_embd":
        return _EMBEDDING_TYPE.get(ftype, t)
    if ftype in LOW_BIT_FILES:
        return _low_bit_type(t, name, ftype, cat, facts, c)
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        return _attn_v_type(t, ftype, facts, c, has_imatrix)
    if cat == "attn_k":
        return "Q8_0" if facts.n_expert == 8 else _ATTN_QK_TYPE.get(ftype, t)
    if cat == "attn_q":
        return _ATTN_QK_TYPE.get(ftype, t)
    if cat in ("ffn_gate", "ffn_up"):   # IQ3_XS: the middle layers get IQ3_XXS
        counter = "i_ffn_gate" if cat == "ffn_gate" else "i_ffn_up"
        i_layer, n_layer = _layer_info(getattr(c, counter), c.n_ffn, name, facts)
        setattr(c, counter, getattr(c, counter) + 1)
        middle = n_layer // 8 <= i_layer < 7 * n_layer // 8
        return "IQ3_XXS" if ftype == "IQ3_XS" and middle else t
    if cat == "ffn_down":
        i_layer, n_layer = _layer_info(c.i_ffn_down, c.n_ffn, name, facts)
        c.i_ffn_down += 1
        return _ffn_down_type(t, ftype, facts, i_layer, n_layer, has_imatrix)
    if cat == "attn_output":
        return _attn_output_type(t, ftype, facts)
    return t


# The file types of llama.cpp's lowest-bit branch (output Q5_K, embedding / attn_v / first ffn_down
# at Q2_K or IQ3_S, attn_output a step up).
LOW_BIT_FILES = ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")
_EMBEDDING_TYPE = {"IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K", "IQ1_S": "Q2_K", "IQ1_M": "Q2_K", "IQ2_S": "IQ3_S",
                   "IQ2_M": "IQ3_S", "IQ3_XXS": "IQ3_S", "TQ1_0": "Q4_K", "TQ2_0": "Q4_K"}
_ATTN_QK_TYPE = {"IQ3_XS": "IQ3_XXS", "IQ3_XXS": "IQ2_S"}


def _low_bit_type(t: str, name: str, ftype: str, cat: str, facts: ModelFacts, c: _Counters) -> str:
    """llama.cpp's branch for LOW_BIT_FILES (the other categories keep the default type, and its
    ffn_down rule reads the counter, not the layer of the name)."""
    step_up = "IQ3_S" if ftype in ("IQ2_S", "IQ2_M") else "Q2_K"
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):
        c.i_attn_v += 1
        return "Q4_K" if facts.n_gqa >= 4 or facts.n_expert >= 4 else step_up
    if facts.n_expert == 8 and cat == "attn_k":
        return "Q4_K"
    if cat == "ffn_down":
        i = c.i_ffn_down
        c.i_ffn_down += 1
        return step_up if i < c.n_ffn // 8 else t
    if cat == "attn_output":
        if facts.n_expert == 8:
            return "Q5_K"
        return {"IQ1_S": "IQ2_XXS", "IQ1_M": "IQ2_XXS", "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S"}.get(ftype, t)
    return t


def _attn_v_type(t: str, ftype: str, facts: ModelFacts, c: _Counters, has_imatrix: bool) -> str:
    i, n = c.i_attn_v, c.n_attn_v
    if ftype == "Q2_K":
        t = "Q4_K" if facts.n_gqa >= 4 else "Q3_K"
    elif ftype == "IQ3_XXS":
        t = "Q4_K" if facts.n_gqa >= 4 else "IQ3_XXS" if has_imatrix else "IQ3_S"
    elif ftype == "Q3_K_M":
        t = "Q5_K" if i < 2 else "Q4_K"
    elif ftype == "Q3_K_L":
        t = "Q5_K"
    elif ftype in ("IQ4_NL", "IQ4_XS") and facts.n_gqa >= 4:
        t = "Q5_K"
    elif (ftype in ("IQ3_XS", "IQ3_S") and facts.n_gqa >= 4) or ftype == "IQ3_M":
        t = "Q4_K"
    elif ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
        t = "Q6_K"
    elif ftype == "Q4_K_S" and i < 4:
        t = "Q5_K"
    if facts.is_70b and t in ("Q3_K", "Q4_K"):
        t = "Q5_K"
    if facts.n_expert == 8:
        t = "Q8_0"
    c.i_attn_v += 1
    return t


def _ffn_down_type(t: str, ftype: str, facts: ModelFacts, i_layer: int, n_layer: int, has_imatrix: bool) -> str:
    falcon = facts.arch == "falcon"
    if ftype == "Q2_K":
        return "Q3_K"
    if ftype == "IQ3_XXS" and not has_imatrix:
        return "Q4_K" if i_layer < n_layer // 8 else "Q3_K"
    if ftype == "Q3_K_M":
        if i_layer < n_layer // 16:
            return "Q5_K"
        return "Q4_K" if (not falcon or use_more_bits(i_layer, n_layer)) else "Q3_K"
    if ftype == "IQ3_M" and (i_layer < n_layer // 8 or (facts.n_expert == 8 and use_more_bits(i_layer, n_layer))):
        return "Q4_K"
    if ftype == "Q3_K_L":
        return "Q4_K" if falcon else "Q5_K"
    if ftype == "Q4_K_M":
        if falcon:
            return "Q6_K" if i_layer < n_layer // 16 else ("Q5_K" if use_more_bits(i_layer, n_layer) else "Q4_K")
        return "Q6_K" if use_more_bits(i_layer, n_layer) else t
    if i_layer < n_layer // 8 and ftype in ("IQ4_NL", "IQ4_XS") and not has_imatrix:
        return "Q5_K"
    if ftype == "Q5_K_M" and use_more_bits(i_layer, n_layer):
        return "Q6_K"
    if ftype == "Q4_K_S" and not falcon and i_layer < n_layer // 8:
        return "Q5_K"
    if ftype in ("Q4_0", "Q5_0") and has_imatrix and i_layer < n_layer // 8:
        return "Q4_1" if ftype == "Q4_0" else "Q5_1"
    return t


def _attn_output_type(t: str, ftype: str, facts: ModelFacts) -> str:
    if facts.arch == "falcon":
        return "Q4_K" if ftype == "Q3_K_L" else t
    if facts.n_expert == 8:
        if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS", "IQ3_XS", "IQ3_S", "IQ3_M",
                     "IQ3_XXS"):
            return "Q5_K"
        return t
    return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K", "IQ3_XXS": "IQ3_S"}.get(ftype, t)


def _fallback(name: str, n_cols: int, t: str) -> Tuple[str, Optional[str]]:
    if n_cols % BLOCK_SIZES[t] == 0:
        return t, None
    if t not in FALLBACK and BLOCK_SIZES[t] <= 32:   # no smaller block to demote to
        return "F16", f"{name}: row length {n_cols} is not a multiple of {BLOCK_SIZES[t]} (required by {t}) -> F16"
    if t not in FALLBACK:
        raise ValueError(f"tensor {name}: row length {n_cols} does not fit {t}'s blocks of {BLOCK_SIZES[t]} "
                         "and llama.cpp defines no fallback for it")
    new = FALLBACK[t]
    why = f"{name}: row length {n_cols} is not a multiple of {BLOCK_SIZES[t]} (required by {t})"
    if n_cols % BLOCK_SIZES[new] != 0:
        new = "F16"
        why += ", nor of 32 (unusual shape)"
    return new, f"{why} -> falling back to {new}"


def plan_types(tensors: Sequence[Tuple[str, Tuple[int, ...], str]], recipe: str, facts: ModelFacts,
               has_imatrix: bool = False, pure: bool = False) -> List[TensorPlan]:
    """Target type of every tensor. ``tensors``: (name, GGUF shape, current type) in file order;
    the result is in the same order."""
    ftype, _, default, pure_only = resolve_recipe(recipe)
    pure = pure or pure_only
    names = [t[0] for t in tensors]
    c = _Counters(n_ffn=facts.n_layer)
    for name in names:
        cat = category(name)
        c.n_attn_v += cat in ("attn_v", "attn_qkv", "attn_kv_b")
        c.tied &= cat != "output"
    plans: List[Optional[TensorPlan]] = [None] * len(tensors)
    for i in llama_order(names):
        name, shape, src = tensors[i]
        shape = tuple(int(s) for s in shape)
        if not allows_quantization(name, len(shape)):
            plans[i] = TensorPlan(name, shape, src, src)
            continue
        dst, notice = default, None
        if default not in FLOAT_TYPES:
            if not pure:
                dst = _mixture_type(default, name, shape, ftype, category(name), facts, c, has_imatrix)
            dst, notice = _fallback(name, shape[0], dst)
        plans[i] = TensorPlan(name, shape, src, dst, notice)
    return [p for p in plans if p is not None]

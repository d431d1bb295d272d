"""Tiny random-weight GGUF models for every architecture lowbit runs.

`write_tiny_model(path, TinySpec(arch="qwen3", weight_type="Q4_K"))` writes a file that
llama.cpp loads (same tensor names, shapes and metadata keys as the converters write) and
that `reference_forward.ReferenceModel` runs; the engine's logits are compared to it.

GGUF dims: a matrix with ne = [n_in, n_out] is a numpy array of shape (n_out, n_in).
Weights are scaled so activations stay O(1): projections ~ N(0, 1/n_in), norm weights
~ 1 + N(0, 0.1^2) (gemma's are stored with the +1 already added, as its converter does),
logits ~ N(0, 3^2) so the softmax is neither flat nor one-hot.

Matrices are stored in `weight_type`; quantized types that gguf can quantize (Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, F16, BF16) quantize Gaussian weights, k-quants (Q2_K..Q6_K) get random
valid blocks whose f16 super-block scales are chosen for the same standard deviation.
Norms, biases and rope factors are always F32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3", "qwen3moe", "olmoe", "gemma2", "granite",
                 "olmo2", "smollm3", "gpt-oss", "qwen2moe")
MOE_ARCHITECTURES = ("qwen3moe", "olmoe", "gpt-oss", "qwen2moe")   # always experts; llama has them when n_expert > 0
GPT_OSS_EXPERT_STD = 2.0     # gpt-oss gate / up rows
GPT_OSS_EXPERT_BIAS_STD = 4.0   # their biases: ~8% of the rows sit beyond its SwiGLU clamp (7)
QK_NORM_FULL_ARCHS = ("olmoe", "olmo2")        # q / k norm weights span the whole row, not one head
WEIGHT_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
EXPERT_ONLY_TYPES = ("MXFP4",)   # written for the *_exps matrices only (llama.cpp's MXFP4_MOE)
LOGIT_STD = 3.0
GEMMA_TIED_EMBD_STD = 1.5


@dataclass(frozen=True)
class TinySpec:
    arch: str = "llama"
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2           # GQA
    head_dim: int = 16           # key_length == value_length
    n_ff: int = 128
    weight_type: str = "F32"     # type of every matrix (token_embd and output included)
    tied: bool = True            # no output.weight: the head reuses token_embd
    tokenizer: str = "gpt2"      # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    rope_base: float = 10000.0
    rope_dim: int = 0            # rope.dimension_count; 0 -> head_dim (partial if smaller)
    rope_scale: float = 0.0      # rope.scaling.factor; 0 -> none
    rope_scaling: str = "linear"  # rope.scaling.type when rope_scale is set: linear or yarn
    rope_orig_ctx: int = 0       # yarn / longrope: rope.scaling.original_context_length (0: not written)
    longrope: bool = False       # phi3 LongRoPE: rope_factors_long/short tensors, attn_factor 1.19
    rope_freq_factors: bool = False   # llama3-style rope_freqs.weight (llama only)
    rms_eps: float = 1e-5
    sliding_window: int = 0      # gemma3, gemma2, gpt-oss, olmo2 (OLMo 3)
    final_logit_softcap: float = 0.0
    attn_softcap: float = 0.0    # gemma2: attention.attn_logit_softcapping (0: not written)
    # mixture of experts (qwen3moe, olmoe; llama = Mixtral when n_expert > 0): stacked expert tensors,
    # an F32 router (llama.cpp's quantize keeps ffn_gate_inp in F32)
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0            # qwen3moe: expert_feed_forward_length; the others' experts are n_ff wide
    n_ff_shexp: int = 0          # qwen2moe: expert_shared_feed_forward_length (its shared expert's width)
    expert_type: str = ""        # storage type of the *_exps matrices ("": weight_type), e.g. MXFP4
    # granite's scale factors (0: not written)
    embedding_scale: float = 0.0
    residual_scale: float = 0.0
    attention_scale: float = 0.0
    logit_scale: float = 0.0
    n_ctx: int = 256
    seed: int = 0
    pooling_type: int = -1       # <arch>.pooling_type (llama.cpp's enum: 0 none, 1 mean, 2 cls, 3 last); -1 not written


def default_spec(arch: str, weight_type: str = "F32", **overrides) -> TinySpec:
    """Small dims that exercise each architecture's features; 256-wide for k-quants
    (their blocks span 256 input columns)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch {arch!r} not in {ARCHITECTURES}")
    spec = TinySpec(arch=arch, weight_type=weight_type)
    if arch == "gemma3":    # 6 layers: 0-4 sliding, 5 global; heads wider than n_embd/n_head
        spec = replace(spec, n_layer=6, head_dim=32, rope_base=1e6, sliding_window=4,
                       rms_eps=1e-6, tokenizer="llama", tied=False)
    elif arch == "qwen3":
        spec = replace(spec, head_dim=32, rope_base=1e6, rms_eps=1e-6)
    elif arch == "qwen2":
        spec = replace(spec, n_layer=3, rope_base=1e6, rms_eps=1e-6)
    elif arch == "phi3":
        spec = replace(spec, n_head_kv=4, tokenizer="llama")
    elif arch == "qwen3moe":    # 6 experts, 3 per token, experts 96 wide (not a power of two)
        spec = replace(spec, head_dim=32, rope_base=1e6, rms_eps=1e-6, n_expert=6, n_expert_used=3, n_ff_exp=96)
    elif arch == "olmoe":       # llama.cpp's olmoe norms q and k over n_embd: n_head_kv == n_head
        spec = replace(spec, n_head_kv=4, n_ff=96, n_expert=5, n_expert_used=2, tied=False)   # needs output.weight
    elif arch == "gemma2":      # 4 layers, even ones sliding; tied head (llama.cpp ignores output.weight)
        spec = replace(spec, n_layer=4, head_dim=32, sliding_window=4, rms_eps=1e-6, tokenizer="llama",
                       attn_softcap=1.5, final_logit_softcap=8.0)
    elif arch == "granite":
        spec = replace(spec, n_layer=3, embedding_scale=3.0, residual_scale=0.6, attention_scale=0.09,
                       logit_scale=1.7)
    elif arch == "olmo2":
        spec = replace(spec, rope_base=5e5, rms_eps=1e-6, tied=False)   # llama.cpp needs output.weight
    elif arch == "gpt-oss":     # 3 layers (0, 2 slide), YaRN, sinks, biases everywhere, 5 experts, 2 used
        spec = replace(spec, n_layer=3, n_head=4, n_head_kv=2, head_dim=16, n_ff=96, n_expert=5,
                       n_expert_used=2, n_ff_exp=96, sliding_window=4, rope_base=15e4, rope_scale=4.0,
                       rope_scaling="yarn", rope_orig_ctx=32, tied=False, seed=4)
        # seed 4: no router near-tie (reference_forward.route) on the token sequences the tests use
    elif arch == "qwen2moe":    # 5 experts, 2 per token, 64 wide, and a 96-wide shared expert
        spec = replace(spec, rope_base=1e6, rms_eps=1e-6, n_expert=5, n_expert_used=2, n_ff_exp=64,
                       n_ff_shexp=96, tied=False)
    elif arch == "smollm3":     # layer 3 of 4 has no RoPE
        spec = replace(spec, n_layer=4, rope_base=5e6, rms_eps=1e-6)
    if gguf.GGML_QUANT_SIZES[QT[weight_type]][0] == 256:
        spec = replace(spec, n_embd=256, n_ff=512 if not spec.n_expert or spec.arch == "qwen3moe" else 256,
                       head_dim=256 // spec.n_head, n_ff_exp=256 if spec.n_ff_exp else 0,
                       n_ff_shexp=256 if spec.n_ff_shexp else 0)
    return replace(spec, **overrides)


# ---------------------------------------------------------------------------------------
# Tokenizers: minimal but valid vocabularies
# ---------------------------------------------------------------------------------------
_WORDS = ("the", "and", "of", "to", "in", "is", "it", "that", "on", "was", "he", "for",
          "with", "as", "hello", "world", "once", "upon", "time", "def", "return")
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def _gpt2_byte_chars() -> List[str]:
    """GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+n."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def gpt2_vocab() -> Tuple[List[str], List[int], List[str]]:
    """(tokens, token types, merges): 256 byte tokens, left-to-right merges building
    'Ġword' for a few words, then <|endoftext|>, <|im_start|>, <|im_end|> (control)."""
    tokens = _gpt2_byte_chars()
    merges: List[str] = []
    for word in _WORDS:
        left = "Ġ"
        for ch in word:
            merged = left + ch
            if merged not in tokens:
                merges.append(f"{left} {ch}")
                tokens.append(merged)
            left = merged
    types = [TOKEN_NORMAL] * len(tokens)
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types += [TOKEN_CONTROL] * 3
    return tokens, types, merges


def spm_vocab() -> Tuple[List[str], List[int], List[float]]:
    """(tokens, types, scores): <unk> <s> </s>, <0x00>..<0xFF>, '▁', printable ASCII,
    every prefix of '▁word' so SentencePiece's pair merging can reach the word, then the
    control tokens <|endoftext|> <|end|>."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    pieces = ["▁"] + [chr(c) for c in range(33, 127)]
    for word in _WORDS:
        for end in range(2, len(word) + 2):
            piece = "▁" + word[:end - 1]
            if piece not in pieces:
                pieces.append(piece)
    tokens += pieces
    types += [TOKEN_NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    specials = ["<|endoftext|>", "<|end|>"]      # llama.cpp's phi3 vocab needs <|endoftext|>
    return tokens + specials, types + [TOKEN_CONTROL] * 2, scores + [0.0] * 2


def vocab_size(spec: TinySpec) -> int:
    return len(gpt2_vocab()[0] if spec.tokenizer == "gpt2" else spm_vocab()[0])


# ---------------------------------------------------------------------------------------
# Weights (float32, numpy order) and their storage types
# ---------------------------------------------------------------------------------------

def expert_width(spec: TinySpec) -> int:
    """Rows of each expert's gate / up: qwen3moe's / gpt-oss's expert_feed_forward_length, else n_ff."""
    if spec.arch == "gpt-oss":
        return spec.n_ff_exp or spec.n_ff
    if spec.arch in ("qwen3moe", "qwen2moe"):
        return spec.n_ff_exp or spec.n_ff // spec.n_expert_used
    return spec.n_ff


def _expert_shapes(spec: TinySpec, p: str, shapes: Dict[str, Tuple[int, ...]]) -> None:
    """Layer p's router and stacked experts, (n_expert, n_out, n_in) in numpy order = GGUF ne
    [n_in, n_out, n_expert]."""
    E, X, FX = spec.n_embd, spec.n_expert, expert_width(spec)
    shapes[f"{p}.ffn_gate_inp.weight"] = (X, E)
    shapes[f"{p}.ffn_gate_exps.weight"] = (X, FX, E)
    shapes[f"{p}.ffn_up_exps.weight"] = (X, FX, E)
    shapes[f"{p}.ffn_down_exps.weight"] = (X, E, FX)
    if spec.arch == "gpt-oss":                                 # biased router and experts
        shapes[f"{p}.ffn_gate_inp.bias"] = (X,)
        shapes[f"{p}.ffn_gate_exps.bias"] = (X, FX)
        shapes[f"{p}.ffn_up_exps.bias"] = (X, FX)
        shapes[f"{p}.ffn_down_exps.bias"] = (X, E)
    if spec.arch == "qwen2moe":                               # the shared expert and its gate
        FS = spec.n_ff_shexp or spec.n_ff
        shapes[f"{p}.ffn_gate_inp_shexp.weight"] = (E,)
        shapes[f"{p}.ffn_gate_shexp.weight"] = (FS, E)
        shapes[f"{p}.ffn_up_shexp.weight"] = (FS, E)
        shapes[f"{p}.ffn_down_shexp.weight"] = (E, FS)


def tensor_shapes(spec: TinySpec) -> Dict[str, Tuple[int, ...]]:
    """Every tensor of the model, numpy order (n_out, n_in) for matrices."""
    E, F, V = spec.n_embd, spec.n_ff, vocab_size(spec)
    q_dim, kv_dim = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    shapes: Dict[str, Tuple[int, ...]] = {"token_embd.weight": (V, E),
                                          "output_norm.weight": (E,)}
    if not spec.tied:
        shapes["output.weight"] = (V, E)
    if spec.rope_freq_factors:
        if spec.arch != "llama":
            raise ValueError("rope_freqs.weight (llama3 frequency factors) is llama-only")
        shapes["rope_freqs.weight"] = ((spec.rope_dim or spec.head_dim) // 2,)
    if spec.longrope:
        if spec.arch != "phi3":
            raise ValueError("LongRoPE factors are written for phi3 only")
        shapes["rope_factors_long.weight"] = shapes["rope_factors_short.weight"] = ((spec.rope_dim or spec.head_dim) // 2,)
    for il in range(spec.n_layer):
        p = f"blk.{il}"
        if spec.arch == "gpt-oss":      # its FFN pre-norm is named post_attention_norm; one sink per head
            shapes[f"{p}.attn_norm.weight"] = (E,)
            shapes[f"{p}.post_attention_norm.weight"] = (E,)
            shapes[f"{p}.attn_sinks.weight"] = (spec.n_head,)
        elif spec.arch != "olmo2":                             # olmo2: post-norms only
            shapes[f"{p}.attn_norm.weight"] = (E,)
            shapes[f"{p}.ffn_norm.weight"] = (E,)
        shapes[f"{p}.attn_output.weight"] = (E, q_dim)
        if not spec.n_expert:
            shapes[f"{p}.ffn_down.weight"] = (E, F)
        if spec.arch == "phi3":
            shapes[f"{p}.attn_qkv.weight"] = (q_dim + 2 * kv_dim, E)
            shapes[f"{p}.ffn_up.weight"] = (2 * F, E)          # rows: gate | up
        else:
            shapes[f"{p}.attn_q.weight"] = (q_dim, E)
            shapes[f"{p}.attn_k.weight"] = (kv_dim, E)
            shapes[f"{p}.attn_v.weight"] = (kv_dim, E)
            if spec.n_expert:
                _expert_shapes(spec, p, shapes)
            else:
                shapes[f"{p}.ffn_gate.weight"] = (F, E)
                shapes[f"{p}.ffn_up.weight"] = (F, E)
        if spec.arch == "gpt-oss":
            shapes[f"{p}.attn_output.bias"] = (E,)
        if spec.arch in ("qwen2", "gpt-oss", "qwen2moe"):
            shapes[f"{p}.attn_q.bias"] = (q_dim,)
            shapes[f"{p}.attn_k.bias"] = (kv_dim,)
            shapes[f"{p}.attn_v.bias"] = (kv_dim,)
        if spec.arch in ("qwen3", "gemma3", "qwen3moe"):
            shapes[f"{p}.attn_q_norm.weight"] = (spec.head_dim,)
            shapes[f"{p}.attn_k_norm.weight"] = (spec.head_dim,)
        if spec.arch in QK_NORM_FULL_ARCHS:
            shapes[f"{p}.attn_q_norm.weight"] = (q_dim,)
            shapes[f"{p}.attn_k_norm.weight"] = (kv_dim,)
        if spec.arch in ("gemma3", "gemma2", "olmo2"):
            shapes[f"{p}.post_attention_norm.weight"] = (E,)
            shapes[f"{p}.post_ffw_norm.weight"] = (E,)
    return shapes


def target_std(name: str, shape: Tuple[int, ...], spec: TinySpec) -> float:
    """Standard deviation of a matrix's entries (norm vectors: of their noise)."""
    if name.endswith("ffn_gate_inp.weight"):
        return 2.0 / math.sqrt(shape[-1])           # router logits ~N(0, 2^2): clear top-k choices
    if spec.arch == "gpt-oss" and (name.endswith("ffn_gate_exps.weight") or name.endswith("ffn_up_exps.weight")):
        return GPT_OSS_EXPERT_STD / math.sqrt(shape[-1])
    if spec.arch == "gpt-oss" and name.endswith("ffn_down_exps.weight"):   # the block's output back to O(1)
        return 1.0 / (GPT_OSS_EXPERT_STD * math.sqrt(shape[-1]))
    if name == "output.weight" or (name == "token_embd.weight" and spec.tied):
        if spec.arch in ("gemma3", "gemma2") and spec.tied:
            # the input is scaled by sqrt(n_embd): a larger std would make the residual
            # stream, and so the tied head, favour the input token itself
            return GEMMA_TIED_EMBD_STD / math.sqrt(spec.n_embd)
        return LOGIT_STD / math.sqrt(spec.n_embd)   # a normed hidden state has RMS ~1
    if name == "token_embd.weight" and spec.arch in ("gemma3", "gemma2"):
        return 1.0 / math.sqrt(spec.n_embd)         # times sqrt(n_embd): RMS 1
    return 1.0 / math.sqrt(shape[-1])


def random_vector(name: str, shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith("_exps.bias") and ("gate" in name or "up" in name):   # gpt-oss: some rows past the clamp (7)
        return rng.normal(0.0, GPT_OSS_EXPERT_BIAS_STD, shape).astype(np.float32)
    if name.endswith(".bias"):
        return rng.normal(0.0, 0.3, shape).astype(np.float32)
    if name.endswith("ffn_gate_inp_shexp.weight"):   # the shared expert's gate logit ~N(0, 1)
        return rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape).astype(np.float32)
    if name.endswith("attn_sinks.weight"):           # logits of the same order as q.k / sqrt(d)
        return rng.normal(0.0, 1.0, shape).astype(np.float32)
    if name == "rope_freqs.weight":                  # llama3: 1 for fast dims, up to 8 slow
        return np.linspace(1.0, 8.0, shape[0]).astype(np.float32)
    if name == "rope_factors_long.weight":           # LongRoPE: up to 6 slow
        return np.linspace(1.0, 6.0, shape[0]).astype(np.float32)
    if name == "rope_factors_short.weight":
        return np.linspace(1.0, 1.5, shape[0]).astype(np.float32)
    return (1.0 + rng.normal(0.0, 0.1, shape)).astype(np.float32)   # norm weights


# byte offsets of the f16 super-block scale d (and min scale dmin) inside a k-quant block,
# and the mean of the unsigned quant that dmin should cancel (ggml block_qN_K layouts)
_KQUANT = {
    QT.Q2_K: dict(d=80, dmin=82, q_mean=1.5),    # scales[16] qs[64] d dmin
    QT.Q3_K: dict(d=108, dmin=None, q_mean=0.0),  # hmask[32] qs[64] scales[12] d
    QT.Q4_K: dict(d=0, dmin=2, q_mean=7.5),      # d dmin scales[12] qs[128]
    QT.Q5_K: dict(d=0, dmin=2, q_mean=15.5),     # d dmin scales[12] qh[32] qs[128]
    QT.Q6_K: dict(d=208, dmin=None, q_mean=0.0),  # ql[128] qh[64] scales[16] d
    QT.IQ4_NL: dict(d=0, dmin=None, q_mean=0.0),  # d qs[16]: random codebook indices (not a k-quant, made alike)
    QT.IQ4_XS: dict(d=0, dmin=None, q_mean=0.0),  # d scales_h scales_l[4] qs[128]: random 6-bit scales too
}


def _set_kquant_scales(blocks: np.ndarray, layout: dict, d: float) -> None:
    """blocks: (n_blocks, block_bytes) uint8, set d and dmin = q_mean * d in place."""
    blocks[:, layout["d"]:layout["d"] + 2] = np.float16(d).reshape(1).view(np.uint8)
    if layout["dmin"] is not None:
        dmin = np.float16(layout["q_mean"] * d).reshape(1).view(np.uint8)
        blocks[:, layout["dmin"]:layout["dmin"] + 2] = dmin


def random_kquant(shape: Tuple[int, ...], qtype: QT, std: float,
                  rng: np.random.Generator) -> np.ndarray:
    """(..., n_out, n_in) matrices of random valid k-quant blocks -> (..., n_out, bytes) uint8."""
    if len(shape) > 2:
        flat = random_kquant((int(np.prod(shape[:-1])), shape[-1]), qtype, std, rng)
        return flat.reshape(*shape[:-1], -1)
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_out, n_in = shape
    layout = _KQUANT[qtype]
    blocks = rng.integers(0, 256, (n_out * n_in // block_size, block_bytes), dtype=np.uint8)
    if qtype == QT.Q6_K:        # int8 sub-block scales in [-20, 20]: d stays an f16 normal
        blocks[:, 192:208] = rng.integers(-20, 21, (blocks.shape[0], 16)).astype(np.int8).view(np.uint8)
    _set_kquant_scales(blocks, layout, 1.0)
    unit_std = float(np.std(dequantize(blocks.reshape(n_out, -1), qtype)))
    _set_kquant_scales(blocks, layout, std / unit_std)
    return blocks.reshape(n_out, -1)


def encode_matrix(values: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 (n_out, n_in) -> the array `GGUFWriter.add_tensor` stores for qtype."""
    if qtype == QT.F32:
        return values.astype(np.float32)
    if qtype == QT.F16:
        return values.astype(np.float16)
    return quantize(values.astype(np.float32), qtype)


def make_tensors(spec: TinySpec) -> Dict[str, Tuple[np.ndarray, QT]]:
    """name -> (stored array, storage type), reproducible from spec.seed."""
    qtype = QT[spec.weight_type]
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    rng = np.random.default_rng(spec.seed)
    tensors: Dict[str, Tuple[np.ndarray, QT]] = {}
    for name, shape in tensor_shapes(spec).items():
        if len(shape) == 1 or name.endswith(".bias"):   # gpt-oss's expert biases are (n_expert, n)
            tensors[name] = (random_vector(name, shape, rng), QT.F32)
            continue
        std = target_std(name, shape, spec)
        if name.endswith("ffn_gate_inp.weight"):        # the router stays F32 (llama.cpp's quantize)
            tensors[name] = (rng.normal(0.0, std, shape).astype(np.float32), QT.F32)
            continue
        if spec.expert_type and "_exps." in name:       # e.g. MXFP4_MOE's experts
            etype = QT[spec.expert_type]
            values = rng.normal(0.0, std, shape).astype(np.float32)
            tensors[name] = (encode_matrix(values, etype), etype)
            continue
        if shape[-1] % block_size:
            raise ValueError(f"{name}: {shape[-1]} input columns are not a multiple of the "
                             f"{spec.weight_type} block size {block_size}")
        if qtype in _KQUANT:
            tensors[name] = (random_kquant(shape, qtype, std, rng), qtype)
        else:
            values = rng.normal(0.0, std, shape).astype(np.float32)
            tensors[name] = (encode_matrix(values, qtype), qtype)
    return tensors


# ---------------------------------------------------------------------------------------
# Writing the file
# ---------------------------------------------------------------------------------------

def _write_hparams(w: gguf.GGUFWriter, spec: TinySpec, n_vocab: int) -> None:
    w.add_name(f"tiny-{spec.arch}-{spec.weight_type.lower()}")
    w.add_context_length(spec.n_ctx)
    w.add_embedding_length(spec.n_embd)
    w.add_block_count(spec.n_layer)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.rope_dim or spec.head_dim)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_vocab_size(n_vocab)
    if spec.rope_scale:
        w.add_rope_scaling_type(gguf.RopeScalingType(spec.rope_scaling))
        w.add_rope_scaling_factor(spec.rope_scale)
        if spec.rope_orig_ctx:
            w.add_rope_scaling_orig_ctx_len(spec.rope_orig_ctx)
    if spec.longrope:
        w.add_rope_scaling_orig_ctx_len(spec.rope_orig_ctx or 32)
        w.add_rope_scaling_attn_factors(1.19)
    if spec.sliding_window:
        if spec.arch not in ("gemma3", "gemma2", "gpt-oss", "olmo2"):
            raise ValueError("sliding_window is implemented for gemma3, gemma2, gpt-oss and olmo2 only (llama.cpp "
                             "ignores it for the other architectures)")
        w.add_sliding_window(spec.sliding_window)
    if spec.final_logit_softcap:
        w.add_final_logit_softcapping(spec.final_logit_softcap)
    if spec.attn_softcap:
        w.add_attn_logit_softcapping(spec.attn_softcap)
    if spec.n_expert:
        w.add_expert_count(spec.n_expert)
        w.add_expert_used_count(spec.n_expert_used)
        if spec.n_ff_exp:
            w.add_expert_feed_forward_length(spec.n_ff_exp)
        if spec.n_ff_shexp:
            w.add_expert_shared_feed_forward_length(spec.n_ff_shexp)
    for value, add in ((spec.embedding_scale, w.add_embedding_scale), (spec.residual_scale, w.add_residual_scale),
                       (spec.attention_scale, w.add_attention_scale), (spec.logit_scale, w.add_logit_scale)):
        if value:
            add(value)

    if spec.pooling_type >= 0:
        w.add_pooling_type(gguf.PoolingType(spec.pooling_type))
    w.add_file_type(QT[spec.weight_type].value if spec.weight_type in ("F32", "F16")
                    else gguf.LlamaFileType.MOSTLY_Q8_0.value if spec.weight_type == "Q8_0"
                    else gguf.LlamaFileType.GUESSED.value)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(w: gguf.GGUFWriter, spec: TinySpec) -> None:
    if spec.tokenizer == "gpt2":
        tokens, types, merges = gpt2_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        eot = tokens.index("<|endoftext|>")
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
        w.add_add_bos_token(False)
        w.add_add_space_prefix(False)
    elif spec.tokenizer == "llama":
        tokens, types, scores = spm_vocab()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(True)
    else:
        raise ValueError(f"tokenizer {spec.tokenizer!r}: expected 'gpt2' or 'llama'")


def write_tiny_model(path, spec: Optional[TinySpec] = None, **overrides) -> str:
    """Write a tiny random model; `overrides` replace fields of `spec` (default: llama)."""
    spec = replace(spec or TinySpec(), **overrides)
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"arch {spec.arch!r} not in {ARCHITECTURES}")
    if spec.weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type {spec.weight_type!r} not in {WEIGHT_TYPES}")
    if spec.arch == "phi3" and spec.tokenizer != "llama":
        raise ValueError("phi3: llama.cpp loads a phi3 vocabulary only as SentencePiece "
                         "(tokenizer='llama')")
    if spec.n_head % spec.n_head_kv:
        raise ValueError(f"n_head {spec.n_head} is not a multiple of n_head_kv {spec.n_head_kv}")
    if spec.arch in MOE_ARCHITECTURES and not spec.n_expert:
        raise ValueError(f"{spec.arch} needs n_expert > 0")
    if spec.n_expert and not (spec.arch in MOE_ARCHITECTURES or spec.arch == "llama"):
        raise ValueError(f"{spec.arch}: experts are written for {MOE_ARCHITECTURES} and llama only")
    if spec.n_expert and not 2 <= spec.n_expert_used <= spec.n_expert:
        raise ValueError(f"n_expert_used {spec.n_expert_used}: expected 2 .. n_expert {spec.n_expert}")
    if spec.arch == "gemma2" and not spec.tied:
        raise ValueError("gemma2: llama.cpp always uses token_embd as the output head (tied=True)")
    if spec.arch in ("olmoe", "olmo2", "gpt-oss") and spec.tied:
        raise ValueError(f"{spec.arch}: llama.cpp requires output.weight (tied=False)")
    if spec.arch == "olmoe" and spec.n_head_kv != spec.n_head:
        raise ValueError("olmoe: llama.cpp's k norm spans n_embd, so n_head_kv must equal n_head")
    if spec.expert_type and spec.expert_type not in WEIGHT_TYPES + EXPERT_ONLY_TYPES:
        raise ValueError(f"expert_type {spec.expert_type!r} not in {WEIGHT_TYPES + EXPERT_ONLY_TYPES}")
    if spec.arch in ("llama", "qwen2", "phi3", "olmoe", "granite", "smollm3", "olmo2", "qwen2moe") \
            and spec.n_head * spec.head_dim != spec.n_embd:
        raise ValueError(f"{spec.arch}: llama.cpp needs n_head * head_dim == n_embd "
                         f"({spec.n_head} * {spec.head_dim} != {spec.n_embd})")
    tensors = make_tensors(spec)
    writer = gguf.GGUFWriter(str(path), spec.arch)
    _write_hparams(writer, spec, tensors["token_embd.weight"][0].shape[0])
    _write_tokenizer(writer, spec)
    for name, (data, qtype) in tensors.items():
        if qtype in (QT.F32, QT.F16):
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def write_default_model(path, arch: str, weight_type: str = "F32", **overrides) -> str:
    """`write_tiny_model(path, default_spec(arch, weight_type, **overrides))`."""
    return write_tiny_model(path, default_spec(arch, weight_type, **overrides))

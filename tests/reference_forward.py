"""Float64 numpy reference forward pass of the decoder architectures lowbit runs.

This is the spec the C++ engine is tested against: plain, slow, readable. Weights are read
with `gguf.GGUFReader` and dequantized with `gguf.quants.dequantize` (the format oracle),
then every activation is float64. It follows llama.cpp's graphs (src/models/*.cpp):

  llama   (SmolLM2, Llama 2/3, Mistral, TinyLlama): pre-norm, SwiGLU, normal RoPE,
          optional llama3 `rope_freqs.weight` frequency factors
  qwen2   llama + q/k/v biases, NeoX RoPE
  qwen3   llama + per-head RMSNorm of q and k before RoPE, NeoX RoPE
  gemma3  embeddings * sqrt(n_embd); q/k norm; norms before and after attention and FFN;
          GELU(tanh)-gated FFN; layers with il % 6 < 5 use a sliding window and a local
          RoPE base (10000); queries scaled by 1/sqrt(key_length) (27B: 1/sqrt(n_embd/n_head))
  phi3    fused `attn_qkv` (q | k | v rows) and fused `ffn_up` (gate | up rows), NeoX RoPE
  qwen3moe  qwen3 attention; mixture-of-experts FFN: softmax router, top-k, weights renormalised
  olmoe   RMSNorm of the whole q and k rows (all heads at once), NeoX RoPE; MoE with softmax
          top-k weights NOT renormalised
  qwen2moe  qwen2 attention; MoE with softmax top-k NOT renormalised, plus a shared expert:
          + sigmoid(x . ffn_gate_inp_shexp) * down_sh(silu(gate_sh x) * up_sh x)
  llama + `<arch>.expert_count` (Mixtral): MoE, softmax top-k renormalised
  gemma2  gemma3 without QK-norm: attention scores soft-capped c*tanh(s/c) before the softmax,
          final logits soft-capped, even layers slide (pattern 2), GELU(tanh)
  granite llama + embedding_scale, residual_scale (on each branch before the residual add),
          attention.scale (replaces 1/sqrt(d)), logits / logit_scale
  olmo2   no pre-norms: x + post_attention_norm(attn(x)), h + post_ffw_norm(ffn(h)); q / k
          normed over the whole row; NeoX RoPE; OLMo 3 (with a sliding window): layer il slides when
          il % 4 < 3, rotating with the global base, unscaled (no YaRN there)
  smollm3 llama where layer il has no RoPE when (il + 1) % 4 == 0
  gpt-oss q/k/v/o biases; one learned sink logit per head joins each softmax (no value);
          even layers slide (pattern 2) with the same (YaRN) RoPE; the FFN's pre-norm is the
          tensor post_attention_norm; MoE with a biased router: top-k of the logits, softmax over
          those k; biased experts with a clamped SwiGLU: g = min(gate, 7), u = clamp(up, -7, 7),
          h = g sigmoid(1.702 g) (u + 1)

Mixture of experts (llama.cpp build_moe_ffn): probs = softmax(x Wr^T); the k largest probs pick the
experts; w = probs[picked] (/ sum when renormalised); out = sum_e w_e down_e(silu(gate_e x) * up_e x).
Stacked expert tensors are (n_expert, n_out, n_in) arrays here.

GGUF stores a matrix with ne[0] = input columns, so a dequantized weight is a numpy array
of shape (n_out, n_in) and a projection is `x @ W.T`. Gemma norm weights are stored with
the +1 already added by the converter, so every RMSNorm here multiplies by w directly.

API: `ReferenceModel(path).logits(token_ids) -> (n_tokens, n_vocab)` for all positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import gguf
from gguf.quants import dequantize

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3", "qwen3moe", "olmoe", "gemma2", "granite",
                 "olmo2", "smollm3", "gpt-oss", "qwen2moe")
NEOX_ROPE_ARCHS = ("qwen2", "qwen3", "gemma3", "phi3", "qwen3moe", "olmoe", "gemma2", "olmo2",
                   "gpt-oss", "qwen2moe")  # pairs (i, i + n_rot/2)
QK_NORM_ARCHS = ("qwen3", "gemma3", "qwen3moe")       # per head
QK_NORM_FULL_ARCHS = ("olmoe", "olmo2")               # over the whole q / k row
GEMMA_ARCHS = ("gemma2", "gemma3")
MOE_NOT_RENORMALISED = ("olmoe", "gpt-oss", "qwen2moe")
OAI_SWIGLU_ALPHA, OAI_SWIGLU_LIMIT = 1.702, 7.0
SMOLLM3_NO_ROPE_STEP = 4
GEMMA3_SWA_PATTERN = 6          # llama.cpp set_swa_pattern(6): layer il is SWA iff il % 6 < 5
GEMMA3_LOCAL_ROPE_BASE = 10000.0


@dataclass
class HParams:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int            # key_length: dims per q/k head
    head_dim_v: int            # value_length: dims per v head
    n_vocab: int
    n_ctx_train: int
    n_rot: int                 # rope.dimension_count: leading dims of a head that rotate
    rope_base: float
    rope_freq_scale: float     # 1 / rope.scaling.factor (linear or yarn), 1.0 if none
    rope_neox: bool
    rms_eps: float
    attn_scale: float          # multiplies q.k
    embd_scale: float          # multiplies the token embeddings (gemma: sqrt(n_embd))
    final_logit_softcap: float  # 0: none, else logits = c * tanh(logits / c)
    sliding_window: int        # 0: none
    swa_layers: List[bool] = field(default_factory=list)
    rope_base_swa: float = GEMMA3_LOCAL_ROPE_BASE
    attn_softcap: float = 0.0  # gemma2: scores = c * tanh(scores / c) before the softmax
    residual_scale: float = 1.0   # granite: each branch times this before the residual add
    logit_scale: float = 1.0   # granite: logits / logit_scale
    n_expert: int = 0
    n_expert_used: int = 0
    expert_weights_norm: bool = False
    rope_layers: List[bool] = field(default_factory=list)   # False: the layer has no RoPE
    rope_freq_scale_swa: float = 1.0
    yarn_orig_ctx: int = 0     # yarn: original context length (0: not yarn)
    longrope_orig_ctx: int = 0   # LongRoPE (phi3 rope_factors_long/short): original context (0: none)
    longrope_attn_factor: float = 1.0   # LongRoPE: q and k (rotated dims) times rope.scaling.attn_factor


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    if isinstance(value, list):
        raise ValueError(f"metadata {key} is an array ({len(value)} values); the reference "
                         f"supports only one value for every layer")
    return value


def read_hparams(reader: gguf.GGUFReader, tensor_shapes: Dict[str, tuple]) -> HParams:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} is not one of {ARCHITECTURES}")

    def key(name, default=None):
        return _field(reader, f"{arch}.{name}", default)

    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
    head_dim_k = int(key("attention.key_length", n_embd // n_head))
    head_dim_v = int(key("attention.value_length", head_dim_k))
    n_layer = int(key("block_count"))
    n_vocab = int(key("vocab_size", tensor_shapes["token_embd.weight"][0]))

    scaling_type = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", "linear", "yarn"):
        raise ValueError(f"rope.scaling.type {scaling_type!r}: the reference implements "
                         f"none, linear and yarn (plus llama3 rope_freqs factors)")
    factor = float(key("rope.scaling.factor", 0.0) or key("rope.scale_linear", 0.0) or 0.0)

    sliding_window = int(key("attention.sliding_window", 0) or 0)
    swa_layers = [False] * n_layer
    if arch == "gemma3" and sliding_window > 0:
        swa_layers = [il % GEMMA3_SWA_PATTERN < GEMMA3_SWA_PATTERN - 1 for il in range(n_layer)]
    elif arch == "gemma2":
        sliding_window = sliding_window or 4096         # llama.cpp's default for gemma2
        swa_layers = [il % 2 == 0 for il in range(n_layer)]
    elif arch == "gpt-oss":
        swa_layers = [il % 2 == 0 for il in range(n_layer)]
    elif arch == "olmo2" and sliding_window > 0:         # OLMo 3: llama.cpp's swa pattern 4
        swa_layers = [il % 4 < 3 for il in range(n_layer)]
    else:
        sliding_window = 0   # llama.cpp ignores the window of llama/qwen/phi3 files

    attn_scale, embd_scale = 1.0 / math.sqrt(head_dim_k), 1.0
    if arch == "gemma3":
        # llama.cpp: 27B (62 layers) scales by query_pre_attn_scalar = n_embd / n_head
        attn_scale = 1.0 / math.sqrt(n_embd / n_head) if n_layer == 62 else attn_scale
    if arch == "gemma2":
        attn_scale = 1.0 / math.sqrt(n_embd // n_head) if n_layer == 46 else attn_scale
    if arch in GEMMA_ARCHS:
        embd_scale = math.sqrt(n_embd)
    residual_scale, logit_scale = 1.0, 1.0
    if arch == "granite":
        embd_scale = float(key("embedding_scale", 0.0) or 1.0)
        residual_scale = float(key("residual_scale", 0.0) or 1.0)
        attn_scale = float(key("attention.scale", 0.0) or attn_scale)
        logit_scale = float(key("logit_scale"))
    final_softcap = float(key("final_logit_softcapping", 30.0 if arch == "gemma2" else 0.0) or 0.0)
    attn_softcap = float(key("attn_logit_softcapping", 50.0)) if arch == "gemma2" else 0.0
    n_expert = int(key("expert_count", 0) or 0)
    rope_layers = [arch != "smollm3" or (il + 1) % SMOLLM3_NO_ROPE_STEP != 0 for il in range(n_layer)]

    return HParams(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_ff=int(key("feed_forward_length")),
        n_head=n_head, n_head_kv=n_head_kv, head_dim_k=head_dim_k, head_dim_v=head_dim_v,
        n_vocab=n_vocab, n_ctx_train=int(key("context_length", 0) or 0),
        n_rot=int(key("rope.dimension_count", head_dim_k)),
        rope_base=float(key("rope.freq_base", 10000.0)),
        rope_freq_scale=1.0 / factor if factor else 1.0,
        yarn_orig_ctx=(int(key("rope.scaling.original_context_length", 0) or key("context_length", 0))
                       if scaling_type == "yarn" and factor else 0),
        longrope_orig_ctx=(int(key("rope.scaling.original_context_length", 0) or key("context_length", 0))
                           if "rope_factors_long.weight" in tensor_shapes else 0),
        longrope_attn_factor=float(key("rope.scaling.attn_factor", 1.0)),
        rope_neox=arch in NEOX_ROPE_ARCHS,
        rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        attn_scale=attn_scale, embd_scale=embd_scale,
        final_logit_softcap=final_softcap,
        sliding_window=sliding_window, swa_layers=swa_layers,
        # olmo2 (OLMo 3): llama.cpp's graph rotates sliding layers with the global base
        rope_base_swa=(float(key("rope.freq_base", 10000.0)) if arch == "olmo2" else
                       float(key("rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE if arch == "gemma3"
                                 else float(key("rope.freq_base", 10000.0))))),
        rope_freq_scale_swa=1.0 / factor if factor and arch == "gpt-oss" else 1.0,
        attn_softcap=attn_softcap, residual_scale=residual_scale, logit_scale=logit_scale,
        n_expert=n_expert, n_expert_used=int(key("expert_used_count", 0) or 0),
        expert_weights_norm=arch not in MOE_NOT_RENORMALISED, rope_layers=rope_layers,
    )


# ---------------------------------------------------------------------------------------
# Building blocks. x is always (n_tokens, features), float64.
# ---------------------------------------------------------------------------------------

def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x: (..., d), weight: (d,). x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_angles(positions: np.ndarray, n_rot: int, base: float, freq_scale: float,
                freq_factors: Optional[np.ndarray], yarn_orig_ctx: int = 0) -> np.ndarray:
    """(n_tokens, n_rot/2) angles: pos * freq_scale * base^(-2i/n_rot) / freq_factors[i].

    YaRN (Peng et al. 2023, "NTK-by-parts"; yarn_orig_ctx > 0, beta_fast 32, beta_slow 1): pair i
    keeps its unscaled frequency where it rotates more than beta_fast times over the original
    context, is fully interpolated (freq_scale) below beta_slow rotations, and linearly mixed in
    between, the bounds being the pair indices floor/ceil(n_rot ln(L / (2 pi beta)) / (2 ln base))."""
    inv_freq = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)   # (n_rot/2,)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors
    scale = np.full(n_rot // 2, freq_scale)
    if yarn_orig_ctx and freq_scale != 1.0:
        def bound(rotations):
            return n_rot * math.log(yarn_orig_ctx / (2 * math.pi * rotations)) / (2 * math.log(base))
        low, high = max(math.floor(bound(32.0)), 0), min(math.ceil(bound(1.0)), n_rot - 1)
        ramp = np.clip((np.arange(n_rot // 2) - low) / max(high - low, 0.001), 0.0, 1.0)
        extrapolate = 1.0 - ramp                  # 1: keep the original frequency
        scale = freq_scale * (1.0 - extrapolate) + extrapolate
    return positions.astype(np.float64)[:, None] * scale[None, :] * inv_freq[None, :]


def yarn_mscale(freq_scale: float, yarn_orig_ctx: int) -> float:
    """YaRN's attention temperature: q and k (their rotated dims) scaled by 0.1 ln(s) + 1."""
    return 0.1 * math.log(1.0 / freq_scale) + 1.0 if yarn_orig_ctx and freq_scale != 1.0 else 1.0


def apply_rope(x: np.ndarray, angles: np.ndarray, n_rot: int, neox: bool, mscale: float = 1.0) -> np.ndarray:
    """x: (n_tokens, n_heads, head_dim); rotates the first n_rot dims of every head.

    normal (llama): pairs (2i, 2i+1); NeoX: pairs (i, i + n_rot/2). Dims >= n_rot pass.
    """
    cos = np.cos(angles)[:, None, :] * mscale        # (n_tokens, 1, n_rot/2)
    sin = np.sin(angles)[:, None, :] * mscale
    out = x.copy()
    if neox:
        half = n_rot // 2
        x0, x1 = x[..., :half], x[..., half:n_rot]
        out[..., :half] = x0 * cos - x1 * sin
        out[..., half:n_rot] = x0 * sin + x1 * cos
    else:
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * cos - x1 * sin
        out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def attention_mask(n_tokens: int, sliding_window: int) -> np.ndarray:
    """(n_tokens, n_tokens) bool, True where query i may attend key j: j <= i and, with a
    window W (llama.cpp LLAMA_SWA_TYPE_STANDARD), i - j < W."""
    i = np.arange(n_tokens)[:, None]
    j = np.arange(n_tokens)[None, :]
    allowed = j <= i
    if sliding_window > 0:
        allowed &= (i - j) < sliding_window
    return allowed


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
              mask: np.ndarray, softcap: float = 0.0, sinks: Optional[np.ndarray] = None) -> np.ndarray:
    """q: (T, n_head, dk), k: (T, n_head_kv, dk), v: (T, n_head_kv, dv) -> (T, n_head*dv).

    GQA: query head h reads kv head h // (n_head / n_head_kv) (consecutive groups)."""
    n_tokens, n_head, _ = q.shape
    group = n_head // k.shape[1]
    k = np.repeat(k, group, axis=1)                            # (T, n_head, dk)
    v = np.repeat(v, group, axis=1)                            # (T, n_head, dv)
    scores = np.einsum("qhd,khd->hqk", q, k) * scale           # (n_head, T, T)
    if softcap > 0:
        scores = softcap * np.tanh(scores / softcap)
    scores = np.where(mask[None], scores, -np.inf)
    if sinks is not None:        # one more logit per head in every row, with no value
        sink_col = np.broadcast_to(sinks[:, None, None], scores.shape[:2] + (1,))
        scores = np.concatenate([scores, sink_col], axis=-1)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    probs = probs[..., :n_tokens]
    out = np.einsum("hqk,khd->qhd", probs, v)                  # (T, n_head, dv)
    return out.reshape(n_tokens, -1)


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------

class ReferenceModel:
    """Float64 forward pass over the dequantized weights of a GGUF file."""

    def __init__(self, path: str, n_ctx: Optional[int] = None):
        """n_ctx: the context size a runtime would run with; it picks LongRoPE's factor set
        (long above rope.scaling.original_context_length, as llama.cpp; default: the training
        context)."""
        self.path = str(path)
        self._reader = gguf.GGUFReader(self.path)
        self._tensors = {t.name: t for t in self._reader.tensors}
        shapes = {name: tuple(int(n) for n in reversed(t.shape))   # numpy order (rows, cols)
                  for name, t in self._tensors.items()}
        self.hparams = read_hparams(self._reader, shapes)
        self.n_ctx = n_ctx or self.hparams.n_ctx_train
        self._cache: Dict[str, np.ndarray] = {}
        self.router_margin = math.inf    # see route(); inf for dense models
        self.clamped = 0                 # gpt-oss: expert pre-activations its SwiGLU clamped
        hp = self.hparams
        if hp.n_head % hp.n_head_kv:
            raise ValueError(f"n_head {hp.n_head} is not a multiple of n_head_kv {hp.n_head_kv}")
        if hp.n_rot > hp.head_dim_k or hp.n_rot % 2:
            raise ValueError(f"rope.dimension_count {hp.n_rot} vs key_length {hp.head_dim_k}")

    # -- weights --------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self._tensors

    def weight(self, name: str) -> np.ndarray:
        """Dequantized tensor, numpy order (ne[1], ne[0]) for matrices, float64, cached.
        The token embedding stays float32 (exact: it is what gguf dequantizes to) to halve
        its memory; it is widened per use."""
        if name not in self._cache:
            t = self._tensors[name]
            values = dequantize(t.data, t.tensor_type)
            shape = tuple(int(n) for n in reversed(t.shape))
            values = np.asarray(values).reshape(shape)
            dtype = np.float32 if name == "token_embd.weight" else np.float64
            self._cache[name] = values.astype(dtype)
        return self._cache[name]

    def _optional(self, name: str) -> Optional[np.ndarray]:
        return self.weight(name) if self.has(name) else None

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x: (T, n_in) @ W(n_out, n_in).T (+ bias when the file has `<name>.bias`)."""
        y = x @ self.weight(f"{name}.weight").T
        if self.has(f"{name}.bias"):
            y = y + self.weight(f"{name}.bias")
        return y

    # -- blocks ---------------------------------------------------------------------
    def _qkv(self, il: int, x: np.ndarray):
        """x: (T, n_embd) -> q (T, n_head, dk), k (T, n_head_kv, dk), v (T, n_head_kv, dv)."""
        hp = self.hparams
        p = f"blk.{il}"
        n_q, n_k = hp.n_head * hp.head_dim_k, hp.n_head_kv * hp.head_dim_k
        if self.has(f"{p}.attn_qkv.weight"):                  # phi3: rows q | k | v
            qkv = self._linear(x, f"{p}.attn_qkv")
            q, k, v = qkv[:, :n_q], qkv[:, n_q:n_q + n_k], qkv[:, n_q + n_k:]
        else:
            q = self._linear(x, f"{p}.attn_q")
            k = self._linear(x, f"{p}.attn_k")
            v = self._linear(x, f"{p}.attn_v")
        T = x.shape[0]
        return (q.reshape(T, hp.n_head, hp.head_dim_k),
                k.reshape(T, hp.n_head_kv, hp.head_dim_k),
                v.reshape(T, hp.n_head_kv, hp.head_dim_v))

    def _self_attention(self, il: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: normed (T, n_embd) -> attention output after attn_output (T, n_embd)."""
        hp = self.hparams
        p = f"blk.{il}"
        q, k, v = self._qkv(il, x)
        if hp.arch in QK_NORM_ARCHS:                          # per-head RMSNorm over dk
            q = rms_norm(q, self.weight(f"{p}.attn_q_norm.weight"), hp.rms_eps)
            k = rms_norm(k, self.weight(f"{p}.attn_k_norm.weight"), hp.rms_eps)
        if hp.arch in QK_NORM_FULL_ARCHS:                     # one RMSNorm over all heads
            T = x.shape[0]
            q = rms_norm(q.reshape(T, -1), self.weight(f"{p}.attn_q_norm.weight"), hp.rms_eps).reshape(q.shape)
            k = rms_norm(k.reshape(T, -1), self.weight(f"{p}.attn_k_norm.weight"), hp.rms_eps).reshape(k.shape)
        is_swa = hp.swa_layers[il]
        base = hp.rope_base_swa if is_swa else hp.rope_base
        freq_scale = hp.rope_freq_scale_swa if is_swa else hp.rope_freq_scale
        yarn = hp.yarn_orig_ctx if (not is_swa or hp.arch == "gpt-oss") else 0
        factors, mscale = self._optional("rope_freqs.weight"), yarn_mscale(freq_scale, yarn)
        if hp.longrope_orig_ctx:
            factors = self.weight("rope_factors_long.weight" if self.n_ctx > hp.longrope_orig_ctx
                                  else "rope_factors_short.weight")
            mscale = hp.longrope_attn_factor
        if hp.rope_layers[il]:
            angles = rope_angles(positions, hp.n_rot, base, freq_scale, factors, yarn)
            q = apply_rope(q, angles, hp.n_rot, hp.rope_neox, mscale)
            k = apply_rope(k, angles, hp.n_rot, hp.rope_neox, mscale)
        mask = attention_mask(x.shape[0], hp.sliding_window if is_swa else 0)
        out = attention(q, k, v, hp.attn_scale, mask, hp.attn_softcap,
                        self._optional(f"{p}.attn_sinks.weight"))    # (T, n_head * dv)
        return self._linear(out, f"{p}.attn_output")

    def _feed_forward(self, il: int, x: np.ndarray) -> np.ndarray:
        """x: normed (T, n_embd) -> (T, n_embd). down(act(gate(x)) * up(x))."""
        p = f"blk.{il}"
        if self.hparams.n_expert:
            return self._experts(il, x)
        if self.has(f"{p}.ffn_gate.weight"):
            gate = self._linear(x, f"{p}.ffn_gate")
            up = self._linear(x, f"{p}.ffn_up")
        else:                                                 # phi3: ffn_up rows gate | up
            fused = self._linear(x, f"{p}.ffn_up")
            gate, up = np.split(fused, 2, axis=1)
        act = gelu_tanh(gate) if self.hparams.arch in GEMMA_ARCHS else silu(gate)
        return self._linear(act * up, f"{p}.ffn_down")

    def route(self, il: int, x: np.ndarray):
        """x: normed (T, n_embd) -> (picked (T, k) expert ids, weights (T, k)) of layer il.

        Records in self.router_margin the smallest gap, over tokens, between the k-th and the
        (k+1)-th selection score (probabilities; gpt-oss: logits): the choice is discontinuous, so
        a runtime whose router input differs by its rounding can pick another expert where this
        gap is tiny; tests compare logits only where it is not."""
        hp = self.hparams
        logits = self._linear(x, f"blk.{il}.ffn_gate_inp")                    # (T, n_expert)
        score = logits
        if hp.arch != "gpt-oss":
            score = np.exp(logits - logits.max(axis=1, keepdims=True))
            score /= score.sum(axis=1, keepdims=True)
        if hp.n_expert_used < hp.n_expert:
            ranked = -np.sort(-score, axis=1)
            gap = float(np.min(ranked[:, hp.n_expert_used - 1] - ranked[:, hp.n_expert_used]))
            self.router_margin = min(self.router_margin, gap)
        if hp.arch == "gpt-oss":      # top-k of the logits, softmax over those k
            picked = np.argsort(-logits, axis=1, kind="stable")[:, :hp.n_expert_used]
            top = np.take_along_axis(logits, picked, axis=1)
            weights = np.exp(top - top.max(axis=1, keepdims=True))
            return picked, weights / weights.sum(axis=1, keepdims=True)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        picked = np.argsort(-probs, axis=1, kind="stable")[:, :hp.n_expert_used]
        weights = np.take_along_axis(probs, picked, axis=1)
        if hp.expert_weights_norm:
            weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 6.103515625e-5)
        return picked, weights

    def _experts(self, il: int, x: np.ndarray) -> np.ndarray:
        """The mixture-of-experts FFN: every token through its k experts, weighted sum."""
        p = f"blk.{il}"
        gate, up, down = (self.weight(f"{p}.ffn_{r}_exps.weight") for r in ("gate", "up", "down"))
        def bias(role, like):      # (n_expert, n_out): gpt-oss's, else zeros
            b = self._optional(f"{p}.ffn_{role}_exps.bias")
            return np.zeros(like.shape[:2]) if b is None else b
        gate_b, up_b, down_b = bias("gate", gate), bias("up", up), bias("down", down)
        picked, weights = self.route(il, x)
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            for e, w in zip(picked[t], weights[t]):
                g, u = gate[e] @ x[t] + gate_b[e], up[e] @ x[t] + up_b[e]
                if self.hparams.arch == "gpt-oss":
                    self.clamped += int(np.sum(g > OAI_SWIGLU_LIMIT) + np.sum(np.abs(u) > OAI_SWIGLU_LIMIT))
                    g, u = np.minimum(g, OAI_SWIGLU_LIMIT), np.clip(u, -OAI_SWIGLU_LIMIT, OAI_SWIGLU_LIMIT)
                    h = g / (1.0 + np.exp(-OAI_SWIGLU_ALPHA * g)) * (u + 1.0)
                else:
                    h = silu(g) * u
                out[t] += w * (down[e] @ h + down_b[e])
        if self.has(f"{p}.ffn_gate_inp_shexp.weight"):     # qwen2moe's shared expert
            gate_logit = x @ self.weight(f"{p}.ffn_gate_inp_shexp.weight")
            shared = self._linear(silu(self._linear(x, f"{p}.ffn_gate_shexp")) * self._linear(x, f"{p}.ffn_up_shexp"),
                                  f"{p}.ffn_down_shexp")
            out += shared / (1.0 + np.exp(-gate_logit))[:, None]
        return out

    def _block_prenorm(self, il: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """llama / qwen2 / qwen3 / phi3: x + attn(norm(x)), then h + ffn(norm(h))."""
        eps, p = self.hparams.rms_eps, f"blk.{il}"
        h = x + self._self_attention(il, rms_norm(x, self.weight(f"{p}.attn_norm.weight"), eps),
                                     positions)
        return h + self._feed_forward(il, rms_norm(h, self.weight(f"{p}.ffn_norm.weight"), eps))

    def _block_granite(self, il: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """granite: the llama block with each branch scaled by residual_scale."""
        eps, p, r = self.hparams.rms_eps, f"blk.{il}", self.hparams.residual_scale
        h = x + r * self._self_attention(il, rms_norm(x, self.weight(f"{p}.attn_norm.weight"), eps), positions)
        return h + r * self._feed_forward(il, rms_norm(h, self.weight(f"{p}.ffn_norm.weight"), eps))

    def _block_olmo2(self, il: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """olmo2: x + post_norm(attn(x)), then h + post_ffw_norm(ffn(h)) (no pre-norms)."""
        eps, p = self.hparams.rms_eps, f"blk.{il}"
        h = x + rms_norm(self._self_attention(il, x, positions),
                         self.weight(f"{p}.post_attention_norm.weight"), eps)
        return h + rms_norm(self._feed_forward(il, h), self.weight(f"{p}.post_ffw_norm.weight"), eps)

    def _block_gpt_oss(self, il: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """gpt-oss: the pre-norm block whose FFN norm is the tensor post_attention_norm."""
        eps, p = self.hparams.rms_eps, f"blk.{il}"
        h = x + self._self_attention(il, rms_norm(x, self.weight(f"{p}.attn_norm.weight"), eps), positions)
        return h + self._feed_forward(il, rms_norm(h, self.weight(f"{p}.post_attention_norm.weight"), eps))

    def _block_gemma3(self, il: int, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """gemma3: x + post_norm(attn(norm(x))), then h + post_ffw_norm(ffn(ffn_norm(h)))."""
        eps, p = self.hparams.rms_eps, f"blk.{il}"
        attn = self._self_attention(il, rms_norm(x, self.weight(f"{p}.attn_norm.weight"), eps),
                                    positions)
        h = x + rms_norm(attn, self.weight(f"{p}.post_attention_norm.weight"), eps)
        ffn = self._feed_forward(il, rms_norm(h, self.weight(f"{p}.ffn_norm.weight"), eps))
        return h + rms_norm(ffn, self.weight(f"{p}.post_ffw_norm.weight"), eps)

    # -- whole model ----------------------------------------------------------------
    def embed(self, token_ids: Sequence[int]) -> np.ndarray:
        """(T,) ids -> (T, n_embd) float64 rows of token_embd, times embd_scale."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"token_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.hparams.n_vocab:
            raise ValueError(f"token id out of range [0, {self.hparams.n_vocab}): "
                             f"min {ids.min()}, max {ids.max()}")
        return self.weight("token_embd.weight")[ids].astype(np.float64) * self.hparams.embd_scale

    def hidden(self, token_ids: Sequence[int]) -> np.ndarray:
        """(T,) ids -> final normed hidden states (T, n_embd)."""
        x = self.embed(token_ids)
        positions = np.arange(x.shape[0])
        block = {"gemma3": self._block_gemma3, "gemma2": self._block_gemma3, "granite": self._block_granite,
                 "olmo2": self._block_olmo2, "gpt-oss": self._block_gpt_oss}.get(self.hparams.arch,
                                                                                  self._block_prenorm)
        for il in range(self.hparams.n_layer):
            x = block(il, x, positions)
        return rms_norm(x, self.weight("output_norm.weight"), self.hparams.rms_eps)

    def output_head(self, h: np.ndarray, chunk_rows: int = 32768) -> np.ndarray:
        """h: (T, n_embd) -> logits (T, n_vocab); `output.weight`, else the tied embedding.
        Widened to float64 in row chunks so a 262144-row embedding needs no float64 copy."""
        name = "output.weight" if self.has("output.weight") else "token_embd.weight"
        w = self.weight(name)                                  # (n_vocab, n_embd)
        logits = np.empty((h.shape[0], w.shape[0]), dtype=np.float64)
        for start in range(0, w.shape[0], chunk_rows):
            rows = w[start:start + chunk_rows].astype(np.float64)
            logits[:, start:start + rows.shape[0]] = h @ rows.T
        logits /= self.hparams.logit_scale
        cap = self.hparams.final_logit_softcap
        if cap > 0:
            logits = cap * np.tanh(logits / cap)
        return logits

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Causal logits of every position: (n_tokens, n_vocab) float64."""
        return self.output_head(self.hidden(token_ids))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

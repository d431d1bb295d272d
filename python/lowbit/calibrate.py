"""Calibration statistics from a float32 numpy forward pass: the importance matrix.

``compute_imatrix(path, text)`` runs the text through the model in chunks (llama-imatrix's
chunking: n_ctx tokens, the first one BOS) and, for every weight matrix of the repeating
layers, sums x^2 of its inputs per input column and counts the input rows, as llama.cpp's
imatrix collector does. The result saves in llama.cpp's imatrix formats (``imatrix.IMatrix``).

The forward pass is the math of ``tests/reference_forward.py`` (llama.cpp's graphs for llama,
qwen2, qwen3, gemma3, phi3) in float32 with an observer on every matmul input; it needs no
compiled engine and runs 100-300M-parameter models at a few seconds per 512-token chunk.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import quant
from .gguf_file import GGUFFile
from .imatrix import IMatrix

Observer = Callable[[str, np.ndarray], None]        # (weight name, inputs (T, n_in))
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
_NEOX = ("qwen2", "qwen3", "gemma3", "phi3")
_GEMMA3_SWA_PATTERN = 6


class _Hp:
    """Hyper-parameters from ``<arch>.*`` metadata (one value for every layer)."""

    def __init__(self, meta, shapes):
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ValueError(f"calibration supports {', '.join(ARCHITECTURES)}, not {arch!r}")

        def key(name, default=None):
            v = meta.get(f"{arch}.{name}", default)
            if isinstance(v, list):
                raise ValueError(f"{arch}.{name} differs per layer; calibration needs one value")
            return v

        self.arch = arch
        self.n_embd = int(key("embedding_length"))
        self.n_head = int(key("attention.head_count"))
        self.n_head_kv = int(key("attention.head_count_kv", self.n_head))
        self.dk = int(key("attention.key_length", self.n_embd // self.n_head))
        self.dv = int(key("attention.value_length", self.dk))
        self.n_layer = int(key("block_count"))
        self.n_rot = int(key("rope.dimension_count", self.dk))
        self.rope_base = float(key("rope.freq_base", 10000.0))
        factor = float(key("rope.scaling.factor", 0.0) or 0.0)
        self.freq_scale = 1.0 / factor if factor else 1.0
        self.eps = float(key("attention.layer_norm_rms_epsilon", 1e-5))
        window = int(key("attention.sliding_window", 0) or 0) if arch == "gemma3" else 0
        self.window = window
        self.swa = [window > 0 and il % _GEMMA3_SWA_PATTERN < _GEMMA3_SWA_PATTERN - 1 for il in range(self.n_layer)]
        self.rope_base_swa = float(key("rope.freq_base_swa", 10000.0))
        if arch == "gemma3":
            self.attn_scale = 1 / math.sqrt(self.n_embd / self.n_head) if self.n_layer == 62 else 1 / math.sqrt(self.dk)
            self.embd_scale = math.sqrt(self.n_embd)
        else:
            self.attn_scale, self.embd_scale = 1 / math.sqrt(self.dk), 1.0


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, scale: float, neox: bool,
          factors: Optional[np.ndarray]) -> np.ndarray:
    """x: (T, heads, d); rotates the first n_rot dims (pairs (i, i+n_rot/2) for NeoX, else (2i, 2i+1))."""
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    if factors is not None:
        inv = inv / factors
    ang = pos.astype(np.float64)[:, None] * scale * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :].astype(np.float32), np.sin(ang)[:, None, :].astype(np.float32)
    out = x.copy()
    if neox:
        h = n_rot // 2
        a, b = x[..., :h], x[..., h:n_rot]
        out[..., :h], out[..., h:n_rot] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = a * cos - b * sin, a * sin + b * cos
    return out


def _attention(q, k, v, scale: float, window: int) -> np.ndarray:
    """q (T, H, dk), k (T, Hkv, dk), v (T, Hkv, dv) -> (T, H*dv), causal (+ sliding window)."""
    T, H, _ = q.shape
    g = H // k.shape[1]
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = (j <= i) & ((i - j) < window if window > 0 else True)
    s = np.einsum("qhd,khd->hqk", q, k) * np.float32(scale)
    s = np.where(allowed[None], s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", s, v).reshape(T, -1)


class CalibrationModel:
    """Float32 forward pass over a GGUF's dequantized weights with a matmul-input observer."""

    def __init__(self, path: str):
        self._file = GGUFFile(path)
        self._infos = {t.name: t for t in self._file.tensors}
        self.hp = _Hp(self._file.metadata, {n: t.shape for n, t in self._infos.items()})
        self._cache: Dict[str, np.ndarray] = {}
        self.observer: Optional[Observer] = None

    def close(self) -> None:
        self._cache.clear()
        self._file.close()

    def has(self, name: str) -> bool:
        return name in self._infos

    def weight(self, name: str) -> np.ndarray:
        """float32, numpy order (ne1, ne0) for matrices; cached."""
        if name not in self._cache:
            t = self._infos[name]
            self._cache[name] = quant.dequantize(self._file.tensor_bytes(name), t.type, t.shape[::-1])
        return self._cache[name]

    def _rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` of a (n_rows, n) matrix, dequantizing only those rows."""
        t = self._infos[name]
        raw = self._file.tensor_bytes(name).reshape(t.shape[1], -1)[ids]
        return quant.dequantize(np.ascontiguousarray(raw), t.type, (len(ids), t.shape[0]))

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        if self.observer is not None:
            self.observer(f"{name}.weight", x)
        y = x @ self.weight(f"{name}.weight").T
        return y + self.weight(f"{name}.bias") if self.has(f"{name}.bias") else y

    def _attn(self, il: int, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        hp, p = self.hp, f"blk.{il}"
        T = x.shape[0]
        if self.has(f"{p}.attn_qkv.weight"):
            nq, nk = hp.n_head * hp.dk, hp.n_head_kv * hp.dk
            qkv = self._linear(x, f"{p}.attn_qkv")
            q, k, v = qkv[:, :nq], qkv[:, nq:nq + nk], qkv[:, nq + nk:]
        else:
            q, k, v = (self._linear(x, f"{p}.attn_{n}") for n in "qkv")
        q, k, v = q.reshape(T, hp.n_head, hp.dk), k.reshape(T, hp.n_head_kv, hp.dk), v.reshape(T, hp.n_head_kv, hp.dv)
        if hp.arch in ("qwen3", "gemma3"):
            q = _rms_norm(q, self.weight(f"{p}.attn_q_norm.weight"), hp.eps)
            k = _rms_norm(k, self.weight(f"{p}.attn_k_norm.weight"), hp.eps)
        swa = hp.swa[il]
        factors = self.weight("rope_freqs.weight") if self.has("rope_freqs.weight") else None
        base = hp.rope_base_swa if swa else hp.rope_base
        q = _rope(q, pos, hp.n_rot, base, hp.freq_scale if not swa else 1.0, hp.arch in _NEOX, factors)
        k = _rope(k, pos, hp.n_rot, base, hp.freq_scale if not swa else 1.0, hp.arch in _NEOX, factors)
        return self._linear(_attention(q, k, v, hp.attn_scale, hp.window if swa else 0), f"{p}.attn_output")

    def _ffn(self, il: int, x: np.ndarray) -> np.ndarray:
        p = f"blk.{il}"
        if self.has(f"{p}.ffn_gate.weight"):
            gate, up = self._linear(x, f"{p}.ffn_gate"), self._linear(x, f"{p}.ffn_up")
        else:
            gate, up = np.split(self._linear(x, f"{p}.ffn_up"), 2, axis=1)
        if self.hp.arch == "gemma3":
            act = 0.5 * gate * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (gate + 0.044715 * gate ** 3)))
        else:
            act = gate / (1 + np.exp(-gate))
        return self._linear(act * up, f"{p}.ffn_down")

    def hidden(self, ids: Sequence[int]) -> np.ndarray:
        """(T,) token ids -> final normed hidden states (T, n_embd) float32."""
        hp = self.hp
        ids = np.asarray(ids, dtype=np.int64)
        x = self._rows("token_embd.weight", ids) * np.float32(hp.embd_scale)
        pos = np.arange(len(ids))
        for il in range(hp.n_layer):
            p = f"blk.{il}"
            a = self._attn(il, _rms_norm(x, self.weight(f"{p}.attn_norm.weight"), hp.eps), pos)
            if hp.arch == "gemma3":
                h = x + _rms_norm(a, self.weight(f"{p}.post_attention_norm.weight"), hp.eps)
                f = self._ffn(il, _rms_norm(h, self.weight(f"{p}.ffn_norm.weight"), hp.eps))
                x = h + _rms_norm(f, self.weight(f"{p}.post_ffw_norm.weight"), hp.eps)
            else:
                h = x + a
                x = h + self._ffn(il, _rms_norm(h, self.weight(f"{p}.ffn_norm.weight"), hp.eps))
        return _rms_norm(x, self.weight("output_norm.weight"), hp.eps)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """(T, n_vocab) float32 (output.weight, else the tied embedding; gemma's soft-cap)."""
        h = self.hidden(ids)
        name = "output.weight" if self.has("output.weight") else "token_embd.weight"
        out = h @ self.weight(name).T
        cap = float(self._file.metadata.get(f"{self.hp.arch}.final_logit_softcapping", 0.0) or 0.0)
        return cap * np.tanh(out / cap) if cap > 0 else out


def check_chunks(n_chunks: Optional[int], what: str = "n_chunks") -> None:
    """None (all) or a positive count; ValueError otherwise (-1 used to mean "all" silently)."""
    if n_chunks is not None and (isinstance(n_chunks, bool) or not isinstance(n_chunks, int) or n_chunks <= 0):
        raise ValueError(f"{what} must be a positive number of chunks or None (all), got {n_chunks!r}")


def compute_imatrix(path: str, text: str, *, n_ctx: int = 512, n_chunks: Optional[int] = None,
                    progress: Optional[Callable[[int, int], Optional[bool]]] = None) -> IMatrix:
    """llama-imatrix on ``text``: chunks of n_ctx tokens (first one BOS), x^2 sums of the inputs of
    every ``blk.*`` weight matrix. progress(done, total) after each chunk; False stops early
    (the chunks so far are kept)."""
    from .evaluate import make_chunks
    from .tokenizer import Tokenizer
    check_chunks(n_chunks)
    model = CalibrationModel(path)
    try:
        tok = Tokenizer.from_metadata(model._file.metadata)
        chunks = make_chunks(tok.encode(text, add_special=False), n_ctx, n_chunks,
                             tok.bos_id if tok.add_bos else None)
        im = IMatrix(chunk_size=n_ctx)

        def observe(name: str, x: np.ndarray) -> None:
            if name.startswith("blk."):
                im.add(name, x)

        model.observer = observe
        for i, chunk in enumerate(chunks):
            model.hidden(chunk)
            im.chunk_count = i + 1
            if progress is not None and progress(i + 1, len(chunks)) is False:
                break
        return im
    finally:
        model.close()

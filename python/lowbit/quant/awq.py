"""Activation-aware scaling (AWQ) folded into standard GGUF.

A matrix W (n_out, n_in) whose input x comes straight out of an RMSNorm (x = norm(h) * g) gives
the same output for W' = W diag(s) and g' = g / s:  W' (norm(h) * g / s) = W x. Quantizing W'
instead of W spends the grid's resolution on the columns the activations use most (large s):
their rounding error shrinks, in input units, by the factor s. The file keeps the layout llama.cpp
reads: only the values of the norm weights and of the matrices change.

Groups (one scale vector each, shared by the matrices that read the same input):
  attn_norm -> attn_q, attn_k, attn_v (or phi3's attn_qkv)
  ffn_norm  -> ffn_gate, ffn_up (or phi3's fused ffn_up)
  ffn_up rows -> ffn_down   (h = act(gate) * up: dividing up's rows by s divides h by s)
attn_output is left alone: its input is the attention's weighted sum of V, whose rows are shared
by a group of query heads (a fold into attn_v would need equal scales across the group).

Per group, s = rms(x)^alpha (geometric mean 1) with alpha searched on a grid; the loss of a
candidate is the output error on calibration activations, sum_W tr(E H E^T) with
E = W - deq(quant(W diag(s))) diag(1/s) and H = X^T X / n. alpha = 0 is plain imatrix rounding,
so the search can only keep or lower that loss. With a held-out Hessian (``gptq.Hessians``
collects one from a quarter of the chunks) the loss is measured on it, so a scale that only fits
the calibration chunks is not kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowbit.quant import blocks
from lowbit.quant.gptq import output_loss

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))   # 0.0 .. 1.0; 0 = no scaling
# Architectures whose attn_norm / ffn_norm are RMSNorms that feed the matrices directly (no bias).
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "phi3")
_FLOATS = ("F32", "F16", "BF16")


@dataclass
class Group:
    source: str                 # the tensor whose output is the members' input: a norm, or ffn_up
    members: List[str]          # matrices that read that input
    source_rows: Tuple[int, int] = (0, 0)   # ffn_up: the rows that produce the input (phi3: the up half)
    alpha: float = 0.0
    scale: Optional[np.ndarray] = None       # (n_in,) float64, None while alpha is 0
    loss_plain: float = 0.0
    loss_scaled: float = 0.0


@dataclass
class AWQPlan:
    groups: List[Group] = field(default_factory=list)
    col_scale: Dict[str, np.ndarray] = field(default_factory=dict)    # matrix -> s on its columns
    row_divisor: Dict[str, Tuple[np.ndarray, Tuple[int, int]]] = field(default_factory=dict)   # ffn_up
    norm_divisor: Dict[str, np.ndarray] = field(default_factory=dict)  # norm weight -> divided by s

    def fold(self, g: Group, s: np.ndarray) -> None:
        """Scale group ``g``'s members' columns by s and divide its source (norm weight, or
        ffn_up's rows) by s."""
        g.scale = s
        for m in g.members:
            self.col_scale[m] = s
        if g.source.endswith("ffn_up.weight"):
            self.row_divisor[g.source] = (s, g.source_rows)
        else:
            self.norm_divisor[g.source] = s

    def transforms(self, name: str) -> bool:
        return name in self.col_scale or name in self.row_divisor or name in self.norm_divisor

    def apply(self, name: str, x: np.ndarray) -> np.ndarray:
        """The tensor ``name`` (float32, (rows, n) or (n,)) with the plan's scales folded in."""
        x = np.array(x, dtype=np.float64)
        if name in self.norm_divisor:
            x = x / self.norm_divisor[name].reshape(x.shape)
        if name in self.row_divisor:
            s, (r0, r1) = self.row_divisor[name]
            x[r0:r1] /= s[:, None]
        if name in self.col_scale:
            x = x * self.col_scale[name][None, :]
        return x.astype(np.float32)

    def hessian(self, name: str, h: np.ndarray) -> np.ndarray:
        """The Hessian of ``name``'s scaled input x / s: diag(1/s) H diag(1/s)."""
        s = self.col_scale.get(name)
        return h if s is None else h / np.outer(s, s)


def find_groups(names: Sequence[str], shapes: Dict[str, Tuple[int, ...]], n_layers: int) -> List[Group]:
    """The fold groups the file's tensors allow (see module doc); shapes are GGUF order (ne0 first)."""
    have = set(names)
    groups = []
    for i in range(n_layers):
        p = f"blk.{i}."
        attn = [p + r + ".weight" for r in ("attn_q", "attn_k", "attn_v") if p + r + ".weight" in have]
        if not attn and p + "attn_qkv.weight" in have:
            attn = [p + "attn_qkv.weight"]
        if attn and p + "attn_norm.weight" in have:
            groups.append(Group(p + "attn_norm.weight", attn))
        ffn = [p + r + ".weight" for r in ("ffn_gate", "ffn_up") if p + r + ".weight" in have]
        if ffn and p + "ffn_norm.weight" in have:
            groups.append(Group(p + "ffn_norm.weight", ffn))
        up, down = p + "ffn_up.weight", p + "ffn_down.weight"
        if up in have and down in have:
            n_ff = shapes[down][0]
            up_rows = shapes[up][1]
            if up_rows == n_ff:
                groups.append(Group(up, [down], (0, n_ff)))
            elif up_rows == 2 * n_ff and p + "ffn_gate.weight" not in have:   # phi3: [gate | up]
                groups.append(Group(up, [down], (n_ff, 2 * n_ff)))
    return groups


def channel_rms(h: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(np.diag(h), 0.0))
    return np.maximum(d, 1e-5 * max(float(d.max()), 1e-30))


def scales_for(rms: np.ndarray, alpha: float) -> np.ndarray:
    s = rms ** alpha
    return s / np.exp(np.mean(np.log(s)))


def search_group(weights: Dict[str, np.ndarray], types: Dict[str, str], h_fit: np.ndarray,
                 h_eval: np.ndarray, alphas: Sequence[float] = ALPHAS) -> Tuple[float, np.ndarray, float, float]:
    """(alpha, s, loss at alpha 0, loss at alpha) for matrices sharing one input. Each candidate is
    quantized imatrix-weighted by the scaled input's mean square (diag(H) / s^2) and scored on
    h_eval."""
    rms = channel_rms(h_fit)
    importance = np.maximum(np.diag(h_fit), 0.0)
    best = None
    plain = 0.0
    for alpha in alphas:
        s = scales_for(rms, alpha)
        loss = 0.0
        for name, w in weights.items():
            qtype = types[name]
            ws = (w * s[None, :]).astype(np.float32)
            if qtype in _FLOATS:
                continue     # not rounded to a grid: the fold is exact, no loss either way
            raw = blocks.quantize(ws, qtype, imatrix=(importance / (s * s)).astype(np.float32))
            w_hat = blocks.dequantize(raw, qtype, ws.shape).astype(np.float64) / s[None, :]
            loss += output_loss(w, w_hat, h_eval)
        if alpha == 0:
            plain = loss
        if best is None or loss < best[2]:
            best = (alpha, s, loss)
    return best[0], best[1], plain, best[2]


def plan_awq(read: Callable[[str], np.ndarray], shapes: Dict[str, Tuple[int, ...]], types: Dict[str, str],
             hessians, n_layers: int, progress: Optional[Callable[[int, int], None]] = None) -> AWQPlan:
    """Searches every group's scales. read(name) -> float32 (rows, n_in); types: target type by
    tensor; hessians: ``gptq.Hessians`` (its held-out part, when present, scores the candidates)."""
    plan = AWQPlan()
    groups = [g for g in find_groups(list(shapes), shapes, n_layers)
              if all(hessians.mean(m) is not None for m in g.members)]
    for i, g in enumerate(groups):
        h_fit = hessians.mean(g.members[0])
        h_eval = hessians.holdout_mean(g.members[0])
        h_eval = h_fit if h_eval is None else h_eval
        weights = {m: read(m) for m in g.members}
        g.alpha, s, g.loss_plain, g.loss_scaled = search_group(weights, types, h_fit, h_eval)
        if g.alpha > 0:
            plan.fold(g, s)
        plan.groups.append(g)
        if progress is not None:
            progress(i + 1, len(groups))
    return plan


def summary(plan: AWQPlan) -> str:
    scaled = [g for g in plan.groups if g.scale is not None]
    plain = sum(g.loss_plain for g in plan.groups)
    after = sum(g.loss_scaled for g in plan.groups)
    alphas = sorted({g.alpha for g in scaled})
    return (f"awq: {len(scaled)} of {len(plan.groups)} groups scaled (alpha {', '.join(map(str, alphas)) or '-'}); "
            f"calibration output error {after / plain if plain else 1.0:.3f}x of unscaled rounding")

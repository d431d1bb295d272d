"""Activation precision of the quantized matmuls: "q8" (activations quantized once to q8_0 /
q8_K, as llama.cpp) and "high" (x = hi + lo/256, both q8; csrc/cpu/matmul.h).

Bounds, per output y = sum_i w_i x_i against the float64 dot of the dequantized weights and the
exact activations; s_b = amax of activation block b / 127 (blocks of 32 for q8_0, 256 for q8_K),
|w|_b = sum of |w_i| over that block, F = 2e-6 * sum_i |w_i x_i| (f32 rounding):
  q8:    |err| <= sum_b 0.57 s_b |w|_b + F     (half a step, + q8_0's fp16 scale: 127 * 2^-11 s_b)
  high:  |err| <= sum_b 0.57 s_b |w|_b / 100 + F
(the high part's step is <= 0.57 s_b / 127 x 1.07, so ~200x below q8; 100x is the tested bar).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit.runtime import cpu
from lowbit.quant import blocks as q

sys.path.insert(0, os.path.dirname(__file__))
from _models import real_model_path  # noqa: E402

QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]
ROWS, COLS = 24, 512


def activations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, COLS) heavy-tailed rows at magnitudes 1e-3 .. 1e2 (small rows exercise fp16 scales)."""
    x = rng.standard_normal((n, COLS)) * np.exp(rng.standard_normal((n, COLS)))
    return (x * np.logspace(-3, 2, n)[:, None]).astype(np.float32)


def weights(rng: np.random.Generator, t: str):
    w = (rng.standard_normal((ROWS, COLS)) * 0.1).astype(np.float32)
    raw = q.quantize(w, t)
    return raw, q.dequantize(raw, t, (ROWS, COLS)).astype(np.float64)


def q8_error_bound(t: str, x: np.ndarray, wd: np.ndarray) -> np.ndarray:
    """(n, ROWS): sum over activation blocks of 0.57 * step * |w| of the block."""
    blk = 32 if cpu.act_format(t) == "Q8_0" else 256
    n = x.shape[0]
    step = np.abs(x.astype(np.float64)).reshape(n, -1, blk).max(-1) / 127.0       # (n, blocks)
    wabs = np.abs(wd).reshape(ROWS, -1, blk).sum(-1)                                 # (ROWS, blocks)
    return 0.57 * step @ wabs.T


@pytest.mark.parametrize("t", QUANT_TYPES)
def test_two_pass_dot_error_is_far_below_q8(t):
    rng = np.random.default_rng(QUANT_TYPES.index(t))
    raw, wd = weights(rng, t)
    x = activations(rng, 9)
    exact = x.astype(np.float64) @ wd.T
    rounding = 2e-6 * (np.abs(x.astype(np.float64)) @ np.abs(wd).T)
    bound = q8_error_bound(t, x, wd)
    err_q8 = np.abs(q.matmul(raw, t, (ROWS, COLS), x, act_precision="q8") - exact)
    err_high = np.abs(q.matmul(raw, t, (ROWS, COLS), x, act_precision="high") - exact)
    assert (err_q8 <= bound + rounding).all(), f"{t}: q8 error {err_q8.max():.3g} above its bound"
    assert (err_high <= bound / 100 + rounding).all(), \
        f"{t}: high error {(err_high / (bound / 100 + rounding)).max():.3g} x its bound"
    # What it buys on random data: mean error at least 100x smaller than q8's.
    assert err_high.mean() * 100 < err_q8.mean(), f"{t}: {err_high.mean():.3g} vs q8 {err_q8.mean():.3g}"


@pytest.mark.parametrize("t", QUANT_TYPES + ["F32", "F16", "BF16"])
def test_high_matmul_equals_matvec_rows(t):
    rng = np.random.default_rng(7 + QUANT_TYPES.index(t) if t in QUANT_TYPES else 99)
    w = (rng.standard_normal((ROWS, COLS)) * 0.1).astype(np.float32)
    raw = q.quantize(w, t)
    x = activations(rng, 11)   # 11 tokens: a partial tile of (hi, lo) pairs
    y = q.matmul(raw, t, (ROWS, COLS), x, n_threads=2, act_precision="high")
    for i in range(x.shape[0]):
        yi = q.matmul(raw, t, (ROWS, COLS), x[i], n_threads=2, act_precision="high")
        assert np.array_equal(y[i], yi), f"{t}: token {i} differs between matmul and matvec"
    # 20 tokens: the AVX-512 strip GEMM of the legacy types (another float order, tier 1)
    x20 = activations(rng, 20)
    y20 = q.matmul(raw, t, (ROWS, COLS), x20, n_threads=2, act_precision="high")
    tol = 4e-7 * (COLS // 16) * (np.abs(x20.astype(np.float64)) @ np.abs(w.astype(np.float64)).T)
    for i in (0, 7, 19):
        yi = q.matmul(raw, t, (ROWS, COLS), x20[i], n_threads=2, act_precision="high")
        assert (np.abs(y20[i] - yi) <= tol[i]).all(), f"{t}: token {i} of 20 off its mat-vec by more than tier 1"
    y8 = q.matmul(raw, t, (ROWS, COLS), x, act_precision="q8")
    if t in QUANT_TYPES:
        assert not np.array_equal(y, y8)
    else:   # float weights dot exact f32 activations either way
        assert np.array_equal(y, y8)


def test_high_is_the_same_on_every_kernel_set():
    levels = [lv.strip() for lv in cpu.features()["supported"].split(",")]
    before = cpu.get_kernels()
    rng = np.random.default_rng(3)
    x = activations(rng, 5)
    try:
        for t in ("Q4_K", "Q5_0"):
            raw, wd = weights(rng, t)
            outs = {}
            for level in levels:
                cpu.set_kernels(level)
                outs[level] = q.matmul(raw, t, (ROWS, COLS), x, act_precision="high")
            exact = x.astype(np.float64) @ wd.T
            scale = np.abs(x.astype(np.float64)) @ np.abs(wd).T
            for level, y in outs.items():
                assert (np.abs(y - exact) <= 1e-4 * scale).all(), f"{t} on {level}"
    finally:
        cpu.set_kernels(before)


def test_bad_precision_names_the_valid_ones():
    raw = q.quantize(np.ones((1, 32), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="'q8'.*'high'"):
        q.matmul(raw, "Q8_0", (1, 32), np.ones(32, np.float32), act_precision="fp16")
    with pytest.raises(ValueError, match="act_precision"):
        lowbit.load("/nonexistent.gguf", act_precision="16bit")


def test_engine_option_on_a_real_model():
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    ids = np.random.default_rng(5).integers(100, 20000, 24).astype(np.int32)
    out = {}
    for p in ("q8", "high"):
        e = _core.Engine(path, 64, 2, 64, "f16", act_precision=p)
        assert e.act_precision == p
        out[p] = e.eval(ids, all_logits=True)
        e.close()
    e = _core.Engine(path, 64, 2, 64, "f16")
    assert e.act_precision == "auto"                                      # the default
    # auto: high wherever a strip GEMM serves the prefill (SmolLM2: Q4_1 / Q8_0, on AVX-512), and
    # single-token decode steps at high; without strip GEMMs q8 everywhere (cpu/matmul.h)
    strip = _core.cpu_get_kernels() == "avx512"
    assert np.array_equal(e.eval(ids, all_logits=True), out["high" if strip else "q8"])
    step = {}
    for p in ("q8", "high", "auto"):
        ep = _core.Engine(path, 64, 2, 64, "f16", act_precision=p)
        for t in ids[:8]:                       # every eval a single-token decode step
            step[p] = ep.eval(np.array([t], dtype=np.int32))
        ep.close()
    auto_step = step["high"] if strip else step["q8"]
    assert np.array_equal(step["auto"], auto_step) and not np.array_equal(step["high"], step["q8"])
    e.close()
    diff = np.abs(out["high"] - out["q8"])
    assert 0 < diff.mean() < 0.15 * out["q8"].std(), (diff.mean(), out["q8"].std())
    assert (out["high"].argmax(-1) == out["q8"].argmax(-1)).mean() > 0.8
    with pytest.raises(ValueError, match="act_precision"):
        _core.Engine(path, 16, 1, 16, "f16", act_precision="int4")


def test_runtime_fidelity_reduced(tmp_path):
    """bench/bench_fidelity.py in small: one 256-token chunk of the pydoc corpus on SmolLM2,
    KL(f32-dequantized reference || shipped file) over positions 128..254. "high" must sit far
    below a third of q8's (the bench's 8 x 512 figures: q8 ~3e-3, high ~5e-7)."""
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import pydoc_data.topics
    from bench_fidelity import log_softmax, write_f32_reference
    from lowbit.runtime.gguf_file import GGUFFile
    from lowbit.runtime.tokenizer import Tokenizer

    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))[:4000]
    with GGUFFile(path) as g:
        tok = Tokenizer.from_metadata(g.metadata)
    ids = np.asarray(tok.encode(text, add_special=False)[:256], dtype=np.int32)
    assert ids.size == 256
    ids[0] = tok.bos_id
    ref_path = str(tmp_path / "f32.gguf")
    write_f32_reference(path, ref_path)

    def logprobs(p, act_precision):
        e = _core.Engine(p, 256, 2, 256, "f16", act_precision=act_precision)
        lp = log_softmax(e.eval(ids, all_logits=True)[128:255])
        e.close()
        return lp

    ref = logprobs(ref_path, "q8")
    kl = {}
    for prec in ("q8", "high"):
        lp = logprobs(path, prec)
        kl[prec] = float((np.exp(ref) * (ref - lp)).sum(-1).mean())
    assert 0 < kl["high"] < kl["q8"] / 3 and kl["high"] < 1e-4, kl

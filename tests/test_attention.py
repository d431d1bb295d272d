"""cpu/attention.h: one KV head's attention (online softmax over blocks of keys) through
lowbit._core.cpu_attend_head, on fresh random data.

Bounds: every kernel set against a float64 numpy attention of the same f16 / f32 rows, 3e-6
relative (float dots and sums over <= 1100 keys of <= 256 values; measured up to 1.5e-6); every
SIMD set against the scalar one, 1e-7 * sqrt(keys x d) relative over each case's outputs (tier 1:
only the lane order of float sums and a polynomial exp within 2 ulp differ; measured up to
1.6e-8 * sqrt(keys x d)). A token's output is the same bit for bit
in any tile or split of the heads (batched decode equals decode alone)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from lowbit import _core

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402
from reference_forward import ReferenceModel  # noqa: E402

SETS = [s.strip() for s in _core.cpu_features()["supported"].split(",")]
SIMD = [s for s in SETS if s != "scalar"]


def reference(q, k, v, pos0, window, scale, softcap=0.0, sinks=None):
    """float64 attention: token t at pos0 + t sees positions max(0, pos0 + t - window + 1)
    (window 0: 0) .. pos0 + t, position p in row p % n_cells of k / v."""
    n_tok, n_heads, d = q.shape
    n_cells = k.shape[0]
    kf, vf = k.astype(np.float64), v.astype(np.float64)
    out = np.zeros((n_tok, n_heads, d))
    for t in range(n_tok):
        pos = pos0 + t
        lo = max(0, pos - window + 1) if window else 0
        cells = np.arange(lo, pos + 1) % n_cells
        for h in range(n_heads):
            s = kf[cells] @ q[t, h].astype(np.float64) * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            m = s.max() if sinks is None else max(s.max(), float(sinks[h]))
            e = np.exp(s - m)
            den = e.sum() + (0.0 if sinks is None else np.exp(float(sinks[h]) - m))
            out[t, h] = e @ vf[cells] / den
    return out


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def case(seed, n_tok, n_heads, d, n_cells, pos0, dtype=np.float16, spread=2.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n_tok, n_heads, d)) * spread).astype(np.float32)
    k = rng.standard_normal((n_cells, d)).astype(dtype)
    v = rng.standard_normal((n_cells, d)).astype(dtype)
    return q, k, v


# (n_tok, n_heads, d, n_cells, pos0, window): decode and prefill tiles, GQA groups of 1..7 heads,
# odd head sizes (masked tails of the 16 / 8-lane loops and of the 64-value output chunks), keys
# across several 64-key blocks, sliding windows on rings that wrap (n_cells < pos0).
SHAPES = [
    (1, 3, 64, 128, 40, 0), (1, 4, 256, 128, 99, 0), (1, 7, 64, 1100, 1030, 0), (1, 1, 40, 64, 0, 0),
    (9, 7, 64, 600, 500, 0), (16, 4, 256, 256, 131, 0), (21, 3, 64, 300, 0, 0), (5, 2, 72, 90, 77, 0),
    (8, 1, 17, 70, 3, 0), (3, 5, 200, 160, 150, 0),
    (8, 4, 64, 20, 130, 12), (1, 3, 64, 70, 200, 64), (13, 2, 96, 150, 333, 100), (4, 1, 40, 9, 58, 6),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_scalar_matches_float64_reference(shape, dtype):
    n_tok, n_heads, d, n_cells, pos0, window = shape
    q, k, v = case(sum(shape), n_tok, n_heads, d, n_cells, pos0, dtype)
    scale = 1 / np.sqrt(d)
    got = _core.cpu_attend_head(q, k, v, pos0, window, scale, kernels="scalar")
    assert got.shape == q.shape and got.dtype == np.float32
    assert rel(got, reference(q, k, v, pos0, window, scale)) <= 3e-6


@pytest.mark.parametrize("kset", SIMD)
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_simd_matches_scalar(shape, dtype, kset):
    n_tok, n_heads, d, n_cells, pos0, window = shape
    q, k, v = case(100 + sum(shape), n_tok, n_heads, d, n_cells, pos0, dtype)
    scale = 1 / np.sqrt(d)
    want = _core.cpu_attend_head(q, k, v, pos0, window, scale, kernels="scalar")
    got = _core.cpu_attend_head(q, k, v, pos0, window, scale, kernels=kset)
    keys = min(pos0 + n_tok, window or pos0 + n_tok)
    assert rel(got, want) <= 1e-7 * np.sqrt(keys * d)
    assert rel(got, reference(q, k, v, pos0, window, scale)) <= 3e-6


@pytest.mark.parametrize("kset", SETS)
def test_softcap_and_sinks(kset):
    """gemma2's soft-capped scores and gpt-oss's sink logits (one per head: large, small, -inf)."""
    q, k, v = case(7, 6, 3, 64, 200, 150, spread=6.0)
    sinks = np.array([4.0, -3.0, -np.inf], np.float32)
    for softcap, snk in ((30.0, None), (0.0, sinks), (5.0, sinks)):
        got = _core.cpu_attend_head(q, k, v, 150, 0, 0.125, softcap, snk, kernels=kset)
        want = reference(q, k, v, 150, 0, 0.125, softcap, snk)
        assert rel(got, want) <= 3e-6
    plain = _core.cpu_attend_head(q, k, v, 150, 0, 0.125, kernels=kset)
    assert rel(got, plain) > 1e-2                   # the cap and the sinks do change the result


@pytest.mark.parametrize("kset", SETS)
def test_large_score_range_stays_finite(kset):
    """Scores spread over hundreds (rising along the keys: the running max moves every block):
    the rescaled sums neither overflow nor lose the winning keys."""
    q, k, v = case(8, 4, 2, 64, 400, 300, spread=40.0)
    k[:] = k + np.linspace(0, 3, 400, dtype=np.float32)[:, None].astype(k.dtype)
    got = _core.cpu_attend_head(q, k, v, 300, 0, 1.0, kernels=kset)
    assert np.isfinite(got).all()
    assert rel(got, reference(q, k, v, 300, 0, 1.0)) <= 3e-6


@pytest.mark.parametrize("d", [72, 256, 1040])
@pytest.mark.parametrize("kset", SETS)
def test_token_result_independent_of_tile_and_heads(kset, d):
    """A row's bits depend only on its query and its visible keys: the same token alone, in a
    tile of 12 and with the heads split gives equal outputs (what lets a batched decode step equal
    each decode alone, and prefill tiles equal any other tiling). Tiles of more than 8 rows take
    AVX-512's shared f16 -> f32 conversions (up to d 1024), single rows the per-group kernels."""
    q, k, v = case(9, 12, 4, d, 90, 0)
    pos0, window = 200, 50                          # a ring (90 cells) under a 50-key window
    tile = _core.cpu_attend_head(q, k, v, pos0, window, 0.1, kernels=kset)
    for t in (0, 5, 11):
        alone = _core.cpu_attend_head(q[t:t + 1], k, v, pos0 + t, window, 0.1, kernels=kset)
        assert np.array_equal(alone[0], tile[t])
        for h in range(4):
            one = _core.cpu_attend_head(q[t:t + 1, h:h + 1], k, v, pos0 + t, window, 0.1, kernels=kset)
            assert np.array_equal(one[0, 0], tile[t, h])
    tail = _core.cpu_attend_head(q[7:], k, v, pos0 + 7, window, 0.1, kernels=kset)
    assert np.array_equal(tail, tile[7:])


def test_bad_arguments_raise():
    q, k, v = case(10, 17, 4, 64, 200, 0)            # 68 rows: more than one item takes
    with pytest.raises(ValueError, match="at most 64 rows"):
        _core.cpu_attend_head(q, k, v, 0)
    with pytest.raises(ValueError, match="do not fit"):
        _core.cpu_attend_head(q[:2], k, v, 300)       # keys 0..301 in 200 cells
    with pytest.raises(ValueError, match="do not match"):
        _core.cpu_attend_head(q[:2], k[:, :32], v, 0)
    with pytest.raises(ValueError, match="float16 or float32"):
        _core.cpu_attend_head(q[:2], k.astype(np.float64), v.astype(np.float64), 0)
    with pytest.raises(ValueError, match="valid choices"):
        _core.cpu_attend_head(q[:2], k, v, 0, kernels="sse9")


# ---- through the engine: work items of the forward pass (model/forward.cpp's attention) -------

def test_engine_long_context_one_kv_head_matches_reference(tmp_path):
    """One KV head shared by 8 query heads of 64 (gemma3's layout, wider group): a 300-token
    prompt in tiles of 8 tokens and decode steps past 64-key blocks run threaded, the group's heads
    split over several work items; logits against the float64 reference as in test_engine.py
    (f32 weights, f16 KV cache: 1e-3 relative, argmax equal). The q8_0 cache (rows dequantized
    per block) stays within test_engine.py's 3e-2 of it."""
    spec = mf.default_spec("llama", "F32", n_head=8, n_head_kv=1, head_dim=64, n_embd=512, n_layer=2)
    path = mf.write_tiny_model(tmp_path / "wide-group.gguf", spec)
    got, ids = {}, None
    for kv in ("f16", "q8_0"):
        e = _core.Engine(str(path), 512, 2, 300, kv)
        if ids is None:
            ids = np.random.default_rng(11).integers(0, e.n_vocab, size=304).astype(np.int32)
        rows = [e.eval(ids[:300], all_logits=True)]
        rows += [e.eval(ids[i:i + 1])[None] for i in range(300, 304)]
        got[kv] = np.concatenate(rows)
        e.close()
    ref = ReferenceModel(path).logits(ids)
    err = np.linalg.norm(got["f16"] - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert err.max() <= 1e-3 and np.array_equal(got["f16"].argmax(1), ref.argmax(1))
    err8 = np.linalg.norm(got["q8_0"] - got["f16"], axis=1) / np.linalg.norm(got["f16"], axis=1)
    assert err8.max() <= 3e-2

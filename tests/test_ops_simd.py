"""ops.h's SIMD loops (the gated activations, rmsnorm) against the portable ones: the AVX-512
loops do the AVX2 / portable loops' float operations element by element, so the same bits; the
SIMD gated activations (a polynomial exp, tanh as a sigmoid) stay within 2e-6 |gate * up| of the
portable ones."""
from __future__ import annotations

import numpy as np
import pytest

from lowbit import _core
from lowbit.runtime import cpu


def levels() -> list[str]:
    return [s.strip() for s in cpu.features()["supported"].split(",")]


def need(level: str) -> None:
    if level not in levels():
        pytest.skip(f"CPU lacks {level}")


LENGTHS = [1, 7, 8, 15, 16, 23, 640, 2048 + 13]   # every tail: 16-, 8- and 1-lane steps


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_avx512_gated_activation_equals_avx2(act):
    need("avx512")
    rng = np.random.default_rng(7100)
    for n in LENGTHS:
        gate = (rng.standard_normal(n) * rng.uniform(0.1, 12)).astype(np.float32)
        gate[: min(n, 3)] = [-100.0, 0.0, 100.0][: min(n, 3)]   # exp's clamps
        up = rng.standard_normal(n).astype(np.float32)
        ref = _core.cpu_gated_act("avx2", act, gate, up)
        got = _core.cpu_gated_act("avx512", act, gate, up)
        assert got.tobytes() == ref.tobytes(), (act, n)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_simd_gated_activation_near_generic(act):
    need("avx2")
    rng = np.random.default_rng(7200)
    gate = (rng.standard_normal(4096) * 6).astype(np.float32)
    up = rng.standard_normal(4096).astype(np.float32)
    ref = _core.cpu_gated_act("generic", act, gate, up)
    for level in [lv for lv in ("avx2", "avx512") if lv in levels()]:
        got = _core.cpu_gated_act(level, act, gate, up)
        err = np.abs(got.astype(np.float64) - ref)
        assert np.all(err <= 2e-6 * np.abs(gate.astype(np.float64) * up)), (level, act, err.max())


def test_avx512_rmsnorm_equals_generic():
    need("avx512")
    rng = np.random.default_rng(7300)
    for n in LENGTHS:
        x = (rng.standard_normal(n) * rng.uniform(1e-3, 1e3)).astype(np.float32)
        w = rng.standard_normal(n).astype(np.float32)
        for weight in (w, None):
            for eps in (1e-6, 1e-5):
                ref = _core.cpu_rmsnorm("generic", x, weight, eps)
                got = _core.cpu_rmsnorm("avx512", x, weight, eps)
                assert got.tobytes() == ref.tobytes(), (n, weight is None, eps)


def test_unknown_loops_and_activation_are_value_errors():
    x = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="valid choices"):
        _core.cpu_rmsnorm("sse9", x, None, 1e-6)
    with pytest.raises(ValueError, match="silu or gelu"):
        _core.cpu_gated_act("generic", "relu", x, x)

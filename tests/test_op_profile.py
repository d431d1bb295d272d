"""The per-op forward profile (cpu/profile.h, lowbit._core.cpu_op_profile): off by default and
then records nothing; on, every forward op of a decode step and of a batched step is counted,
the exclusive times add up to no more than the passes' wall time, and the pool's parallel_for
calls are attributed to the ops that made them."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lowbit import _core  # noqa: E402
import model_factory as mf  # noqa: E402

LAYER_OPS = ("norm", "act_quant", "matmul_qkv", "qkv_post", "attention", "matmul_o", "residual",
             "matmul_gate_up", "ffn_act", "matmul_down")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profile")
    return mf.write_tiny_model(folder / "llama.gguf", mf.default_spec("llama", "Q8_0"))


@pytest.fixture
def profiling():
    was = _core.cpu_op_profile()["enabled"]
    _core.cpu_op_profile(reset=True)
    yield
    _core.cpu_set_op_profile(was)
    _core.cpu_op_profile(reset=True)


def test_off_records_nothing(model_path, profiling):
    _core.cpu_set_op_profile(False)
    e = _core.Engine(model_path, 64, 2, 16)
    e.eval(np.arange(3, 8, dtype=np.int32))
    p = _core.cpu_op_profile()
    assert p["passes"] == 0 and all(v["calls"] == 0 for v in p["ops"].values())
    e.close()


def test_decode_and_batched_step_are_attributed(model_path, profiling):
    e = _core.Engine(model_path, 64, 2, 16)
    others = [e.new_session(64, 2, 16) for _ in range(3)]
    e.eval(np.arange(3, 8, dtype=np.int32))
    _core.cpu_set_op_profile(True)
    _core.cpu_op_profile(reset=True)
    t0 = time.perf_counter()
    e.eval(np.array([9], np.int32))
    wall = time.perf_counter() - t0
    p = _core.cpu_op_profile(reset=True)
    n_layers = e.n_layers
    assert p["passes"] == 1 and p["rows"] == 1
    for op in LAYER_OPS:
        assert p["ops"][op]["calls"] >= n_layers, op
    assert p["ops"]["output_head"]["calls"] == 1 and p["ops"]["embed"]["calls"] == 1
    assert p["ops"]["moe"]["calls"] == 0
    total = sum(v["seconds"] for v in p["ops"].values())
    assert 0 < total <= wall
    # one decode row: the weight matmuls and attention are the parallel ones, once per layer each
    for op in ("matmul_qkv", "matmul_o", "matmul_gate_up", "matmul_down"):
        assert p["ops"][op]["parallel_fors"] >= n_layers, op
    _core.eval_batch([(s, np.array([5 + i], np.int32)) for i, s in enumerate([e] + others)])
    p = _core.cpu_op_profile(reset=True)
    assert p["passes"] == 1 and p["rows"] == 4
    # several rows: the gating runs inside the down projection's activation quantization
    assert all(p["ops"][op]["calls"] >= n_layers for op in LAYER_OPS if op != "ffn_act")
    assert p["ops"]["ffn_act"]["calls"] == 0
    assert all(v["idle_seconds"] >= 0 for v in p["ops"].values())
    for s in others + [e]:
        s.close()

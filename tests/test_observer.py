"""The engine's matmul observers (csrc/model/observer.h): the float input of every weight matmul,
as imatrix sums of squares and as GPTQ Gram matrices, against the reference forward's inputs."""
from __future__ import annotations

import numpy as np
import pytest

import model_factory as mf
from lowbit import _core
from reference_forward import ReferenceModel

# every tiny architecture, and the RoPE variants that change what later layers see
CASES = [(arch, {}) for arch in mf.ARCHITECTURES] + [
    ("qwen2", {"rope_scale": 4.0, "rope_scaling": "yarn", "rope_orig_ctx": 32}),
    ("phi3", {"longrope": True}),
    ("llama", {"rope_freq_factors": True, "tied": False}),
    ("gemma3", {"sliding_window": 4, "n_layer": 6}),   # five local layers, one global; prompt > window
    ("llama", {"n_embd": 264, "head_dim": 66, "n_ff": 600}),   # Gram tiles are 32 x 256: widths that cross their edges
]
N_CTX = 64


class _RecordingReference(ReferenceModel):
    """The reference forward, keeping the input of every weight matmul by tensor name."""

    def __init__(self, path, n_ctx):
        super().__init__(path, n_ctx=n_ctx)
        self.inputs = {}

    def _linear(self, x, name):
        self.inputs[f"{name}.weight"] = np.array(x, dtype=np.float64)
        return super()._linear(x, name)


def _rel(a, b):
    """The engine's tier against the float64 reference (f16 KV cache, f32 arithmetic): the
    inputs of later layers differ by a few 1e-4 relative (test_engine.py's 1e-3 bound)."""
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _model(tmp_path, arch, overrides):
    spec = mf.default_spec(arch, "F32", **overrides)
    return mf.write_tiny_model(tmp_path / f"{arch}.gguf", spec)


def _tokens(n, seed=1):
    return np.random.default_rng(seed).integers(3, 200, size=n).astype(np.int32)


@pytest.mark.parametrize("arch,overrides", CASES, ids=[f"{a}-{'-'.join(o) or 'plain'}" for a, o in CASES])
def test_observed_inputs_equal_the_reference_layer_inputs(tmp_path, arch, overrides):
    path = _model(tmp_path, arch, overrides)
    ids = _tokens(13)   # not a multiple of the Gram kernel's 4 rows
    ref = _RecordingReference(path, N_CTX)
    ref.hidden(ids)
    engine = _core.Engine(path, N_CTX, 2, 512, "f16", act_precision="high")
    sums, gram = _core.SumSquaresObserver(), _core.GramObserver()
    engine.set_observer(sums)
    engine.eval(ids)
    engine.truncate(0)
    engine.set_observer(gram)
    engine.eval(ids)
    engine.close()
    observed = sums.entries()
    layer_inputs = {k: v for k, v in ref.inputs.items() if k.startswith("blk.")}
    assert set(layer_inputs) <= set(observed), set(layer_inputs) - set(observed)
    assert set(gram.names()) == set(observed)
    for name, x in layer_inputs.items():
        s, rows = observed[name]
        assert rows == len(ids), name
        assert _rel(s, np.einsum("ij,ij->j", x, x)) <= 1e-3, name
        g = gram.gram(name)
        assert gram.rows(name) == len(ids)
        np.testing.assert_array_equal(g, g.T, err_msg=name)
        assert _rel(g, x.T @ x) <= 1e-3, name


def test_observer_sees_every_prefill_batch_and_decode_step(tmp_path):
    """n_batch smaller than the prompt, then single-token decode steps: rows add up, and the sums
    equal one pass over the whole sequence."""
    path = _model(tmp_path, "llama", {})
    ids = _tokens(20, seed=3)
    whole = _core.SumSquaresObserver()
    e = _core.Engine(path, N_CTX, 1, 512, "f16", act_precision="high")
    e.set_observer(whole)
    e.eval(ids)
    e.close()
    pieces = _core.SumSquaresObserver()
    e = _core.Engine(path, N_CTX, 2, 7, "f16", act_precision="high")   # batches of 7
    e.set_observer(pieces)
    e.eval(ids[:15])
    for t in ids[15:]:
        e.eval(np.array([t], dtype=np.int32))
    e.close()
    a, b = whole.entries(), pieces.entries()
    assert set(a) == set(b)
    layers = [name for name in a if name.startswith("blk.")]
    assert len(layers) == 2 * 7
    for name in layers:
        assert a[name][1] == b[name][1] == len(ids)
        np.testing.assert_allclose(b[name][0], a[name][0], rtol=1e-5, err_msg=name)
    # the head sees the rows whose logits are computed: the last of each eval call
    assert a["token_embd.weight"][1] == 1 and b["token_embd.weight"][1] == 1 + 5


def test_detached_observer_sees_nothing_more(tmp_path):
    path = _model(tmp_path, "qwen3", {})
    obs = _core.SumSquaresObserver()
    e = _core.Engine(path, N_CTX, 2, 512, "f16")
    e.set_observer(obs)
    e.eval(_tokens(5))
    before = {k: (v[0].copy(), v[1]) for k, v in obs.entries().items()}
    e.set_observer(None)
    e.eval(_tokens(5, seed=9))
    after = obs.entries()
    for k, (s, rows) in before.items():
        assert after[k][1] == rows
        np.testing.assert_array_equal(after[k][0], s)
    e.close()


def test_gram_observer_rejects_unknown_names():
    obs = _core.GramObserver()
    assert obs.names() == []
    with pytest.raises(ValueError, match="no inputs observed"):
        obs.gram("blk.0.attn_q.weight")

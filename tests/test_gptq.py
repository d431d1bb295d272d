"""GPTQ-style error feedback: lower output error than imatrix rounding on correlated inputs,
standard GGUF blocks, and `quantize(method="gptq")` end to end."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

import lowbit
from lowbit.quant import blocks
from lowbit.quant.gptq import gptq_quantize
from lowbit.quant.quantize import QuantizeError, quantize

from model_factory import write_default_model


def correlated_inputs(rng, n_in, n_rows=1500):
    mix = rng.standard_normal((n_in, n_in)) * 0.3 + np.eye(n_in)
    return rng.standard_normal((n_rows, n_in)) @ mix * rng.uniform(0.2, 3, n_in)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "IQ4_NL", "Q3_K", "Q4_K", "Q6_K"])
def test_gptq_beats_imatrix_rounding(qtype):
    rng = np.random.default_rng(11)
    x = correlated_inputs(rng, 512)
    w = (rng.standard_normal((96, 512)) * 0.05).astype(np.float32)
    h = x.T @ x / len(x)
    q = gptq_quantize(w, h, qtype)
    assert q.shape == (96, blocks.row_bytes(qtype, 512))

    def output_error(raw):
        return np.mean((x @ (w - blocks.dequantize(raw, qtype, w.shape)).T) ** 2)

    rtn = blocks.quantize(w, qtype, imatrix=np.diag(h).astype(np.float32))
    assert output_error(q) < 0.9 * output_error(rtn)


def test_dead_inputs_and_bad_rows():
    rng = np.random.default_rng(12)
    x = correlated_inputs(rng, 64, 200)
    x[:, 5] = 0
    w = rng.standard_normal((8, 64)).astype(np.float32)
    q = gptq_quantize(w, x.T @ x / len(x), "Q8_0")
    assert blocks.dequantize(q, "Q8_0", w.shape)[:, 5].tolist() == [0.0] * 8
    with pytest.raises(ValueError, match="block size"):
        gptq_quantize(w[:, :48], np.eye(48), "Q4_0")


def test_hessians_from_the_engine_are_the_layer_inputs_gram(tmp_path):
    """collect_hessians: X^T X / rows of each blk.* input over the calibration chunks, q/k/v
    sharing one input; layer 0's attention input recomputed in float64 by the reference."""
    from lowbit.quant.gptq import collect_hessians
    from reference_forward import ReferenceModel, rms_norm
    path = write_default_model(str(tmp_path / "m.gguf"), "qwen2", "F32")
    text = " ".join(f"word{i % 37} and more{i % 11}" for i in range(300))
    hs = collect_hessians(path, text, n_ctx=64, n_chunks=2)
    names = {t.name for t in lowbit.GGUFFile(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    assert set(hs.sums) == names and all(n == 2 * 64 for n in hs.counts.values())
    np.testing.assert_array_equal(hs.mean("blk.0.attn_q.weight"), hs.mean("blk.0.attn_v.weight"))
    assert hs.mean("output.weight") is None
    tok = lowbit.Tokenizer.from_metadata(lowbit.GGUFFile(path).metadata)
    ids = tok.encode(text, add_special=False)
    ref = ReferenceModel(path)
    want = np.zeros((ref.hparams.n_embd, ref.hparams.n_embd))
    for c in range(2):
        chunk = list(ids[c * 64:(c + 1) * 64])
        if tok.add_bos:
            chunk[0] = tok.bos_id
        x = rms_norm(ref.embed(chunk), ref.weight("blk.0.attn_norm.weight"), ref.hparams.rms_eps)
        want += x.T @ x
    np.testing.assert_allclose(hs.mean("blk.0.attn_k.weight"), want / 128, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_quantize_method_gptq(tmp_path):
    model = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    text = " ".join(f"tok{(i * 5) % 47}" for i in range(500))
    out = str(tmp_path / "g.gguf")
    r = quantize(model, out, "Q4_K_M", method="gptq", calibration=text, calib_ctx=64, calib_chunks=2)
    assert {t.name: t.tensor_type.name for t in GGUFReader(out).tensors} == r.tensor_types
    rtn = quantize(model, str(tmp_path / "r.gguf"), "Q4_K_M")
    assert rtn.tensor_types == r.tensor_types and rtn.file_size == r.file_size
    with lowbit.GGUFFile(out) as g, lowbit.GGUFFile(rtn.path) as n:
        differs = [t.name for t in g.tensors if not np.array_equal(g.tensor_bytes(t.name), n.tensor_bytes(t.name))]
    assert any(name.startswith("blk.") for name in differs)
    assert not any(name == "token_embd.weight" for name in differs)      # no Hessian: plain rounding
    with pytest.raises(QuantizeError, match="needs calibration"):
        quantize(model, str(tmp_path / "x.gguf"), "Q4_K_M", method="gptq")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_act_order_moves_whole_blocks_and_lowers_error(qtype):
    """Blocks fixed in order of importance: the bytes of each block land at its own place (a
    weight matrix whose blocks are already on the grid comes back byte for byte), and with a few
    loud input channels the held-out output error is lower than in file order."""
    rng = np.random.default_rng(21)
    n_in = 256
    mix = rng.standard_normal((n_in, n_in)) * 0.3 + np.eye(n_in)
    scale = rng.uniform(0.2, 3, n_in)
    scale[200:232] *= 8                           # the loudest block is the 7th of 8
    x, x_held = (rng.standard_normal((3000, n_in)) @ mix * scale for _ in range(2))
    h, h_held = x.T @ x / 3000, x_held.T @ x_held / 3000
    on_grid = blocks.quantize((rng.standard_normal((16, n_in)) * 0.05).astype(np.float32), qtype)
    w_grid = blocks.dequantize(on_grid, qtype, (16, n_in))
    np.testing.assert_array_equal(gptq_quantize(w_grid, h, qtype, act_order=True), on_grid)
    if qtype == "Q4_0":
        from lowbit.quant.gptq import output_loss
        w = (rng.standard_normal((64, n_in)) * 0.05).astype(np.float32)
        loss = {a: output_loss(w, blocks.dequantize(gptq_quantize(w, h, qtype, act_order=a), qtype, w.shape), h_held)
                for a in (False, True)}
        assert loss[True] < loss[False]

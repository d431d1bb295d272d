"""AWQ: the fold leaves an F32 model's logits unchanged, the scale search lowers the output error
of channels with outliers, quantize(method="awq" / "awq+gptq") writes standard GGUF; GPTQ keeps
plain importance-weighted rounding where that has the lower held-out error."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

import lowbit
from lowbit.quant import blocks
from lowbit.quant.awq import AWQPlan, find_groups, search_group
from lowbit.quant.gptq import choose, collect_hessians, gptq_quantize, output_loss
from lowbit.quant.quantize import QuantizeError, quantize

from model_factory import _write_hparams, _write_tokenizer, default_spec, make_tensors, write_default_model

TEXT = " ".join(f"tok{(i * 7) % 53} word{(i * 3) % 29}" for i in range(900))


def _write_folded(path, spec, plan_for) -> str:
    """The tiny model of ``spec`` with plan_for(groups) -> AWQPlan folded into its tensors."""
    tensors = make_tensors(spec)
    shapes = {name: tuple(reversed(a.shape)) for name, (a, _) in tensors.items()}
    plan = plan_for(find_groups(list(tensors), shapes, spec.n_layer))
    w = gguf.GGUFWriter(str(path), spec.arch)
    _write_hparams(w, spec, tensors["token_embd.weight"][0].shape[0])
    _write_tokenizer(w, spec)
    for name, (data, _) in tensors.items():
        w.add_tensor(name, plan.apply(name, data).reshape(data.shape) if plan.transforms(name) else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "phi3"])
def test_fold_leaves_f32_logits_unchanged(tmp_path, arch):
    spec = default_spec(arch, "F32")
    rng = np.random.default_rng(3)

    def random_scales(groups):
        plan = AWQPlan()
        tensors = make_tensors(spec)
        for g in groups:
            n_in = tensors[g.members[0]][0].shape[1]
            plan.fold(g, np.exp(rng.normal(0, 0.7, n_in)))
        assert plan.norm_divisor and plan.row_divisor and plan.col_scale
        return plan

    plain = write_default_model(str(tmp_path / "plain.gguf"), arch, "F32")
    folded = _write_folded(tmp_path / "folded.gguf", spec, random_scales)
    ids = list(range(3, 40))
    with lowbit.load(plain, n_ctx=64) as a, lowbit.load(folded, n_ctx=64) as b:
        la, lb = a.logits(ids), b.logits(ids)
    assert np.max(np.abs(la - lb)) <= 1e-3 * np.max(np.abs(la))


def _outlier_inputs(rng, channels, n_in, n_rows=2000):
    x = rng.standard_normal((n_rows, n_in))
    x[:, channels] *= 20.0      # a few channels carry most of the signal
    return x


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K", "Q3_K"])
def test_search_lowers_output_error_with_outlier_channels(qtype):
    rng = np.random.default_rng(5)
    channels = rng.choice(256, 8, replace=False)
    x_fit, x_eval = _outlier_inputs(rng, channels, 256), _outlier_inputs(rng, channels, 256)
    w = {"a": (rng.standard_normal((64, 256)) * 0.05).astype(np.float32),
         "b": (rng.standard_normal((32, 256)) * 0.05).astype(np.float32)}
    h_fit, h_eval = x_fit.T @ x_fit / len(x_fit), x_eval.T @ x_eval / len(x_eval)
    alpha, s, plain, scaled = search_group(w, {"a": qtype, "b": qtype}, h_fit, h_eval)
    assert alpha > 0 and scaled < 0.9 * plain
    # the reported loss is the held-out output error of the scaled rounding
    loss = 0.0
    imp = np.diag(h_fit) / (s * s)
    for name, m in w.items():
        raw = blocks.quantize((m * s).astype(np.float32), qtype, imatrix=imp.astype(np.float32))
        loss += output_loss(m, blocks.dequantize(raw, qtype, m.shape) / s, h_eval)
    assert loss == pytest.approx(scaled, rel=1e-9)


def test_gptq_choice_never_worse_than_plain_rounding_held_out():
    """Few calibration rows in a wide layer: GPTQ overfits them, and choose() falls back."""
    rng = np.random.default_rng(9)
    n_in = 256
    w = (rng.standard_normal((48, n_in)) * 0.05).astype(np.float32)
    mix = rng.standard_normal((n_in, n_in)) * 0.3 + np.eye(n_in)
    x_fit = rng.standard_normal((40, n_in)) @ mix           # 40 rows: a rank-40 Hessian
    x_held = rng.standard_normal((4000, n_in)) @ mix
    h_fit, h_held = x_fit.T @ x_fit / 40, x_held.T @ x_held / 4000
    q, kept = choose(w, h_fit, h_held, "Q4_K")
    plain = blocks.quantize(w, "Q4_K", imatrix=np.diag(h_fit).astype(np.float32))
    gptq = gptq_quantize(w, h_fit, "Q4_K")
    losses = {k: output_loss(w, blocks.dequantize(v, "Q4_K", w.shape), h_held) for k, v in
              (("plain", plain), ("gptq", gptq), ("chosen", q))}
    assert losses["chosen"] == min(losses["plain"], losses["gptq"])
    assert kept == (losses["gptq"] <= losses["plain"])


def test_quantize_gptq_no_matrix_worse_than_imatrix_rounding_held_out(tmp_path):
    model = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    hs = collect_hessians(model, TEXT, n_ctx=64, n_chunks=8)
    assert hs.holdout_sums and all(n == 2 * 64 for n in hs.holdout_counts.values())
    out = quantize(model, str(tmp_path / "g.gguf"), "Q4_K_M", method="gptq", calibration=hs)
    assert any(n.startswith("gptq: kept for") for n in out.notices)
    with lowbit.GGUFFile(model) as src, lowbit.GGUFFile(out.path) as dst:
        for t in dst.tensors:
            h_fit, h_held = hs.mean(t.name), hs.holdout_mean(t.name)
            if h_fit is None:
                continue
            qtype, shape = out.tensor_types[t.name], tuple(reversed(t.shape))
            w = src.tensor_bytes(t.name).view(np.float32).reshape(shape)
            plain = blocks.quantize(w, qtype, imatrix=np.diag(h_fit).astype(np.float32))
            written = output_loss(w, blocks.dequantize(dst.tensor_bytes(t.name), qtype, shape), h_held)
            assert written <= output_loss(w, blocks.dequantize(plain, qtype, shape), h_held) * (1 + 1e-12), t.name


@pytest.mark.parametrize("method", ["awq", "awq+gptq"])
def test_quantize_awq_writes_standard_gguf(tmp_path, method):
    model = write_default_model(str(tmp_path / "m.gguf"), "qwen3", "F32")
    out = quantize(model, str(tmp_path / "a.gguf"), "Q4_K_M", method=method, calibration=TEXT,
                   calib_ctx=64, calib_chunks=8)
    rtn = quantize(model, str(tmp_path / "r.gguf"), "Q4_K_M")
    assert out.tensor_types == rtn.tensor_types and out.file_size == rtn.file_size
    assert any(n.startswith("awq:") for n in out.notices)
    with lowbit.GGUFFile(model) as src, lowbit.GGUFFile(out.path) as dst:
        norms_changed = [t.name for t in dst.tensors if t.name.endswith("_norm.weight")
                         and not np.array_equal(src.tensor_bytes(t.name), dst.tensor_bytes(t.name))]
    assert norms_changed == [] or all(n.split(".")[-2] in ("attn_norm", "ffn_norm") for n in norms_changed)
    ids = list(range(3, 30))
    with lowbit.load(model, n_ctx=64) as base, lowbit.load(out.path, n_ctx=64) as q:
        assert np.isfinite(q.logits(ids)).all() and base.n_vocab == q.n_vocab


def test_awq_refusals(tmp_path):
    model = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32")
    with pytest.raises(QuantizeError, match="needs calibration"):
        quantize(model, str(tmp_path / "x.gguf"), "Q4_K_M", method="awq")
    with pytest.raises(QuantizeError, match="unknown quantization method"):
        quantize(model, str(tmp_path / "x.gguf"), "Q4_K_M", method="awq+rtn")

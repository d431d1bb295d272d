"""lowbit.quantize: llama.cpp's per-tensor recipes (exactly the types of the llama.cpp-made
gemma3-270m Q4_K_M file), outputs that load in gguf.GGUFReader and lowbit.GGUFFile, metadata
kept, imatrix steering, no partial output on interrupt, one clear error per bad argument."""
from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest
from gguf import GGUFReader

import lowbit
from lowbit.quant import blocks
from lowbit.cli import main as cli_main
from lowbit.quant.quantize import QuantizeError, quantize
from lowbit.quant.recipes import ModelFacts, plan_types, use_more_bits

from _models import real_model_path
from model_factory import write_default_model

FACTS_18 = ModelFacts("gemma3", n_layer=18, n_gqa=4, n_expert=0, is_70b=False)


def layer_tensors(n_layer, n_embd=512, n_ff=1024, tied=True):
    """(name, GGUF shape, type) in llama.cpp's converter order."""
    out = [("token_embd.weight", (n_embd, 1000), "F32"), ("output_norm.weight", (n_embd,), "F32")]
    if not tied:
        out.append(("output.weight", (n_embd, 1000), "F32"))
    for i in range(n_layer):
        out += [(f"blk.{i}.attn_norm.weight", (n_embd,), "F32"),
                (f"blk.{i}.attn_q.weight", (n_embd, n_embd), "F32"),
                (f"blk.{i}.attn_k.weight", (n_embd, n_embd // 4), "F32"),
                (f"blk.{i}.attn_v.weight", (n_embd, n_embd // 4), "F32"),
                (f"blk.{i}.attn_output.weight", (n_embd, n_embd), "F32"),
                (f"blk.{i}.ffn_gate.weight", (n_embd, n_ff), "F32"),
                (f"blk.{i}.ffn_up.weight", (n_embd, n_ff), "F32"),
                (f"blk.{i}.ffn_down.weight", (n_ff, n_embd), "F32")]
    return out


def types_of(plans, suffix):
    return [p.dst_type for p in plans if p.name.endswith(suffix)]


# ---- recipes (pure functions) -------------------------------------------------------------------
def test_use_more_bits_layers():
    assert [i for i in range(18) if use_more_bits(i, 18)] == [0, 1, 4, 7, 10, 13, 15, 16, 17]
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]


def test_q4_k_m_rules_with_256_rows():
    plans = plan_types(layer_tensors(8), "Q4_K_M", ModelFacts("llama", 8, 4, 0, False))
    by = {p.name: p.dst_type for p in plans}
    assert by["token_embd.weight"] == "Q6_K"            # tied: quantized like the output
    assert by["output_norm.weight"] == "F32" and by["blk.0.attn_norm.weight"] == "F32"
    assert types_of(plans, "attn_v.weight") == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert types_of(plans, "ffn_down.weight") == types_of(plans, "attn_v.weight")
    assert set(types_of(plans, "attn_q.weight") + types_of(plans, "ffn_up.weight")) == {"Q4_K"}
    assert all(p.notice is None for p in plans)


def test_untied_output_and_token_embd():
    plans = plan_types(layer_tensors(2, tied=False), "Q4_K_M", ModelFacts("llama", 2, 1, 0, False))
    by = {p.name: p.dst_type for p in plans}
    assert by["output.weight"] == "Q6_K" and by["token_embd.weight"] == "Q4_K"


def test_fallbacks_when_rows_do_not_fit_256():
    plans = plan_types(layer_tensors(4, n_embd=640, n_ff=2048), "Q4_K_M", FACTS_18)
    by = {p.name: p for p in plans}
    assert by["token_embd.weight"].dst_type == "Q8_0"               # output rule: 640 % 256 -> Q8_0
    assert by["blk.0.attn_q.weight"].dst_type == "Q5_0"             # Q4_K -> Q5_0
    assert by["blk.3.attn_v.weight"].dst_type == "Q8_0"             # last layer Q6_K -> Q8_0
    assert by["blk.0.attn_v.weight"].dst_type == "Q5_0"             # 4 layers: n/8 = 0
    assert "falling back to Q5_0" in by["blk.0.attn_q.weight"].notice
    assert by["blk.0.ffn_down.weight"].dst_type == "Q6_K"           # 2048 fits
    q3 = {p.name: p.dst_type for p in plan_types(layer_tensors(4, n_embd=640), "Q3_K_S", FACTS_18)}
    assert q3["blk.1.attn_q.weight"] == "Q4_0"                      # Q3_K -> Q4_0
    odd = plan_types([("blk.0.attn_q.weight", (100, 64), "F32")], "Q4_K", FACTS_18)
    assert odd[0].dst_type == "F16" and "unusual shape" in odd[0].notice
    # as llama.cpp's tensor_type_fallback: a 32-block type has no smaller block -> F16
    odd_q8 = plan_types([("blk.0.attn_q.weight", (100, 64), "F32")], "Q8_0", FACTS_18)
    assert odd_q8[0].dst_type == "F16" and "F16" in odd_q8[0].notice


def test_q2_k_and_q3_k_recipes():
    facts = ModelFacts("llama", 16, 1, 0, False)
    q2 = plan_types(layer_tensors(16), "Q2_K", facts)
    assert set(types_of(q2, "attn_v.weight")) == {"Q3_K"} and set(types_of(q2, "ffn_down.weight")) == {"Q3_K"}
    assert set(types_of(q2, "attn_output.weight")) == {"Q3_K"} and set(types_of(q2, "attn_q.weight")) == {"Q2_K"}
    q3m = plan_types(layer_tensors(16), "Q3_K_M", facts)
    assert types_of(q3m, "attn_v.weight")[:3] == ["Q5_K", "Q5_K", "Q4_K"]
    assert types_of(q3m, "ffn_down.weight")[:2] == ["Q5_K", "Q4_K"]     # n_layer/16 = 1
    assert set(types_of(q3m, "attn_output.weight")) == {"Q4_K"}
    q3l = plan_types(layer_tensors(16), "Q3_K_L", facts)
    assert set(types_of(q3l, "attn_v.weight") + types_of(q3l, "ffn_down.weight")) == {"Q5_K"}


def test_counters_follow_llama_cpp_layer_order():
    # file order blk.0, blk.1, blk.10, blk.11, blk.2 ...: llama.cpp counts by layer number
    tensors = sorted(layer_tensors(12), key=lambda t: t[0])
    plans = plan_types(tensors, "Q4_K_M", ModelFacts("llama", 12, 1, 0, False))
    by = {p.name: p.dst_type for p in plans}
    assert [p.name for p in plans] == [t[0] for t in tensors]          # output keeps the file order
    more = [i for i in range(12) if use_more_bits(i, 12)]
    assert [i for i in range(12) if by[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more


def test_pure_and_float_recipes():
    pure = plan_types(layer_tensors(4), "Q4_K", FACTS_18)
    assert {p.dst_type for p in pure if len(p.shape) == 2} == {"Q4_K"}
    f16 = plan_types(layer_tensors(4), "F16", FACTS_18)
    assert {p.dst_type for p in f16 if len(p.shape) == 2} == {"F16"}
    assert {p.dst_type for p in f16 if len(p.shape) == 1} == {"F32"}
    q8 = plan_types(layer_tensors(4), "q8_0", FACTS_18)
    assert {p.dst_type for p in q8 if len(p.shape) == 2} == {"Q8_0"}
    assert set(types_of(plan_types(layer_tensors(4), "Q4_0", FACTS_18), "token_embd.weight")) == {"Q6_K"}


# ---- files ------------------------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path):
    return write_default_model(str(tmp_path / "tiny-f32.gguf"), "llama", "F32")


def dequantized(path):
    with lowbit.GGUFFile(path) as f:
        return {t.name: blocks.dequantize(f.tensor_bytes(t.name), t.type, t.shape[::-1]).reshape(-1)
                for t in f.tensors}


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M",
                                   "Q4_K_M", "Q5_K_S", "Q6_K", "IQ4_NL", "IQ4_XS", "Q4_K"])
def test_outputs_load_everywhere_and_keep_metadata(tiny, tmp_path, qtype):
    out = str(tmp_path / f"tiny-{qtype}.gguf")
    r = quantize(tiny, out, qtype, n_threads=2)
    reader = GGUFReader(out)
    src = lowbit.GGUFFile(tiny)
    with lowbit.GGUFFile(out) as f:
        assert [t.name for t in f.tensors] == [t.name for t in src.tensors]
        assert {t.name: t.type for t in f.tensors} == r.tensor_types
        assert {t.name: t.tensor_type.name for t in reader.tensors} == r.tensor_types
        meta = dict(f.metadata)
        assert meta.pop("general.file_type") == r.file_type
        assert meta.pop("general.quantization_version") == 2
        want = {k: v for k, v in src.metadata.items() if k not in ("general.file_type", "general.quantization_version")}
        assert meta == want and f.metadata_types["tokenizer.ggml.tokens"] == "ARRAY[STRING]"
    before, after = dequantized(tiny), dequantized(out)
    for name, x in before.items():
        rel = np.linalg.norm(after[name] - x) / np.linalg.norm(x)
        assert rel < 0.35, (name, r.tensor_types[name], rel)   # Q2_K is ~0.3 on Gaussian weights
    assert r.file_size == os.path.getsize(out)


def test_tensor_bytes_equal_reference_quantizer(tiny, tmp_path):
    out = str(tmp_path / "q4km.gguf")
    quantize(tiny, out, "Q4_K_M", n_threads=2)
    with lowbit.GGUFFile(tiny) as src, lowbit.GGUFFile(out) as dst:
        for t in dst.tensors:
            x = src.tensor_bytes(t.name).view(np.float32).reshape(t.shape[::-1]).reshape(-1, t.shape[0])
            if t.type != "F32":
                assert np.array_equal(dst.tensor_bytes(t.name).reshape(x.shape[0], -1), blocks.quantize(x, t.type))


def test_requantize_warns(tiny, tmp_path):
    q8 = str(tmp_path / "q8.gguf")
    quantize(tiny, q8, "Q8_0")
    with pytest.warns(UserWarning, match="already quantized"):
        r = quantize(q8, str(tmp_path / "q4.gguf"), "Q4_0")
    assert "Q4_0" in r.tensor_types.values()


def test_imatrix_steers_the_search_and_missing_entries_are_noted(tiny, tmp_path):
    rng = np.random.default_rng(7)
    with lowbit.GGUFFile(tiny) as f:
        shapes = {t.name: t.shape for t in f.tensors}
    name = "blk.0.ffn_up.weight"
    weights = {name: rng.uniform(0.01, 10, shapes[name][0]).astype(np.float32)}
    notes = []
    out = str(tmp_path / "imat.gguf")
    quantize(tiny, out, "Q4_K", imatrix=weights, log=notes.append)
    assert any("blk.0.ffn_down.weight" in n and "no entry" in n for n in notes)
    with lowbit.GGUFFile(tiny) as src, lowbit.GGUFFile(out) as dst:
        x = src.tensor_bytes(name).view(np.float32).reshape(-1, shapes[name][0])
        got = dst.tensor_bytes(name).reshape(x.shape[0], -1)
        qtype = dst.tensor(name).type          # Q5_0: 64-wide rows fall back from Q4_K
        assert qtype == "Q5_0"
        assert np.array_equal(got, blocks.quantize(x, qtype, imatrix=weights[name]))
        assert not np.array_equal(got, blocks.quantize(x, qtype))
    with pytest.raises(QuantizeError, match="needs"):
        quantize(tiny, str(tmp_path / "bad.gguf"), "Q4_K", imatrix={name: np.ones(3)})


def test_interrupt_leaves_nothing(tiny, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    calls = []

    def progress(frac):
        calls.append(frac)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize(tiny, str(outdir / "x.gguf"), "Q4_K_M", progress=progress)
    assert os.listdir(outdir) == []
    with pytest.raises(lowbit.Cancelled):
        quantize(tiny, str(outdir / "x.gguf"), "Q4_K_M", progress=lambda f: f < 0.3)
    assert os.listdir(outdir) == []


def test_errors(tiny, tmp_path):
    with pytest.raises(QuantizeError, match="unknown quantization type 'Q9_X'"):
        quantize(tiny, str(tmp_path / "o.gguf"), "Q9_X")
    with pytest.raises(QuantizeError, match="is the input file"):
        quantize(tiny, tiny, "Q8_0")
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny)
    with pytest.raises(QuantizeError, match="is the input file"):
        quantize(tiny, str(link), "Q8_0")
    with pytest.raises(QuantizeError, match="does not exist"):
        quantize(tiny, str(tmp_path / "nodir" / "o.gguf"), "Q8_0")
    with pytest.raises(QuantizeError, match="not writable"):
        quantize(tiny, _unwritable_dir(tmp_path) + "/o.gguf", "Q8_0")
    with pytest.raises(QuantizeError, match="method"):
        quantize(tiny, str(tmp_path / "o.gguf"), "Q8_0", method="magic")
    text = tmp_path / "notgguf.bin"
    text.write_bytes(b"hello world, not a model" * 10)
    with pytest.raises(lowbit.GGUFError):
        quantize(str(text), str(tmp_path / "o.gguf"), "Q8_0")
    assert sorted(os.listdir(tmp_path)) == ["link.gguf", "notgguf.bin", "tiny-f32.gguf"] + (
        ["ro"] if os.path.isdir(tmp_path / "ro") else [])


def _unwritable_dir(tmp_path) -> str:
    if os.geteuid() == 0:            # root writes anywhere a plain folder is
        return "/proc"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return str(ro)


def test_cli_exit_codes(tiny, tmp_path, capsys):
    assert cli_main(["quantize", tiny, tiny, "--type", "Q8_0"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert cli_main(["quantize", tiny, str(tmp_path / "o.gguf"), "--type", "nope"]) == 2
    assert cli_main(["quantize", tiny, str(tmp_path / "o.gguf"), "--type", "q4_k_m", "-q"]) == 0
    assert "Q4_K_M (file type 15)" in capsys.readouterr().out


# ---- the real model: llama.cpp's own recipe ---------------------------------------------------
def test_gemma3_q4_k_m_types_equal_llama_cpp(tmp_path):
    path = real_model_path("gemma3-270m")
    if path is None:
        pytest.skip("gemma3-270m not available")
    f32 = str(tmp_path / "gemma3-f32.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize(path, f32, "F32", n_threads=2)
    t0 = time.monotonic()
    r = quantize(f32, str(tmp_path / "gemma3-q4_k_m.gguf"), "Q4_K_M", n_threads=2)
    seconds = time.monotonic() - t0
    os.unlink(f32)
    with lowbit.GGUFFile(path) as orig:
        want = {t.name: t.type for t in orig.tensors}
    assert r.tensor_types == want
    assert r.file_type == 15
    assert seconds < 30, f"quantizing gemma3-270m to Q4_K_M took {seconds:.1f} s"
    reader = GGUFReader(r.path)
    assert {t.name: t.tensor_type.name for t in reader.tensors} == want


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M", "Q3_K_S", "IQ4_XS", "BF16"])
def test_outputs_run_in_the_engine(tiny, tmp_path, qtype):
    from lowbit import _core
    if not hasattr(_core, "Engine"):
        pytest.skip("this build has no inference engine")
    out = str(tmp_path / f"{qtype}.gguf")
    quantize(tiny, out, qtype)
    ids = [1, 5, 9, 17, 33, 2]
    with lowbit.load(out, n_ctx=64, n_threads=2) as m, lowbit.load(tiny, n_ctx=64, n_threads=2) as ref:
        got, want = m.logits(ids), ref.logits(ids)
    assert got.shape == want.shape and np.all(np.isfinite(got))
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < (0.05 if qtype in ("Q8_0", "BF16") else 0.4), rel

"""The IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M quantizers (csrc/quant/iq2_quant.cpp, iq1_quant.cpp,
the shared lattice search in iq_search.cpp).

Oracle: ggml_quantize_chunk of the dev oracle's libggml-base (llama-cpp-python 0.3.36, skipped
without it), which is what llama.cpp's model quantizer calls per tensor: every byte equal, on
varied synthetic rows and on real tensors (SmolLM2's ffn_down, dequantized from its Q4_1 to F32:
full of exact ties, which IQ1's sorted split search must order as glibc's stable qsort does).
Without the oracle: the imatrix rule (IQ2_XXS / IQ2_XS / IQ1_S refuse without one, as ggml asserts),
round-trip error of a 1.5-2.6 bit format, and importance steering the error.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from lowbit.quant import blocks

sys.path.insert(0, os.path.dirname(__file__))
from test_iquants import ggml_quantize_or_skip  # noqa: E402
from test_quant_llama_cpp import _weights  # noqa: E402

NEW_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
NEEDS_IMATRIX = ["IQ2_XXS", "IQ2_XS", "IQ1_S"]          # ggml_quantize_requires_imatrix
# relative RMSE bound of Gaussian rows (measured 0.36 0.31 0.26 0.50 0.46 with a flat imatrix)
MAX_REL_ERR = {"IQ2_XXS": 0.42, "IQ2_XS": 0.36, "IQ2_S": 0.30, "IQ1_S": 0.58, "IQ1_M": 0.54}


def gaussian_rows(rng, rows=8, cols=1024):
    return (rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-3, 2, (rows, 1)))).astype(np.float32)


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_imatrix_rule(type_name):
    """IQ2_XXS / IQ2_XS / IQ1_S need importances (ggml asserts one): ValueError naming the type;
    IQ2_S / IQ1_M quantize without one, as in ggml."""
    x = gaussian_rows(np.random.default_rng(1), 2, 512)
    info = blocks.type_info(type_name)
    assert info["can_quantize"] and info["uses_imatrix"]
    assert info["requires_imatrix"] == (type_name in NEEDS_IMATRIX)
    if type_name in NEEDS_IMATRIX:
        with pytest.raises(ValueError, match=f"{type_name} needs an importance matrix"):
            blocks.quantize(x, type_name)
    else:
        assert blocks.quantize(x, type_name).shape == (2, blocks.row_bytes(type_name, 512))


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_round_trip_and_importance(type_name):
    """The error is that of the format's bit rate, and weighting the even columns 100x moves the
    error off them."""
    rng = np.random.default_rng(9)
    x = gaussian_rows(rng)
    flat = np.ones(x.shape[1], np.float32)
    back = blocks.dequantize(blocks.quantize(x, type_name, imatrix=flat), type_name, x.shape)
    err = np.linalg.norm(back - x, axis=1) / np.linalg.norm(x, axis=1)
    assert np.all(err < MAX_REL_ERR[type_name]), err
    imp = np.where(np.arange(x.shape[1]) % 2 == 0, 100.0, 1.0).astype(np.float32)
    steered = blocks.dequantize(blocks.quantize(x, type_name, imatrix=imp), type_name, x.shape)
    even_err = lambda b: np.linalg.norm((b - x)[:, ::2]) / np.linalg.norm(x[:, ::2])  # noqa: E731
    assert even_err(steered) < 0.92 * even_err(back)


def test_zero_and_tiny_rows_stay_finite():
    """All-zero and sub-epsilon groups: scale 0 (nothing divides by it), finite output."""
    x = np.zeros((3, 512), np.float32)
    x[1] = 1e-20
    x[2, :256] = np.random.default_rng(2).standard_normal(256)
    imatrix = np.ones(512, np.float32)
    for type_name in NEW_TYPES:
        back = blocks.dequantize(blocks.quantize(x, type_name, imatrix=imatrix), type_name, x.shape)
        assert np.all(np.isfinite(back)) and np.abs(back[:2]).max() < 1e-3, type_name


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_bytes_equal_ggml(type_name):
    """ggml_quantize_chunk on varied rows (scales over 6 decades, outliers, zero, constant, +-1,
    exact halves, sub-epsilon rows), with an imatrix and, where ggml allows, without: every byte."""
    ggml_quantize = ggml_quantize_or_skip()
    rng = np.random.default_rng(5)
    x = _weights(rng, 96, 512)
    imatrix = np.exp(rng.standard_normal(512)).astype(np.float32)
    assert blocks.quantize(x, type_name, imatrix=imatrix).tobytes() == ggml_quantize(x, type_name, imatrix).tobytes()
    if type_name not in NEEDS_IMATRIX:
        assert blocks.quantize(x, type_name).tobytes() == ggml_quantize(x, type_name).tobytes()


@pytest.fixture(scope="module")
def smollm2_ffn_down():
    """Two of SmolLM2's ffn_down matrices (its only ones with rows of a multiple of 256),
    dequantized to F32, with a log-normal imatrix."""
    import gguf
    from gguf import quants as gq
    from _models import real_model_or_skip
    reader = gguf.GGUFReader(real_model_or_skip("smollm2-135m-instruct"))
    out = {}
    for t in reader.tensors:
        if t.name in ("blk.0.ffn_down.weight", "blk.17.ffn_down.weight"):
            out[t.name] = gq.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0])).astype(np.float32)
    rng = np.random.default_rng(3)
    return out, np.exp(1.5 * rng.standard_normal(1536)).astype(np.float32)


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_real_tensors_bytes_equal_ggml(type_name, smollm2_ffn_down):
    ggml_quantize = ggml_quantize_or_skip()
    tensors, imatrix = smollm2_ffn_down
    for name, x in tensors.items():
        ours = blocks.quantize(x, type_name, imatrix=imatrix)
        assert ours.tobytes() == ggml_quantize(x, type_name, imatrix).tobytes(), name
        if type_name not in NEEDS_IMATRIX:
            assert blocks.quantize(x, type_name).tobytes() == ggml_quantize(x, type_name).tobytes(), name


# ---- file types ---------------------------------------------------------------------------------

FILE_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS"]


def test_file_type_plans():
    """llama.cpp's low-bit rules on an 8-layer model without GQA: output Q5_K; untied embedding,
    attn_v and the first ffn_down at Q2_K (IQ2_S / IQ2_M: IQ3_S); attn_output one step up;
    IQ3_XXS: attn_q / attn_k IQ2_S, and without an imatrix attn_v IQ3_S, ffn_down Q4_K / Q3_K."""
    from lowbit.quant import recipes
    facts = recipes.ModelFacts("llama", 8, 1, 0, False)
    names = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    tensors = [("token_embd.weight", (256, 64), "F32"), ("output.weight", (256, 64), "F32")] + [
        (f"blk.{i}.{n}.weight", (512 if n == "ffn_down" else 256, 256), "F32") for i in range(8) for n in names]
    expect = {  # recipe: (default, embedding, attn_v, ffn_down of layer 0, attn_output)
        "IQ1_S": ("IQ1_S", "Q2_K", "Q2_K", "Q2_K", "IQ2_XXS"), "IQ1_M": ("IQ1_M", "Q2_K", "Q2_K", "Q2_K", "IQ2_XXS"),
        "IQ2_XXS": ("IQ2_XXS", "Q2_K", "Q2_K", "Q2_K", "IQ2_XXS"), "IQ2_XS": ("IQ2_XS", "Q2_K", "Q2_K", "Q2_K", "IQ2_XS"),
        "IQ2_S": ("IQ2_XS", "IQ3_S", "IQ3_S", "IQ3_S", "IQ3_S"), "IQ2_M": ("IQ2_S", "IQ3_S", "IQ3_S", "IQ3_S", "IQ3_S"),
        "IQ3_XXS": ("IQ3_XXS", "IQ3_S", "IQ3_XXS", "IQ3_XXS", "IQ3_S")}
    for recipe, (default, embd, attn_v, down0, attn_out) in expect.items():
        plan = {p.name: p.dst_type for p in recipes.plan_types(tensors, recipe, facts, has_imatrix=True)}
        assert plan["output.weight"] == "Q5_K" and plan["token_embd.weight"] == embd, recipe
        assert (plan["blk.3.attn_v.weight"], plan["blk.0.ffn_down.weight"]) == (attn_v, down0), recipe
        assert (plan["blk.1.ffn_down.weight"], plan["blk.3.ffn_gate.weight"]) == (default, default), recipe
        assert plan["blk.5.attn_output.weight"] == attn_out, recipe
        assert plan["blk.2.attn_q.weight"] == ("IQ2_S" if recipe == "IQ3_XXS" else default), recipe
    plain = {p.name: p.dst_type for p in recipes.plan_types(tensors, "IQ3_XXS", facts, has_imatrix=False)}
    assert (plain["blk.0.attn_v.weight"], plain["blk.0.ffn_down.weight"], plain["blk.1.ffn_down.weight"]) == \
        ("IQ3_S", "Q4_K", "Q3_K")
    odd = recipes.plan_types([("blk.0.ffn_up.weight", (576, 64), "F32")], "IQ1_M", facts, has_imatrix=True)
    assert odd[0].dst_type == "IQ4_NL" and "IQ4_NL" in odd[0].notice


@pytest.mark.parametrize("recipe", FILE_TYPES)
def test_file_types_without_imatrix_refused(recipe, tmp_path):
    """Every one of these files puts some tensor in a type that needs an imatrix: QuantizeError
    before anything is written, as llama.cpp refuses; so does an imatrix without an entry for such
    a tensor (llama.cpp: "Missing importance matrix for tensor"), and no partial file is left."""
    import lowbit
    import model_factory as mf
    path = tmp_path / "f32.gguf"
    mf.write_tiny_model(path, mf.default_spec("llama", "F32", n_layer=2, n_embd=256, n_head=4, n_head_kv=1,
                                              head_dim=64, n_ff=512, tied=False))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(lowbit.LowbitError, match="needs an importance matrix"):
        lowbit.quantize(str(path), str(out / "q.gguf"), recipe)
    assert os.listdir(out) == []
    import gguf
    partial = {t.name: np.ones(int(t.shape[0]), np.float32) for t in gguf.GGUFReader(str(path)).tensors
               if len(t.shape) == 2 and t.name != "blk.1.ffn_gate.weight"}
    with pytest.raises(lowbit.LowbitError, match="no entry for blk.1.ffn_gate.weight"):
        lowbit.quantize(str(path), str(out / "q.gguf"), recipe, imatrix=partial)
    assert os.listdir(out) == []


@pytest.mark.parametrize("recipe", FILE_TYPES)
def test_file_types_equal_llama_cpp(recipe, tmp_path):
    """`lowbit quantize --type T --imatrix` vs llama.cpp's model quantizer with the same imatrix on
    an 8-layer F32 llama with GQA 4: every tensor's type and bytes equal."""
    import ctypes
    import gguf
    import lowbit
    import model_factory as mf
    from _llama_cpp import llama_cpp_or_skip
    from test_iquants import assert_same_tensors
    from test_quant_llama_cpp import _imatrix_param
    from lowbit.quant import recipes
    llama_cpp = llama_cpp_or_skip()
    path = str(tmp_path / "f32.gguf")
    mf.write_tiny_model(path, mf.default_spec("llama", "F32", n_layer=8, n_embd=256, n_head=4, n_head_kv=1,
                                              head_dim=64, n_ff=512, tied=False))
    rng = np.random.default_rng(17)
    imatrix = {t.name: np.exp(1.5 * rng.standard_normal(int(t.shape[0]))).astype(np.float32)
               for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = recipes.resolve_recipe(recipe)[1]
    params.nthread = 2
    entries, _keep = _imatrix_param(llama_cpp, imatrix)
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    theirs, ours = str(tmp_path / "theirs.gguf"), str(tmp_path / "ours.gguf")
    assert llama_cpp.llama_model_quantize(path.encode(), theirs.encode(), params) == 0
    lowbit.quantize(path, ours, recipe, imatrix=imatrix, n_threads=2)
    assert_same_tensors(ours, theirs)


def test_cli_quantize_and_info(tmp_path):
    """`lowbit quantize --type IQ2_M --imatrix FILE` (a GGUF imatrix as `lowbit imatrix` writes)
    then `lowbit info`: the IQ2_S / IQ3_S tensors listed with their bits per weight, and the
    engine's logits on the file match the float64 forward of its gguf-dequantized weights; without
    --imatrix a one-line error, exit 2."""
    import subprocess
    import lowbit
    import model_factory as mf
    from lowbit.quant.imatrix import IMatrix
    src = tmp_path / "f32.gguf"
    mf.write_tiny_model(src, mf.default_spec("llama", "F32", n_layer=2, n_embd=256, n_head=4, n_head_kv=4,
                                             head_dim=64, n_ff=512, tied=False))
    im = IMatrix()
    rng = np.random.default_rng(4)
    import gguf
    for t in gguf.GGUFReader(str(src)).tensors:
        if len(t.shape) == 2:
            im.add(t.name, rng.standard_normal((16, int(t.shape[0]))))
    im.save(tmp_path / "im.gguf")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lowbit.__file__)))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lowbit", *args], env=env, capture_output=True, text=True,
                              timeout=300)
    out = tmp_path / "iq2m.gguf"
    r = cli("quantize", str(src), str(out), "--type", "IQ2_M", "-q")
    assert r.returncode == 2 and "importance matrix" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    r = cli("quantize", str(src), str(out), "--type", "iq2_m", "--imatrix", str(tmp_path / "im.gguf"), "-q")
    assert r.returncode == 0, r.stderr
    r = cli("info", str(out))
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.strip().startswith("| IQ")}
    assert set(rows) == {"IQ2_S", "IQ3_S"}, r.stdout
    assert rows["IQ2_S"].rstrip(" |").endswith("2.56") and rows["IQ3_S"].rstrip(" |").endswith("3.44")
    from lowbit import _core
    from reference_forward import ReferenceModel
    ids = np.random.default_rng(3).integers(0, 64, 12).astype(np.int32)
    ours = _core.Engine(str(out), 64, 2, 16, "f16").eval(ids, all_logits=True)
    ref = ReferenceModel(str(out)).logits(ids)
    assert np.max(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)) <= 6e-2


def test_compare_accepts_the_new_file_types():
    """`lowbit compare --types` resolves the new names (canonical case) through the recipe table."""
    from lowbit.quant.compare import parse_candidates
    got = parse_candidates(["iq2_m", "IQ1_S:imatrix", "IQ3_XXS"], have_imatrix=True)
    assert got == [("IQ2_M", "imatrix"), ("IQ1_S", "imatrix"), ("IQ3_XXS", "imatrix")]
    with pytest.raises(ValueError, match="needs an imatrix"):
        parse_candidates(["IQ2_XXS:imatrix"], have_imatrix=False)

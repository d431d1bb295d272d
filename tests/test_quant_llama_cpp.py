"""lowbit.quant.blocks.quantize against llama.cpp's own model quantizer, byte for byte (dev-only oracle).

Skips unless env LOWBIT_LLAMA_CPP_SITE names a site-packages directory holding llama-cpp-python
(e.g. LOWBIT_LLAMA_CPP_SITE=/work/oracle-venv/lib/python3.11/site-packages); that directory is
appended to sys.path only for this test. The test writes a tiny one-layer llama GGUF with F32
weights (rows of 256 and 512, random data with varied scales, outliers, zero and constant rows),
runs llama_model_quantize with pure=True for each type's ftype (so every 2-D weight gets that
type), and compares every block with lowbit's quantize of the same rows, once without and
once with an imatrix (random positive per-column importances passed through
llama_model_quantize_params.imatrix, a null-terminated array of llama_model_imatrix_data).

Run with -s to see the per-type fraction of byte-identical blocks.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest
import gguf

from lowbit.quant import blocks
from _llama_cpp import llama_cpp_or_skip

# llama_ftype of a "pure" file of each type (llama.h)
FTYPES = {
    "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 11,
    "Q4_K": 15, "Q5_K": 16, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32, "F16": 1,
}
# Fraction of byte-identical blocks required per type (1.0: exact everywhere).
REQUIRED = {name: 1.0 for name in FTYPES}


def _weights(rng, rows, cols):
    """Varied rows: per-row scales over 6 decades, heavy tails, outliers, a zero and a constant row."""
    x = rng.standard_normal((rows, cols)) * np.exp(rng.uniform(np.log(1e-3), np.log(10), (rows, 1)))
    x[::5] = rng.standard_t(3, (len(x[::5]), cols)) * 0.02
    x[1::7, ::37] *= 40                                    # outliers
    x[2] = 0
    x[3] = 0.125
    x[4, :128] = 0                                         # half-empty row
    x[6] = np.abs(x[6])                                    # all positive
    x[8] = rng.standard_normal(cols) * 1e-20               # below GROUP_MAX_EPS
    x[9] = rng.standard_normal(cols) * 1e-9                # fp16-subnormal scales
    x[10] = 0
    x[10, 17] = -3.0                                       # one non-zero weight
    x[11] = rng.standard_normal(cols) * 3e3                # large
    x[12] = np.where(np.arange(cols) % 2, 1.0, -1.0)       # exact +-1
    x[13] = rng.integers(-8, 8, cols) * 0.5                # exact halves: rounding ties
    x[14] = -np.abs(x[14])                                 # all negative
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    rng = np.random.default_rng(1234)
    emb, ff, vocab = 256, 512, 64
    path = str(tmp_path_factory.mktemp("oracle") / "f32.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(128)
    w.add_embedding_length(emb)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(64)
    w.add_vocab_size(vocab)
    w.add_file_type(0)
    weights = {"token_embd.weight": _weights(rng, vocab, emb), "output.weight": _weights(rng, vocab, emb)}
    for name in ["attn_q", "attn_k", "attn_v", "attn_output"]:
        weights[f"blk.0.{name}.weight"] = _weights(rng, emb, emb)
    weights["blk.0.ffn_gate.weight"] = _weights(rng, ff, emb)
    weights["blk.0.ffn_up.weight"] = _weights(rng, ff, emb)
    weights["blk.0.ffn_down.weight"] = _weights(rng, emb, ff)
    for name, x in weights.items():
        w.add_tensor(name, x)
    for name in ["output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"]:
        w.add_tensor(name, np.ones(emb, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, weights


def _imatrix_param(llama_cpp, imatrix):
    """ctypes array of llama_model_imatrix_data, null-terminated; keeps the buffers alive."""
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    keep = []
    for i, (name, values) in enumerate(imatrix.items()):
        buf = np.ascontiguousarray(values, dtype=np.float32)
        keep.append(buf)
        entries[i].name = name.encode()
        entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = buf.size
    entries[len(imatrix)].name = None
    return entries, keep


def identical_block_fraction(llama_cpp, f32_path, weights, qtype, out_path, imatrix=None):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype]
    params.pure = True
    params.nthread = 2
    if imatrix is not None:
        entries, _keep = _imatrix_param(llama_cpp, imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    assert llama_cpp.llama_model_quantize(f32_path.encode(), out_path.encode(), params) == 0
    info = blocks.type_info(qtype)
    same = total = 0
    for t in gguf.GGUFReader(out_path).tensors:
        if t.name not in weights:
            continue
        assert t.tensor_type.name == qtype, (t.name, t.tensor_type.name)
        theirs = np.asarray(t.data).view(np.uint8).reshape(-1, info["type_size"])
        qw = imatrix[t.name] if imatrix is not None else None
        ours = blocks.quantize(weights[t.name], qtype, imatrix=qw).reshape(-1, info["type_size"])
        same += int(np.all(theirs == ours, axis=1).sum())
        total += theirs.shape[0]
    return same / total, total


@pytest.mark.parametrize("qtype", list(FTYPES))
def test_quantize_bytes_equal_llama_cpp(qtype, f32_model, tmp_path):
    llama_cpp = llama_cpp_or_skip()
    path, weights = f32_model
    frac, n_blocks = identical_block_fraction(llama_cpp, path, weights, qtype, str(tmp_path / f"{qtype}.gguf"))
    print(f"\n{qtype}: {frac:.6f} of {n_blocks} blocks byte-identical to llama.cpp")
    assert frac >= REQUIRED[qtype]


IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]


@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_imatrix_quantize_bytes_equal_llama_cpp(qtype, f32_model, tmp_path):
    llama_cpp = llama_cpp_or_skip()
    path, weights = f32_model
    rng = np.random.default_rng(99)
    imatrix = {name: np.exp(1.5 * rng.standard_normal(x.shape[1])).astype(np.float32) for name, x in weights.items()}
    frac, n_blocks = identical_block_fraction(llama_cpp, path, weights, qtype, str(tmp_path / f"{qtype}.gguf"),
                                              imatrix=imatrix)
    plain = blocks.quantize(weights["blk.0.attn_q.weight"], qtype)
    steered = blocks.quantize(weights["blk.0.attn_q.weight"], qtype, imatrix=imatrix["blk.0.attn_q.weight"])
    assert not np.array_equal(plain, steered)  # so equal bytes prove llama.cpp used the imatrix too
    print(f"\n{qtype} + imatrix: {frac:.6f} of {n_blocks} blocks byte-identical to llama.cpp")
    assert frac >= REQUIRED[qtype]


# ---- the i-quant file types on the real models ---------------------------------------------------

IQ_RECIPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS"]
_LOG_LINES: list = []
_LOG_CALLBACK = None    # kept alive for as long as llama.cpp may call it


def _capture_llama_log(llama_cpp):
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            _LOG_LINES.append(text.decode(errors="replace"))
        _LOG_CALLBACK = callback
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    _LOG_LINES.clear()
    return _LOG_LINES


def _random_imatrix(path):
    rng = np.random.default_rng(17)
    return {t.name: np.exp(1.5 * rng.standard_normal(int(t.shape[0]))).astype(np.float32)
            for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2 and t.name != "token_embd.weight"}


def llama_cpp_plan(llama_cpp, path, recipe, imatrix, tmp_path):
    """{tensor: target type} of llama.cpp's quantizer (a dry run, read from its log)."""
    from lowbit.quant import recipes
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = recipes.resolve_recipe(recipe)[1]
    params.dry_run = True
    params.allow_requantize = True
    params.nthread = 1
    if imatrix is not None:
        entries, _keep = _imatrix_param(llama_cpp, imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    lines = _capture_llama_log(llama_cpp)
    assert llama_cpp.llama_model_quantize(path.encode(), str(tmp_path / "dry.gguf").encode(), params) == 0
    plan = {}
    for line in "".join(lines).splitlines():
        m = re.match(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s+(\w+),.*?(?:\((\w+)\))?\s*$", line)
        if m:
            plan[m.group(1)] = (m.group(3) or m.group(2)).upper()
    return plan


@pytest.mark.parametrize("with_imatrix", [True, False])
@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma3-270m"])
def test_iq_file_type_plans_on_real_models(model, with_imatrix, tmp_path):
    """Every tensor's target type in each i-quant file type, lowbit's recipes vs llama.cpp's
    quantizer (a dry run) on the real models: with an imatrix, and without one (IQ3_XXS's rules
    change; the files themselves are then refused by both)."""
    from _models import real_model_or_skip
    from lowbit.quant import recipes
    from lowbit.runtime.gguf_file import GGUFFile
    llama_cpp = llama_cpp_or_skip()
    path = real_model_or_skip(model)
    imatrix = _random_imatrix(path) if with_imatrix else None
    with GGUFFile(path) as src:
        facts = recipes.ModelFacts.from_metadata(src.metadata)
        tensors = [(t.name, t.shape, t.type) for t in src.tensors]
    for recipe in IQ_RECIPES:
        ours = {p.name: p.dst_type for p in recipes.plan_types(tensors, recipe, facts, has_imatrix=with_imatrix)}
        theirs = llama_cpp_plan(llama_cpp, path, recipe, imatrix, tmp_path)
        assert len(theirs) == len(ours)
        diff = {n: (ours[n], t) for n, t in theirs.items() if ours[n] != t}
        assert not diff, (recipe, dict(list(diff.items())[:5]))


@pytest.mark.parametrize("recipe", ["IQ2_M"])
def test_iq_file_types_on_smollm2_bytes_equal_llama_cpp(recipe, tmp_path):
    """SmolLM2 (from its Q4_1) quantized by lowbit and by llama.cpp with the same imatrix: every
    tensor's type and bytes equal (IQ2_S, IQ3_S, the IQ4_NL fallbacks, Q8_0). One recipe here (a
    few minutes per file pair under load); bench/bench_iq_types.py --llama-cpp-bin compares every
    i-quant file type on both models with the llama-quantize CLI and lowbit's imatrix file."""
    import warnings
    import lowbit
    from _models import real_model_or_skip
    from test_iquants import assert_same_tensors
    from lowbit.quant import recipes
    llama_cpp = llama_cpp_or_skip()
    path = real_model_or_skip("smollm2-135m-instruct")
    imatrix = _random_imatrix(path)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = recipes.resolve_recipe(recipe)[1]
    params.allow_requantize = True
    params.nthread = 2
    entries, _keep = _imatrix_param(llama_cpp, imatrix)
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    theirs, ours = str(tmp_path / "theirs.gguf"), str(tmp_path / "ours.gguf")
    assert llama_cpp.llama_model_quantize(path.encode(), theirs.encode(), params) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # "already quantized"
        lowbit.quantize(path, ours, recipe, imatrix=imatrix, n_threads=2)
    assert_same_tensors(ours, theirs)

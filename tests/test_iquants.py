"""The i-quant (IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S), ternary (TQ1_0 TQ2_0) and FP4
(MXFP4 NVFP4) formats.

Oracles: gguf.quants (the codebooks, dequantization, and the TQ/MXFP4 quantizers), the float64
reference forward (tests/reference_forward.py) for whole tiny models, llama.cpp (dev oracle) for
its quantizer's bytes. Kernel checks (scalar == dequantized dot, SIMD == scalar, the guard page)
are in test_kernels.py, which lists these types.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

import lowbit
from lowbit import _core
from lowbit.quant import blocks

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402
from reference_forward import ReferenceModel  # noqa: E402
from test_kernels import IQ_TYPES, random_weights  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(REPO, "csrc", "quant", "iq_tables.h")
QUANTIZABLE = ["TQ1_0", "TQ2_0", "MXFP4", "NVFP4"]
SEARCHED = ["IQ3_XXS", "IQ3_S"]   # codebook searches, importance-weighted


# ---- codebooks ---------------------------------------------------------------------------------

def header_arrays() -> dict:
    """name -> list of ints, parsed from the committed iq_tables.h."""
    text = open(HEADER).read()
    out = {}
    for m in re.finditer(r"constexpr \w+ (\w+)\[(\d+)\] = \{([^}]*)\}", text):
        values = [int(v, 0) for v in m.group(3).replace("\n", " ").split(",") if v.strip()]
        assert len(values) == int(m.group(2)), m.group(1)
        out[m.group(1)] = values
    return out


def unpack(values, point_len, signed=False):
    arr = np.array([[(v >> (8 * j)) & 0xFF for j in range(point_len)] for v in values], dtype=np.int64)
    return np.where(arr > 127, arr - 256, arr) if signed else arr


@pytest.mark.skipif(not os.path.exists(HEADER), reason="needs the source tree")
def test_tables_header_equals_gguf_codebooks():
    """Every codebook lowbit compiles in equals gguf-py's (decoded independently of the
    generator), and the generator reproduces the committed header byte for byte."""
    arrays = header_arrays()
    for name, cls, plen, signed in [("kIq2xxsGrid", gq.IQ2_XXS, 8, False), ("kIq2xsGrid", gq.IQ2_XS, 8, False),
                                    ("kIq2sGrid", gq.IQ2_S, 8, False), ("kIq3xxsGrid", gq.IQ3_XXS, 4, False),
                                    ("kIq3sGrid", gq.IQ3_S, 4, False), ("kIq1sGrid", gq.IQ1_S, 8, True)]:
        cls.init_grid()
        expected = np.asarray(cls.grid).reshape(cls.grid_shape).astype(np.int64)
        assert np.array_equal(unpack(arrays[name], plen, signed), expected), name
    assert arrays["kSignsIq2xs"] == list(gq.IQ2_XXS.ksigns)
    assert arrays["kValuesMxfp4"] == list(gq.MXFP4.kvalues)
    # the sign table's rule: 7 bits + an even-parity 8th
    assert all(s & 0x7F == i and bin(s).count("1") % 2 == 0 for i, s in enumerate(arrays["kSignsIq2xs"]))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_iq_tables.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- dequantization: bit-exact against gguf.quants -----------------------------------------------

def same_bits(a, b) -> bool:
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("type_name", IQ_TYPES)
def test_dequantize_random_blocks_bit_exact(type_name):
    rng = np.random.default_rng(100 + IQ_TYPES.index(type_name))
    bs = gguf.GGML_QUANT_SIZES[QT[type_name]][0]
    for rows, cols in [(1, bs), (3, 4 * bs), (7, 1024)]:
        raw = random_weights(rng, type_name, rows, cols)
        ours = blocks.dequantize(raw, type_name, (rows, cols))
        assert same_bits(ours, gq.dequantize(raw, QT[type_name])), (type_name, rows, cols)


def test_dequantize_every_codebook_point():
    """Blocks that walk every grid index and sign pattern (not just random ones) decode as gguf."""
    for type_name, n_index in [("IQ2_XXS", 256), ("IQ2_XS", 512), ("IQ2_S", 1024), ("IQ3_XXS", 256),
                               ("IQ3_S", 512), ("IQ1_S", 2048), ("IQ1_M", 2048)]:
        rng = np.random.default_rng(n_index)
        raw = random_weights(rng, type_name, 64, 256 * 8)
        # overwrite index bytes with a ramp so that every low-8-bit index value appears
        lo = {"IQ2_XXS": None, "IQ2_XS": None, "IQ2_S": (2, 34), "IQ3_XXS": (2, 66), "IQ3_S": (2, 66),
              "IQ1_S": (2, 34), "IQ1_M": (0, 32)}[type_name]
        if lo:
            blk = raw.reshape(-1, gguf.GGML_QUANT_SIZES[QT[type_name]][1])
            span = lo[1] - lo[0]
            blk[:, lo[0]:lo[1]] = (np.arange(blk.shape[0] * span) % 256).reshape(-1, span)
        ours = blocks.dequantize(raw, type_name, (64, 2048))
        assert same_bits(ours, gq.dequantize(raw, QT[type_name])), type_name


# ---- quantizers --------------------------------------------------------------------------------

def gaussian_rows(rng, rows, cols):
    x = rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-6, 2, (rows, 1)))
    x[0] = 0
    x[1, ::3] = 0
    x[2] = np.where(np.arange(cols) % 2, 1.0, -1.0)
    return x.astype(np.float32)


@pytest.mark.parametrize("type_name", ["TQ1_0", "TQ2_0", "MXFP4"])
def test_quantize_equals_gguf(type_name):
    """gguf.quants ports ggml's reference quantizers of these types; the bytes agree."""
    rng = np.random.default_rng(7)
    x = gaussian_rows(rng, 24, 1024)
    ours = blocks.quantize(x, type_name)
    assert ours.tobytes() == gq.quantize(x, QT[type_name]).tobytes()
    imatrix = rng.uniform(0.1, 10, 1024).astype(np.float32)   # ignored, as in ggml
    assert blocks.quantize(x, type_name, imatrix=imatrix).tobytes() == ours.tobytes()


@pytest.mark.parametrize("type_name", SEARCHED)
def test_searched_quantizer_round_trip(type_name):
    """The codebook search: the error is that of a ~3-bit format and an imatrix moves the error to
    the unimportant columns. (An all-zero group decodes to the smallest codebook point at the
    smallest group scale, not to zero, as in ggml; in IQ3_S it also shifts the following groups'
    codes of its super-block, as ggml's write position does, so row 0 is checked for IQ3_XXS only:
    test_quantize_bytes_equal_ggml covers IQ3_S's behaviour byte for byte.)"""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((8, 1024)) * np.exp(rng.uniform(-3, 2, (8, 1)))).astype(np.float32)
    x[0, :32] = 0
    q = blocks.quantize(x, type_name)
    back = blocks.dequantize(q, type_name, x.shape)
    first = 0 if type_name == "IQ3_XXS" else 1
    if type_name == "IQ3_XXS":
        assert np.abs(back[0, :32]).max() < 0.05 * np.abs(x[0]).max()
    err = np.linalg.norm(back - x, axis=1) / np.linalg.norm(x, axis=1)
    assert np.all(err[first:] < 0.25), err
    imp = np.where(np.arange(1024) % 2 == 0, 100.0, 0.01).astype(np.float32)
    back_w = blocks.dequantize(blocks.quantize(x, type_name, imatrix=imp), type_name, x.shape)
    even_err = lambda b: np.linalg.norm((b - x)[1:, ::2]) / np.linalg.norm(x[1:, ::2])  # noqa: E731
    assert even_err(back_w) < even_err(back)
    assert blocks.type_info(type_name)["can_quantize"] and blocks.type_info(type_name)["uses_imatrix"]


def test_nvfp4_round_trip_error():
    """NVFP4 (gguf has no quantizer to compare with): codes are the nearest E2M1 values at the
    E4M3 scale of each 16-weight sub-block, so the round-trip error is within half a step. (Scales
    below E4M3's normal range, 2^-6, lose precision: rows here stay above it.)"""
    rng = np.random.default_rng(8)
    x = gaussian_rows(rng, 16, 512)
    x[3:] = (rng.standard_normal((13, 512)) * np.exp(rng.uniform(-1, 3, (13, 1)))).astype(np.float32)
    back = blocks.dequantize(blocks.quantize(x, "NVFP4"), "NVFP4", x.shape)
    err = np.linalg.norm(back - x, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-30)
    assert np.all(err[3:] < 0.15) and np.all(back[0] == 0)


def test_type_table_lists_the_new_types():
    names = {t["name"]: t for t in blocks.types()}
    for type_name in IQ_TYPES:
        bs, bb = gguf.GGML_QUANT_SIZES[QT[type_name]]
        t = names[type_name]
        assert (t["type_id"], t["block_size"], t["type_size"]) == (int(QT[type_name]), bs, bb)
        assert t["bits_per_weight"] == pytest.approx(8 * bb / bs)
        assert t["vec_dot_type"] == ("Q8_0" if type_name in ("MXFP4", "NVFP4") else "Q8_K")


# ---- whole models: a tiny model in each type vs the float64 reference ---------------------------

def set_block_scale(raw: np.ndarray, type_name: str, d: float) -> None:
    """Set every block's super-block scale to d (raw: (n_blocks, block_bytes), in place)."""
    h = np.float16(d).reshape(1).view(np.uint16)[0]
    if type_name == "IQ1_M":
        words = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((int(h) >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    else:
        off = {"TQ1_0": 52, "TQ2_0": 64}.get(type_name, 0)
        raw[:, off:off + 2] = np.frombuffer(np.uint16(h).tobytes(), np.uint8)


def random_matrix(rng, type_name, shape, std):
    """(n_out, n_in) matrix of type_name with about the given standard deviation: quantized
    Gaussian values where lowbit has a quantizer, random valid blocks otherwise."""
    if type_name in QUANTIZABLE + SEARCHED:
        return blocks.quantize(rng.normal(0, std, shape).astype(np.float32), type_name)
    bs, bb = gguf.GGML_QUANT_SIZES[QT[type_name]]
    raw = rng.integers(0, 256, (shape[0] * shape[1] // bs, bb), dtype=np.uint8)
    set_block_scale(raw, type_name, 1.0)
    unit = float(np.std(gq.dequantize(raw, QT[type_name])))
    set_block_scale(raw, type_name, std / unit)
    return raw.reshape(shape[0], -1)


def write_tiny(path, arch, type_name):
    spec = mf.default_spec(arch, "F32", n_embd=256, n_ff=512, head_dim=256 // 4)
    rng = np.random.default_rng(11)
    tensors = mf.make_tensors(spec)
    writer = gguf.GGUFWriter(str(path), spec.arch)
    mf._write_hparams(writer, spec, tensors["token_embd.weight"][0].shape[0])
    mf._write_tokenizer(writer, spec)
    for name, (data, qtype) in tensors.items():
        if data.ndim == 2:
            writer.add_tensor(name, random_matrix(rng, type_name, data.shape, float(np.std(data))),
                              raw_dtype=QT[type_name])
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("type_name", IQ_TYPES)
def test_tiny_model_matches_reference(type_name, tmp_path):
    """Every matrix (embedding and head included) in type_name: the engine's logits against the
    float64 forward of the gguf-dequantized weights; the gap is the q8 activation rounding."""
    path = write_tiny(tmp_path / f"{type_name}.gguf", "llama", type_name)
    e = _core.Engine(path, 64, 2, 16, "f16")
    ids = np.random.default_rng(3).integers(0, e.n_vocab, 12).astype(np.int32)
    ours = e.eval(ids, all_logits=True)
    ref = ReferenceModel(path).logits(ids)
    err = np.max(np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1))
    assert err <= 6e-2, (type_name, err)
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.5
    assert np.array_equal(ours.argmax(1)[clear], ref.argmax(1)[clear])


# ---- llama.cpp file types TQ1_0 / TQ2_0 / MXFP4_MOE ----------------------------------------------

def test_file_type_plans_follow_llama_cpp_rules():
    from lowbit.quant import recipes
    facts = recipes.ModelFacts("llama", 2, 1, 0, False)
    tensors = [("token_embd.weight", (256, 64), "F32"), ("output.weight", (256, 64), "F32"),
               ("blk.0.attn_q.weight", (256, 256), "F32"), ("blk.0.ffn_down.weight", (576, 256), "F32"),
               ("blk.0.ffn_up_exps.weight", (256, 512, 4), "F32"), ("blk.0.attn_norm.weight", (256,), "F32")]
    plan = {p.name: p.dst_type for p in recipes.plan_types(tensors, "TQ2_0", facts)}
    assert plan == {"token_embd.weight": "Q4_K", "output.weight": "Q6_K", "blk.0.attn_q.weight": "TQ2_0",
                    "blk.0.ffn_down.weight": "Q4_0", "blk.0.ffn_up_exps.weight": "TQ2_0",
                    "blk.0.attn_norm.weight": "F32"}
    plan = {p.name: p.dst_type for p in recipes.plan_types(tensors, "mxfp4_moe", facts)}
    assert plan == {"token_embd.weight": "Q8_0", "output.weight": "Q8_0", "blk.0.attn_q.weight": "Q8_0",
                    "blk.0.ffn_down.weight": "Q8_0", "blk.0.ffn_up_exps.weight": "MXFP4",
                    "blk.0.attn_norm.weight": "F32"}
    odd = recipes.plan_types([("blk.0.ffn_up_exps.weight", (48, 512, 4), "F32")], "MXFP4_MOE", facts)
    assert odd[0].dst_type == "F16" and "F16" in odd[0].notice   # a 32-block type has no smaller fallback
    assert recipes.resolve_recipe("tq1_0")[:3] == ("TQ1_0", 36, "TQ1_0")


def ggml_quantize_or_skip():
    """ggml's own row quantizer (ggml_quantize_chunk in the dev oracle's libggml-base), or skip."""
    import ctypes
    from _llama_cpp import llama_cpp_or_skip
    llama_cpp = llama_cpp_or_skip()
    lib_path = os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so")
    if not os.path.exists(lib_path):
        pytest.skip(f"no {lib_path}")
    lib = ctypes.CDLL(lib_path)
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_void_p]

    def quantize(x: np.ndarray, type_name: str, imatrix=None) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        out = np.zeros(x.shape[0] * blocks.row_bytes(type_name, x.shape[1]), np.uint8)
        qw = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
        fn(int(QT[type_name]), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
           None if qw is None else qw.ctypes.data)
        return out.reshape(x.shape[0], -1)
    return quantize


@pytest.mark.parametrize("type_name", QUANTIZABLE + SEARCHED)
def test_quantize_bytes_equal_ggml(type_name):
    """ggml_quantize_chunk (what llama.cpp's model quantizer calls per tensor) on varied rows, with
    and without an imatrix (the TQ/FP4 types ignore it, the searches weigh by it): every byte equal."""
    ggml_quantize = ggml_quantize_or_skip()
    from test_quant_llama_cpp import _weights
    rng = np.random.default_rng(5)
    x = _weights(rng, 96, 512)
    imatrix = np.exp(rng.standard_normal(512)).astype(np.float32)
    assert blocks.quantize(x, type_name).tobytes() == ggml_quantize(x, type_name).tobytes()
    assert blocks.quantize(x, type_name, imatrix=imatrix).tobytes() == ggml_quantize(x, type_name, imatrix).tobytes()


@pytest.fixture(scope="module")
def tiny_f32_llama(tmp_path_factory):
    """An 8-layer F32 llama with GQA 4 (so the n_gqa and layer-fraction rules all fire), and a
    random imatrix for its matrices."""
    path = tmp_path_factory.mktemp("recipes") / "f32.gguf"
    spec = mf.default_spec("llama", "F32", n_layer=8, n_embd=256, n_head=4, n_head_kv=1, head_dim=64, n_ff=512,
                           tied=False)
    mf.write_tiny_model(path, spec)
    rng = np.random.default_rng(17)
    imatrix = {t.name: np.exp(1.5 * rng.standard_normal(int(t.shape[0]))).astype(np.float32)
               for t in gguf.GGUFReader(str(path)).tensors if len(t.shape) == 2}
    return str(path), imatrix


def assert_same_tensors(ours_path, theirs_path):
    theirs = {t.name: t for t in gguf.GGUFReader(theirs_path).tensors}
    ours = {t.name: t for t in gguf.GGUFReader(ours_path).tensors}
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert ours[name].tensor_type == t.tensor_type, (name, ours[name].tensor_type.name, t.tensor_type.name)
        assert np.asarray(ours[name].data).tobytes() == np.asarray(t.data).tobytes(), name


@pytest.mark.parametrize("with_imatrix", [False, True])
@pytest.mark.parametrize("recipe", ["IQ3_XS", "IQ3_S", "IQ3_M", "TQ1_0", "TQ2_0", "MXFP4_MOE"])
def test_file_types_equal_llama_cpp(recipe, with_imatrix, tiny_f32_llama, tmp_path):
    """`lowbit quantize --type T` vs llama.cpp's model quantizer on the same F32 file: every
    tensor's type (llama.cpp's per-tensor rules) and bytes (the quantizers) equal."""
    from _llama_cpp import llama_cpp_or_skip
    from test_quant_llama_cpp import _imatrix_param
    from lowbit.quant import recipes
    import ctypes
    llama_cpp = llama_cpp_or_skip()
    path, imatrix = tiny_f32_llama
    if recipe == "IQ3_XS" and not with_imatrix:   # its IQ3_XXS tensors need one (llama.cpp refuses too)
        with pytest.raises(lowbit.LowbitError, match="needs an importance matrix"):
            lowbit.quantize(path, str(tmp_path / "ours.gguf"), recipe)
        assert os.listdir(tmp_path) == []
        return
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = recipes.resolve_recipe(recipe)[1]
    params.nthread = 2
    if with_imatrix:
        entries, _keep = _imatrix_param(llama_cpp, imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    theirs_path, ours_path = str(tmp_path / "theirs.gguf"), str(tmp_path / "ours.gguf")
    assert llama_cpp.llama_model_quantize(path.encode(), theirs_path.encode(), params) == 0
    lowbit.quantize(path, ours_path, recipe, imatrix=imatrix if with_imatrix else None, n_threads=2)
    assert_same_tensors(ours_path, theirs_path)


@pytest.mark.parametrize("recipe", ["TQ1_0", "TQ2_0", "MXFP4_MOE"])
def test_file_types_on_smollm2_equal_llama_cpp(recipe, tmp_path):
    """`lowbit quantize --type T` of SmolLM2 vs llama.cpp's quantizer on the same file: the same type
    for every tensor (fallbacks included) and the same bytes."""
    from _llama_cpp import llama_cpp_or_skip
    from _models import real_model_path
    llama_cpp = llama_cpp_or_skip()
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    from lowbit.quant import recipes
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = recipes.resolve_recipe(recipe)[1]
    params.allow_requantize = True
    params.nthread = 2
    theirs_path, ours_path = str(tmp_path / "theirs.gguf"), str(tmp_path / "ours.gguf")
    assert llama_cpp.llama_model_quantize(path.encode(), theirs_path.encode(), params) == 0
    with pytest.warns(UserWarning, match="already quantized"):
        lowbit.quantize(path, ours_path, recipe, n_threads=2)
    assert_same_tensors(ours_path, theirs_path)

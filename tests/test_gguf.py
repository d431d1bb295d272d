"""lowbit.GGUFFile: round trips against gguf.GGUFWriter / GGUFReader, the real models, and the
hardened parser's answers to truncated, corrupted and hostile files."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import textwrap
import time

import gguf
import numpy as np
import pytest
from gguf import quants

import lowbit
from _models import real_model_path
from gguf_factory import (QT, VT, Arr, RawGGUF, random_tensor_bytes, small_valid_file,
                          write_with_gguf_writer)


def write(tmp_path, raw: bytes, name: str = "t.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


def f32(x: float) -> float:
    return float(np.float32(x))


# ---- round trips through gguf.GGUFWriter ----------------------------------------------------

def writer_kvs(rng: np.random.Generator):
    """(key, value, type, array sub_type) covering every value type; values are what the reader
    must return (floats pre-rounded to float32 where stored as FLOAT32)."""
    ints = lambda lo, hi, n: [int(v) for v in rng.integers(lo, hi, n, endpoint=True)]  # noqa: E731
    return [
        ("t.u8", ints(0, 255, 1)[0], VT.UINT8, None),
        ("t.i8", ints(-128, 127, 1)[0], VT.INT8, None),
        ("t.u16", ints(0, 2**16 - 1, 1)[0], VT.UINT16, None),
        ("t.i16", ints(-2**15, 2**15 - 1, 1)[0], VT.INT16, None),
        ("t.u32", ints(2**31, 2**32 - 1, 1)[0], VT.UINT32, None),
        ("t.i32", ints(-2**31, -1, 1)[0], VT.INT32, None),
        ("t.u64", 2**64 - 1 - ints(0, 1000, 1)[0], VT.UINT64, None),
        ("t.i64", -2**63 + ints(0, 1000, 1)[0], VT.INT64, None),
        ("t.f32", f32(rng.standard_normal() * 1e3), VT.FLOAT32, None),
        ("t.f64", float(rng.standard_normal() * 1e-7), VT.FLOAT64, None),
        ("t.true", True, VT.BOOL, None),
        ("t.false", False, VT.BOOL, None),
        ("t.str", "ascii text " + str(ints(0, 10**9, 1)[0]), VT.STRING, None),
        ("t.str_utf8", "žluťoučký kůň 🐴 日本語 \u0000 end", VT.STRING, None),
        ("t.str_empty", "", VT.STRING, None),
        ("t.a_u8", ints(0, 255, 17), VT.ARRAY, VT.UINT8),
        ("t.a_i8", ints(-128, 127, 9), VT.ARRAY, VT.INT8),
        ("t.a_u16", ints(0, 2**16 - 1, 5), VT.ARRAY, VT.UINT16),
        ("t.a_i16", ints(-2**15, 2**15 - 1, 5), VT.ARRAY, VT.INT16),
        ("t.a_u32", ints(0, 2**32 - 1, 7), VT.ARRAY, VT.UINT32),
        ("t.a_i32", ints(-2**31, 2**31 - 1, 300), VT.ARRAY, VT.INT32),
        ("t.a_u64", ints(0, 2**62, 4) + [2**63 + ints(0, 2**62, 1)[0], 2**64 - 1], VT.ARRAY, VT.UINT64),
        ("t.a_i64", ints(-2**62, 2**62, 4) + [-2**63], VT.ARRAY, VT.INT64),
        ("t.a_f32", [f32(v) for v in rng.standard_normal(33)], VT.ARRAY, VT.FLOAT32),
        ("t.a_f64", [float(v) for v in rng.standard_normal(3)], VT.ARRAY, VT.FLOAT64),
        ("t.a_bool", [bool(v) for v in rng.integers(0, 2, 11)], VT.ARRAY, VT.BOOL),
        ("t.a_str", ["", "a", "ünï", "🐴" * 3, "tok" + str(ints(0, 99, 1)[0])], VT.ARRAY, VT.STRING),
        ("t.nested_i32", [ints(-5, 5, 3), ints(0, 9, 1)], VT.ARRAY, VT.ARRAY),
        ("t.nested_str", [["a", "b"], ["ç"]], VT.ARRAY, VT.ARRAY),
        ("t.nested_mixed", [[1, 2], ["x"]], VT.ARRAY, VT.ARRAY),
        ("t.nested_deep", [[[1], [2, 3]], [[4]]], VT.ARRAY, VT.ARRAY),
    ]


EXPECTED_TYPES = {
    "t.u8": "UINT8", "t.i8": "INT8", "t.u16": "UINT16", "t.i16": "INT16", "t.u32": "UINT32",
    "t.i32": "INT32", "t.u64": "UINT64", "t.i64": "INT64", "t.f32": "FLOAT32", "t.f64": "FLOAT64",
    "t.true": "BOOL", "t.false": "BOOL", "t.str": "STRING", "t.str_utf8": "STRING", "t.str_empty": "STRING",
    "t.a_u8": "ARRAY[UINT8]", "t.a_i8": "ARRAY[INT8]", "t.a_u16": "ARRAY[UINT16]", "t.a_i16": "ARRAY[INT16]",
    "t.a_u32": "ARRAY[UINT32]", "t.a_i32": "ARRAY[INT32]", "t.a_u64": "ARRAY[UINT64]", "t.a_i64": "ARRAY[INT64]",
    "t.a_f32": "ARRAY[FLOAT32]", "t.a_f64": "ARRAY[FLOAT64]", "t.a_bool": "ARRAY[BOOL]", "t.a_str": "ARRAY[STRING]",
    "t.nested_i32": "ARRAY[ARRAY[INT32]]", "t.nested_str": "ARRAY[ARRAY[STRING]]",
    "t.nested_mixed": "ARRAY[ARRAY]", "t.nested_deep": "ARRAY[ARRAY[ARRAY[INT32]]]",
}


def writer_tensors(rng: np.random.Generator):
    """(name, array, raw_dtype, GGUF type name, GGUF shape) of several types."""
    q8 = quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), QT.Q8_0)
    q40 = quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), QT.Q4_0)
    q4k = np.frombuffer(random_tensor_bytes(rng, [512, 2], QT.Q4_K), dtype=np.uint8).reshape(2, 288)
    return [
        ("f32.weight", rng.standard_normal((3, 64)).astype(np.float32), None, "F32", (64, 3)),
        ("f16.weight", rng.standard_normal((2, 4, 48)).astype(np.float16), None, "F16", (48, 4, 2)),
        ("q8.weight", q8, QT.Q8_0, "Q8_0", (64, 3)),
        ("q40.weight", q40, QT.Q4_0, "Q4_0", (32, 2)),
        ("q4k.weight", q4k, QT.Q4_K, "Q4_K", (512, 2)),
        ("i32.vector", rng.integers(-2**31, 2**31 - 1, 7, dtype=np.int32), None, "I32", (7,)),
    ]


@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_round_trip_gguf_writer(tmp_path, alignment):
    rng = np.random.default_rng(1000 + (alignment or 0))
    kvs = writer_kvs(rng)
    tensors = writer_tensors(rng)
    path = tmp_path / "rt.gguf"
    write_with_gguf_writer(path, kvs, [(n, a, q) for n, a, q, _, _ in tensors], alignment=alignment)

    f = lowbit.GGUFFile(path)
    align = alignment or 32
    assert (f.version, f.alignment, f.file_size, f.path) == (3, align, os.path.getsize(path), str(path))
    ref = gguf.GGUFReader(path)
    assert f.data_offset == ref.data_offset and f.data_offset % align == 0

    expected = {"general.architecture": "llama"}
    if alignment is not None:
        expected["general.alignment"] = alignment
    expected.update({k: v for k, v, _, _ in kvs})
    assert f.metadata == expected
    assert list(f.metadata) == list(expected)          # file order
    types = dict(f.metadata_types)
    assert types.pop("general.architecture") == "STRING"
    if alignment is not None:
        assert types.pop("general.alignment") == "UINT32"
    assert types == EXPECTED_TYPES
    assert f.architecture == "llama"

    assert [t.name for t in f.tensors] == [t[0] for t in tensors]
    for (name, array, _, type_name, shape), rt in zip(tensors, ref.tensors):
        t = f.tensor(name)
        assert (t.type, t.type_id, t.shape) == (type_name, int(rt.tensor_type), shape)
        assert (t.n_elements, t.nbytes, t.offset) == (rt.n_elements, rt.n_bytes, rt.data_offset)
        assert t.offset % align == 0
        view = f.tensor_bytes(name)
        assert view.dtype == np.uint8 and view.shape == (t.nbytes,) and not view.flags.writeable
        assert view.tobytes() == array.tobytes()


def test_version_2_by_patching_a_writer_file(tmp_path):
    rng = np.random.default_rng(7)
    kvs = writer_kvs(rng)
    tensors = writer_tensors(rng)
    v3 = tmp_path / "v3.gguf"
    write_with_gguf_writer(v3, kvs, [(n, a, q) for n, a, q, _, _ in tensors])
    raw = bytearray(v3.read_bytes())
    assert struct.unpack_from("<I", raw, 4)[0] == 3
    struct.pack_into("<I", raw, 4, 2)   # v2 and v3 share the layout (64-bit counts and lengths)
    f2, f3 = lowbit.GGUFFile(write(tmp_path, bytes(raw), "v2.gguf")), lowbit.GGUFFile(v3)
    assert (f2.version, f3.version) == (2, 3)
    assert f2.metadata == f3.metadata and f2.metadata_types == f3.metadata_types
    assert f2.tensors == f3.tensors
    for t in f3.tensors:
        assert np.array_equal(f2.tensor_bytes(t.name), f3.tensor_bytes(t.name))


def test_raw_v2_empty_arrays_and_nesting(tmp_path):
    rng = np.random.default_rng(3)
    g = RawGGUF(version=2, alignment=64)
    g.kv("general.alignment", VT.UINT64, 64)   # any integer type is accepted for the alignment
    scalar_types = [VT.UINT8, VT.INT8, VT.UINT16, VT.INT16, VT.UINT32, VT.INT32, VT.FLOAT32, VT.BOOL,
                    VT.UINT64, VT.INT64, VT.FLOAT64, VT.STRING]
    for t in scalar_types:
        g.kv(f"empty.{t.name}", VT.ARRAY, Arr(t, []))
    g.kv("empty.nested", VT.ARRAY, Arr(VT.ARRAY, []))
    g.kv("nested.empty_inner", VT.ARRAY, Arr(VT.ARRAY, [Arr(VT.UINT8, []), Arr(VT.UINT8, [])]))
    deep = Arr(VT.INT16, [-3])
    for _ in range(7):                           # 8 levels: the deepest nesting allowed
        deep = Arr(VT.ARRAY, [deep])
    g.kv("nested.deep", VT.ARRAY, deep)
    g.kv("s.empty", VT.STRING, "")
    data = random_tensor_bytes(rng, [32, 3], QT.F32)
    g.tensor("w", [32, 3], QT.F32, data)
    raw, lay = g.build()
    f = lowbit.GGUFFile(write(tmp_path, raw))
    assert (f.version, f.alignment, f.data_offset) == (2, 64, lay.data_offset)
    md, types = f.metadata, f.metadata_types
    for t in scalar_types:
        assert md[f"empty.{t.name}"] == [] and types[f"empty.{t.name}"] == f"ARRAY[{t.name}]"
    assert md["empty.nested"] == [] and types["empty.nested"] == "ARRAY[ARRAY]"
    assert md["nested.empty_inner"] == [[], []] and types["nested.empty_inner"] == "ARRAY[ARRAY[UINT8]]"
    assert md["nested.deep"] == [[[[[[[[-3]]]]]]]]
    assert types["nested.deep"] == "ARRAY[" * 8 + "INT16" + "]" * 8
    assert md["s.empty"] == ""
    assert f.tensor_bytes("w").tobytes() == data and f.tensor("w").offset == lay.tensors[0].data


def test_non_ascii_keys_and_undecodable_string_values(tmp_path):
    g = RawGGUF().kv("ключ.名前", VT.UINT8, 7).kv("raw", VT.STRING, b"ok\xff\xc3")
    g.kv("raw_list", VT.ARRAY, Arr(VT.STRING, [b"\x80", "fine"]))
    f = lowbit.GGUFFile(write(tmp_path, g.build()[0]))
    assert f.metadata["ключ.名前"] == 7
    assert f.metadata["raw"] == "ok\udcff\udcc3" and f.metadata["raw"].encode("utf-8", "surrogateescape") == b"ok\xff\xc3"
    assert f.metadata["raw_list"] == ["\udc80", "fine"]
    with pytest.raises(ValueError, match="NUL"):
        lowbit.GGUFFile(str(tmp_path / "a") + "\0b")


def test_typed_getters(tmp_path):
    """The C++ getters the model config uses: conversions, range checks and their messages."""
    g = RawGGUF()
    g.kv("u8", VT.UINT8, 200).kv("i32_neg", VT.INT32, -5).kv("u64_big", VT.UINT64, 2**40)
    g.kv("f64", VT.FLOAT64, 0.1).kv("f32", VT.FLOAT32, 1.5).kv("b", VT.BOOL, True).kv("s", VT.STRING, "hi")
    g.kv("ids", VT.ARRAY, Arr(VT.UINT8, [1, 2, 250])).kv("negs", VT.ARRAY, Arr(VT.INT64, [-1, 2]))
    g.kv("scores", VT.ARRAY, Arr(VT.FLOAT64, [0.5, -2.0])).kv("toks", VT.ARRAY, Arr(VT.STRING, ["a", "bc"]))
    c = lowbit._core._GGUFFile(write(tmp_path, g.build()[0]))
    assert (c.get_u32("u8"), c.get_i64("u8"), c.get_i32("i32_neg"), c.get_u64("u64_big")) == (200, 200, -5, 2**40)
    assert (c.get_f64("f64"), c.get_f32("f64"), c.get_f32("f32")) == (0.1, f32(0.1), 1.5)
    assert (c.get_bool("b"), c.get_str("s"), c.get_u32_opt("nope"), c.get_u32_opt("u8")) == (True, "hi", None, 200)
    assert (c.get_str_opt("s"), c.get_str_opt("nope")) == ("hi", None)
    assert c.get_u32_array("ids") == [1, 2, 250] and c.get_i32_array("negs") == [-1, 2]
    assert c.get_f32_array("scores") == [0.5, -2.0] and c.get_str_array("toks") == ["a", "bc"]
    assert c.array_count("toks") == 2
    cases = [
        ("get_u32", "i32_neg", r"key 'i32_neg' \(at byte \d+\): value -5 does not fit UINT32"),
        ("get_i32", "u64_big", r"key 'u64_big' \(at byte \d+\): value 1099511627776 does not fit INT32"),
        ("get_u32", "s", r"key 's' \(at byte \d+\): expected UINT32 .*found STRING"),
        ("get_f32", "u8", r"expected FLOAT32 .*found UINT8"),
        ("get_bool", "u8", r"expected BOOL, found UINT8"),
        ("get_str", "toks", r"expected STRING, found ARRAY\[STRING\]"),
        ("get_u32", "missing.key", r"required key 'missing.key' is missing"),
        ("get_u32_opt", "s", r"expected UINT32 .*found STRING"),
        ("get_u32_array", "negs", r"key 'negs' .*element 0 value -1 does not fit UINT32"),
        ("get_f32_array", "ids", r"expected ARRAY\[FLOAT32\] .*found ARRAY\[UINT8\]"),
        ("get_str_array", "ids", r"expected ARRAY\[STRING\], found ARRAY\[UINT8\]"),
    ]
    for method, key, pattern in cases:
        with pytest.raises(lowbit.GGUFError, match=pattern):
            getattr(c, method)(key)


# ---- the real models ------------------------------------------------------------------------

REAL_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


@pytest.fixture(params=REAL_MODELS)
def real_model(request):
    """(path, gguf.GGUFReader). Function-scoped on purpose: the reader holds millions of small
    numpy objects (seconds to build for a 262k vocab) that would slow every later gc pass."""
    path = real_model_path(request.param)
    if path is None:
        pytest.skip(f"real model {request.param} not available")
    return path, gguf.GGUFReader(path)


def reader_type_label(field) -> str:
    types = [t.name for t in field.types]
    return "".join(f"{t}[" for t in types[:-1]) + types[-1] + "]" * (len(types) - 1)


def test_real_model_matches_gguf_reader(real_model):
    path, ref = real_model
    f = lowbit.GGUFFile(path)
    assert (f.alignment, f.data_offset, f.file_size) == (ref.alignment, ref.data_offset, os.path.getsize(path))
    assert f.version == int(ref.fields["GGUF.version"].contents())
    ref_fields = {k: v for k, v in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(f.metadata) == list(ref_fields)
    for key, field in ref_fields.items():
        value = f.metadata[key]
        if isinstance(value, np.ndarray):      # long numeric arrays: read-only views of the mapping
            assert len(value) > 65536 and not value.flags.writeable, key
            value = value.tolist()
        assert value == field.contents(), key
        assert f.metadata_types[key] == reader_type_label(field), key
    assert f.architecture == ref_fields["general.architecture"].contents()

    assert len(f.tensors) == len(ref.tensors)
    for t, rt in zip(f.tensors, ref.tensors):
        assert (t.name, t.type_id, t.type) == (rt.name, int(rt.tensor_type), rt.tensor_type.name)
        assert t.shape == tuple(int(d) for d in rt.shape)
        assert (t.n_elements, t.nbytes, t.offset) == (rt.n_elements, rt.n_bytes, rt.data_offset)
    picks = [0, len(ref.tensors) // 2, len(ref.tensors) - 1]
    picks += [i for i, rt in enumerate(ref.tensors) if rt.tensor_type in (QT.Q4_K, QT.Q6_K, QT.Q4_1)][:2]
    for i in picks:
        rt = ref.tensors[i]
        assert f.tensor_bytes(rt.name).tobytes() == rt.data.tobytes(), rt.name


def test_real_models_parse_fast():
    paths = [p for p in map(real_model_path, REAL_MODELS) if p]
    if not paths:
        pytest.skip("no real model available")
    for path in paths:
        start = time.perf_counter()
        f = lowbit.GGUFFile(path)
        parsed = time.perf_counter() - start
        n_meta = len(f.metadata)   # includes converting the vocab arrays to Python lists
        total = time.perf_counter() - start
        assert n_meta > 10 and len(f.tensors) > 100
        assert parsed < 0.25 and total < 1.0, (path, parsed, total)


# ---- lifetime and file-system errors --------------------------------------------------------

def test_views_outlive_close_and_the_file_object(tmp_path):
    raw, lay = small_valid_file(seed=5)
    path = write(tmp_path, raw)
    with lowbit.GGUFFile(path) as f:
        views = {t.name: f.tensor_bytes(t.name) for t in f.tensors}
        records = f.tensors
        for t in records:   # zero-copy: every view of a tensor is the same mapped address
            again = f.tensor_bytes(t.name)
            assert again.__array_interface__["data"][0] == views[t.name].__array_interface__["data"][0]
        addresses = [views[t.name].__array_interface__["data"][0] - t.offset for t in records]
        assert len(set(addresses)) == 1   # one mapping: address - file offset is its base
    assert f.closed
    for attr in ("metadata", "tensors", "version"):
        with pytest.raises(ValueError, match="closed"):
            getattr(f, attr)
    del f
    import gc
    gc.collect()
    for t, tl in zip(records, lay.tensors):
        assert views[t.name].tobytes() == raw[tl.data:tl.data + tl.nbytes]
        with pytest.raises(ValueError):
            views[t.name][0] = 1      # read-only mapping, read-only view


def test_unknown_tensor_and_missing_architecture(tmp_path):
    f = lowbit.GGUFFile(write(tmp_path, small_valid_file()[0]))
    with pytest.raises(KeyError, match="no.such.tensor"):
        f.tensor("no.such.tensor")
    with pytest.raises(KeyError, match="no.such.tensor"):
        f.tensor_bytes("no.such.tensor")
    g = RawGGUF().kv("general.name", VT.STRING, "x")
    f2 = lowbit.GGUFFile(write(tmp_path, g.build()[0], "noarch.gguf"))
    with pytest.raises(lowbit.GGUFError, match="general.architecture"):
        f2.architecture
    assert f2.tensors == [] and f2.metadata == {"general.name": "x"}


def test_file_system_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        lowbit.GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(IsADirectoryError):
        lowbit.GGUFFile(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(lowbit.GGUFError, match="not a regular file"):   # and no hang
        lowbit.GGUFFile(fifo)
    with pytest.raises(lowbit.GGUFError, match="0 bytes, too short"):
        lowbit.GGUFFile(write(tmp_path, b"", "empty.gguf"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked.gguf"
        locked.write_bytes(small_valid_file()[0])
        locked.chmod(0)
        with pytest.raises(PermissionError):
            lowbit.GGUFFile(locked)


# ---- bad input: truncation, corrupted fields, hostile sizes, fuzz ---------------------------

def test_truncation_at_every_byte(tmp_path):
    raw, lay = small_valid_file(seed=11)
    assert 1000 < lay.data_end <= len(raw) < 8192
    path = tmp_path / "trunc.gguf"
    for n in range(len(raw) + 1):
        path.write_bytes(raw[:n])
        if n < lay.data_end:
            with pytest.raises(lowbit.GGUFError, match=r"byte \d+|bytes"):
                lowbit.GGUFFile(path)
        else:                                    # only trailing alignment padding is missing
            assert len(lowbit.GGUFFile(path).tensors) == 3


def patched(raw: bytes, fmt: str, offset: int, value) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def corrupt_cases():
    """(id, file bytes, regex the message must match). Every message also names a byte offset."""
    raw, lay = small_valid_file(seed=2)
    k, t = lay.key, lay.tensor
    rng = np.random.default_rng(2)
    f32_data = random_tensor_bytes(rng, [32], QT.F32)

    def raw_file(*kvs, tensors=(), version=3):
        g = RawGGUF(version=version)
        for kv in kvs:
            g.kv(*kv)
        for tensor in tensors:
            g.tensor(*tensor)
        return g.build()[0]

    deep = Arr(VT.UINT8, [1])
    for _ in range(8):
        deep = Arr(VT.ARRAY, [deep])
    q1, q2 = t("blk.0.attn_q.weight"), t("token_embd.weight")
    cases = [
        ("magic", b"GGML" + raw[4:], r"header: magic at byte 0 is 'GGML'"),
        ("too_short", b"GG", r"file is 2 bytes, too short"),
        ("version_1", patched(raw, "<I", 4, 1), r"version 1 \(at byte 4\) is not supported"),
        ("version_4", patched(raw, "<I", 4, 4), r"unsupported GGUF version 4 at byte 4"),
        ("version_0", patched(raw, "<I", 4, 0), r"unsupported GGUF version 0 at byte 4"),
        ("big_endian", patched(raw, ">I", 4, 3), r"at byte 4.*big-endian"),
        ("n_tensors_giant", patched(raw, "<Q", 8, 2**62), r"n_tensors 4611686018427387904 at byte 8"),
        ("n_tensors_vs_bytes", patched(raw, "<Q", 8, 10**5), r"n_tensors 100000 at byte 8: .*bytes"),
        ("n_kv_giant", patched(raw, "<Q", 16, 2**62), r"n_kv 4611686018427387904 at byte 16"),
        ("n_kv_vs_bytes", patched(raw, "<Q", 16, 10**4), r"n_kv 10000 at byte 16: .*bytes"),
        ("n_kv_too_few_entries", patched(raw, "<Q", 16, 5),
         r"tensor 'general.name' \(info at byte \d+\): n_dims 8 at byte \d+ is not in 1..4"),
        ("key_len_giant", patched(raw, "<Q", k("llama.flag").start, 2**62),
         rf"metadata entry 4 \(at byte {k('llama.flag').start}\): key length 4611686018427387904 at byte \d+ exceeds the cap"),
        ("key_len_past_eof", patched(raw, "<Q", k("llama.flag").start, 60000),
         r"metadata entry 4 .*key length 60000 at byte \d+ exceeds the \d+ bytes left"),
        ("key_empty", raw_file(("", VT.UINT8, 1)), r"metadata entry 0 \(at byte 24\): empty key"),
        ("key_bad_utf8", raw_file((b"ab\xff", VT.UINT8, 1)), r"metadata entry 0 \(at byte 24\): key 'ab\\xff' is not valid UTF-8"),
        ("key_utf16_surrogate", raw_file((b"\xed\xa0\x80", VT.UINT8, 1)), r"not valid UTF-8"),
        ("value_type_13", patched(raw, "<I", k("llama.flag").type, 13),
         rf"key 'llama.flag' \(at byte \d+\): unknown value type 13 at byte {k('llama.flag').type}"),
        ("value_type_giant", patched(raw, "<I", k("llama.flag").type, 2**32 - 1), r"unknown value type 4294967295"),
        ("bool_2", patched(raw, "<B", k("llama.flag").value, 2),
         rf"key 'llama.flag' .*BOOL value 2 at byte {k('llama.flag').value} is not 0 or 1"),
        ("bool_array", patched(raw, "<B", k("test.bools").value + 12 + 1, 7),
         rf"key 'test.bools' .*BOOL array element 1 at byte {k('test.bools').value + 13} is 7"),
        ("string_len_giant", patched(raw, "<Q", k("general.name").value, 2**62),
         rf"key 'general.name' .*string value length 4611686018427387904 at byte {k('general.name').value} exceeds the cap"),
        ("string_len_past_eof", patched(raw, "<Q", k("general.name").value, 10**6),
         r"key 'general.name' .*string value length 1000000 at byte \d+ exceeds the \d+ bytes left"),
        ("array_count_giant", patched(raw, "<Q", k("tokenizer.ggml.tokens").value + 4, 2**62),
         rf"key 'tokenizer.ggml.tokens' .*array count 4611686018427387904 at byte {k('tokenizer.ggml.tokens').value + 4}"),
        ("array_count_vs_bytes", patched(raw, "<Q", k("tokenizer.ggml.scores").value + 4, 10**6),
         r"key 'tokenizer.ggml.scores' .*array count 1000000 at byte \d+: FLOAT32 elements need at least 4 bytes"),
        ("string_array_count_vs_bytes", patched(raw, "<Q", k("tokenizer.ggml.tokens").value + 4, 2**23),
         r"array count 8388608 at byte \d+: STRING elements need at least 8 bytes"),
        ("array_elem_type", patched(raw, "<I", k("tokenizer.ggml.scores").value, 77),
         r"key 'tokenizer.ggml.scores' .*unknown array element type 77 at byte \d+"),
        ("array_string_elem_len", patched(raw, "<Q", k("tokenizer.ggml.tokens").value + 12, 2**40),
         r"key 'tokenizer.ggml.tokens' .*string element 0 length 1099511627776 at byte \d+ exceeds"),
        ("nested_count", patched(raw, "<Q", k("test.nested").value + 12 + 4, 2**50),
         r"key 'test.nested' .*array count 1125899906842624 at byte \d+"),
        ("nested_too_deep", raw_file(("deep", VT.ARRAY, deep)), r"key 'deep' .*nested deeper than 8 levels at byte \d+"),
        ("duplicate_key", raw_file(("a.b", VT.UINT8, 1), ("c", VT.UINT8, 2), ("a.b", VT.INT8, 3)),
         r"key 'a.b' \(at byte \d+\): duplicate key \(first defined at byte 24\)"),
        ("alignment_0", raw_file(("general.alignment", VT.UINT32, 0)),
         r"key 'general.alignment' \(at byte 24\): general.alignment 0 must be a nonzero power of two"),
        ("alignment_48", raw_file(("general.alignment", VT.UINT32, 48)), r"general.alignment 48 must be a nonzero power of two"),
        ("alignment_negative", raw_file(("general.alignment", VT.INT32, -32)), r"general.alignment -32 must be"),
        ("alignment_huge", raw_file(("general.alignment", VT.UINT64, 2**40)), r"general.alignment 1099511627776 must be"),
        ("alignment_string", raw_file(("general.alignment", VT.STRING, "32")),
         r"key 'general.alignment' \(at byte 24\): general.alignment must be an integer, found STRING"),
        ("alignment_float", raw_file(("general.alignment", VT.FLOAT32, 32.0)), r"must be an integer, found FLOAT32"),
        ("tensor_name_empty", raw_file(tensors=[("", [32], QT.F32, f32_data)]),
         r"tensor info 0 \(at byte 24\): empty tensor name"),
        ("tensor_name_64", raw_file(tensors=[("n" * 64, [32], QT.F32, f32_data)]),
         r"tensor info 0 \(at byte 24\): tensor name length 64 at byte 24 exceeds the cap of 63"),
        ("tensor_name_bad_utf8", raw_file(tensors=[(b"w\xc3\x28", [32], QT.F32, f32_data)]),
         r"tensor name 'w\\xc3\(' is not valid UTF-8"),
        ("tensor_duplicate", raw_file(tensors=[("w", [32], QT.F32, f32_data), ("w", [32], QT.F32, f32_data)]),
         r"tensor 'w' \(info at byte \d+\): duplicate tensor name \(first info at byte 24\)"),
        ("n_dims_0", patched(raw, "<I", q1.n_dims, 0), rf"tensor 'blk.0.attn_q.weight' \(info at byte {q1.start}\): n_dims 0 at byte {q1.n_dims} is not in 1..4"),
        ("n_dims_5", patched(raw, "<I", q1.n_dims, 5), r"n_dims 5 at byte \d+ is not in 1..4"),
        ("ne_0", patched(raw, "<Q", q1.ne[1], 0), rf"tensor 'blk.0.attn_q.weight' .*ne\[1\] = 0 at byte {q1.ne[1]}"),
        ("ne_giant", patched(raw, "<Q", q1.ne[0], 2**63), r"ne\[0\] = 9223372036854775808 at byte \d+ is not in 1..2\^63-1"),
        ("n_elements_overflow", raw_file(tensors=[("w", [2**32, 2**32], QT.F32, b"")]),
         r"tensor 'w' \(info at byte 24\): shape \[4294967296, 4294967296\] has more than 2\^63-1 elements"),
        ("nbytes_overflow", raw_file(tensors=[("w", [2**61, 2], QT.F32, b"")]),
         r"tensor 'w' \(info at byte 24\): byte size of F32 tensor of shape \[2305843009213693952, 2\] overflows"),
        ("type_4", patched(raw, "<I", q1.type, 4), rf"tensor 'blk.0.attn_q.weight' .*unknown tensor type id 4 at byte {q1.type}"),
        ("type_giant", patched(raw, "<I", q1.type, 1000), r"unknown tensor type id 1000 at byte \d+"),
        ("block_multiple", raw_file(tensors=[("w", [33, 1], QT.Q8_0, bytes(34))]),
         r"tensor 'w' \(info at byte 24\): ne\[0\] = 33 is not a multiple of the Q8_0 block size 32"),
        ("offset_unaligned", patched(raw, "<Q", q1.offset, q1.data - lay.data_offset + 4),
         rf"tensor 'blk.0.attn_q.weight' \(info at byte {q1.start}\): offset \d+ is not a multiple of alignment 32"),
        ("overlap", patched(raw, "<Q", q2.offset, q1.data - lay.data_offset),
         r"tensor 'token_embd.weight' \(info at byte \d+\): data \[\d+, \d+\) overlaps tensor 'blk.0.attn_q.weight'"),
        ("data_past_eof", patched(raw, "<Q", q2.offset, 2**40),
         rf"tensor 'token_embd.weight' .*272 bytes of data at offset 1099511627776 \(data section starts at byte {lay.data_offset}\) run past the end"),
        ("offset_wraps", patched(raw, "<Q", q2.offset, 2**64 - 32), r"run past the end of the file"),
        ("data_section_past_eof", raw[:lay.data_offset - 1], r"run past the end of the file"),
    ]
    return cases


CORRUPT_CASES = corrupt_cases()


@pytest.mark.parametrize("raw,pattern", [c[1:] for c in CORRUPT_CASES], ids=[c[0] for c in CORRUPT_CASES])
def test_corrupted_field(tmp_path, raw, pattern):
    path = write(tmp_path, raw)
    with pytest.raises(lowbit.GGUFError) as err:
        lowbit.GGUFFile(path)
    message = str(err.value)
    assert message.startswith(path + ": "), message
    assert re.search(pattern, message), message
    assert re.search(r"byte \d+|\d+ bytes", message), message


def test_valid_variants_of_corrupted_fields(tmp_path):
    """The limits are exact: 63-byte names, alignment as other integer types, 4 dims all parse."""
    rng = np.random.default_rng(9)
    data = random_tensor_bytes(rng, [32, 1, 1, 2], QT.F32)
    g = RawGGUF(alignment=128).kv("general.alignment", VT.INT32, 128)
    g.tensor("n" * 63, [32, 1, 1, 2], QT.F32, data)
    f = lowbit.GGUFFile(write(tmp_path, g.build()[0]))
    assert f.alignment == 128 and f.tensor("n" * 63).shape == (32, 1, 1, 2)
    assert f.tensor_bytes("n" * 63).tobytes() == data


HOSTILE_SCRIPT = textwrap.dedent("""
    import resource, sys, time
    import lowbit
    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    limit = vm_bytes() + (128 << 20)        # 128 MiB of address space beyond what is mapped now
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for path in sys.argv[1:]:
        start = time.perf_counter()
        try:
            lowbit.GGUFFile(path)
            print("PARSED", path)
        except lowbit.GGUFError:
            print("GGUFError %.4f" % (time.perf_counter() - start))
""")


def test_hostile_sizes_fail_fast_without_allocating(tmp_path):
    """Counts and lengths under the caps but over the bytes present (2**23 strings, 2**29 arrays,
    a 2**29-byte string...) and far over them (2**62): all GGUFError in milliseconds, under an
    address-space limit that any allocation of that size would hit."""
    raw, lay = small_valid_file(seed=4)
    k = lay.key
    files = [
        patched(raw, "<Q", 8, 2**62), patched(raw, "<Q", 16, 2**62), patched(raw, "<Q", 16, 2**20),
        patched(raw, "<Q", k("general.name").value, 2**29),
        patched(raw, "<Q", k("general.name").value, 2**62),
        patched(raw, "<Q", k("tokenizer.ggml.tokens").value + 4, 2**23),
        patched(raw, "<Q", k("tokenizer.ggml.tokens").value + 4, 2**62),
        patched(raw, "<Q", k("tokenizer.ggml.scores").value + 4, 2**29),
        patched(raw, "<Q", k("test.nested").value + 4, 2**19),
        patched(raw, "<Q", k("test.nested").value + 16, 2**28),
        patched(raw, "<Q", lay.kv[3].start, 2**16),
    ]
    paths = [write(tmp_path, b, f"h{i}.gguf") for i, b in enumerate(files)]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(lowbit.__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", HOSTILE_SCRIPT, *paths], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")[:-1]
    assert len(lines) == len(paths), out.stdout + out.stderr
    for line in lines:
        kind, seconds = line.split()
        assert kind == "GGUFError" and float(seconds) < 0.1, line


def mutate(raw: bytes, lay, rng: np.random.Generator) -> bytes:
    """A few random byte writes, mostly in the header/metadata/tensor infos; sometimes a whole
    8-byte field set to an extreme, sometimes a truncation."""
    out = bytearray(raw)
    for _ in range(int(rng.integers(1, 5))):
        region = lay.data_offset if rng.random() < 0.9 else len(out)
        pos = int(rng.integers(0, region))
        roll = rng.random()
        if roll < 0.15 and pos + 8 <= len(out):
            extreme = [0, 1, 2**63, 2**64 - 1, 2**32, int(rng.integers(0, 2**16))][int(rng.integers(0, 6))]
            struct.pack_into("<Q", out, pos, extreme)
        else:
            out[pos] = int(rng.integers(0, 256))
    if rng.random() < 0.1:
        out = out[:int(rng.integers(0, len(out)))]
    return bytes(out)


def exercise(path: str) -> None:
    """Parse and touch everything a valid file offers (a bad pointer would crash here)."""
    f = lowbit.GGUFFile(path)
    f.metadata, f.metadata_types
    for t in f.tensors:
        view = f.tensor_bytes(t.name)
        assert view.shape == (t.nbytes,) and t.offset + t.nbytes <= f.file_size
        int(view.sum(dtype=np.uint64))


def test_fuzz_byte_flips(tmp_path):
    """Bounded random mutation fuzz (~1.5 s): only GGUFError or a clean parse, never a crash."""
    raw, lay = small_valid_file(seed=21)
    rng = np.random.default_rng(12345)
    path = str(tmp_path / "fuzz.gguf")
    deadline = time.perf_counter() + 1.5
    outcomes = {"ok": 0, "GGUFError": 0}
    while time.perf_counter() < deadline:
        data = mutate(raw, lay, rng)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            exercise(path)
            outcomes["ok"] += 1
        except lowbit.GGUFError:
            outcomes["GGUFError"] += 1
    assert outcomes["GGUFError"] > 200 and outcomes["ok"] > 10, outcomes

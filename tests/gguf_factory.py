"""Synthetic GGUF files for tests.

Two writers:
- ``write_with_gguf_writer``: the reference writer, ``gguf.GGUFWriter`` (v3 files, as llama.cpp's
  converters write them).
- ``RawGGUF``: a small hand-made writer for what GGUFWriter cannot express (version 2, empty
  arrays, arbitrary nesting, deliberately broken fields). ``build()`` also returns a ``Layout``
  recording the byte offset of every field, so tests can corrupt one field precisely.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

VT = GGUFValueType
QT = GGMLQuantizationType

SCALAR_FORMAT = {
    VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
    VT.FLOAT32: "<f", VT.BOOL: "<B", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d",
}


@dataclass
class Arr:
    """A typed GGUF array value; for elem == ARRAY the items are Arr themselves."""

    elem: VT
    items: Sequence[Any]


def encode_string(s: Union[str, bytes]) -> bytes:
    raw = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype: VT, value: Any) -> bytes:
    """The value's bytes, without its type id."""
    if vtype == VT.STRING:
        return encode_string(value)
    if vtype == VT.ARRAY:
        assert isinstance(value, Arr)
        body = b"".join(encode_value(value.elem, item) for item in value.items)
        return struct.pack("<IQ", int(value.elem), len(value.items)) + body
    return struct.pack(SCALAR_FORMAT[vtype], value)


def tensor_nbytes(shape: Sequence[int], qtype: QT) -> int:
    """Bytes of a tensor of GGUF shape (ne[0] first)."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    assert shape[0] % block == 0
    return n // block * type_size


def pad_to(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass
class KVLayout:
    key_text: str
    start: int          # the entry (its key length field)
    key: int            # first byte of the key text
    type: int           # the u32 value type
    value: int          # first byte of the value


@dataclass
class TensorLayout:
    name: str
    start: int          # the info (its name length field)
    n_dims: int
    ne: List[int]       # each u64 dim
    type: int
    offset: int         # the u64 data offset field
    data: int           # absolute start of the data
    nbytes: int


@dataclass
class Layout:
    kv: List[KVLayout] = field(default_factory=list)
    tensors: List[TensorLayout] = field(default_factory=list)
    header_end: int = 0
    data_offset: int = 0
    data_end: int = 0   # end of the last tensor's data (the file continues with padding)

    def key(self, key: str) -> KVLayout:
        return next(k for k in self.kv if k.key_text == key)

    def tensor(self, name: str) -> TensorLayout:
        return next(t for t in self.tensors if t.name == name)


@dataclass
class RawTensor:
    name: Union[str, bytes]
    shape: Sequence[int]          # GGUF order, ne[0] first
    type_id: int
    data: bytes
    offset: Optional[int] = None  # relative to the data section; None: next aligned slot


class RawGGUF:
    """Writes GGUF bytes field by field. Tensor data is placed in order at aligned offsets unless
    an explicit offset is given; the file ends padded to the alignment."""

    def __init__(self, version: int = 3, alignment: int = 32):
        self.version = version
        self.alignment = alignment
        self.kvs: List[Tuple[Union[str, bytes], int, Any]] = []
        self.tensors: List[RawTensor] = []

    def kv(self, key: Union[str, bytes], vtype: Union[VT, int], value: Any) -> "RawGGUF":
        self.kvs.append((key, int(vtype), value))
        return self

    def tensor(self, name: Union[str, bytes], shape: Sequence[int], type_id: int, data: bytes,
               offset: Optional[int] = None) -> "RawGGUF":
        self.tensors.append(RawTensor(name, list(shape), int(type_id), bytes(data), offset))
        return self

    def build(self) -> Tuple[bytes, Layout]:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kvs)))
        lay = Layout()
        for key, vtype, value in self.kvs:
            start = len(out)
            out += encode_string(key)
            type_at = len(out)
            out += struct.pack("<I", vtype)
            out += encode_value(VT(vtype), value)
            lay.kv.append(KVLayout(str(key), start, start + 8, type_at, type_at + 4))
        offsets, next_free = [], 0
        for t in self.tensors:
            off = next_free if t.offset is None else t.offset
            offsets.append(off)
            next_free = max(next_free, pad_to(off + len(t.data), self.alignment))
        for t, off in zip(self.tensors, offsets):
            start = len(out)
            out += encode_string(t.name)
            n_dims_at = len(out)
            out += struct.pack("<I", len(t.shape))
            ne_at = [len(out) + 8 * d for d in range(len(t.shape))]
            out += b"".join(struct.pack("<Q", d) for d in t.shape)
            type_at = len(out)
            out += struct.pack("<IQ", t.type_id, off)
            lay.tensors.append(TensorLayout(str(t.name), start, n_dims_at, ne_at, type_at, type_at + 4, 0, len(t.data)))
        lay.header_end = len(out)
        lay.data_offset = pad_to(len(out), self.alignment)
        data = bytearray(next_free)
        for t, off, tl in zip(self.tensors, offsets, lay.tensors):
            data[off:off + len(t.data)] = t.data
            tl.data = lay.data_offset + off
            lay.data_end = max(lay.data_end, tl.data + len(t.data))
        out += bytes(lay.data_offset - len(out)) + data
        if not self.tensors:
            lay.data_end = lay.header_end
        return bytes(out), lay


def random_tensor_bytes(rng: np.random.Generator, shape: Sequence[int], qtype: QT) -> bytes:
    """Random bytes of the right size; F32/F16 as real random floats."""
    if qtype == QT.F32:
        return rng.standard_normal(int(np.prod(shape))).astype(np.float32).tobytes()
    if qtype == QT.F16:
        return rng.standard_normal(int(np.prod(shape))).astype(np.float16).tobytes()
    return rng.integers(0, 256, tensor_nbytes(shape, qtype), dtype=np.uint8).tobytes()


def small_valid_file(seed: int = 0, version: int = 3) -> Tuple[bytes, Layout]:
    """A few-KB file with every kind of field: scalars, strings, string/int/bool/float/nested
    arrays, an empty array, and F32 / F16 / Q8_0 tensors. ``lay.data_end`` is where the last
    tensor's data ends; only alignment padding follows it."""
    rng = np.random.default_rng(seed)
    g = RawGGUF(version=version)
    g.kv("general.architecture", VT.STRING, "llama")
    g.kv("general.alignment", VT.UINT32, 32)
    g.kv("llama.block_count", VT.UINT32, int(rng.integers(1, 100)))
    g.kv("llama.rope.freq_base", VT.FLOAT32, float(rng.uniform(1e3, 1e6)))
    g.kv("llama.flag", VT.BOOL, True)
    g.kv("general.name", VT.STRING, "Tëst-模型")
    g.kv("tokenizer.ggml.tokens", VT.ARRAY, Arr(VT.STRING, [f"tok{i}" for i in range(40)]))
    g.kv("tokenizer.ggml.scores", VT.ARRAY, Arr(VT.FLOAT32, rng.standard_normal(40).astype(np.float32).tolist()))
    g.kv("tokenizer.ggml.token_type", VT.ARRAY, Arr(VT.INT32, rng.integers(1, 6, 40).tolist()))
    g.kv("test.bools", VT.ARRAY, Arr(VT.BOOL, [True, False, True]))
    g.kv("test.nested", VT.ARRAY, Arr(VT.ARRAY, [Arr(VT.UINT16, [1, 2]), Arr(VT.STRING, ["x"])]))
    g.kv("test.empty", VT.ARRAY, Arr(VT.INT64, []))
    g.kv("test.i64", VT.INT64, -(2**40))
    g.tensor("blk.0.attn_norm.weight", [64], QT.F32, random_tensor_bytes(rng, [64], QT.F32))
    g.tensor("blk.0.attn_q.weight", [32, 8], QT.F16, random_tensor_bytes(rng, [32, 8], QT.F16))
    g.tensor("token_embd.weight", [64, 4], QT.Q8_0, random_tensor_bytes(rng, [64, 4], QT.Q8_0))
    raw, lay = g.build()
    assert lay.data_end <= len(raw)
    return raw, lay


def write_with_gguf_writer(path, kvs: Sequence[Tuple[str, Any, VT, Optional[VT]]],
                           tensors: Sequence[Tuple[str, np.ndarray, Optional[QT]]],
                           alignment: Optional[int] = None, arch: str = "llama") -> None:
    """kvs: (key, value, type, array sub_type); tensors: (name, array, raw_dtype or None)."""
    w = GGUFWriter(str(path), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, value, vtype, sub_type in kvs:
        w.add_key_value(key, value, vtype, sub_type=sub_type)
    for name, array, raw_dtype in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def metadata_dict(kvs: Sequence[Tuple[str, Any, VT, Optional[VT]]]) -> Dict[str, Any]:
    return {key: value for key, value, _, _ in kvs}

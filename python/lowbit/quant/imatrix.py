"""Importance matrices (llama.cpp's imatrix): per weight matrix, the sum of squared input
activations per input column and how many input rows were summed.

Two file formats, both as llama.cpp's ``llama-imatrix`` writes them and ``llama-quantize`` reads
them:

GGUF (default, ``*.gguf``): KV ``general.type = "imatrix"``, ``imatrix.datasets`` (array of
strings), ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (uint32); per weight ``W`` two F32
tensors, ``W.in_sum2`` of GGUF shape [n, n_mat] (sums of x^2) and ``W.counts`` of shape
[1, n_mat] (rows summed per matrix; n_mat > 1 only for stacked experts).

legacy ``.dat`` (little endian):
    int32 n_entries
    n_entries x { int32 len, name[len], int32 ncall, int32 nval, float32 values[nval] }
    int32 last_chunk, int32 len, dataset[len]          (optional trailer)
where values = (sum / count) * ncall and ncall = ceil(max(count) / chunk_size): dividing by
ncall gives the mean of x^2. Reading a .dat back sets count = ncall * chunk_size.

``importance(name)`` is what the quantizer uses: sums / counts per matrix (the mean of x^2).
"""
from __future__ import annotations

import errno
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from lowbit.errors import LowbitError

DEFAULT_CHUNK_SIZE = 512
_MAX_NAME = 1 << 16


class IMatrixError(LowbitError, ValueError):
    """An imatrix file is malformed, truncated, or does not fit the model."""


def disk_error(e: OSError, path: str, need: int, error_type=LowbitError) -> BaseException:
    """A failed write as one clear error: a full disk, quota or file-size limit becomes
    ``error_type`` naming the path and the bytes needed; other OS errors stay as they are."""
    short_write = e.errno is None and " requested and " in str(e)   # numpy's tofile() on a full disk
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and not short_write:
        return e
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
        free = f", {st.f_bavail * st.f_frsize} bytes free there"
    except OSError:
        free = ""
    what = {errno.EFBIG: "the file size limit was reached", None: "a write came up short: no space left "
            "on the device or a file size limit"}.get(e.errno, "no space left on the device")
    return error_type(f"cannot write {path}: {what} (needs about {need} bytes{free}); "
                      f"nothing was left behind")


@dataclass
class IMatrixEntry:
    sums: np.ndarray     # (n_mat, n) float64: sum of x^2 per input column
    counts: np.ndarray   # (n_mat,) float64: input rows summed

    def mean(self) -> np.ndarray:
        """(n_mat * n,) float32: sums / counts; 1.0 where a matrix saw no data (llama.cpp's choice)."""
        out = np.ones_like(self.sums)
        seen = self.counts > 0
        out[seen] = self.sums[seen] / self.counts[seen, None]
        return out.astype(np.float32).reshape(-1)


@dataclass
class IMatrix:
    entries: Dict[str, IMatrixEntry] = field(default_factory=dict)
    datasets: List[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def importance(self, name: str) -> Optional[np.ndarray]:
        e = self.entries.get(name)
        return None if e is None else e.mean()

    def add(self, name: str, x: np.ndarray) -> None:
        """Accumulate the input rows ``x`` (rows, n) of weight ``name`` (one matrix)."""
        x = np.asarray(x, dtype=np.float64)
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = IMatrixEntry(np.zeros((1, x.shape[1])), np.zeros(1))
        if e.sums.shape[1] != x.shape[1]:
            raise IMatrixError(f"{name}: inputs of {x.shape[1]} columns, the entry has {e.sums.shape[1]}")
        e.sums[0] += np.einsum("ij,ij->j", x, x)
        e.counts[0] += x.shape[0]

    def save(self, path: "str | os.PathLike[str]", fmt: Optional[str] = None) -> None:
        """Write as GGUF, or as legacy .dat when ``fmt="dat"`` or the path ends in ``.dat``."""
        fmt = fmt or ("dat" if os.fspath(path).endswith(".dat") else "gguf")
        if fmt not in ("gguf", "dat"):
            raise ValueError(f"imatrix format must be 'gguf' or 'dat', got {fmt!r}")
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        try:
            (_save_dat if fmt == "dat" else _save_gguf)(self, tmp)
            os.replace(tmp, path)
        except OSError as e:
            need = sum(e.sums.nbytes // 2 + e.counts.nbytes // 2 + 64 for e in self.entries.values())
            raise disk_error(e, os.fspath(path), need, IMatrixError) from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load(path: "str | os.PathLike[str]", chunk_size: int = DEFAULT_CHUNK_SIZE) -> IMatrix:
    """Read either format (recognized by the GGUF magic). ``chunk_size`` only matters for
    .dat files, which do not store it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_dat(path, chunk_size)


# ---- legacy .dat ------------------------------------------------------------------------------
def _save_dat(im: IMatrix, path: str) -> None:
    names = sorted(n for n, e in im.entries.items() if np.any(e.counts > 0))
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(names)))
        for name in names:
            e = im.entries[name]
            raw = name.encode("utf-8")
            ncall = int(math.ceil(float(e.counts.max()) / im.chunk_size))
            counts = np.where(e.counts > 0, e.counts, 1.0)
            sums = np.where(e.counts[:, None] > 0, e.sums, 1.0)
            values = (sums / counts[:, None] * ncall).astype("<f4").reshape(-1)
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size))
            f.write(values.tobytes())
        dataset = (im.datasets[-1] if im.datasets else "").encode("utf-8")
        f.write(struct.pack("<ii", im.chunk_count, len(dataset)) + dataset)


def _load_dat(path, chunk_size: int) -> IMatrix:
    data = open(path, "rb").read()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise IMatrixError(f"{path}: truncated imatrix .dat at byte {pos} reading {what} ({n} bytes)")
        out = data[pos:pos + n]
        pos += n
        return out

    (n_entries,) = struct.unpack("<i", take(4, "the entry count"))
    if n_entries < 1:
        raise IMatrixError(f"{path}: not an imatrix file (entry count {n_entries})")
    im = IMatrix(chunk_size=chunk_size)
    for i in range(n_entries):
        (n,) = struct.unpack("<i", take(4, f"entry {i} name length"))
        if not 0 < n <= _MAX_NAME:
            raise IMatrixError(f"{path}: entry {i} has a bad name length {n} at byte {pos - 4}")
        name = take(n, f"entry {i} name").decode("utf-8", "replace")
        ncall, nval = struct.unpack("<ii", take(8, f"{name} ncall/nval"))
        if nval <= 0 or ncall < 0:
            raise IMatrixError(f"{path}: entry {name} has ncall {ncall}, nval {nval}")
        values = np.frombuffer(take(4 * nval, f"{name} values"), dtype="<f4").astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise IMatrixError(f"{path}: entry {name} holds non-finite values")
        count = float(max(ncall, 1) * chunk_size)
        im.entries[name] = IMatrixEntry((values / max(ncall, 1) * count).reshape(1, -1), np.array([count]))
    if pos + 8 <= len(data):
        im.chunk_count, n = struct.unpack("<ii", take(8, "the trailer"))
        if 0 < n <= _MAX_NAME:
            im.datasets = [take(n, "the dataset name").decode("utf-8", "replace")]
    return im


# ---- GGUF -------------------------------------------------------------------------------------
def _save_gguf(im: IMatrix, path: str) -> None:
    import gguf
    w = gguf.GGUFWriter(path, arch="imatrix")
    w.kv_data[0].pop("general.architecture", None)     # llama.cpp's imatrix files have none
    w.add_string("general.type", "imatrix")
    if im.datasets:
        w.add_array("imatrix.datasets", list(im.datasets))
    else:
        w.add_key_value("imatrix.datasets", [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    w.add_uint32("imatrix.chunk_count", int(im.chunk_count))
    w.add_uint32("imatrix.chunk_size", int(im.chunk_size))
    arrays = []
    for name in sorted(im.entries):
        e = im.entries[name]
        arrays.append((f"{name}.in_sum2", np.ascontiguousarray(e.sums, dtype=np.float32)))
        arrays.append((f"{name}.counts", np.ascontiguousarray(e.counts.reshape(-1, 1), dtype=np.float32)))
    for tname, arr in arrays:
        w.add_tensor(tname, arr)
    _write_with_empty_arrays(w)


def _write_with_empty_arrays(w) -> None:
    """GGUFWriter refuses empty arrays; pack them ourselves (type + zero length)."""
    import gguf
    pack = w._pack_val

    def pack_val(val, vtype, add_vtype, sub_type=None):
        if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
            head = w._pack("I", vtype) if add_vtype else b""
            return head + w._pack("I", sub_type or gguf.GGUFValueType.STRING) + w._pack("Q", 0)
        return pack(val, vtype, add_vtype, sub_type)

    w._pack_val = pack_val
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def _load_gguf(path) -> IMatrix:
    from lowbit.runtime.gguf_file import GGUFFile
    with GGUFFile(path) as f:
        meta = f.metadata
        if meta.get("general.type") != "imatrix":
            raise IMatrixError(f"{path}: a GGUF file but not an imatrix (general.type is "
                               f"{meta.get('general.type')!r})")
        im = IMatrix(datasets=[str(d) for d in meta.get("imatrix.datasets", []) or []],
                     chunk_count=int(meta.get("imatrix.chunk_count", 0)),
                     chunk_size=int(meta.get("imatrix.chunk_size", DEFAULT_CHUNK_SIZE)))
        tensors = {t.name: t for t in f.tensors}
        for tname, t in tensors.items():
            if not tname.endswith(".in_sum2"):
                continue
            name = tname[: -len(".in_sum2")]
            c = tensors.get(f"{name}.counts")
            if c is None:
                raise IMatrixError(f"{path}: {tname} has no matching {name}.counts tensor")
            if t.type != "F32" or c.type != "F32":
                raise IMatrixError(f"{path}: {name}: in_sum2/counts must be F32, got {t.type}/{c.type}")
            n = t.shape[0]
            n_mat = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
            counts = np.frombuffer(f.tensor_bytes(c.name), dtype="<f4").astype(np.float64)
            if counts.size != n_mat:
                raise IMatrixError(f"{path}: {name}: {counts.size} counts for {n_mat} matrices")
            sums = np.frombuffer(f.tensor_bytes(tname), dtype="<f4").astype(np.float64).reshape(n_mat, n)
            im.entries[name] = IMatrixEntry(sums, counts)
    return im

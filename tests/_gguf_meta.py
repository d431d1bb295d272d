"""GGUF metadata for tokenizer tests: lowbit.GGUFFile when the core reader is built in,
else a small read-only parser of the key/value section (gguf.GGUFReader needs ~10 s for a
262k-token vocabulary; this needs well under one)."""
from __future__ import annotations

import struct

import numpy as np

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}


def read_metadata(path: str) -> dict:
    try:
        import lowbit
        if hasattr(lowbit, "GGUFFile"):
            return dict(lowbit.GGUFFile(path).metadata)
    except ImportError:
        pass
    with open(path, "rb") as f:
        data = f.read(64 << 20)   # the key/value section sits at the front of the file
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    pos = 24
    meta = {}

    def string(pos):
        n = struct.unpack_from("<Q", data, pos)[0]
        return data[pos + 8:pos + 8 + n].decode("utf-8", "surrogateescape"), pos + 8 + n

    def value(vtype, pos):
        if vtype == 8:
            return string(pos)
        if vtype == 9:
            itype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if itype in _NUMPY:
                arr = np.frombuffer(data, _NUMPY[itype], count, pos)
                out = arr.astype(bool).tolist() if itype == 7 else arr.tolist()
                return out, pos + arr.nbytes
            items = []
            for _ in range(count):
                item, pos = value(itype, pos)
                items.append(item)
            return items, pos
        fmt = _SCALARS[vtype]
        return struct.unpack_from(fmt, data, pos)[0], pos + struct.calcsize(fmt)

    for _ in range(n_kv):
        key, pos = string(pos)
        vtype = struct.unpack_from("<I", data, pos)[0]
        meta[key], pos = value(vtype, pos + 4)
    return meta

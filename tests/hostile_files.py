"""Hostile variants of a valid tiny model: one metadata key set, retyped or dropped.

`mutate(src, dst, set={key: (VT, value)}, drop={key})` copies every key (with its GGUF type)
and every tensor of `src`, then applies the changes, so each file differs from a loadable
model in exactly what the test names."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

from gguf_factory import VT, Arr, RawGGUF
from lowbit.runtime.gguf_file import GGUFFile

_SCALAR = {name: VT[name] for name in ("UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "UINT64",
                                        "INT64", "FLOAT32", "FLOAT64", "BOOL", "STRING")}


def _typed(label: str, value: Any) -> Tuple[VT, Any]:
    if label.startswith("ARRAY[") and label.endswith("]"):
        elem, items = _typed(label[6:-1], None)[0], value
        if elem == VT.ARRAY:
            raise ValueError("nested arrays are not copied")
        return VT.ARRAY, Arr(elem, list(items))
    if label == "ARRAY":
        return VT.ARRAY, None
    return _SCALAR[label], value


def mutate(src: str, dst, set: Optional[Dict[str, Tuple[VT, Any]]] = None,
           drop: Iterable[str] = (), tensors: Optional[Dict[str, Tuple[Tuple[int, ...], int, bytes]]] = None) -> str:
    """Write `dst`: `src` with keys in `set` replaced (or appended), keys in `drop` removed and
    tensors in `tensors` (name -> (shape, type id, data)) replaced or added."""
    set, drop = dict(set or {}), frozenset(drop)
    raw = RawGGUF()
    with GGUFFile(src) as g:
        types = g.metadata_types
        for key, value in g.metadata.items():
            if key in drop:
                continue
            if key in set:
                vtype, value = set.pop(key)
                raw.kv(key, vtype, value)
            else:
                raw.kv(key, *_typed(types[key], value))
        for key, (vtype, value) in set.items():
            raw.kv(key, vtype, value)
        extra = dict(tensors or {})
        for t in g.tensors:
            if t.name in extra:
                shape, type_id, data = extra.pop(t.name)
                raw.tensor(t.name, shape, type_id, data)
            else:
                raw.tensor(t.name, t.shape, t.type_id, bytes(g.tensor_bytes(t.name)))
        for name, (shape, type_id, data) in extra.items():
            raw.tensor(name, shape, type_id, data)
    data, _ = raw.build()
    with open(dst, "wb") as f:
        f.write(data)
    return str(dst)

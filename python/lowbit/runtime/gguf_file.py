"""Read-only access to GGUF files through the hardened C++ reader (``lowbit._core``).

    with lowbit.GGUFFile("model.gguf") as f:
        f.architecture                  # "llama"
        f.metadata["llama.block_count"] # 30
        f.metadata_types["tokenizer.ggml.tokens"]  # "ARRAY[STRING]"
        t = f.tensor("token_embd.weight")           # GGUFTensorInfo(name, type, shape, ...)
        raw = f.tensor_bytes(t.name)    # zero-copy, read-only numpy uint8 view

Malformed, truncated or hostile files raise :class:`lowbit.GGUFError` naming the field, key or
tensor and the byte offset. A missing path raises FileNotFoundError, a directory
IsADirectoryError, an unreadable file PermissionError (OSError subclasses).

Numeric arrays of more than 65536 elements come back as read-only numpy arrays viewing the
mapping (zero copy: a huge array costs nothing until read); shorter ones as lists.

Metadata strings are decoded as UTF-8; bytes that are not valid UTF-8 (the format does not
forbid them in values) come back as lone surrogates (``errors="surrogateescape"``), so
``s.encode("utf-8", "surrogateescape")`` restores the exact bytes. Keys and tensor names are
always valid UTF-8 (the reader rejects others).

Lifetime: ``close()`` (or leaving the ``with`` block) drops the parsed file at once, but the
memory mapping is unmapped only when the last array from :meth:`tensor_bytes` is garbage
collected: views handed out stay valid after close (deferred unmap, never a dangling view).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lowbit import _core
from lowbit.errors import GGUFError


class Metadata(dict):
    """The metadata dict, which also knows the file it came from: :meth:`model_config` gives the
    engine's validated hyper-parameters (the one parse of them, in the C++ core)."""

    def __init__(self, items: Dict[str, Any], path: str):
        super().__init__(items)
        self.path = path
        self._config: Optional[Dict[str, Any]] = None

    def model_config(self) -> Dict[str, Any]:
        """``lowbit._core.model_config(path)``: ModelError (naming the key) when the metadata is
        wrong or does not fit the tensors; computed once."""
        if self._config is None:
            self._config = _core.model_config(os.fsencode(self.path))
        return self._config


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's record. ``shape`` is in GGUF order (ne[0], the contiguous row length,
    first); ``offset`` is the absolute byte offset of its data in the file."""

    name: str
    type: str          # GGML type name, e.g. "Q4_K"
    type_id: int       # GGML type id as stored in the file, e.g. 12
    shape: Tuple[int, ...]
    n_elements: int
    nbytes: int
    offset: int


class GGUFFile:
    """A GGUF (v2 or v3) file, parsed and validated on construction."""

    def __init__(self, path: "str | os.PathLike[str]"):
        self._path = os.fspath(path)
        self._core: Optional[_core._GGUFFile] = _core._GGUFFile(os.fsencode(self._path))
        self._metadata: Optional[Dict[str, Any]] = None
        self._metadata_types: Optional[Dict[str, str]] = None
        self._tensors: List[GGUFTensorInfo] = [GGUFTensorInfo(*row) for row in self._core.tensors()]
        self._tensor_index = {t.name: i for i, t in enumerate(self._tensors)}

    # ---- file facts -----------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def version(self) -> int:
        return self._open().version

    @property
    def alignment(self) -> int:
        return self._open().alignment

    @property
    def data_offset(self) -> int:
        """Absolute byte offset of the data section (tensor offsets are relative to it in the file)."""
        return self._open().data_offset

    @property
    def file_size(self) -> int:
        return self._open().file_size

    # ---- metadata -------------------------------------------------------------------------
    @property
    def metadata(self) -> Dict[str, Any]:
        """key -> value in file order: int, float, bool, str, or (nested) lists for arrays.
        Computed once and cached; treat it as read-only."""
        core = self._open()
        if self._metadata is None:
            self._metadata = Metadata(core.metadata(), self._path)
        return self._metadata

    @property
    def metadata_types(self) -> Dict[str, str]:
        """key -> GGUF value type: "UINT32", "STRING", "ARRAY[FLOAT32]", "ARRAY[ARRAY[INT32]]"..."""
        core = self._open()
        if self._metadata_types is None:
            self._metadata_types = core.metadata_types()
        return self._metadata_types

    def model_config(self) -> Dict[str, Any]:
        """The engine's validated hyper-parameters (see :meth:`Metadata.model_config`)."""
        return self.metadata.model_config()

    @property
    def architecture(self) -> str:
        """``general.architecture``; GGUFError when the file has none (or not a string)."""
        value = self.metadata.get("general.architecture")
        if value is None:
            raise GGUFError(f"{self._path}: metadata key 'general.architecture' is missing")
        if not isinstance(value, str):
            kind = self.metadata_types["general.architecture"]
            raise GGUFError(f"{self._path}: key 'general.architecture': expected STRING, found {kind}")
        return value

    # ---- tensors --------------------------------------------------------------------------
    @property
    def tensors(self) -> List[GGUFTensorInfo]:
        """Tensor records in file order."""
        self._open()
        return list(self._tensors)

    def tensor(self, name: str) -> GGUFTensorInfo:
        """The record of tensor ``name``; KeyError when the file has no such tensor."""
        self._open()
        return self._tensors[self._index(name)]

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Zero-copy read-only uint8 view of tensor ``name``'s raw bytes (keeps the mapping alive)."""
        return self._open().tensor_bytes(self._index(name))

    # ---- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Drop the parsed file. Views from tensor_bytes stay valid until they are collected."""
        self._core = None
        self._metadata = None
        self._metadata_types = None

    @property
    def closed(self) -> bool:
        return self._core is None

    def __enter__(self) -> "GGUFFile":
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._core is None:
            return f"<GGUFFile {self._path!r} (closed)>"
        return (f"<GGUFFile {self._path!r} v{self._core.version}, {len(self._tensors)} tensors, "
                f"{len(self._core.metadata_types())} metadata keys>")

    # ---- helpers --------------------------------------------------------------------------
    def _open(self) -> "_core._GGUFFile":
        if self._core is None:
            raise ValueError(f"GGUFFile {self._path!r} is closed")
        return self._core

    def _index(self, name: str) -> int:
        try:
            return self._tensor_index[name]
        except KeyError:
            raise KeyError(name) from None

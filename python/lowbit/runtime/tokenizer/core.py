"""Tokenizer: exact llama.cpp tokenization and detokenization from GGUF metadata.

A thin wrapper over the C++ tokenizer (csrc/tokenizer: SPM and byte-level BPE, the special-token
partition, detokenization, and the vocabulary rules: csrc/tokenizer/tokenizer.h and vocab.h).
The core reads a GGUF file's vocabulary itself; vocab.py hands it a metadata dict's fields."""
from __future__ import annotations

import codecs
import operator
import os
import warnings
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lowbit import _core

from lowbit.runtime.gguf_file import Metadata

from .vocab import ATTR_CONTROL, vocab_fields


class Tokenizer:
    """Exact llama.cpp tokenizer for a GGUF vocabulary (SPM 'llama' or BPE 'gpt2')."""

    def __init__(self, core: "_core.Tokenizer"):
        self._core = core
        self._n = core.n_tokens
        self._slots = core.slots
        self._eog = frozenset(core.eog_ids)
        self._template = core.chat_template

    @classmethod
    def from_metadata(cls, meta: dict) -> "Tokenizer":
        """Build from a GGUF metadata dict (keys ``tokenizer.ggml.*``, ``tokenizer.chat_template``).

        With ``GGUFFile.metadata`` of a model the engine runs, the model's config is validated
        first (one token per embedding row, among others), so a hostile token count fails
        before millions of pieces are built; such metadata is read by the core from the file."""
        from lowbit.runtime import engine_architectures
        validate = getattr(meta, "model_config", None)
        if validate is not None and meta.get("general.architecture") in engine_architectures():
            validate()
        path = getattr(meta, "path", None)
        if isinstance(meta, Metadata) and path is not None:
            core, notes = _core.Tokenizer.from_gguf(os.fsencode(path))
        else:
            core, notes = _core.Tokenizer.from_fields(vocab_fields(meta))
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return cls(core)

    # ---- facts -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._n

    @property
    def model(self) -> str:
        return self._core.model

    @property
    def pre(self) -> str:
        return self._core.pre

    @property
    def bos_id(self) -> Optional[int]:
        return self._id_or_none("bos")

    @property
    def eos_id(self) -> Optional[int]:
        return self._id_or_none("eos")

    @property
    def add_bos(self) -> bool:
        return self._core.add_bos

    @property
    def add_eos(self) -> bool:
        return self._core.add_eos

    @property
    def eot_ids(self) -> frozenset:
        """Ids that end generation (llama.cpp's special_eog_ids: eos, eot, eom, FIM pad/repo/sep
        and tokens such as <end_of_turn>, <|im_end|>, <|eot_id|>, <|endoftext|>)."""
        return self._eog

    @property
    def chat_template(self) -> Optional[str]:
        return self._template

    @property
    def special_ids(self) -> dict:
        """Every special-id slot ("bos", "eot", "fim_pre"...) -> id, None when absent."""
        return {slot: None if tid == -1 else tid for slot, tid in self._slots.items()}

    def _id_or_none(self, slot: str) -> Optional[int]:
        tid = self._slots[slot]
        return None if tid == -1 else tid

    def _check_id(self, tid: int) -> int:
        """``tid`` as a plain int; ValueError naming it and the vocabulary size when out of range."""
        if isinstance(tid, (bool, np.bool_)):
            raise TypeError(f"token ids are integers, not {tid!r}")
        try:
            index = operator.index(tid)
        except TypeError:
            raise TypeError(f"token ids are integers, not {type(tid).__name__}") from None
        if not 0 <= index < self._n:
            raise ValueError(f"token id {index} is out of range for a vocabulary of {self._n}")
        return index

    def attr(self, tid: int) -> int:
        """The token's attribute bits (``vocab.ATTR_*``: normal, control, user-defined, unknown...)."""
        return int(self._core.attr(self._check_id(tid)))

    def is_control(self, tid: int) -> bool:
        return bool(self.attr(tid) & ATTR_CONTROL)

    def piece(self, tid: int) -> str:
        """The token's text as stored in the GGUF vocabulary (e.g. '▁the', 'Ġthe', '<0x0A>')."""
        return self._core.piece(self._check_id(tid)).decode("utf-8", "surrogateescape")

    def token_id(self, piece: str) -> Optional[int]:
        tid = self._core.token_id(piece.encode("utf-8", "surrogateescape"))
        return None if tid == -1 else tid

    # ---- encode / decode (the C++ core) ---------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False,
               literal_spans: Sequence[Tuple[int, int]] = ()) -> List[int]:
        """Token ids of ``text`` as llama.cpp's llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS per the metadata (tokenizer.ggml.add_bos_token/add_eos_token).
        One deliberate difference: when the text itself starts with the BOS token (parsed with
        parse_special=True, e.g. a chat template that renders '<bos>'), no second BOS is added;
        llama.cpp adds it anyway and only logs a warning.

        ``literal_spans``: (start, end) character ranges of ``text`` (e.g. message contents in a
        rendered chat, see chat.render_chat_spans) where control tokens are not parsed even with
        parse_special=True: there '<|im_end|>' is ordinary text. ValueError for a span outside
        the text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        spans = [(operator.index(a), operator.index(b)) for a, b in literal_spans]
        return self._core.encode(text, bool(add_special), bool(parse_special), spans)

    def token_to_bytes(self, tid: int, special: bool = False) -> bytes:
        """The raw bytes of a token's piece, as llama.cpp's token_to_piece yields them.
        Control and unknown tokens give b"" unless ``special``."""
        return self._core.token_to_bytes(self._check_id(tid), bool(special))

    def _detokenize_bytes(self, ids: Iterable[int], special: bool) -> bytes:
        arr = np.asarray(ids if isinstance(ids, (list, tuple, np.ndarray)) else list(ids))
        if arr.size == 0:
            return b""
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            for t in arr.ravel().tolist():
                if isinstance(t, bool) or not isinstance(t, int):
                    raise TypeError(f"token ids are integers, not {type(t).__name__}")
                self._check_id(t)                # an int too large for int64: ValueError
        if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
            self._check_id(int(arr.max()))
        return self._core.detokenize(arr.astype(np.int64, copy=False), special)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids`` (llama.cpp's llama_detokenize(remove_special=False,
        unparse_special=not skip_special)); invalid UTF-8 becomes U+FFFD."""
        return self._detokenize_bytes(ids, not skip_special).decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Feed token ids one at a time; get back only complete UTF-8 text.

    Never returns half a character: bytes of an unfinished character wait for the next
    token. flush() ends the stream, turning an incomplete tail into U+FFFD. Pieces are
    llama.cpp's token_to_piece (with the same first-token space removal as decode());
    BPE space clean-up, which needs look-ahead, is not applied while streaming."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._special = not skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def feed(self, tid: int) -> str:
        piece = self._tok.token_to_bytes(tid, self._special)
        if self._first:
            if self._tok._core.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]
            self._first = False
        return self._utf8.decode(piece)

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._first = True
        return text

"""Tokenizer: exact llama.cpp tokenization and detokenization from GGUF metadata.

A thin wrapper over the C++ tokenizer (csrc/tokenizer: SPM and byte-level BPE, the special-token
partition, detokenization; the rules are in csrc/tokenizer/tokenizer.h). vocab.py reads the
vocabulary from the metadata; this class keeps its facts and hands text to the core."""
from __future__ import annotations

import codecs
import operator
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lowbit import _core

from .pretokenize import PRE_TOKENIZERS
from .vocab import ATTR_CONTROL, Vocab, load_vocab


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Tokenizer:
    """Exact llama.cpp tokenizer for a GGUF vocabulary (SPM 'llama' or BPE 'gpt2')."""

    def __init__(self, vocab: Vocab):
        self._vocab = vocab
        self._tokens = vocab.tokens
        self._attrs = vocab.attrs
        ids = vocab.ids
        self._core = _core.Tokenizer(
            vocab.model, vocab.pre, [_utf8(t) for t in vocab.tokens], vocab.scores, vocab.attrs,
            [_utf8(m) for m in vocab.merges], ids["bos"], ids["eos"], ids["unk"], vocab.add_bos,
            vocab.add_eos, vocab.add_space_prefix)

    @classmethod
    def from_metadata(cls, meta: dict) -> "Tokenizer":
        """Build from a GGUF metadata dict (keys ``tokenizer.ggml.*``, ``tokenizer.chat_template``).

        With ``GGUFFile.metadata`` of a model the engine runs, the model's config is validated
        first (one token per embedding row, among others), so a hostile token count fails
        before millions of pieces are built."""
        from lowbit.runtime import engine_architectures
        validate = getattr(meta, "model_config", None)
        if validate is not None and meta.get("general.architecture") in engine_architectures():
            validate()
        return cls(load_vocab(meta, PRE_TOKENIZERS))

    # ---- facts -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def model(self) -> str:
        return self._vocab.model

    @property
    def pre(self) -> str:
        return self._vocab.pre

    @property
    def bos_id(self) -> Optional[int]:
        return self._id_or_none("bos")

    @property
    def eos_id(self) -> Optional[int]:
        return self._id_or_none("eos")

    @property
    def add_bos(self) -> bool:
        return self._vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self._vocab.add_eos

    @property
    def eot_ids(self) -> frozenset:
        """Ids that end generation (llama.cpp's special_eog_ids: eos, eot, eom, FIM pad/repo/sep
        and tokens such as <end_of_turn>, <|im_end|>, <|eot_id|>, <|endoftext|>)."""
        return self._vocab.eog_ids

    @property
    def chat_template(self) -> Optional[str]:
        return self._vocab.chat_template

    def _id_or_none(self, slot: str) -> Optional[int]:
        tid = self._vocab.ids[slot]
        return None if tid == -1 else tid

    def _check_id(self, tid: int) -> int:
        """``tid`` as a plain int; ValueError naming it and the vocabulary size when out of range."""
        if isinstance(tid, bool):
            raise TypeError(f"token ids are integers, not {tid!r}")
        try:
            index = operator.index(tid)
        except TypeError:
            raise TypeError(f"token ids are integers, not {type(tid).__name__}") from None
        if not 0 <= index < len(self._tokens):
            raise ValueError(f"token id {index} is out of range for a vocabulary of {len(self._tokens)}")
        return index

    def is_control(self, tid: int) -> bool:
        return bool(self._attrs[self._check_id(tid)] & ATTR_CONTROL)

    def piece(self, tid: int) -> str:
        """The token's text as stored in the GGUF vocabulary (e.g. '▁the', 'Ġthe', '<0x0A>')."""
        return self._tokens[self._check_id(tid)]

    def token_id(self, piece: str) -> Optional[int]:
        return self._vocab.token_to_id.get(piece)

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
            if self._tok._vocab.add_space_prefix and piece[:1] == b" ":
                piece = piece[1:]
            self._first = False
        return self._utf8.decode(piece)

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._first = True
        return text

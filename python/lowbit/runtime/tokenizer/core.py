"""Tokenizer: exact llama.cpp tokenization and detokenization from GGUF metadata.

encode(): special tokens are cut out of the text first (llama.cpp's tokenizer_st_partition:
longest token text first; control and unknown tokens only with parse_special, user-defined
tokens always), then each remaining text fragment goes through SPM or byte-level BPE.
decode(): the concatenated token pieces (llama.cpp's llama_detokenize with
remove_special=False), including its leading-space removal and BPE space clean-up."""
from __future__ import annotations

import bisect
import codecs
import operator
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .bpe import CHAR_TO_BYTE, BPEModel
from .pretokenize import PRE_TOKENIZERS
from .spm import SPACE, SPMModel
from .vocab import (ATTR_BYTE, ATTR_CONTROL, ATTR_LSTRIP, ATTR_NORMAL, ATTR_RSTRIP,
                    ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab, load_vocab)

_C_SPACES = frozenset(" \t\n\v\f\r")   # C isspace(), used by lstrip/rstrip
Fragment = Union[int, tuple]           # a token id, or a (start, end) span of raw text


class Tokenizer:
    """Exact llama.cpp tokenizer for a GGUF vocabulary (SPM 'llama' or BPE 'gpt2')."""

    def __init__(self, vocab: Vocab):
        self._vocab = vocab
        self._tokens = vocab.tokens
        self._attrs = vocab.attrs
        if vocab.model == "llama":
            self._spm: Optional[SPMModel] = SPMModel(vocab)
            self._bpe: Optional[BPEModel] = None
            self._clean_spaces = False
        else:
            pre = PRE_TOKENIZERS[vocab.pre]
            self._spm, self._bpe = None, BPEModel(vocab, pre)
            self._clean_spaces = pre.clean_spaces
        self._specials = self._special_order()
        self._special_groups = self._group_by_prefix(self._specials)
        self._pieces: Dict[int, bytes] = {}

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

    # ---- special-token partition ----------------------------------------------------------
    def _special_order(self) -> List[int]:
        """Control, user-defined and unknown tokens, longest text (in bytes) first."""
        ids = [i for i, a in enumerate(self._attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        # llama.cpp's std::sort leaves equal lengths in unspecified order; ids ascending here
        ids.sort(key=lambda i: (-len(self._tokens[i].encode("utf-8", "surrogateescape")), i))
        return ids

    def _group_by_prefix(self, ids: List[int]) -> Dict[str, List[int]]:
        """First three characters -> special ids, so absent groups are skipped in one scan."""
        groups: Dict[str, List[int]] = {}
        for tid in ids:
            groups.setdefault(self._tokens[tid][:3], []).append(tid)
        return groups

    def _present_specials(self, text: str, parse_special: bool) -> List[int]:
        skip = 0 if parse_special else (ATTR_CONTROL | ATTR_UNKNOWN)
        found = set()
        for prefix, ids in self._special_groups.items():
            if prefix in text:
                found.update(t for t in ids if not self._attrs[t] & skip and self._tokens[t] in text)
        return [t for t in self._specials if t in found]

    def _partition(self, text: str, parse_special: bool,
                   literal: Optional["_LiteralSpans"] = None) -> List[Fragment]:
        frags: List[Fragment] = [(0, len(text))]
        for tid in self._present_specials(text, parse_special):
            frags = self._cut(text, frags, tid, literal)
        return frags

    def _cut(self, text: str, frags: List[Fragment], tid: int,
             literal: Optional["_LiteralSpans"] = None) -> List[Fragment]:
        """Split every raw fragment at each (leftmost, non-overlapping) occurrence of token tid;
        control and unknown tokens are not matched where they overlap a literal span."""
        tok, attr = self._tokens[tid], self._attrs[tid]
        if literal is not None and not attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            literal = None            # user-defined tokens are parsed everywhere, as without parse_special

        def find(start: int, stop: int) -> int:
            pos = text.find(tok, start, stop)
            while pos >= 0 and literal is not None and literal.overlaps(pos, pos + len(tok)):
                pos = text.find(tok, pos + 1, stop)
            return pos

        out: List[Fragment] = []
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
                continue
            base, end = frag
            pos = find(base, end)
            if pos < 0:
                out.append(frag)
                continue
            while pos >= 0:
                left_end = pos
                if attr & ATTR_LSTRIP:
                    while left_end > base and text[left_end - 1] in _C_SPACES:
                        left_end -= 1
                if left_end > base:
                    out.append((base, left_end))
                out.append(tid)
                base = pos + len(tok)
                if attr & ATTR_RSTRIP:
                    while base < end and text[base] in _C_SPACES:
                        base += 1
                pos = find(base, end) if base < end else -1
            if base < end:
                out.append((base, end))
        return out

    # ---- encode ---------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = False,
               literal_spans: Sequence[Tuple[int, int]] = ()) -> List[int]:
        """Token ids of ``text`` as llama.cpp's llama_tokenize(text, add_special, parse_special).

        add_special adds BOS/EOS per the metadata (tokenizer.ggml.add_bos_token/add_eos_token).
        One deliberate difference: when the text itself starts with the BOS token (parsed with
        parse_special=True, e.g. a chat template that renders '<bos>'), no second BOS is added;
        llama.cpp adds it anyway and only logs a warning.

        ``literal_spans``: (start, end) character ranges of ``text`` (e.g. message contents in a
        rendered chat, see chat.render_chat_spans) where control tokens are not parsed even with
        parse_special=True: there '<|im_end|>' is ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        out: List[int] = []
        literal = _LiteralSpans(literal_spans, len(text)) if literal_spans else None
        frags = self._partition(text, parse_special, literal) if text else []
        if self._spm is not None:
            self._encode_spm(text, frags, out)
        else:
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe.tokenize(text[frag[0]:frag[1]], out)
        v = self._vocab
        if add_special and v.add_bos and not (out and out[0] == v.ids["bos"]):
            out.insert(0, v.ids["bos"])
        if add_special and v.add_eos:
            out.append(v.ids["eos"])
        return out

    def _encode_spm(self, text: str, frags: List[Fragment], out: List[int]) -> None:
        prefix_space = self._vocab.add_space_prefix
        prev_special = True               # the first fragment gets the space prefix too
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            raw = text[frag[0]:frag[1]]
            if prefix_space and prev_special:
                raw = " " + raw
            self._spm.tokenize(raw.replace(" ", SPACE), out)
            prev_special = False

    # ---- decode ---------------------------------------------------------------------------
    def token_to_bytes(self, tid: int, special: bool = False) -> bytes:
        """The raw bytes of a token's piece, as llama.cpp's token_to_piece yields them.
        Control and unknown tokens give b"" unless ``special``."""
        tid = self._check_id(tid)
        if not special and self._attrs[tid] & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces.get(tid)
        if piece is None:
            piece = self._pieces[tid] = self._render(tid)
        return piece

    def _render(self, tid: int) -> bytes:
        text, attr = self._tokens[tid], self._attrs[tid]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_NORMAL:
            if self._spm is not None:
                return text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
            return _gpt2_bytes(text)
        if attr & ATTR_BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""   # unused / undefined tokens render as nothing

    def _detokenize_bytes(self, ids: Sequence[int], special: bool) -> bytes:
        out = bytearray()
        strip_space = self._vocab.add_space_prefix   # drop the first piece's leading space
        for tid in ids:
            piece = self.token_to_bytes(tid, special)
            if strip_space and piece[:1] == b" ":
                piece = piece[1:]
            strip_space = False
            out += piece
        if self._clean_spaces:
            _clean_up_spaces(out)
        return bytes(out)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of ``ids`` (llama.cpp's llama_detokenize(remove_special=False,
        unparse_special=not skip_special)); invalid UTF-8 becomes U+FFFD."""
        return self._detokenize_bytes(list(ids), not skip_special).decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class _LiteralSpans:
    """Sorted, validated (start, end) character ranges; overlaps() by binary search."""

    def __init__(self, spans: Sequence[Tuple[int, int]], n: int):
        merged: List[List[int]] = []
        for span in sorted((int(a), int(b)) for a, b in spans):
            start, end = span
            if not 0 <= start <= end <= n:
                raise ValueError(f"literal span {span} is outside the text (0..{n})")
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            elif start < end:
                merged.append([start, end])
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, end - 1) - 1   # last span starting before `end`
        return i >= 0 and self._ends[i] > start


def _gpt2_bytes(text: str) -> bytes:
    """Undo the GPT-2 byte->unicode mapping; unmapped characters as llama.cpp prints them."""
    out = bytearray()
    for ch in text:
        b = CHAR_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8", "surrogateescape")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)


def _clean_up_spaces(buf: bytearray) -> None:
    """llama.cpp's three in-place passes for clean_up_tokenization_spaces (kept index for
    index, since each pass reads bytes it may already have rewritten)."""
    n = len(buf)
    # pass 1: " ?" " !" " ." " ," lose the space
    total = 1 if n else 0
    for i in range(1, n):
        x = buf[i]
        if buf[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        buf[total] = x
        total += 1
    n = total
    # pass 2: a lone apostrophe between spaces loses both spaces
    total = 1 if n else 0
    i = 1
    while i < n:
        x = buf[i]
        if x == 0x27 and i + 1 < n and buf[i - 1] == 0x20 and buf[i + 1] == 0x20:
            total -= 1
            i += 1
            buf[i] = 0
        buf[total] = x
        total += 1
        i += 1
    n = total
    # pass 3: " 's" " 'm" " 're" " 've" lose the space
    total = 1 if n else 0
    for i in range(1, n):
        x = buf[i]
        if buf[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = buf[i + 1]
            if x1 in b"sm":
                total -= 1
            elif x1 not in b"td" and i + 2 < n:
                x2 = buf[i + 2]
                if (x1 == 0x72 and x2 == 0x65) or (x1 == 0x76 and x2 == 0x65):
                    total -= 1
        buf[total] = x
        total += 1
    del buf[total:]


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

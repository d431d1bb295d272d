"""Byte-level BPE (GPT-2 style) as llama.cpp's llm_tokenizer_bpe does it.

Each pre-tokenized word is written as UTF-8 bytes mapped to printable characters (the GPT-2
byte<->unicode table), then adjacent symbols are merged by merge rank (lowest first, ties:
leftmost). Results are cached per word."""
from __future__ import annotations

import heapq
from typing import Dict, List, Tuple

from .pretokenize import PreTokenizer
from .vocab import Vocab

_CACHE_LIMIT = 200_000


def byte_to_unicode() -> List[str]:
    """GPT-2's table: printable latin-1 bytes map to themselves, the rest to U+0100 onwards."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = [""] * 256
    for b in keep:
        table[b] = chr(b)
    extra = 0
    for b in range(256):
        if not table[b]:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = byte_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_CHAR = {b: c for b, c in enumerate(BYTE_TO_CHAR)}   # str.translate table


def merge_ranks(merges: List[str]) -> Dict[Tuple[str, str], int]:
    """"left right" lines -> rank; split at the first space after the first character
    (so "Ġ Ġ" works); the first occurrence of a pair wins."""
    ranks: Dict[Tuple[str, str], int] = {}
    for rank, line in enumerate(merges):
        cut = line.find(" ", 1)
        key = (line[:cut], line[cut + 1:]) if cut != -1 else ("", "")
        ranks.setdefault(key, rank)
    return ranks


class BPEModel:
    def __init__(self, vocab: Vocab, pre: PreTokenizer):
        self._token_to_id = vocab.token_to_id
        self._ranks = merge_ranks(vocab.merges)
        self._pre = pre
        self._cache: Dict[str, List[int]] = {}

    def tokenize(self, text: str, out: List[int]) -> None:
        cache = self._cache
        for word in self._pre.split(text):
            ids = cache.get(word)
            if ids is None:
                ids = self._word_ids(word)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _word_ids(self, word: str) -> List[int]:
        encoded = word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_CHAR)
        token_to_id = self._token_to_id
        if self._pre.ignore_merges:
            tid = token_to_id.get(encoded)
            if tid is not None:
                return [tid]
        ids: List[int] = []
        for sym in self._merge(encoded):
            tid = token_to_id.get(sym)
            if tid is not None:
                ids.append(tid)
                continue
            # llama.cpp falls back to one-byte strings of the symbol's UTF-8 text; only
            # single-byte (ASCII) characters can name a token that way
            for byte in sym.encode("utf-8"):
                tid = token_to_id.get(chr(byte)) if byte < 0x80 else None
                if tid is not None:
                    ids.append(tid)
        return ids

    def _merge(self, encoded: str) -> List[str]:
        syms = list(encoded)          # "" once merged into the left neighbour
        n = len(syms)
        if n < 2:
            return syms
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        ranks = self._ranks
        heap: list = []

        def try_pair(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            rank = ranks.get((syms[left], syms[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, syms[left] + syms[right]))

        for i in range(n - 1):
            try_pair(i, i + 1)
        while heap:
            _, left, right, joined = heapq.heappop(heap)
            a, b = syms[left], syms[right]
            if not a or not b or a + b != joined:
                continue                          # stale pair
            syms[left], syms[right] = joined, ""
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            try_pair(prev[left], left)
            try_pair(left, nxt[left])
        return [s for s in syms if s]

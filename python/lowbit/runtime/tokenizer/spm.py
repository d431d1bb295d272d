"""SentencePiece-style (SPM) tokenization as llama.cpp's llm_tokenizer_spm does it.

Start from one symbol per character; repeatedly merge the adjacent pair whose joined text
is a vocabulary token with the highest score (ties: the leftmost pair); symbols that end
up as no token are emitted as byte tokens <0xXX>.

Speed: a merge only ever forms a vocabulary token, so it can never cross a position whose
two neighbouring characters appear together inside no token. Text is cut at such positions
(before a '▁' whose left neighbour never precedes '▁' inside a token) and each cut piece is
merged on its own and cached; the ids are the same as merging the whole text at once."""
from __future__ import annotations

import heapq
import re
from typing import Dict, List, Optional

from .vocab import Vocab

SPACE = "\u2581"  # '▁', the escaped space
_CACHE_LIMIT = 200_000


class SPMModel:
    def __init__(self, vocab: Vocab):
        self._token_to_id = vocab.token_to_id
        self._scores = vocab.scores
        self._byte_ids = self._find_byte_ids(vocab)
        self._unk = vocab.ids["unk"]
        self._cache: Dict[str, List[int]] = {}
        self._cut = self._make_cutter(vocab.tokens)

    @staticmethod
    def _find_byte_ids(vocab: Vocab) -> List[Optional[int]]:
        """byte -> id of '<0xXX>', else of the one-character token, else None."""
        out: List[Optional[int]] = []
        for b in range(256):
            tid = vocab.token_to_id.get(f"<0x{b:02X}>")
            if tid is None and b < 128:
                tid = vocab.token_to_id.get(chr(b))
            out.append(tid)
        return out

    @staticmethod
    def _make_cutter(tokens: List[str]):
        """A regex that finds safe cut positions: before '▁' not preceded by a character that
        precedes '▁' inside some token."""
        joiners = set()
        for t in tokens:
            i = t.find(SPACE, 1)
            while i != -1:
                joiners.add(t[i - 1])
                i = t.find(SPACE, i + 1)
        if joiners:
            cls = "".join(re.escape(c) for c in sorted(joiners))
            return re.compile(f"(?<=[^{cls}])(?={SPACE})", re.DOTALL)
        return re.compile(f"(?<=.)(?={SPACE})", re.DOTALL)

    def tokenize(self, escaped: str, out: List[int]) -> None:
        """Append the ids of ``escaped`` (spaces already replaced by '▁') to ``out``."""
        cache = self._cache
        for piece in self._cut.split(escaped):
            if not piece:
                continue
            ids = cache.get(piece)
            if ids is None:
                ids = self._merge(piece)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def _merge(self, text: str) -> List[int]:
        syms = list(text)            # symbol text; "" once merged into its left neighbour
        n = len(syms)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        token_to_id, scores = self._token_to_id, self._scores
        heap: list = []

        def try_pair(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            joined = syms[left] + syms[right]
            tid = token_to_id.get(joined)
            if tid is not None:   # best score first, then leftmost
                heapq.heappush(heap, (-scores[tid], left, right, len(joined)))

        for i in range(n - 1):
            try_pair(i, i + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = syms[left], syms[right]
            if not a or not b or len(a) + len(b) != size:
                continue                          # stale: one side changed since it was queued
            syms[left], syms[right] = a + b, ""
            nxt[left] = nxt[right]
            if nxt[right] != -1:
                prev[nxt[right]] = left
            try_pair(prev[left], left)
            try_pair(left, nxt[left])

        ids: List[int] = []
        i = 0
        while i != -1:
            tid = token_to_id.get(syms[i])
            if tid is not None:
                ids.append(tid)
            else:
                ids.extend(self._bytes_of(syms[i]))
            i = nxt[i]
        return ids

    def _bytes_of(self, text: str) -> List[int]:
        out = []
        for b in text.encode("utf-8", "surrogatepass"):
            tid = self._byte_ids[b]
            if tid is None:
                # llama.cpp aborts here (no byte token); the unknown token is the SPM convention
                if self._unk == -1:
                    raise ValueError(f"cannot encode byte 0x{b:02X}: the vocabulary has neither a "
                                     f"<0x{b:02X}> token nor an unknown token")
                tid = self._unk
            out.append(tid)
        return out

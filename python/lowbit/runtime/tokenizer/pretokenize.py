"""BPE pre-tokenizers per `tokenizer.ggml.pre` label, splitting text the way llama.cpp does.

llama.cpp applies a list of split steps in order; each step cuts every chunk left by the
previous one. A step is one of two kinds, and they differ in ways that change token ids:

* "custom": llama.cpp's hand-written matchers for the GPT-2 and Llama-3 regexes (unicode.cpp).
  Character classes come from its table, which was generated with Python's ``regex`` module
  (\\p{L}, \\p{N}, \\s), so the same classes are used here on the real text. A character no
  alternative matches becomes a chunk of its own.
* "stl": the general path through std::regex on a *collapsed* copy of the text: every
  code point >= 128 becomes one byte standing for its category (whitespace -> \\v,
  number 0xD1, letter 0xD2, punctuation 0xD3, mark 0xD4, symbol 0xD5, other 0xD0) and
  \\p{X} in the pattern becomes that byte plus the ASCII members. Text between matches
  stays one chunk. Emulated here with the same collapse and ``re`` in ASCII mode.

Matching runs on ``llama_view(text)`` (characters newer than llama.cpp's Unicode 15.1
tables become unassigned); the spans found index the original text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Tuple

import regex

from .unicode_version import llama_view

# Collapsed-category stand-ins (llama.cpp unicode.cpp, unicode_regex_split).
_C_OTHER, _C_NUMBER, _C_LETTER, _C_PUNCT, _C_MARK, _C_SYMBOL, _C_SPACE = (
    "\xd0", "\xd1", "\xd2", "\xd3", "\xd4", "\xd5", "\x0b")
_CATEGORY_PROBES = [
    (regex.compile(r"\s"), _C_SPACE), (regex.compile(r"\p{N}"), _C_NUMBER),
    (regex.compile(r"\p{L}"), _C_LETTER), (regex.compile(r"\p{P}"), _C_PUNCT),
    (regex.compile(r"\p{M}"), _C_MARK), (regex.compile(r"\p{S}"), _C_SYMBOL),
]
# \p{X} -> collapsed byte + ASCII members, exactly as llama.cpp substitutes them
# (note its symbol list has no '~').
_COLLAPSED_CLASS = {
    "N": _C_NUMBER + "0-9",
    "L": _C_LETTER + "A-Za-z",
    "P": _C_PUNCT + r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": _C_MARK,
    "S": _C_SYMBOL + r"\$\+<->\^`\|",
}


class _CollapseTable(dict):
    """str.translate table mapping each code point >= 128 to its category stand-in
    (ASCII maps to itself; other entries are filled on first sight)."""

    def __init__(self):
        super().__init__((c, chr(c)) for c in range(128))

    def __missing__(self, cpt: int) -> str:
        ch = chr(cpt)
        out = _C_OTHER
        for probe, stand_in in _CATEGORY_PROBES:
            if probe.match(ch):
                out = stand_in
                break
        self[cpt] = out
        return out


_COLLAPSE = _CollapseTable()


def _collapse_pattern(pattern: str) -> "re.Pattern":
    """Rewrite \\p{X} the way llama.cpp does (bracketed unless already inside [...])."""
    out, inside, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[" and (i == 0 or pattern[i - 1] != "\\"):
            inside = True
        elif c == "]" and inside and pattern[i - 1] != "\\":
            inside = False
        if pattern.startswith("\\p{", i):
            j = pattern.index("}", i)
            cls = _COLLAPSED_CLASS[pattern[i + 3:j]]
            out.append(cls if inside else "[" + cls + "]")
            i = j + 1
            continue
        out.append(c)
        i += 1
    return re.compile("".join(out), re.ASCII)


# A step takes the (view of the) text and its current chunks as (start, end) spans.
Step = Callable[[str, List[Tuple[int, int]]], List[Tuple[int, int]]]


def _stl_step(pattern: str) -> Step:
    needs_collapse = "\\p{" in pattern
    compiled = _collapse_pattern(pattern) if needs_collapse else regex.compile(pattern)

    def split(text: str, spans: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
        view = text.translate(_COLLAPSE) if needs_collapse else text
        out = []
        for start, end in spans:
            pos = start
            for m in compiled.finditer(view, start, end):
                if m.start() > pos:
                    out.append((pos, m.start()))
                if m.end() > m.start():
                    out.append((m.start(), m.end()))
                pos = m.end()
            if pos < end:
                out.append((pos, end))
        return out
    return split


def _custom_step(pattern: str) -> Step:
    """A matcher that covers the text: each alternative, else one character."""
    compiled = regex.compile(pattern + r"|.", regex.DOTALL)

    def split(text: str, spans: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
        out = []
        for start, end in spans:
            out.extend(m.span() for m in compiled.finditer(text, start, end))
        return out
    return split


# llama.cpp's unicode_regex_split_custom_gpt2
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp's unicode_regex_split_custom_llama3 (case-insensitive contractions by ASCII case)
_LLAMA3 = (r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|"
           r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
          r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    name: str
    steps: Tuple[Step, ...]
    clean_spaces: bool = True      # detokenize tidies " ." " 's" etc. (clean_up_tokenization_spaces)
    ignore_merges: bool = False    # a word already in the vocabulary is one token
    add_bos: bool = False          # default when tokenizer.ggml.add_bos_token is absent

    def split(self, text: str) -> List[str]:
        view = llama_view(text)
        spans = [(0, len(text))]
        for step in self.steps:
            spans = step(view, spans)
        return [text[a:b] for a, b in spans]


def _make_table() -> dict:
    gpt2 = (_custom_step(_GPT2),)
    digits_then_gpt2 = (_stl_step(r"\p{N}"), _custom_step(_GPT2))
    llama3 = (_custom_step(_LLAMA3),)
    qwen2 = (_stl_step(_QWEN2),)
    default = (_stl_step(r"[\p{P}\$\+<=>\^~\|]+"), _custom_step(_GPT2),
               _stl_step(r"\p{N}+"), _stl_step(r"[0-9][0-9][0-9]"))
    table = {}

    def add(labels, steps, **flags):
        for label in labels:
            table[label] = PreTokenizer(label, steps, **flags)

    add(["default"], default)
    add(["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"], llama3,
        ignore_merges=True, add_bos=True)
    add(["gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais"], gpt2)
    add(["starcoder", "refact", "codeshell", "exaone", "minerva-7b"], digits_then_gpt2)
    add(["smollm", "command-r"], digits_then_gpt2, clean_spaces=False)
    add(["qwen2", "deepseek-r1-qwen"], qwen2, clean_spaces=False)
    add(["stablelm2", "megrez"], qwen2)
    return table


PRE_TOKENIZERS = _make_table()

"""The C++ pre-tokenizers against the regexes they implement, and the generated Unicode class
table (csrc/tokenizer/unicode_tables.h) against its generator and Python's unicodedata.

The reference splits below run the llama.cpp regexes with the `regex` module (the classes the
splitters were specified with) on the text as llama.cpp's Unicode 15.1 sees it; the C++
splitters are hand-written state machines, so these tests are what ties them to the regexes."""
import importlib.util
import random
import sys
import unicodedata
from pathlib import Path

import pytest

from lowbit import _core
from lowbit.runtime.tokenizer import PRE_TOKENIZERS

regex = pytest.importorskip("regex")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gen_unicode_tables.py"


def load_generator():
    if not TOOL.is_file():
        pytest.skip("tools/gen_unicode_tables.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("gen_unicode_tables", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return load_generator()


@pytest.fixture(scope="module")
def core_flags():
    return _core.unicode_flags()


def test_header_is_what_the_generator_writes(gen, core_flags):
    """Only with the regex release the table was derived with: a later one knows a newer Unicode
    (test_table_agrees_with_unicodedata checks the table without regex everywhere)."""
    if regex.__version__ != gen.REGEX_VERSION:
        pytest.skip(f"regex {regex.__version__} is not the {gen.REGEX_VERSION} the table was derived with")
    flags = bytes(gen.flags_of_all())
    differ = [hex(c) for c in range(len(flags)) if flags[c] != core_flags[c]][:10]
    assert len(core_flags) == len(flags) and not differ, f"first differing code points: {differ}"
    assert gen.HEADER.read_text() == gen.render(bytearray(flags))


def test_table_agrees_with_unicodedata(gen, core_flags):
    """Every code point Python's unicodedata assigns (Unicode 14 on 3.11) has the class of its
    general category, and White_Space is str.isspace() without the C0 separators 1C-1F."""
    by_category = {"L": gen.LETTER, "N": gen.NUMBER, "P": gen.PUNCT, "M": gen.MARK, "S": gen.SYMBOL}
    mismatches = []
    for cpt in range(0x110000):
        ch = chr(cpt)
        cat = unicodedata.category(ch)
        space = ch.isspace() and not 0x1C <= cpt <= 0x1F
        if bool(core_flags[cpt] & gen.SPACE) != space:
            mismatches.append((hex(cpt), "space"))
        if cat == "Cn":
            continue
        if core_flags[cpt] & 0x1F != by_category.get(cat[0], 0):
            mismatches.append((hex(cpt), cat, core_flags[cpt]))
    assert mismatches == []


def test_newer_characters_are_unassigned(gen, core_flags):
    for first, last in gen.ASSIGNED_AFTER_15_1:
        assert core_flags[first:last + 1] == bytes(last + 1 - first)
    assert core_flags[0x2EBF0] == gen.LETTER          # CJK Ext. I (15.1) is a letter to llama.cpp


# ---- reference splits: the regexes, matched as llama.cpp's two paths do -------------------
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|"
          r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}|"
          r" ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's adaptation of o200k's regex (std::regex path: a non-ASCII letter is both cases)
GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|"
         r"'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|"
         r"'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULT = [("class", r"[\p{P}\$\+<=>\^~\|]+"), ("custom", GPT2), ("class", r"\p{N}+"), ("class", "[0-9][0-9][0-9]")]
STEPS = {"default": DEFAULT, "llama-bpe": [("custom", LLAMA3)], "gpt-2": [("custom", GPT2)],
         "starcoder": [("class", r"\p{N}"), ("custom", GPT2)], "smollm": [("class", r"\p{N}"), ("custom", GPT2)],
         "qwen2": [("custom", QWEN2)], "stablelm2": [("custom", QWEN2)], "qwen35": [("custom", QWEN35)],
         "dbrx": [("custom", LLAMA3)], "gpt-4o": [("class", GPT4O)]}


def reference_split(steps, text, newer):
    view = "".join("\u0378" if newer(ord(c)) else c for c in text)   # llama.cpp's Unicode 15.1
    spans = [(0, len(text))] if text else []
    for kind, pattern in steps:
        compiled = regex.compile(pattern + (r"|." if kind == "custom" else ""), regex.DOTALL)
        out = []
        for start, end in spans:
            pos = start
            for m in compiled.finditer(view, start, end):
                if m.start() > pos:
                    out.append((pos, m.start()))        # class steps: text between matches stays whole
                out.append(m.span())
                pos = m.end()
            if pos < end:
                out.append((pos, end))
        spans = out
    return [text[a:b] for a, b in spans]


def hostile_strings():
    rng = random.Random(20261130)
    alphabet = (list("aZ09 '\n\r\t.,!$+<=>^~|`_-/") + ["Ab", "dE", "ÀÉ", "çà", "ǅ", "\u0903", "'T", "'ll"] +
                ["é", "漢", "🙂", "\u00a0", "\u2028", "\u3000", "\u0301", "①", "٣", "Ⅷ", "\x85", "\x1c",
                 "\U0002EBF0", "\U00016EAA", "\ud800", "'s", "'LL", "'Re", "\r\n"])
    fixed = ["", " ", "  x", "abc 12345 don't   x", "a\n\n  b:\r\n", "x" * 3000, " " * 2000, "1" * 1000,
             "\n" * 500 + "a", "🙂" * 300, "'" * 50 + "s", "\ud800\udfff\udc80", "$$$ +++ ~~ `` ||| ^^ ¿¡«»"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(600)]


@pytest.mark.parametrize("label", sorted(STEPS))
def test_pre_tokenizers_equal_their_regexes(label, gen):
    starts = [a for a, _ in gen.ASSIGNED_AFTER_15_1]
    import bisect

    def newer(cpt):
        i = bisect.bisect_right(starts, cpt) - 1
        return i >= 0 and cpt <= gen.ASSIGNED_AFTER_15_1[i][1]
    pre = PRE_TOKENIZERS[label]
    for text in hostile_strings():
        assert pre.split(text) == reference_split(STEPS[label], text, newer), repr(text)


def test_flags_of_the_new_labels():
    assert (PRE_TOKENIZERS["gpt-4o"].clean_spaces, PRE_TOKENIZERS["qwen35"].clean_spaces) == (False, False)
    assert not PRE_TOKENIZERS["dbrx"].ignore_merges and PRE_TOKENIZERS["llama-bpe"].ignore_merges
    assert PRE_TOKENIZERS["gpt-4o"].split("HelloWorld's URLs\n/x") == ["Hello", "World's", " URLs", "\n", "/x"]


def test_every_label_has_a_reference_family():
    # the labels share the step lists above (aliases): each known label splits like one of them
    sample = "Don't 12345 x\u00a0\u2028 ¿¡ 漢字 ①②   \n\n  y"
    families = {tuple(PRE_TOKENIZERS[label].split(sample)) for label in STEPS}
    for label in PRE_TOKENIZERS:
        assert tuple(PRE_TOKENIZERS[label].split(sample)) in families, label

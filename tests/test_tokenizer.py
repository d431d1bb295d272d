"""Tokenizer: exactness against llama.cpp (shared/oracles + corpus constants) on the real
models, and hand-checked behaviour on tiny synthetic SPM and BPE vocabularies."""
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from lowbit import ModelError
from lowbit.runtime.tokenizer import PRE_TOKENIZERS, Tokenizer

from _gguf_meta import read_metadata
from _models import real_model_path

ORACLES = Path(os.environ.get("LOWBIT_ORACLES", Path(__file__).resolve().parents[2] / "shared" / "oracles"))
REAL_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]

# ---------------------------------------------------------------------------------------
# synthetic vocabularies
# ---------------------------------------------------------------------------------------
NORMAL, UNKNOWN, CONTROL, USER, BYTE = 1, 2, 3, 4, 6


def byte_to_unicode():
    """GPT-2's table: printable latin-1 bytes map to themselves, the rest to U+0100 onwards."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = [""] * 256, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b], extra = chr(256 + extra), extra + 1
    return table


BYTE_TO_CHAR = byte_to_unicode()


def spm_meta(add_space_prefix=True, extra=()):
    """<unk> <s> </s>, 256 byte tokens, then a few pieces with scores, then ``extra``."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [UNKNOWN, CONTROL, CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"); scores.append(0.0); types.append(BYTE)
    pieces = [("▁", -20.0), ("a", -10.0), ("b", -10.0), ("c", -10.0), ("ab", -5.0), ("bc", -1.0),
              ("abc", -2.0), ("aa", -1.0), ("▁a", -3.0), ("<hi>", 0.0)]
    pieces += list(extra)
    for text, score in pieces:
        tokens.append(text); scores.append(score)
        types.append(USER if text == "<hi>" else NORMAL)
    return {
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.add_space_prefix": add_space_prefix,
        "tokenizer.chat_template": "{{ messages }}",
    }


def bpe_meta(pre="gpt-2", merges=("l l", "h e", "he ll", "hell o"), words=("ll", "he", "hell", "hello")):
    """The 256 GGUF byte characters (id = byte value), merged words, <|endoftext|> and <|im_end|>."""
    tokens = list(BYTE_TO_CHAR) + list(words) + ["<|endoftext|>", "<|im_end|>"]
    types = [NORMAL] * (len(tokens) - 2) + [CONTROL, CONTROL]
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": list(merges),
        "tokenizer.ggml.bos_token_id": len(tokens) - 2, "tokenizer.ggml.eos_token_id": len(tokens) - 2,
    }


@pytest.fixture(scope="module")
def spm():
    return Tokenizer.from_metadata(spm_meta())


def ids_of(tok, *pieces):
    return [tok.token_id(p) for p in pieces]


# ---------------------------------------------------------------------------------------
# SPM
# ---------------------------------------------------------------------------------------
def test_spm_merges_best_score_first(spm):
    # "bc" (-1) beats "ab" (-5); then "a"+"bc" forms "abc" (-2)
    tok = Tokenizer.from_metadata(spm_meta(add_space_prefix=False))
    assert tok.encode("abc", add_special=False) == ids_of(tok, "abc")
    assert tok.encode("cab", add_special=False) == ids_of(tok, "c", "ab")
    # equal scores: the leftmost pair merges first ("aa" + "a", never "a" + "aa")
    assert tok.encode("aaa", add_special=False) == ids_of(tok, "aa", "a")


def test_spm_space_prefix_and_byte_fallback(spm):
    # " a b" -> "▁a▁b": "▁a" merges, "▁b" is no token so "▁" and "b" stay apart
    assert spm.encode("a b", add_special=False) == ids_of(spm, "▁a", "▁", "b")
    # "é" is no token: its two UTF-8 bytes become <0xC3> <0xA9>
    assert spm.encode("é", add_special=False) == ids_of(spm, "▁", "<0xC3>", "<0xA9>")
    assert spm.decode(spm.encode("é", add_special=False)) == "é"
    assert spm.decode(ids_of(spm, "▁a", "▁", "b")) == "a b"        # first space dropped
    assert spm.decode(ids_of(spm, "b", "▁a")) == "b a"


def test_spm_special_tokens_and_bos(spm):
    bos, eos = spm.bos_id, spm.eos_id
    assert (bos, eos, spm.add_bos, spm.add_eos) == (1, 2, True, False)
    assert spm.encode("a", add_special=True) == [bos] + ids_of(spm, "▁a")
    # control <s> only with parse_special; after a special token the space prefix comes back
    assert spm.encode("b<s>a", add_special=False, parse_special=True) == ids_of(spm, "▁", "b") + [bos] + ids_of(spm, "▁a")
    literal = spm.encode("<s>", add_special=False, parse_special=False)
    assert bos not in literal and spm.decode(literal) == "<s>"
    # user-defined tokens are split out even without parse_special
    assert spm.encode("b<hi>b", add_special=False) == ids_of(spm, "▁", "b", "<hi>", "▁", "b")
    # no second BOS when the text already starts with it (llama.cpp would add one and warn)
    assert spm.encode("<s>a", add_special=True, parse_special=True) == [bos] + ids_of(spm, "▁a")
    assert spm.decode([bos, *ids_of(spm, "▁a")]) == "<s> a"
    assert spm.decode([bos, *ids_of(spm, "▁a")], skip_special=True) == " a"
    assert spm.token_to_bytes(bos) == b"" and spm.token_to_bytes(bos, special=True) == b"<s>"
    assert spm.is_control(bos) and not spm.is_control(spm.token_id("a"))
    assert spm.eot_ids == {eos} and spm.chat_template == "{{ messages }}"


# ---------------------------------------------------------------------------------------
# byte-level BPE
# ---------------------------------------------------------------------------------------
def test_bpe_merge_order_and_fallback():
    tok = Tokenizer.from_metadata(bpe_meta())
    assert tok.encode("hello", add_special=False) == ids_of(tok, "hello")
    # "e l" ranked first changes the path: h [el] l o -> no rule joins further
    tok2 = Tokenizer.from_metadata(bpe_meta(merges=("e l", "l l", "h e"), words=("el", "ll", "he")))
    assert tok2.encode("hello", add_special=False) == ids_of(tok2, "h", "el", "l", "o")
    # a merge whose result is not in the vocabulary falls back to single ASCII bytes
    tok3 = Tokenizer.from_metadata(bpe_meta(merges=("l l", "h e", "he ll"), words=("ll", "he")))
    assert tok3.encode("hell", add_special=False) == [ord(c) for c in "hell"]
    # bytes of non-ASCII text map through the GPT-2 byte table
    assert tok.encode("é", add_special=False) == [0xC3, 0xA9]
    assert tok.encode(" hello", add_special=False) == [0x20] + ids_of(tok, "hello")   # "Ġ" is byte 0x20


def test_bpe_specials_and_decode():
    tok = Tokenizer.from_metadata(bpe_meta())
    end, im_end = tok.token_id("<|endoftext|>"), tok.token_id("<|im_end|>")
    assert tok.encode("he<|im_end|>", add_special=False, parse_special=True) == [tok.token_id("he"), im_end]
    assert im_end not in tok.encode("he<|im_end|>", add_special=False, parse_special=False)
    assert tok.eot_ids == {end, im_end}
    assert tok.decode([tok.token_id("hello"), im_end]) == "hello<|im_end|>"
    assert tok.decode([tok.token_id("hello"), im_end], skip_special=True) == "hello"
    # gpt-2 cleans " ." and " 's" on decode; smollm does not
    ids = tok.encode("a . b 's", add_special=False)
    assert tok.decode(ids) == "a. b's"
    smol = Tokenizer.from_metadata(bpe_meta(pre="smollm"))
    assert smol.decode(smol.encode("a . b 's", add_special=False)) == "a . b 's"


@pytest.mark.parametrize("label, words", [
    ("gpt-2", ["abc", " 12345", " don", "'t", "  ", " x"]),
    ("llama-bpe", ["abc", " ", "123", "45", " don", "'t", "  ", " x"]),
    ("smollm", ["abc", " ", "1", "2", "3", "4", "5", " don", "'t", "  ", " x"]),
    ("qwen2", ["abc", " ", "1", "2", "3", "4", "5", " don", "'t", "  ", " x"]),
    ("default", ["abc", " ", "123", "45", " don", "'", "t", "  ", " x"]),
])
def test_pre_tokenizer_labels(label, words):
    assert PRE_TOKENIZERS[label].split("abc 12345 don't   x") == words


def test_pre_tokenizer_newlines_llama3_vs_gpt2():
    text = "a\n\n  b:\r\n"
    assert PRE_TOKENIZERS["llama-bpe"].split(text) == ["a", "\n\n", " ", " b", ":\r\n"]
    assert PRE_TOKENIZERS["gpt-2"].split(text) == ["a", "\n\n ", " b", ":", "\r\n"]


def test_pre_tokenizer_uses_llama_cpp_unicode_15_1():
    # U+2EBF0 (CJK Ext. I, Unicode 15.1) is a letter to llama.cpp; U+16EAA (Unicode 17) is
    # still unassigned there, so it groups with the apostrophe like punctuation
    assert PRE_TOKENIZERS["gpt-2"].split("\U0002EBF0's") == ["\U0002EBF0", "'s"]
    assert PRE_TOKENIZERS["gpt-2"].split("\U00016EAA's") == ["\U00016EAA'", "s"]
    assert PRE_TOKENIZERS["qwen2"].split("x\U00016EAAy") == ["x", "\U00016EAA" + "y"]


# ---------------------------------------------------------------------------------------
# streaming and bad input
# ---------------------------------------------------------------------------------------
def test_stream_decoder_holds_partial_characters(spm):
    text = "a漢🙂b"
    ids = spm.encode(text, add_special=False)
    assert len(ids) == 1 + 3 + 4 + 1            # ▁a, the bytes of 漢 (3) and 🙂 (4), b
    dec = spm.stream_decoder()
    chunks = [dec.feed(i) for i in ids]
    assert chunks == ["a", "", "", "漢", "", "", "", "🙂", "b"]
    assert "".join(chunks) + dec.flush() == spm.decode(ids) == text
    dec.feed(spm.token_id("a"))
    assert dec.feed(spm.token_id("<0xF0>")) == "" and dec.flush() == "\ufffd"


def test_bad_input(spm):
    with pytest.raises(ValueError, match=r"-1.*vocabulary of 269"):
        spm.decode([0, -1])
    with pytest.raises(ValueError, match="269"):
        spm.token_to_bytes(269)
    with pytest.raises(ValueError, match="269"):
        spm.stream_decoder().feed(10_000)
    with pytest.raises(ModelError, match=r"'bert'.*llama, gpt2"):
        Tokenizer.from_metadata({**spm_meta(), "tokenizer.ggml.model": "bert"})
    with pytest.raises(ModelError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({k: v for k, v in spm_meta().items() if k != "tokenizer.ggml.model"})
    with pytest.raises(ModelError, match=r"'nonesuch'.*llama-bpe.*qwen2.*smollm"):
        Tokenizer.from_metadata(bpe_meta(pre="nonesuch"))
    with pytest.raises(ModelError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(ModelError, match="merges"):
        Tokenizer.from_metadata({k: v for k, v in bpe_meta().items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(TypeError):
        spm.encode(b"bytes")
    with pytest.raises(TypeError):
        spm.decode(["a"])
    assert spm.decode(np.array(spm.encode("ab c", add_special=False))) == "ab c"   # numpy ids work


def test_metadata_from_any_reader(spm):
    """Strings as UTF-8 bytes and arrays as numpy (as a C++ reader may hand them) give the same tokenizer."""
    meta = spm_meta()
    raw = {k: (v.encode() if isinstance(v, str) else v) for k, v in meta.items()}
    raw["tokenizer.ggml.tokens"] = [t.encode() for t in meta["tokenizer.ggml.tokens"]]
    raw["tokenizer.ggml.scores"] = np.array(meta["tokenizer.ggml.scores"], dtype=np.float32)
    raw["tokenizer.ggml.token_type"] = np.array(meta["tokenizer.ggml.token_type"], dtype=np.int32)
    tok = Tokenizer.from_metadata(raw)
    text = "abc a<hi>é<s>"
    assert tok.encode(text, parse_special=True) == spm.encode(text, parse_special=True)
    assert tok.chat_template == spm.chat_template and tok.vocab_size == spm.vocab_size == 269


def test_random_round_trip_synthetic(spm):
    rng = np.random.default_rng(1234)
    no_prefix = Tokenizer.from_metadata(spm_meta(add_space_prefix=False))
    bpe = Tokenizer.from_metadata(bpe_meta(pre="smollm"))
    alphabet = list("abc ") + ["é", "漢", "🙂", "\n", "\t", "0", "'s"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(1, 20))))
        # the space SPM prefixes is dropped again by decode; after a user-defined token
        # it would come back as text, so <hi> only goes to the tokenizer without the prefix
        assert spm.decode(spm.encode(text, add_special=False)) == text
        special = text.replace("0", "<hi>")
        assert no_prefix.decode(no_prefix.encode(special, add_special=False)) == special
        assert bpe.decode(bpe.encode(text, add_special=False)) == text


# ---------------------------------------------------------------------------------------
# real models against llama.cpp
# ---------------------------------------------------------------------------------------
def _oracle(name):
    path = ORACLES / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"no oracle file {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module", params=REAL_MODELS)
def real(request):
    path = real_model_path(request.param)
    if path is None:
        pytest.skip(f"real model {request.param} not available")
    return request.param, Tokenizer.from_metadata(read_metadata(path))


def test_real_probes_match_llama_cpp(real):
    name, tok = real
    oracle = _oracle(name)
    for probe in oracle["tokenize"]:
        ids = tok.encode(probe["text"], add_special=False, parse_special=True)
        assert ids == probe["ids"], probe["text"]
        assert tok.decode(ids) == probe["text"]
    for case in oracle["top5"]:
        assert tok.encode(case["prompt"], add_special=True, parse_special=True) == case["prompt_ids"]


# Produced once with llama.cpp (llama-cpp-python 0.3.36, vocab_only=True):
#   ids = llm.tokenize(corpus.encode(), add_bos=False, special=False)
#   sha256(",".join(map(str, ids)).encode())
# where corpus = "\n\n".join(t[k] for k in sorted(t)), t = pydoc_data.topics.topics (CPython 3.11.7).
CORPUS_SHA256 = "71f2ff5d99bdc1f9c48c5c2353ad138201c5ca1c377e0226857ef8fa89b8bcee"
CORPUS_IDS = {
    "smollm2-135m-instruct": (112955, "a2f47e0926ab1999d61b780d682b2da902a91b70d40f1d7b2095f00c9c61e3b1"),
    "gemma3-270m": (112659, "ffcea16611805645ee57a5069b67ae31ac6b501e91a9fa81d4cbeb019defdd0c"),
}


def test_real_corpus_matches_llama_cpp(real):
    name, tok = real
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    corpus = "\n\n".join(topics[k] for k in sorted(topics))
    if hashlib.sha256(corpus.encode()).hexdigest() != CORPUS_SHA256:
        pytest.skip("this Python's pydoc_data topics differ from CPython 3.11.7's")
    start = time.perf_counter()
    ids = tok.encode(corpus, add_special=False)
    seconds = time.perf_counter() - start
    count, digest = CORPUS_IDS[name]
    assert len(ids) == count == _oracle(name)["perplexity"]["corpus_tokens"]
    assert hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest() == digest
    assert seconds < 10.0, f"{count} tokens took {seconds:.1f} s"
    assert tok.decode(ids) == corpus


# From llama.cpp: llama_vocab_is_eog over every id, and llama_vocab_get_attr & CONTROL.
REAL_FACTS = {
    "smollm2-135m-instruct": dict(bos=1, eos=2, add_bos=False, eog={0, 2, 4}, n_control=17, template=True),
    "gemma3-270m": dict(bos=2, eos=1, add_bos=True, eog={1, 106, 212}, n_control=6250, template=False),
}


def test_real_special_ids(real):
    name, tok = real
    facts = REAL_FACTS[name]
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (facts["bos"], facts["eos"], facts["add_bos"])
    assert tok.eot_ids == facts["eog"]
    assert sum(tok.is_control(i) for i in range(tok.vocab_size)) == facts["n_control"]
    if facts["template"]:
        assert isinstance(tok.chat_template, str) and "<|im_start|>" in tok.chat_template
    else:   # the base gemma3-270m file carries no template
        assert tok.chat_template is None


def test_real_stream_decoder_multibyte(real):
    name, tok = real
    text = "Ünïcödé, emojis 🙂🚀👨‍👩‍👧, CJK 漢字かな, 𝔘𝔫𝔦"
    ids = tok.encode(text, add_special=False)
    dec = tok.stream_decoder()
    chunks = [dec.feed(i) for i in ids]
    assert "".join(chunks) + dec.flush() == text
    assert all("\ufffd" not in c for c in chunks)
    pieces = [tok.token_to_bytes(i) for i in ids]
    assert any(not p.decode("utf-8", "ignore") == p.decode("utf-8", "replace") for p in pieces), \
        "expected at least one token holding part of a character"

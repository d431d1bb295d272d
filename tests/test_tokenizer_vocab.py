"""The vocabulary rules (csrc/tokenizer/vocab) on hand-made metadata, the GGUF and dict paths
agreeing, and hostile text on both real vocabularies against llama.cpp (dev oracle)."""
import random
import warnings

import pytest

import lowbit
from lowbit import ModelError
from lowbit.runtime.tokenizer import Tokenizer

from _gguf_meta import read_metadata
from _llama_cpp import llama_cpp_or_skip
from _models import real_model_path
from test_tokenizer import CONTROL, NORMAL, bpe_meta, spm_meta

REAL_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def with_tokens(meta, extra, types):
    out = dict(meta)
    out["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + list(extra)
    out["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"] + list(types)
    if "tokenizer.ggml.scores" in meta:
        out["tokenizer.ggml.scores"] = meta["tokenizer.ggml.scores"] + [0.0] * len(extra)
    return out


def test_text_detection_and_end_of_generation():
    meta = with_tokens(bpe_meta(), ["<|eot_id|>", "<|fim_prefix|>", "<unused7>", "<|file_sep|>"],
                       [NORMAL, NORMAL, CONTROL, NORMAL])
    tok = Tokenizer.from_metadata(meta)
    eot, fim_pre, sep = (tok.token_id(t) for t in ("<|eot_id|>", "<|fim_prefix|>", "<|file_sep|>"))
    ids = tok.special_ids
    assert ids["eot"] == tok.token_id("<|endoftext|>") == min(eot, tok.token_id("<|endoftext|>"))
    assert ids["fim_pre"] == fim_pre and ids["fim_sep"] == sep and ids["sep"] is None
    assert tok.is_control(eot) and tok.is_control(fim_pre)                 # detection adds CONTROL
    assert {eot, sep, tok.token_id("<|im_end|>")} <= tok.eot_ids           # texts and fim_sep end generation
    assert tok._core.attr(tok.token_id("<unused7>")) & 2                   # control + "unused" -> UNUSED


def test_gpt_oss_end_and_gemma4_eos_rules():
    oss = Tokenizer.from_metadata(with_tokens(bpe_meta(), ["<|end|>", "<|return|>", "<|call|>", "<|channel|>"],
                                              [CONTROL] * 4))
    end = oss.token_id("<|end|>")
    assert end not in oss.eot_ids and oss.token_id("<|return|>") in oss.eot_ids
    assert oss._core.attr(end) == 16                                        # user-defined: always parsed
    assert oss.encode("a<|end|>", add_special=False) == [ord("a"), end]
    assert oss._core.attr(oss.token_id("<|channel|>")) == 16
    gemma4 = Tokenizer.from_metadata(with_tokens(spm_meta(), ["<|tool_response>"], [CONTROL]))
    eos = gemma4.token_id("</s>")
    assert eos not in gemma4.eot_ids and not gemma4.is_control(eos)


def test_phi3_specials_eat_following_spaces():
    tok = Tokenizer.from_metadata({**spm_meta(add_space_prefix=False), "general.name": "Phi-3 mini"})
    eos, a = tok.eos_id, tok.token_id("a")
    # </s> gains RSTRIP: the spaces after it go; <s> explicitly not
    assert tok.encode("</s>   a", add_special=False, parse_special=True) == [eos, a]
    assert tok.encode("<s> a", add_special=False, parse_special=True)[1:] == tok.encode(" a", add_special=False)


def test_warnings_and_errors_name_the_key():
    with pytest.warns(UserWarning, match="eos_token_id = 99999 is outside the vocabulary of 269; keeping 2"):
        tok = Tokenizer.from_metadata({**spm_meta(), "tokenizer.ggml.eos_token_id": 99999})
    assert tok.eos_id == 2
    with pytest.warns(UserWarning, match="no tokenizer.ggml.pre"):
        assert Tokenizer.from_metadata({k: v for k, v in bpe_meta().items() if k != "tokenizer.ggml.pre"}).pre == "default"
    with pytest.raises(ModelError, match="duplicate token in vocabulary: 'a' has ids"):
        Tokenizer.from_metadata(with_tokens(spm_meta(), ["a"], [NORMAL]))
    with pytest.raises(ModelError, match="add_eos_token is true but there is no eos token id"):
        meta = {k: v for k, v in bpe_meta().items() if not k.endswith("_token_id")}
        meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"][:5]
        meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"][:5]
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.add_eos_token": True})
    with pytest.raises(ModelError, match="token_type has 3 entries, fewer than the 269 tokens"):
        Tokenizer.from_metadata({**spm_meta(), "tokenizer.ggml.token_type": [1, 1, 1]})
    with pytest.raises(ModelError, match="bos_token_id must be an integer token id"):
        Tokenizer.from_metadata({**spm_meta(), "tokenizer.ggml.bos_token_id": 1.0})
    empty = with_tokens(spm_meta(), [""], [NORMAL])
    assert Tokenizer.from_metadata(empty).piece(269) == "[EMPTY_269]"


def test_literal_spans_are_checked_and_respected():
    tok = Tokenizer.from_metadata(bpe_meta())
    im_end = tok.token_id("<|im_end|>")
    text = "he<|im_end|>he<|im_end|>"
    assert tok.encode(text, add_special=False, parse_special=True, literal_spans=[(2, 12)]).count(im_end) == 1
    assert tok.encode(text, add_special=False, parse_special=True, literal_spans=[(3, 4), (4, 6)]).count(im_end) == 1
    with pytest.raises(ValueError, match=r"literal span \(3, 99\) is outside the text \(0..24\)"):
        tok.encode(text, parse_special=True, literal_spans=[(3, 99)])


# ---------------------------------------------------------------------------------------
# real vocabularies
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=REAL_MODELS)
def real_path(request):
    path = real_model_path(request.param)
    if path is None:
        pytest.skip(f"real model {request.param} not available")
    return path


def hostile_texts(tok):
    rng = random.Random(7)
    specials = [tok.piece(i) for i in range(tok.vocab_size) if tok._core.attr(i) & (1 | 8 | 16)]
    alphabet = list("ab AZ09'\n\r\t.,!é漢🙂\u00a0\u2028\u0301①$") + ["'s", "  ", "\r\n"] + specials[:20]
    texts = ["", " ", "x" * 20000, " " * 5000, "\n" * 3000 + "a", "🙂" * 2000, "a\x00b\x01", "".join(specials),
             " ".join(specials[:300]), "<<<>>>" * 100, "\u0378\U0010FFFF\ufeff"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    return texts


def test_gguf_and_dict_paths_agree(real_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_file = Tokenizer.from_metadata(lowbit.GGUFFile(real_path).metadata)
        from_dict = Tokenizer.from_metadata(dict(read_metadata(real_path)))
    assert from_file.special_ids == from_dict.special_ids and from_file.eot_ids == from_dict.eot_ids
    assert (from_file.add_bos, from_file.chat_template, from_file.pre) == (from_dict.add_bos, from_dict.chat_template,
                                                                            from_dict.pre)
    assert all(from_file._core.attr(i) == from_dict._core.attr(i) for i in range(from_file.vocab_size))
    for text in hostile_texts(from_file)[:60]:
        assert from_file.encode(text, parse_special=True) == from_dict.encode(text, parse_special=True)


def test_hostile_text_equals_llama_cpp(real_path):
    llama_cpp = llama_cpp_or_skip()
    ref = llama_cpp.Llama(model_path=real_path, vocab_only=True, verbose=False)
    tok = Tokenizer.from_metadata(lowbit.GGUFFile(real_path).metadata)
    try:
        for text in hostile_texts(tok):
            for special in (False, True):
                want = ref.tokenize(text.encode(), add_bos=False, special=special)
                assert tok.encode(text, add_special=False, parse_special=special) == want, (text[:80], special)
            ids = tok.encode(text, add_special=False, parse_special=True)
            # llama-cpp-python renders each piece into a 32-byte buffer (longer ones come back cut)
            if all(len(tok.token_to_bytes(i, True)) < 32 for i in ids):
                assert tok._detokenize_bytes(ids, True) == ref.detokenize(ids, special=True)
    finally:
        ref.close()


def test_concurrent_encodes_agree(real_path):
    """encode releases the GIL and shares the merge cache: threads must see the same ids."""
    from concurrent.futures import ThreadPoolExecutor
    tok = Tokenizer.from_metadata(lowbit.GGUFFile(real_path).metadata)
    texts = hostile_texts(tok)[10:90]
    fresh = Tokenizer.from_metadata(lowbit.GGUFFile(real_path).metadata)
    want = [fresh.encode(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(tok.encode, texts)) == want

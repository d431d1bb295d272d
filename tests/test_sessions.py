"""Model and sessions: one copy of the weights, any number of conversations on it.

Bounds: sessions run the same arithmetic as the model's implicit session, so on F32 tiny
models (no strip GEMM: matmul.h) results are bit-for-bit equal; on the real quantized models
a row's bits depend only on the row-count class of the pass (1..4 rows vs >= 5: strip GEMM),
so comparisons keep the passes of the same class and stay exact too. Where the same tokens
were split into other passes (n_batch), 1e-5 relative, as tests/test_engine.py's n_batch bound.
"""
from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import lowbit  # noqa: E402
from lowbit import _core  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
import model_factory as mf  # noqa: E402
from _models import real_model_or_skip  # noqa: E402

REAL = ("smollm2-135m-instruct", "gemma3-270m")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def make(arch="llama", weight_type="F32", **overrides):
        key = (arch, weight_type, tuple(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp("sess")
            made[key] = mf.write_tiny_model(folder / f"{arch}.gguf", mf.default_spec(arch, weight_type, **overrides))
        return made[key]
    return make


def rel_err(a, b):
    """Max over rows of ||a - b|| / ||b||."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def ids(n, seed, n_vocab=200):
    return np.random.default_rng(seed).integers(3, n_vocab, size=n).astype(np.int32)


# ---- core: sessions share the weights -----------------------------------------------------

def test_session_engines_share_weights_and_outlive_the_loader(tiny):
    e = _core.Engine(tiny("qwen3"), 64, 2, 16, "f16")
    s = e.new_session(32, 1, 8, "q8_0")
    assert e.same_model(s) and s.n_ctx == 32 and s.n_batch == 8 and s.kv_type == "q8_0" and s.n_threads == 1
    want = _core.Engine(tiny("qwen3"), 32, 1, 8, "q8_0").eval(ids(20, 0), all_logits=True)
    e.close()                                   # the weights stay loaded for the session
    assert np.array_equal(s.eval(ids(20, 0), all_logits=True), want)
    other = _core.Engine(tiny("qwen3"), 64, 2, 16, "f16")
    assert not other.same_model(s)


@pytest.mark.parametrize("arch", mf.ARCHITECTURES)
def test_session_logits_equal_the_loading_engine(tiny, arch):
    e = _core.Engine(tiny(arch), 64, 2, 16, "f16")
    s = e.new_session(64, 2, 16)
    x = ids(30, 1)
    assert np.array_equal(s.eval(x, all_logits=True), e.eval(x, all_logits=True))


def test_session_with_the_other_longrope_factors_is_refused(tiny):
    path = tiny("phi3", longrope=True, rope_orig_ctx=32)
    e = _core.Engine(path, 16, 1, 16, "f16")    # short factors
    e.new_session(32, 1, 16)                    # still within the original context
    with pytest.raises(ValueError, match="LongRoPE"):
        e.new_session(64, 1, 16)


def test_new_session_bad_arguments(tiny):
    e = _core.Engine(tiny("llama"), 64, 2, 16, "f16")
    for args, what in (((0, 1, 8), "n_ctx"), ((8, 0, 8), "n_threads"), ((8, 1, 0), "n_batch")):
        with pytest.raises(ValueError, match=what):
            e.new_session(*args)
    with pytest.raises(ValueError, match="kv_type"):
        e.new_session(8, 1, 8, "q4")
    e.close()
    with pytest.raises(ValueError, match="closed"):
        e.new_session(8, 1, 8)


# ---- copy_prefix_from ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_copy_prefix_equals_recomputation(tiny, arch, kv_type):
    path = tiny(arch, sliding_window=12) if arch == "gemma3" else tiny("qwen3")
    e = _core.Engine(path, 96, 2, 16, kv_type)
    a = e.new_session(96, 2, 16, kv_type)
    x = ids(40, 2)
    a.eval(x[:25])                                 # the shared prefix, evaluated once
    b = e.new_session(64, 1, 8, kv_type)         # another n_ctx / n_batch: another ring size
    b.eval(ids(5, 3))                               # whatever b held is replaced
    b.copy_prefix_from(a, 20)
    assert b.n_past == 20
    got = b.eval(x[20:], all_logits=True)
    ref = e.new_session(64, 1, 8, kv_type)
    ref.eval(x[:25])
    ref.truncate(20)
    assert rel_err(got, ref.eval(x[20:], all_logits=True)) <= 1e-5


def test_copy_prefix_refused_when_the_ring_lost_the_window(tiny):
    path = tiny("gemma3", sliding_window=4)     # ring of 4 + n_batch cells
    e = _core.Engine(path, 128, 1, 4, "f16")
    a = e.new_session(128, 1, 4)
    a.eval(ids(40, 4))                              # positions 0..31 are gone from a's rings
    b = e.new_session(128, 1, 4)
    with pytest.raises(ValueError, match="sliding-window"):
        b.copy_prefix_from(a, 20)
    assert b.n_past == 0
    b.copy_prefix_from(a, 38)                      # the window of position 38 (35..37) is still held
    assert b.n_past == 38
    assert a.truncate(38) == 38
    assert np.array_equal(b.eval(ids(3, 5), all_logits=True), a.eval(ids(3, 5), all_logits=True))
    assert b.truncate(30) == 0                     # b's rings hold what a's held: 30's window is gone


def test_copy_prefix_errors(tiny):
    e = _core.Engine(tiny("llama"), 64, 1, 16, "f16")
    a, b = e.new_session(64, 1, 16), e.new_session(16, 1, 16)
    a.eval(ids(30, 6))
    with pytest.raises(ValueError, match="holds 30"):
        b.copy_prefix_from(a, 31)
    with pytest.raises(ValueError, match="n_ctx 16"):
        b.copy_prefix_from(a, 20)
    with pytest.raises(ValueError, match="itself"):
        a.copy_prefix_from(a, 3)
    q = _core.Engine(tiny("qwen3"), 64, 1, 16, "f16")
    q.eval(ids(8, 6))
    with pytest.raises(ValueError, match="differ"):
        q.new_session(64, 1, 16, "q8_0").copy_prefix_from(q, 3)
    with pytest.raises(ValueError, match="another model"):
        _core.Engine(tiny("llama"), 64, 1, 16, "f16").copy_prefix_from(a, 3)


# ---- Python: Model.session() ---------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm():
    m = lowbit.load(real_model_or_skip("smollm2-135m-instruct"), n_ctx=512, n_threads=2)
    yield m
    m.close()


PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,",
           "The three primary colors are")


def test_session_has_the_generation_api(smollm):
    with smollm.session() as s:
        assert isinstance(s, lowbit.Session) and not isinstance(s, lowbit.Model)
        assert s.n_ctx == smollm.n_ctx and s.n_vocab == smollm.n_vocab and s.n_past == 0
        want = smollm.generate(PROMPTS[0], max_new_tokens=8, temperature=0)
        got = s.generate(PROMPTS[0], max_new_tokens=8, temperature=0)
        assert got.tokens == want.tokens and got.text == want.text
        assert s.tokenize("hi") == smollm.tokenize("hi") and s.detokenize(s.tokenize("hi", add_special=False)) == "hi"
        pieces = list(s.chat([{"role": "user", "content": "Say hi."}], max_new_tokens=6, temperature=0, stream=True))
        assert "".join(pieces) == s.last.text and s.last.finish_reason in ("eos", "length")
        assert s.logits(s.tokenize("Hello"))[0].shape == (smollm.n_vocab,)
        mem = s.memory()
        assert mem["kv_cache_bytes"] > 0 and mem["n_ctx"] == smollm.n_ctx
        s.cancel()                                  # cleared by the next generation
        assert s.generate(PROMPTS[1], max_new_tokens=3, temperature=0).finish_reason == "length"
    assert s._closed and not smollm._closed
    with pytest.raises(LowbitError, match="this Session is closed"):
        s.generate("x")


def test_sessions_keep_their_own_caches(smollm):
    a, b = smollm.session(256), smollm.session(256)
    try:
        ra = a.generate(PROMPTS[0], max_new_tokens=6, temperature=0)
        rb = b.generate(PROMPTS[1], max_new_tokens=6, temperature=0)
        again = a.generate(PROMPTS[0] + ra.text, max_new_tokens=4, temperature=0)
        assert again.cached_prompt_tokens >= len(a.tokenize(PROMPTS[0]))   # b did not disturb a's cache
        assert a.cached_tokens[:len(ra.tokens)] != b.cached_tokens[:len(ra.tokens)]
        assert rb.tokens == smollm.generate(PROMPTS[1], max_new_tokens=6, temperature=0).tokens
    finally:
        a.close(); b.close()


def test_four_threads_on_one_model_equal_serial(smollm):
    serial = [smollm.generate(p, max_new_tokens=16, temperature=0).tokens for p in PROMPTS]
    sessions = [smollm.session(256) for _ in PROMPTS]
    results, errors = [None] * len(PROMPTS), []

    def run(i):
        try:
            for _ in range(2):                      # twice: the second reuses the cache
                results[i] = sessions[i].generate(PROMPTS[i], max_new_tokens=16, temperature=0).tokens
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads) and not errors
    assert results == serial
    for s in sessions:
        s.close()


def test_copy_prefix_from_reuses_another_sessions_system_prompt(smollm):
    system = [{"role": "system", "content": "You are a terse assistant who answers in one word."}]
    a, b = smollm.session(256), smollm.session(256)
    try:
        first = a.chat(system + [{"role": "user", "content": "Color of the sky?"}], max_new_tokens=4, temperature=0)
        ids_b = b.chat_ids(system + [{"role": "user", "content": "Color of grass?"}])
        shared = 0
        while a.cached_tokens[shared] == ids_b[shared]:
            shared += 1
        assert shared >= 10 and first.prompt_tokens > shared
        assert b.copy_prefix_from(a, shared) == shared and b.n_past == shared
        assert b.cached_tokens == a.cached_tokens[:shared]
        got = b.chat(system + [{"role": "user", "content": "Color of grass?"}], max_new_tokens=6, temperature=0)
        assert got.cached_prompt_tokens == shared
        fresh = smollm.session(256)
        fresh._engine.eval(np.asarray(ids_b[:shared]))          # the prefix in one pass, as a did
        fresh._cached_ids.extend(ids_b[:shared])
        want = fresh.chat(system + [{"role": "user", "content": "Color of grass?"}], max_new_tokens=6, temperature=0)
        assert got.tokens == want.tokens
        fresh.close()
        with pytest.raises(ValueError, match="holds"):
            b.copy_prefix_from(a, 10_000)
        with pytest.raises(TypeError):
            b.copy_prefix_from("a", 3)
    finally:
        a.close(); b.close()


def test_closing_the_model_closes_its_sessions(tiny):
    m = lowbit.load(tiny("llama"), n_ctx=64, n_threads=1)
    s = m.session(32)
    assert s.generate("hello", max_new_tokens=2, temperature=0).generated_tokens <= 2
    m.close()
    assert s._closed
    with pytest.raises(LowbitError, match="closed"):
        s.generate("hello")
    with pytest.raises(LowbitError, match="closed"):
        m.session()


def test_truncate_keeps_a_prefix_for_the_next_prompt(tiny):
    with lowbit.load(tiny("llama"), n_ctx=64, n_threads=1) as m:
        first = m.generate("hello world once upon", max_new_tokens=3, temperature=0)
        n = len(m.cached_tokens)
        assert m.truncate(2) == 2 and m.n_past == 2 and m.cached_tokens == (m.tokenize("hello world once upon") +
                                                                          first.tokens)[:2]
        assert m.truncate(50) == 2                  # nothing past what is cached
        again = m.generate("hello world once upon", max_new_tokens=3, temperature=0)
        assert again.cached_prompt_tokens == 2 and again.tokens == first.tokens and n > 2
        with pytest.raises(ValueError):
            m.truncate(-1)

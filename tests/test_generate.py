"""The generation loop on a scripted engine: stop strings across token boundaries, UTF-8-safe
streaming, finish reasons, context full / shift, cancel, prefix reuse, one generation at a time.

The engine double returns logits whose argmax is the next token of a script, so the text the
loop must produce is known exactly; the tokenizer double maps ids 0..255 to single bytes."""
import threading
import time

import numpy as np
import pytest

from lowbit.errors import Cancelled
from lowbit.runtime.generate import StopMatcher
from lowbit.runtime.model import Model

EOS, BOS = 256, 257


class ByteTokenizer:
    vocab_size = 258
    bos_id, eos_id = BOS, EOS
    eot_ids = {EOS}
    chat_template = None

    def encode(self, text, add_special=True, parse_special=False):
        return ([BOS] if add_special else []) + list(text.encode("utf-8"))

    def decode(self, ids):
        return b"".join(self.token_to_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_to_bytes(self, i):
        return bytes([i]) if i < 256 else b""


class ScriptedEngine:
    def __init__(self, script, n_ctx=4096, delay=0.0):
        self.script = list(script)
        self.cursor = 0
        self.n_ctx = n_ctx
        self.n_vocab = 258
        self.n_past = 0
        self.delay = delay
        self.cancelled = False
        self.busy = False
        self.calls = []

    def _logits(self):
        tok = self.script[self.cursor] if self.cursor < len(self.script) else EOS
        self.cursor += 1
        x = np.zeros(self.n_vocab, dtype=np.float32)
        x[tok] = 20.0
        return x

    def eval(self, ids, all_logits=False):
        assert not self.busy, "concurrent eval on one engine"
        self.busy = True
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.cancelled:
                raise Cancelled("cancelled")
            assert self.n_past + len(ids) <= self.n_ctx, "context overflow reached the engine"
            self.calls.append(("eval", len(ids)))
            self.n_past += len(ids)
            return self._logits()
        finally:
            self.busy = False

    def truncate(self, n):
        self.calls.append(("truncate", n))
        self.n_past = min(self.n_past, n)

    def shift(self, n_keep, n_discard):
        self.calls.append(("shift", n_keep, n_discard))
        self.n_past -= n_discard

    def cancel(self):
        self.cancelled = True

    def reset_cancel(self):
        self.cancelled = False

    def memory(self):
        return {"weights_bytes": 0}

    def close(self):
        pass


def model_for(text_or_ids, **kw):
    script = list(text_or_ids.encode()) if isinstance(text_or_ids, str) else list(text_or_ids)
    return Model(ScriptedEngine(script, **kw), ByteTokenizer(), {"general.architecture": "test"}, "x.gguf")


GREEDY = dict(temperature=0.0)


def test_text_and_eos():
    g = model_for("Hello world").generate("hi", **GREEDY)
    assert (g.text, g.finish_reason, g.generated_tokens, g.prompt_tokens) == ("Hello world", "eos", 11, 3)
    assert g.tokens == list(b"Hello world") and g.peak_memory_bytes > 0


def test_stop_string_across_tokens_never_leaks():
    m = model_for("abc STOP def")
    s = m.generate("x", stop=["STOP"], stream=True, **GREEDY)
    pieces = list(s)
    assert "".join(pieces) == "abc " and all("S" not in p for p in pieces)
    assert s.result.finish_reason == "stop" and s.result.text == "abc "


def test_partial_stop_prefix_is_released():
    g = model_for("abc ST xyz").generate("x", stop=["STOP", "zz"], **GREEDY)
    assert (g.text, g.finish_reason) == ("abc ST xyz", "eos")


def test_stop_matcher_earliest_of_several():
    m = StopMatcher(["world", "lo w"])
    out, hit = m.push("hello world")
    assert (out, hit) == ("hel", True)


def test_utf8_streaming_never_splits_characters():
    text = "héllo 🙂 漢字 ok"
    s = model_for(text).generate("x", stream=True, **GREEDY)
    pieces = list(s)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) < len(text.encode())    # multi-byte characters came out whole


def test_incomplete_utf8_at_the_end_is_replaced():
    g = model_for(list("ok".encode()) + [0xF0, 0x9F]).generate("x", **GREEDY)
    assert g.text == "ok\ufffd" and g.finish_reason == "eos"


def test_max_new_tokens_is_length():
    g = model_for("abcdefgh").generate("x", max_new_tokens=3, **GREEDY)
    assert (g.text, g.finish_reason, g.generated_tokens) == ("abc", "length", 3)


def test_context_full_ends_with_context():
    m = model_for("a" * 50, n_ctx=10)
    g = m.generate("abc", **GREEDY)               # BOS + 3 = 4 prompt tokens
    assert g.finish_reason == "context" and g.generated_tokens == 7
    assert m._engine.n_past == 10


def test_context_shift_keeps_going():
    m = model_for("a" * 50, n_ctx=10)
    g = m.generate("abc", context_shift=True, n_keep=2, max_new_tokens=30, **GREEDY)
    assert g.finish_reason == "length" and g.generated_tokens == 30 and g.context_shifts >= 3
    shifts = [c for c in m._engine.calls if c[0] == "shift"]
    assert all(c[1] == 2 and c[2] == 4 for c in shifts)
    assert len(m._cached_ids) == m._engine.n_past


def test_prompt_longer_than_context_is_a_clear_error():
    with pytest.raises(ValueError, match="context holds 8"):
        model_for("a", n_ctx=8).generate("0123456789", **GREEDY)


def test_prefix_reuse_between_calls():
    m = model_for("xy" * 20)
    m.generate("hello there", max_new_tokens=2, **GREEDY)
    g = m.generate("hello world", max_new_tokens=2, **GREEDY)
    assert g.cached_prompt_tokens == len("hello ") + 1     # BOS + common text
    assert ("truncate", len("hello ") + 1) in m._engine.calls


def test_cancel_from_another_thread():
    m = model_for("a" * 10_000, delay=0.005)
    threading.Timer(0.1, m.cancel).start()
    t0 = time.monotonic()
    g = m.generate("x", max_new_tokens=5000, **GREEDY)
    assert g.finish_reason == "cancelled" and time.monotonic() - t0 < 2
    assert 0 < g.generated_tokens < 5000
    g2 = m.generate("x", max_new_tokens=3, **GREEDY)     # usable afterwards
    assert g2.finish_reason == "length"


def test_abandoned_stream_is_cancelled():
    m = model_for("abcdefgh")
    s = m.generate("x", stream=True, **GREEDY)
    assert next(s) == "a"
    s.close()
    assert s.result.finish_reason == "cancelled"


def test_one_generation_at_a_time_per_model():
    m = model_for("ab" * 400, delay=0.001)
    results = []
    threads = [threading.Thread(target=lambda: results.append(m.generate("x", max_new_tokens=40, **GREEDY)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.finish_reason for r in results] == ["length"] * 3   # the engine asserts no overlap


@pytest.mark.parametrize("kw,err", [(dict(max_new_tokens=-1), ValueError), (dict(top_p=0), ValueError),
                                    (dict(stop=[3]), TypeError)])
def test_bad_arguments(kw, err):
    with pytest.raises(err):
        model_for("ab").generate("x", **kw)


def test_prompt_must_be_text():
    with pytest.raises(TypeError):
        model_for("ab").generate(b"bytes")


def test_memory_record_on_a_real_model():
    from _models import real_model_path
    import lowbit
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    with lowbit.load(path, n_ctx=512, n_threads=2) as m:
        mem = m.memory()
        assert mem["kv_cache_bytes"] == 30 * 512 * 3 * 128 * 2 == mem["kv_cache"]["bytes"]
        assert mem["kv_type"] == "f16" and mem["n_ctx"] == 512 and mem["n_threads"] == 2
        assert set(mem["weights"]) == {"F32", "Q4_1", "Q8_0"}
        assert mem["weights_bytes"] == sum(mem["weights"].values())
        assert mem["process_peak_rss_bytes"] > mem["weights_bytes"] // 4
        g = m.generate("The capital of France is", max_new_tokens=4, temperature=0)
        assert "Paris" in g.text and g.prompt_tokens == 5 and g.finish_reason == "length"   # no BOS for SmolLM2
    with pytest.raises(lowbit.LowbitError, match="closed"):
        m.memory()


def test_peak_rss_is_this_process_not_the_parent():
    """A child exec'd from a big parent must not report the parent's peak (ru_maxrss does)."""
    import subprocess
    import sys
    ballast = bytearray(400 << 20)      # make this (parent) process large
    ballast[::4096] = b"x" * len(ballast[::4096])
    out = subprocess.run([sys.executable, "-c", "from lowbit.runtime.generate import peak_rss_bytes; print(peak_rss_bytes())"],
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) < 300 << 20, int(out.stdout)
    del ballast


# ---- argument checks, closed models, warnings (real engine on a tiny synthetic model) ---------

@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import model_factory as mf
    return mf.write_default_model(tmp_path_factory.mktemp("m") / "tiny.gguf", "llama")   # trained n_ctx 256


@pytest.mark.parametrize("kw,err,match", [
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens must be an integer, got 2.5"),
    (dict(max_new_tokens=True), TypeError, "max_new_tokens"),
    (dict(max_new_tokens="3"), TypeError, "max_new_tokens"),
    (dict(seed=-2), ValueError, "seed must be >= -1, got -2"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(top_k=2.0), TypeError, "top_k"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(n_keep=-1), ValueError, "n_keep"),
])
def test_bad_generation_arguments_name_the_argument(kw, err, match):
    with pytest.raises(err, match=match):
        model_for("ab").generate("x", **kw)


def test_seed_minus_one_means_random():
    import lowbit.runtime.sampling as s
    logits = np.zeros(1000)
    draws = {s.Sampler(s.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=-1)).sample(logits)
             for _ in range(20)}
    fixed = {s.Sampler(s.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5)).sample(logits)
             for _ in range(20)}
    assert len(draws) > 1 and len(fixed) == 1


@pytest.mark.parametrize("kw,err", [(dict(n_ctx=64.5), TypeError), (dict(n_ctx=True), TypeError),
                                    (dict(n_ctx="64"), TypeError), (dict(n_ctx=0), ValueError),
                                    (dict(n_threads=1.5), TypeError), (dict(n_batch=False), TypeError)])
def test_bad_load_arguments_name_the_argument(tiny_path, kw, err):
    import lowbit
    with pytest.raises(err, match=next(iter(kw))):
        lowbit.load(tiny_path, **kw)


def test_every_member_of_a_closed_model_raises_the_same_error(tiny_path):
    import lowbit
    m = lowbit.load(tiny_path, n_ctx=64, n_threads=1)
    m.close()
    m.close()                                   # idempotent
    m.cancel()                                  # a no-op once closed
    calls = {"n_ctx": lambda: m.n_ctx, "n_vocab": lambda: m.n_vocab, "logits": lambda: m.logits([1, 2]),
             "generate": lambda: m.generate("hi"), "generate stream": lambda: m.generate("hi", stream=True),
             "chat": lambda: m.chat([{"role": "user", "content": "hi"}]), "memory": m.memory}
    for name, call in calls.items():
        with pytest.raises(lowbit.LowbitError, match="^this Model is closed$"):
            call()
    assert "closed" in repr(m)
    assert m.detokenize(m.tokenize("hello world", add_special=False)) == "hello world"   # no engine needed


def test_n_ctx_beyond_training_warns(tiny_path):
    import warnings
    import lowbit
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lowbit.load(tiny_path, n_ctx=512, n_threads=1).close()
        lowbit.load(tiny_path, n_ctx=256, n_threads=1).close()
    msgs = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "n_ctx=512" in msgs[0] and "256" in msgs[0] and "\n" not in msgs[0]


@pytest.mark.parametrize("messages,match", [
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], r"messages\[1\] has role 'robot'"),
    ([{"role": "user", "content": None}], r"messages\[0\] \(role 'user'\) needs str content"),
    ([{"content": "hi"}], r"messages\[0\] has role None"),
])
def test_bad_chat_messages_name_index_and_role(messages, match):
    with pytest.raises(ValueError, match=match):
        model_for("ab").chat(messages)


def test_missing_chat_template_warns_once_per_model(tiny_path):
    import warnings
    import lowbit
    with lowbit.load(tiny_path, n_ctx=64, n_threads=1) as m, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            m.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)
    msgs = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "no chat template" in msgs[0] and "'chatml'" in msgs[0]


# ---- the phases on the real engine ----------------------------------------------------------
def test_prefill_and_decode_step_phases(tmp_path):
    """prefill reuses the cached prefix (and gives the logits a fresh context gives);
    decode_step appends one token, and at a full context without shifting returns None."""
    from lowbit import _core
    from lowbit.runtime.generate import Generation, decode_step, prefill
    from model_factory import write_default_model
    path = write_default_model(str(tmp_path / "m.gguf"), "llama", "F32", n_ctx=32)
    ids = list(np.random.default_rng(4).integers(3, 200, 12))
    fresh = _core.Engine(path, 16, 1, 512, "f16")
    want = fresh.eval(np.asarray(ids, dtype=np.int32))
    e = _core.Engine(path, 16, 1, 512, "f16")
    cached = []
    rec = Generation()
    prefill(e, ids[:8], cached, rec)
    assert cached == ids[:8] and rec.cached_prompt_tokens == 0 and rec.prompt_tokens == 8
    rec = Generation()
    logits = prefill(e, ids, cached, rec)
    assert rec.cached_prompt_tokens == 8 and cached == ids and e.n_past == 12
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    for t in range(4):                         # fills the 16-token context
        assert decode_step(e, 7 + t, cached, rec, context_shift=False, n_keep=0) is not None
    assert e.n_past == 16 and len(cached) == 16
    assert decode_step(e, 5, cached, rec, context_shift=False, n_keep=0) is None
    out = decode_step(e, 5, cached, rec, context_shift=True, n_keep=4)
    assert out is not None and rec.context_shifts == 1 and e.n_past == 16 - 6 + 1
    fresh.close()
    e.close()

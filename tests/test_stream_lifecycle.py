"""Stream lifecycle on real engines (a tiny synthetic model and smollm2): an abandoned, closed or
collected stream releases the Model at once; close()/stream.close() cancel a running generation
from another thread instead of waiting; Ctrl+C reaches a long prefill. Every scenario runs under
a hang guard (a daemon thread or a subprocess with a timeout): the old code deadlocked here."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import lowbit  # noqa: E402
import model_factory as mf  # noqa: E402
from _models import real_model_path  # noqa: E402

HANG_S = 60          # hang guard only: every scenario takes well under a second or two
# the folder of the lowbit this test imports (installed under CI, python/ in the developer loop)
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__)))


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def model_path(request, tmp_path_factory):
    if request.param == "tiny":
        return mf.write_default_model(tmp_path_factory.mktemp("m") / "tiny.gguf", "llama", n_ctx=4096)
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    return path


def guarded(fn, timeout=HANG_S):
    """Run ``fn`` in a daemon thread; fail (instead of hanging) if it does not return."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"hung for {timeout} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def load(path, **kw):
    return lowbit.load(path, n_ctx=kw.pop("n_ctx", 512), n_threads=kw.pop("n_threads", 1), **kw)


USER = [{"role": "user", "content": "Tell me a long story about the sea."}]
LONG = dict(max_new_tokens=200, temperature=0.0)


def test_leaving_the_with_block_after_break_returns(model_path):
    def scenario():
        with load(model_path) as m:
            s = m.chat(USER, stream=True, **LONG)
            for _ in s:
                break
        return s
    s = guarded(scenario)
    assert s.result.finish_reason == "cancelled"
    assert list(s) == []


def test_generate_after_break_on_the_same_thread_closes_the_old_stream(model_path):
    def scenario():
        with load(model_path) as m:
            s = m.generate("Once upon a time", stream=True, **LONG)
            for _ in s:
                break
            g = m.generate("Once upon a time", max_new_tokens=3, temperature=0.0)
            ids = m.tokenize("hello world")
            return s, g, m.logits(ids).shape, (len(ids), m.n_vocab)
    s, g, shape, want = guarded(scenario)
    assert s.result.finish_reason == "cancelled" and g.finish_reason == "length" and g.generated_tokens == 3
    assert shape == want


def test_exception_out_of_the_consumer_loop_does_not_deadlock(model_path):
    def scenario():
        with pytest.raises(BrokenPipeError):
            with load(model_path) as m:
                s = m.generate("Once upon a time", stream=True, **LONG)
                for _ in s:
                    raise BrokenPipeError("the reader went away")
        return s
    s = guarded(scenario)
    assert s.result.finish_reason == "cancelled"


def test_collected_stream_releases_the_model(model_path):
    def scenario():
        with load(model_path) as m:
            s = m.generate("Once upon a time", stream=True, **LONG)
            next(s)
            result = s.result
            del s
            gc.collect()
            done = []
            t = threading.Thread(target=lambda: done.append(m.generate("Hi", max_new_tokens=2, temperature=0)))
            t.start()               # another thread: it would wait for a stream still alive
            t.join(HANG_S / 2)
            return result, done
    result, done = guarded(scenario)
    assert result.finish_reason == "cancelled" and len(done) == 1


def test_another_thread_waits_for_a_suspended_stream_until_it_is_closed(model_path):
    def scenario():
        with load(model_path) as m:
            s = m.generate("Once upon a time", stream=True, **LONG)
            next(s)
            done = []
            t = threading.Thread(target=lambda: done.append(m.generate("Hi", max_new_tokens=2, temperature=0)))
            t.start()
            time.sleep(0.3)
            waited = t.is_alive() and not done
            more = next(s)           # the owner keeps streaming meanwhile
            s.close()
            t.join(HANG_S / 2)
            return s, waited, more, done
    s, waited, more, done = guarded(scenario)
    assert waited and isinstance(more, str) and len(done) == 1 and done[0].generated_tokens == 2
    assert s.result.finish_reason == "cancelled"


@pytest.fixture(scope="module", params=["tiny-wide", "smollm2"])
def slow_model(request, tmp_path_factory):
    """(path, prompt tokens) whose prefill at 1 thread takes seconds (measured 7 s and 15 s)."""
    if request.param == "tiny-wide":
        path = mf.write_default_model(tmp_path_factory.mktemp("w") / "wide.gguf", "llama", "F16", n_ctx=4096,
                                      n_layer=8, n_embd=512, n_head=8, head_dim=64, n_head_kv=4, n_ff=2048)
        return path, 4000
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    return path, 3000


def long_prompt(m, n_tokens):
    return m.detokenize(m.tokenize("The quick brown fox jumps over the lazy dog. " * 400)[:n_tokens])


def test_model_close_from_another_thread_cancels_a_running_generation(slow_model):
    path, n_tokens = slow_model

    def scenario():
        m = load(path, n_ctx=4096)
        prompt = long_prompt(m, n_tokens)
        out = []
        t = threading.Thread(target=lambda: out.append(m.generate(prompt, max_new_tokens=50, temperature=0)))
        t.start()
        time.sleep(0.5)                  # inside the prefill
        t0 = time.monotonic()
        m.close()
        closing = time.monotonic() - t0
        t.join(HANG_S / 2)
        return out, closing
    out, closing = guarded(scenario)
    assert len(out) == 1 and out[0].finish_reason == "cancelled" and out[0].generated_tokens == 0
    assert closing < 3, closing          # it stops within one layer, it does not finish the prefill


def test_model_close_from_another_thread_ends_a_stream_being_read(model_path):
    def scenario():
        m = load(model_path, n_ctx=4096)
        s = m.generate("Once upon a time", stream=True, max_new_tokens=4000, temperature=0)
        first, pieces = threading.Event(), []

        def read():
            for p in s:
                pieces.append(p)
                first.set()
                time.sleep(0.01)         # a slow reader: the stream is mostly suspended
        t = threading.Thread(target=read)
        t.start()
        first.wait(HANG_S / 2)
        m.close()
        t.join(HANG_S / 2)
        return s, pieces
    s, pieces = guarded(scenario)
    assert s.result.finish_reason == "cancelled" and 0 < s.result.generated_tokens < 4000 and pieces


def test_stream_close_from_another_thread_stops_a_running_prefill(slow_model):
    path, n_tokens = slow_model

    def scenario():
        with load(path, n_ctx=4096) as m:
            s = m.generate(long_prompt(m, n_tokens), stream=True, max_new_tokens=5)
            t = threading.Thread(target=lambda: list(s))
            t.start()
            time.sleep(0.5)
            t0 = time.monotonic()
            s.close()
            t.join(HANG_S / 2)
            stopped = time.monotonic() - t0
            after = m.generate("Hi", max_new_tokens=2, temperature=0)   # usable afterwards
            return s, stopped, after
    s, stopped, after = guarded(scenario)
    assert s.result.finish_reason == "cancelled" and s.result.generated_tokens == 0
    assert stopped < 3, stopped
    assert after.finish_reason == "length" and after.generated_tokens == 2


def test_closed_model_ends_open_streams_and_refuses_new_ones(model_path):
    def scenario():
        m = load(model_path)
        s = m.generate("Once upon a time", stream=True, **LONG)
        unstarted = m.generate("Once upon a time", stream=True, **LONG)
        next(s)
        m.close()
        return s, unstarted
    s, unstarted = guarded(scenario)
    assert list(s) == [] and s.result.finish_reason == "cancelled"
    with pytest.raises(lowbit.LowbitError, match="this Model is closed"):
        next(unstarted)


SIGINT_SCRIPT = r"""
import sys, time
import lowbit
m = lowbit.load(sys.argv[1], n_ctx=4096, n_threads=1)
ids = m.tokenize("The quick brown fox jumps over the lazy dog. " * 400)[:int(sys.argv[2])]
prompt = m.detokenize(ids)
print("PREFILL", flush=True)
try:
    m.generate(prompt, max_new_tokens=1)
except KeyboardInterrupt:
    print("INTERRUPTED", time.monotonic(), flush=True)
    g = m.generate("Hi", max_new_tokens=2, temperature=0)     # usable afterwards
    print("AFTER", g.finish_reason, time.monotonic(), flush=True)
    raise
print("FINISHED", flush=True)
"""


def test_ctrl_c_stops_a_long_prefill_at_once(slow_model):
    """SIGINT during a prefill that takes many seconds ends it within about a second."""
    path, n_tokens = slow_model
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(path), str(n_tokens)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "PREFILL"
        time.sleep(1.0)                  # well inside the prefill (measured 5-15 s at 1 thread)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().split()
        after = proc.stdout.readline().split()
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert line and line[0] == "INTERRUPTED", (line, err[-2000:])
    assert float(line[1]) - sent < 2.0, f"KeyboardInterrupt came {float(line[1]) - sent:.1f} s after SIGINT"
    # the prefill really stopped: the next generation does not wait for it to finish
    assert after[:2] == ["AFTER", "length"] and float(after[2]) - sent < 4.0, (after, err[-2000:])
    assert proc.returncode != 0 and "KeyboardInterrupt" in err

"""Solo runs (runtime/batch.py: decode_run; server/scheduler.py: Scheduler._solo_run): a lone
decoding request's steps run in the core several at a time. Each draw equals the step-by-step
path's (eval_batch with the same sampler), the session's token list follows its cache, a stop
token / max_steps / the time budget / the signal end a run, and in the scheduler a submit or a
cancel ends a run at once while a stop string's surplus steps are dropped from the cache."""
from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import lowbit  # noqa: E402
from lowbit import _core  # noqa: E402
from lowbit.errors import LowbitError  # noqa: E402
from lowbit.runtime.batch import decode_run, eval_batch  # noqa: E402
from lowbit.runtime.sampling import Sampler, SamplingParams  # noqa: E402
from _models import real_model_or_skip  # noqa: E402

MODEL = "smollm2-135m-instruct"
N_CTX = 512
HANG_S = 120


@pytest.fixture(scope="module")
def model():
    m = lowbit.load(real_model_or_skip(MODEL), n_ctx=N_CTX, n_threads=2)
    yield m
    m.close()


def prompt_ids(m):
    return m.chat_ids([{"role": "user", "content": "Tell me a story about a fox and a crow."}])


def prefill_and_first(session, sampler, ids):
    """The prompt evaluated in one item; the first token drawn by ``sampler``."""
    first = eval_batch([(session, ids)], samplers=[(sampler, ids)])[0]
    return list(ids) + [first]


def stepwise(session, sampler, history, n):
    """n decode steps one eval_batch each: the reference."""
    history = list(history)
    for _ in range(n):
        history.append(eval_batch([(session, [history[-1]])], samplers=[(sampler, history)])[0])
    return history


PARAMS = dict(temperature=0.9, top_k=40, seed=7, repetition_penalty=1.3, repeat_last_n=16,
              presence_penalty=0.4)


def test_decode_run_draws_what_steps_draw(model):
    """Sampled (seeded, with a penalty window the run must extend itself), in runs of 1, 5 and
    11 steps: the same tokens as one eval_batch a step, and both caches hold the same tokens."""
    ids = prompt_ids(model)
    a, b = model.session(), model.session()
    try:
        sa, sb = Sampler(SamplingParams(**PARAMS)), Sampler(SamplingParams(**PARAMS))
        ha, hb = prefill_and_first(a, sa, ids), prefill_and_first(b, sb, ids)
        assert ha == hb
        for steps in (1, 5, 11):
            got = decode_run(a, ha[-1], sa, ha, max_steps=steps, seconds=60)
            assert got.error is None and len(got.tokens) == steps
            ha += got.tokens
        hb = stepwise(b, sb, hb, 17)
        assert ha == hb
        assert a.cached_tokens == b.cached_tokens == ha[:-1]
        assert a.n_past == b.n_past == len(ha) - 1
    finally:
        a.close()
        b.close()


def test_decode_run_ends_on_stop_token_time_and_signal(model):
    ids = prompt_ids(model)
    greedy = SamplingParams(temperature=0)
    ref = model.session()
    try:
        want = stepwise(ref, Sampler(greedy), prefill_and_first(ref, Sampler(greedy), ids), 12)
    finally:
        ref.close()
    n0 = len(ids) + 1
    cases = [dict(max_steps=12, stop_ids=[want[n0 + 4]], seconds=60, expect=5),   # the stop token is drawn last
             dict(max_steps=12, seconds=0, expect=1),                             # no time: one step
             dict(max_steps=3, seconds=60, expect=3)]
    signal = _core.RunSignal()
    signal.set()
    cases.append(dict(max_steps=12, seconds=60, signal=signal, expect=1))         # set: ends after a step
    for case in cases:
        s = model.session()
        try:
            sampler = Sampler(greedy)
            history = prefill_and_first(s, sampler, ids)
            expect = case.pop("expect")
            got = decode_run(s, history[-1], sampler, history, **case)
            assert got.tokens == want[n0:n0 + expect], case
            assert s.cached_tokens == want[:n0 + expect - 1] and s.n_past == n0 + expect - 1
        finally:
            s.close()


def test_decode_run_errors(model):
    s = model.session()
    sampler = Sampler(SamplingParams(temperature=0))
    history = prefill_and_first(s, sampler, prompt_ids(model))
    with pytest.raises(ValueError, match="max_steps"):
        decode_run(s, history[-1], sampler, history, max_steps=0)
    with pytest.raises(ValueError, match="seconds"):
        decode_run(s, history[-1], sampler, history, max_steps=2, seconds=-1.0)
    with pytest.raises(ValueError, match="context overflow"):   # the run's draws are lost: its steps go
        decode_run(s, history[-1], sampler, history, max_steps=N_CTX, seconds=60)
    assert s.n_past == len(history) - 1 and s.cached_tokens == history[:-1]
    got = decode_run(s, history[-1], sampler, history, max_steps=2, seconds=60)   # and it goes on from there
    assert s.cached_tokens == history + got.tokens[:1]
    with pytest.raises(TypeError, match="Session"):
        decode_run(object(), 1, sampler, [], max_steps=1)
    s.close()
    with pytest.raises(LowbitError, match="closed"):
        decode_run(s, history[-1], sampler, history, max_steps=1)


# ---- the scheduler -----------------------------------------------------------------------------
class CountingBackend:
    """The real SessionBackend, counting solo runs and their tokens."""

    def __init__(self, model, parallel):
        from lowbit.server.scheduler import SessionBackend
        self.inner = SessionBackend(model, parallel)
        self.slots, self.n_ctx, self.n_batch = self.inner.slots, self.inner.n_ctx, self.inner.n_batch
        self.runs = []

    def step(self, items, samplers=None, before_compute=None):
        return self.inner.step(items, samplers, before_compute)

    def run(self, slot, *args, **kwargs):
        got = self.inner.run(slot, *args, **kwargs)
        self.runs.append(len(got.tokens))
        return got


def run_jobs(model, solo_run_s, specs, *, parallel=1, between=None, eot=True):
    """Runs GenRequests (prompt ids, max tokens, stop strings) on a Scheduler (``between``
    submits all but the first, else they go at once; ``eot``: the model's end tokens stop);
    returns the records in the order they finished (index, Generation), the backend, and the
    slots' cached tokens at the end."""
    from lowbit.server.scheduler import Done, Failed, GenRequest, Job, Scheduler
    backend = CountingBackend(model, parallel)
    sched = Scheduler(backend, max_queue=4, prefill_chunk=64, solo_run_s=solo_run_s).start()
    done = []
    stop_ids = sorted(model.tokenizer.eot_ids) if eot else []
    jobs = [Job(GenRequest(ids, SamplingParams(temperature=0), n, stop), model.tokenizer, stop_ids,
                lambda ev, i=i: isinstance(ev, (Done, Failed)) and done.append((i, ev)))
            for i, (ids, n, stop) in enumerate(specs)]
    deadline = time.monotonic() + HANG_S
    try:
        sched.submit(jobs[0])
        if between is not None:
            between(sched, jobs)
        else:
            for job in jobs[1:]:
                sched.submit(job)
        while len(done) < len(jobs):
            assert time.monotonic() < deadline, done
            time.sleep(0.005)
    finally:
        sched.stop()
    assert all(isinstance(ev, Done) for _, ev in done), done
    return [(i, ev.record) for i, ev in done], backend, [s.session.cached_tokens for s in backend.slots]


def test_solo_runs_equal_step_by_step_and_drop_surplus_steps(model):
    """A stop string in the middle of a run: the reply and what the cache holds afterwards are
    those of the step-by-step scheduler (solo runs off); without one, the same reply too."""
    ids = model.tokenize("One, two, three, four,")
    [(_, base)], _, _ = run_jobs(model, 0.0, [(ids, 40, ())], eot=False)
    mid = len(base.text) // 2
    stop = base.text[mid:mid + 4]                    # text in the middle of the reply
    assert base.generated_tokens == 40 and stop.strip(), base.text
    for spec in ([(ids, 40, ())], [(ids, 40, (stop,))]):
        [(_, want)], off, want_cache = run_jobs(model, 0.0, spec, eot=False)
        [(_, got)], on, got_cache = run_jobs(model, 60.0, spec, eot=False)
        assert not off.runs and on.runs and max(on.runs) > 1
        assert got.tokens == want.tokens and got.text == want.text, spec
        assert got.finish_reason == want.finish_reason
        assert got_cache == want_cache, spec
    assert want.finish_reason == "stop" and want.generated_tokens < base.generated_tokens


def test_solo_runs_stop_at_the_context_like_steps(model):
    """max_tokens past the context: the runs end where the cache is full, and the request ends
    ("context") with the tokens and cache of step by step."""
    ids = model.tokenize("One, two, three, four,")
    spec = [(ids, 2 * N_CTX, ())]
    [(_, want)], _, want_cache = run_jobs(model, 0.0, spec, eot=False)
    [(_, got)], on, got_cache = run_jobs(model, 60.0, spec, eot=False)
    assert want.finish_reason == got.finish_reason == "context"
    assert got.tokens == want.tokens and len(want.tokens) == N_CTX + 1 - len(ids)
    assert got_cache == want_cache and len(want_cache[0]) == N_CTX and len(on.runs) <= 3


def test_submit_and_cancel_end_a_solo_run(model):
    """With a 60 s budget a run would hold the slot to the end of its request: a request that
    comes while one runs is served beside it (it finishes first), and a cancel ends the run
    after its step."""
    ids = model.tokenize("The sea was calm that morning, and")
    other = model.tokenize("Three colours:")

    def inside_the_run(then):
        def between(sched, jobs):      # the prompt's step gave the first token; then one run of 300
            deadline = time.monotonic() + HANG_S
            while jobs[0].record.generated_tokens < 1:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            time.sleep(0.05)
            then(sched, jobs)
        return between

    order, _, _ = run_jobs(model, 60.0, [(ids, 300, ()), (other, 8, ())], parallel=2, eot=False,
                           between=inside_the_run(lambda sched, jobs: sched.submit(jobs[1])))
    assert [i for i, _ in order] == [1, 0] and order[1][1].generated_tokens == 300
    [(_, rec)], _, _ = run_jobs(model, 60.0, [(ids, 400, ())], eot=False,
                                between=inside_the_run(lambda sched, jobs: sched.cancel(jobs[0])))
    assert rec.finish_reason == "cancelled" and rec.generated_tokens < 400


class FailingOnceBackend(CountingBackend):
    """CountingBackend whose first call of ``method`` ("step" or "run") raises."""

    def __init__(self, model, parallel, method):
        super().__init__(model, parallel)
        self.method, self.failed = method, False

    def _maybe_fail(self, method):
        if method == self.method and not self.failed:
            self.failed = True
            raise RuntimeError("planted failure")

    def step(self, items, samplers=None, before_compute=None):
        self._maybe_fail("step")
        return super().step(items, samplers, before_compute)

    def run(self, slot, *args, **kwargs):
        self._maybe_fail("run")
        return super().run(slot, *args, **kwargs)


@pytest.mark.parametrize("method, solo_run_s", [("step", 0.0), ("run", 60.0)])
def test_a_failed_step_or_run_fails_its_request_and_the_server_goes_on(model, method, solo_run_s):
    """A forward step (step by step) or a solo run that raises: its request ends with a 500 naming
    the error and leaves its slot, and the next request is served."""
    from lowbit.server.scheduler import Done, Failed, GenRequest, Job, Scheduler
    backend = FailingOnceBackend(model, 1, method)
    sched = Scheduler(backend, max_queue=4, prefill_chunk=64, solo_run_s=solo_run_s).start()
    events = []
    ids = model.tokenize("One, two, three, four,")
    try:
        for i in range(2):
            sched.submit(Job(GenRequest(ids, SamplingParams(temperature=0), 8, ()), model.tokenizer, [],
                             lambda ev, i=i: isinstance(ev, (Done, Failed)) and events.append((i, ev))))
            deadline = time.monotonic() + HANG_S
            while len(events) <= i:
                assert time.monotonic() < deadline, events
                time.sleep(0.005)
    finally:
        sched.stop()
    (_, first), (_, second) = events
    assert backend.failed
    assert isinstance(first, Failed) and first.status == 500, first
    assert first.message == "the forward step failed: RuntimeError: planted failure"
    assert isinstance(second, Done) and second.record.generated_tokens == 8, second

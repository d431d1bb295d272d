"""lowbit.runtime.batch.eval_batch: one forward step over several sessions of one model.

Bounds (the kernel tiers of DESIGN.md applied to whole logits):
  - a row's matmul bits depend only on the pass's row-count class (cpu/matmul.h; the forward
    passes small_batches: 1..7 rows at the default high precision equal matvec bit for bit,
    >= 8 rows run the strip GEMM, the same bits in any such pass), so where batched and lone
    passes are of one class the logits are equal bit for bit (np.array_equal): decodes of up to
    7 sessions, prefills of >= 8 tokens;
  - passes of different classes (a 2-token prompt alone vs inside a 60-row batch): the strip
    GEMM is within tier 1 of the multi-row dots per matmul, which compounds over the layers to
    <= 2e-3 relative on the real models' logits (measured up to 3.3e-4), argmax equal;
  - tiny F32 models (no strip GEMM): the same tokens split into other passes, 1e-5 relative
    (tests/test_engine.py's n_batch bound).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import lowbit  # noqa: E402
from lowbit.errors import Cancelled, LowbitError  # noqa: E402
from lowbit.runtime.batch import eval_batch  # noqa: E402
import model_factory as mf  # noqa: E402
from _models import real_model_or_skip  # noqa: E402

REAL = ("smollm2-135m-instruct", "gemma3-270m")


def rel_err(a, b):
    """Max over rows of ||a - b|| / ||b||."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def ids(n, seed, n_vocab=200, lo=3):
    return np.random.default_rng(seed).integers(lo, n_vocab, size=n).astype(np.int32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def make(arch="llama", **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in made:
            folder = tmp_path_factory.mktemp("batch")
            spec = mf.default_spec(arch, "F32", **overrides)
            made[key] = lowbit.load(mf.write_tiny_model(folder / f"{arch}.gguf", spec), n_ctx=128, n_threads=2,
                                    n_batch=16)
        return made[key]
    yield make
    for m in made.values():
        m.close()


@pytest.fixture(scope="module", params=REAL)
def real(request):
    m = lowbit.load(real_model_or_skip(request.param), n_ctx=512, n_threads=2)
    yield m
    m.close()


# ---- batched logits vs each sequence alone ----------------------------------------------------

@pytest.mark.parametrize("arch", mf.ARCHITECTURES)
def test_mixed_batch_equals_each_sequence_alone_tiny(tiny, arch):
    m = tiny(arch, sliding_window=6) if arch == "gemma3" else tiny(arch)
    prefix = [ids(9, 1), ids(4, 2), ids(1, 3)]           # already cached per session
    new = [ids(1, 4), ids(40, 5), ids(3, 6)]             # a decode, a prompt over n_batch (16), a chunk
    sessions = [m.session(128, n_batch=16) for _ in prefix]
    alone = [m.session(128, n_batch=16) for _ in prefix]
    for s, a, p in zip(sessions, alone, prefix):
        s._engine.eval(p); s._cached_ids.extend(p.tolist())
        a._engine.eval(p)
    got = eval_batch(list(zip(sessions, new)))
    for s, a, p, x, g in zip(sessions, alone, prefix, new, got):
        assert g.shape == (m.n_vocab,) and g.dtype == np.float32
        assert rel_err(g, a._engine.eval(x)) <= 1e-5
        assert s.n_past == len(p) + len(x) and s.cached_tokens == p.tolist() + x.tolist()
    for s in sessions + alone:
        s.close()


def test_real_decode_batch_equals_each_decode_alone(real):
    prompts = [real.tokenize(t) for t in ("The capital of France is", "def add(a, b):", "Water boils at",
                                           "My favourite book is", "1, 2, 3, 4,", "Roses are red,",
                                           "Paris is a city in", "import numpy as np")]
    sessions = [real.session(128) for _ in prompts]
    singles = [real.session(128) for _ in prompts]
    for s, a, p in zip(sessions, singles, prompts):      # each prompt alone: same pass as below
        s._engine.eval(np.asarray(p)); s._cached_ids.extend(p)
        a._engine.eval(np.asarray(p))
    for step in range(3):                                # decode steps of seven, then of all eight
        toks = [[int(t)] for t in ids(len(prompts), 10 + step, n_vocab=real.n_vocab)]
        n = 7 if step < 2 else 8
        got = eval_batch(list(zip(sessions[:n], toks)))
        for a, t, g in zip(singles, toks, got):
            want = a._engine.eval(np.asarray(t))
            if n < 8:                                     # multi-row dots: matvec's bits
                assert np.array_equal(g, want)
            else:                                         # the strip GEMM: tier 1 per matmul
                assert rel_err(g, want) <= 2e-3 and np.argmax(g) == np.argmax(want)
    for s in sessions + singles:
        s.close()


def test_real_mixed_batch_within_tolerance_of_alone(real):
    prompts = [real.tokenize("Write a haiku about the sea, please. Make it calm and blue.")[:20],
               real.tokenize("Hi"), real.tokenize("The quick brown fox jumps over the lazy dog again and again")]
    cached = real.tokenize("Tell me a story about")
    decoder = real.session(128)
    decoder._engine.eval(np.asarray(cached)); decoder._cached_ids.extend(cached)
    fresh = [real.session(128) for _ in prompts]
    got = eval_batch([(decoder, [cached[-1]])] + list(zip(fresh, prompts)))
    lone = real.session(128)
    lone._engine.eval(np.asarray(cached))
    want = [lone._engine.eval(np.asarray([cached[-1]]))]
    for p in prompts:
        lone._engine.truncate(0)
        want.append(lone._engine.eval(np.asarray(p)))
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 2e-3 and np.argmax(g) == np.argmax(w)
    for s in fresh + [decoder, lone]:
        s.close()


# ---- greedy generation through eval_batch equals Model.generate --------------------------------

GEN_PROMPTS = ("Once upon a time, in a small village by the sea, there lived an old fisherman who every morning",
               "The following is a list of the largest cities in Europe, ordered by their population in 2020:",
               "In computer science, a hash table is a data structure that maps keys to values, and it",
               "Dear diary, today was a strange day because the weather changed three times before noon and")


def test_greedy_generations_through_eval_batch_equal_generate(real):
    n_new = 12
    prompts = [real.tokenize(p) for p in GEN_PROMPTS]
    assert all(len(p) >= 8 for p in prompts)            # their prefill is a strip pass alone too
    want = [real.generate(p, max_new_tokens=n_new, temperature=0).tokens for p in GEN_PROMPTS]
    sessions = [real.session(256) for _ in prompts]
    stop = set(real.tokenizer.eot_ids)
    outs = [[] for _ in prompts]
    logits = eval_batch(list(zip(sessions, prompts)))
    active = list(range(len(prompts)))
    while active:
        step = []
        for i in active:
            tok = int(np.argmax(logits[active.index(i)]))
            if tok in stop:
                continue
            outs[i].append(tok)
            if len(outs[i]) < n_new:
                step.append((i, tok))
        active = [i for i, _ in step]
        if step:
            logits = eval_batch([(sessions[i], [t]) for i, t in step])
    assert outs == want
    for s in sessions:
        s.close()


# ---- sampling in the core: the same tokens as sampling the returned logits ---------------------

SAMPLED_PARAMS = (dict(temperature=0),
                  dict(temperature=0.9, seed=11),
                  dict(temperature=1.2, top_k=0, top_p=0.9, min_p=0.0, seed=5),
                  dict(temperature=0.7, seed=3, repetition_penalty=1.3, presence_penalty=0.6,
                       frequency_penalty=0.4, logit_bias={13: 4.0, 42: -100}))


def test_sampling_in_the_core_equals_sampling_the_logits(real):
    """Two identical sets of sessions step side by side (same rows, same pass shapes: the same
    logits bit for bit); one draws in the core (samplers=), the other samples the returned
    rows with equal samplers: the same tokens at every step, greedy, seeded, penalized and
    biased alike. An item without a sampler still gets its logits row."""
    from lowbit.runtime.sampling import Sampler, SamplingParams
    prompts = [real.tokenize(p) for p in GEN_PROMPTS] + [real.tokenize("The capital of France is")] * 2
    params = [SamplingParams(**p) for p in SAMPLED_PARAMS]
    n = len(params)
    core_side, py_side = [real.session(128) for _ in range(n + 1)], [real.session(128) for _ in range(n + 1)]
    core_samplers, py_samplers = [Sampler(p) for p in params], [Sampler(p) for p in params]
    histories = [list(prompts[i % len(prompts)]) for i in range(n)]
    feed = [prompts[i % len(prompts)] for i in range(n)] + [prompts[0]]
    for _ in range(10):
        entries = [(core_samplers[i], histories[i]) for i in range(n)] + [None]
        drawn = eval_batch(list(zip(core_side, feed)), samplers=entries)
        rows = eval_batch(list(zip(py_side, feed)))
        want = [py_samplers[i].sample(rows[i], histories[i]) for i in range(n)]
        assert drawn[:n] == want and all(type(t) is int for t in drawn[:n])
        assert np.array_equal(drawn[n], rows[n])                    # the unsampled item: its row
        for i, t in enumerate(want):
            histories[i].append(t)
        feed = [[t] for t in want] + [[int(np.argmax(rows[n]))]]
    assert [s.cached_tokens for s in core_side] == [s.cached_tokens for s in py_side]
    assert [s.counts for s in (c.core for c in core_samplers)] == [s.counts for s in (c.core for c in py_samplers)]
    for s in core_side + py_side:
        s.close()


def test_a_failed_draw_fails_its_item_only(real):
    """A sampler that raises in the core (a bias id outside the row) gives that item its
    ValueError; the other item's token stands and both caches took the step."""
    from lowbit.runtime.sampling import Sampler, SamplingParams
    a, b = real.session(64), real.session(64)
    good = Sampler(SamplingParams(temperature=0))
    bad = Sampler(SamplingParams(temperature=0, logit_bias={real.n_vocab + 5: 1.0}))
    out = eval_batch([(a, [1, 2, 3]), (b, [4, 5])], samplers=[(good, [1, 2, 3]), (bad, [4, 5])])
    assert type(out[0]) is int and 0 <= out[0] < real.n_vocab
    assert isinstance(out[1], ValueError) and "logit_bias" in str(out[1])
    assert (a.n_past, b.n_past) == (3, 2) and b.cached_tokens == [4, 5]
    a.close(); b.close()


def test_before_compute_runs_once_after_the_checks(tiny):
    """eval_batch's before_compute hook: not called when the Python-side checks fail, called
    once right before the core's call otherwise (sessions locked, nothing evaluated yet; the
    core's own checks come after it)."""
    m = tiny("llama")
    a, b = m.session(16), m.session(16)
    seen = []
    with pytest.raises(TypeError, match="item 1"):
        eval_batch([(a, [1]), ("b", [2])], before_compute=lambda: seen.append("bad"))
    eval_batch([(a, [1, 2]), (b, [3])], before_compute=lambda: seen.append((a.n_past, b.n_past)))
    assert seen == [(0, 0)] and (a.n_past, b.n_past) == (2, 1)
    a.close(); b.close()


def test_sampler_arguments_are_checked(tiny):
    from lowbit.runtime.sampling import Sampler, SamplingParams
    m = tiny("llama")
    a, b = m.session(16), m.session(16)
    one = Sampler(SamplingParams(temperature=0))
    cases = [
        (dict(samplers=[(one, []), (one, [])]), ValueError, "items 0 and 1 share one sampler"),
        (dict(samplers=[(one, [])]), ValueError, "1 samplers for 2 items"),
        (dict(samplers=[(one, []), None], hidden=True), ValueError, "hidden"),
        (dict(samplers=[one, None]), TypeError, "item 0: a sampler entry"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            eval_batch([(a, [1]), (b, [2])], **kwargs)
        assert a.n_past == 0 and b.n_past == 0
    a.close(); b.close()


# ---- errors name the item; nothing runs when the check fails ------------------------------------

def test_errors_name_the_item(tiny):
    m = tiny("llama")
    a, b, other = m.session(16), m.session(16), tiny("qwen3").session(16)
    a._engine.eval(ids(4, 1)); a._cached_ids.extend(ids(4, 1).tolist())
    cases = [
        ([(a, [1]), (b, [m.n_vocab])], ValueError, "item 1: token id"),
        ([(a, [1]), (b, ids(17, 2))], ValueError, "item 1: context overflow"),
        ([(a, [1]), (b, [])], ValueError, "item 1: no tokens"),
        ([(a, [1]), (a, [2])], ValueError, "items 0 and 1 are the same session"),
        ([(a, [1]), (other, [2])], ValueError, "item 1: a session of another model"),
        ([(a, [1]), ("b", [2])], TypeError, "item 1"),
        ([(a, [1]), (b, [[1, 2]])], ValueError, "item 1"),
        ([(a, [1]), b], TypeError, "item 1"),
        ([], ValueError, "at least one item"),
    ]
    for items, exc, match in cases:
        with pytest.raises(exc, match=match):
            eval_batch(items)
        assert a.n_past == 4 and b.n_past == 0 and a.cached_tokens == ids(4, 1).tolist()
    b.cancel()
    with pytest.raises(Cancelled, match="item 1: cancelled"):
        eval_batch([(a, [1]), (b, [2])])
    assert a.n_past == 4 and b.n_past == 0
    assert len(eval_batch([(a, [1]), (b, [2])])) == 2       # reporting the cancel cleared it
    with b.generate("hello", max_new_tokens=4, temperature=0, stream=True) as stream:
        next(iter(stream), None)
        with pytest.raises(LowbitError, match="item 0: the session is busy"):
            eval_batch([(b, [3])])
    b.close()
    with pytest.raises(LowbitError, match="item 1: this Session is closed"):
        eval_batch([(a, [1]), (b, [2])])
    a.close(); other.close()


def test_cancel_during_a_batch_drops_that_pass(real):
    a, b = real.session(512), real.session(512)
    long_prompt = ids(400, 7, n_vocab=real.n_vocab)
    errors = []

    def run():
        try:
            eval_batch([(a, [1, 2, 3]), (b, long_prompt)])
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.05)
    b.cancel()
    t.join(timeout=120)
    assert not t.is_alive()
    if errors:                           # the pass was still running: dropped for every item
        assert isinstance(errors[0], Cancelled) and "item 1" in str(errors[0])
        assert (a.n_past, b.n_past) == (0, 0) and a.cached_tokens == [] and b.cached_tokens == []
    else:                                # it had finished: the cancel waits for b's next eval
        assert (a.n_past, b.n_past) == (3, 400)
        with pytest.raises(Cancelled):
            eval_batch([(b, [5])])
    assert len(eval_batch([(b, [5])])[0]) == real.n_vocab
    a.close(); b.close()


def test_batches_in_two_threads_equal_serial(tiny):
    m = tiny("qwen3")
    groups = [[m.session(64) for _ in range(3)] for _ in range(2)]
    tokens = [[ids(5 + i + 3 * g, g * 10 + i) for i in range(3)] for g in range(2)]
    results, errors = [None, None], []

    def run(g):
        try:
            for _ in range(20):
                for s in groups[g]:
                    s._engine.truncate(0); del s._cached_ids[:]
                results[g] = eval_batch(list(zip(groups[g], tokens[g])))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(g,)) for g in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for g in range(2):
        solo = m.session(64)
        for x, r in zip(tokens[g], results[g]):
            solo._engine.truncate(0)
            assert rel_err(r, solo._engine.eval(x)) <= 1e-5
        solo.close()

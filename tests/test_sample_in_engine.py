"""Decode steps sampled inside the engine (Engine.eval_sample, Model.generate's path without a
constraint) against the general path (each step's logits handed to the Python-side Sampler):
the same seed gives the same tokens for every sampling setting, on a tiny random model and on
SmolLM2; plus eval_sample's own contract (n_past, errors)."""
import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit.runtime.generate import Generation, stream_generate
from lowbit.runtime.sampling import Sampler, SamplingParams

import model_factory as mf
from _models import real_model_path

SETTINGS = {
    "greedy": dict(temperature=0.0),
    "default": dict(seed=3),
    "penalty": dict(seed=4, repetition_penalty=1.3, repeat_last_n=8),
    "penalty all": dict(seed=5, repetition_penalty=1.2, repeat_last_n=-1),
    "greedy penalty": dict(temperature=0.0, repetition_penalty=1.5),
    "top-k off": dict(seed=6, top_k=0),
    "top-p only": dict(seed=7, top_k=0, top_p=0.5, min_p=0.0),
    "min-p only": dict(seed=8, top_k=0, top_p=1.0, min_p=0.2),
    "hot": dict(seed=9, temperature=1.7, top_k=0, top_p=1.0, min_p=0.0),
    "presence frequency": dict(seed=10, presence_penalty=1.2, frequency_penalty=0.7),
    "bias": dict(seed=13, logit_bias={3: 4.0, 5: -100.0, 7: 1.5}),
    "greedy openai": dict(temperature=0.0, presence_penalty=0.4, frequency_penalty=1.1, logit_bias={2: 2.0}),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = mf.write_default_model(tmp_path_factory.mktemp("fast") / "tiny.gguf", "llama", "Q8_0")
    with lowbit.load(path, n_ctx=48, n_threads=1) as m:
        yield m


def both_paths(m, prompt, *, stream=False, **kw):
    """(tokens, record) of the in-engine path and of the general path, same arguments."""
    opts = dict(max_new_tokens=kw.pop("max_new_tokens", 40), context_shift=kw.pop("context_shift", False))
    params = SamplingParams(**{**dict(temperature=0.8), **kw}).validate()
    out = []
    for in_engine in (True, False):
        res = m._generate_ids(m.tokenize(prompt), stream=stream, stop=(), params=params, n_keep=None,
                              sample_in_engine=in_engine, **opts)
        if stream:
            for _ in res:
                pass
            res = res.result
        out.append(res)
    return out


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_same_seed_same_tokens_tiny_model(tiny, setting):
    fast, general = both_paths(tiny, "hello world", **SETTINGS[setting])
    assert fast.generated_tokens == general.generated_tokens > 1
    assert fast.tokens == general.tokens and fast.text == general.text
    assert fast.finish_reason == general.finish_reason


def test_same_tokens_through_context_shifts_and_streams(tiny):
    fast, general = both_paths(tiny, "a b c d e f g h", stream=True, max_new_tokens=120, context_shift=True,
                               seed=11, repetition_penalty=1.1)
    assert fast.context_shifts == general.context_shifts > 0
    assert fast.tokens == general.tokens and len(fast.tokens) == 120


def test_same_tokens_at_a_full_context(tiny):
    fast, general = both_paths(tiny, "x y z", max_new_tokens=200, seed=12)
    assert fast.finish_reason == general.finish_reason == "context"
    assert fast.tokens == general.tokens


@pytest.mark.parametrize("setting", ["greedy", "default", "penalty", "presence frequency", "greedy openai"])
def test_same_seed_same_tokens_smollm2(setting):
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    with lowbit.load(path, n_ctx=256, n_threads=2) as m:
        fast, general = both_paths(m, "The history of the city begins", max_new_tokens=48, **SETTINGS[setting])
    assert fast.tokens == general.tokens and fast.generated_tokens > 8


class CallCounter:
    """The real engine, counting which of its methods the loop calls."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = {"eval": 0, "eval_sample": 0}

    def __getattr__(self, name):
        attr = getattr(self.engine, name)
        if name in self.calls:
            def counted(*args, **kwargs):
                self.calls[name] += 1
                return attr(*args, **kwargs)
            return counted
        return attr


def test_decode_steps_sample_in_the_engine(tiny):
    engine = CallCounter(tiny._engine)
    engine.truncate(0)
    record = Generation()
    for _ in stream_generate(engine, tiny.tokenizer, [1, 2, 3], SamplingParams(seed=1), max_new_tokens=10,
                             stop=(), stop_ids=(), cached_ids=[], record=record):
        pass
    assert record.generated_tokens == 10
    assert engine.calls == {"eval": 1, "eval_sample": 9}     # the prompt, then one call per step
    tiny._cached_ids.clear()                                  # the model's cache was used behind its back
    tiny._engine.truncate(0)


def test_eval_sample_equals_eval_then_sample(tiny):
    params = SamplingParams(seed=21, repetition_penalty=1.2, repeat_last_n=4)
    a, b = tiny._engine, tiny._engine.new_session(48, 1, 16)
    s_a, s_b = Sampler(params), Sampler(params)
    a.truncate(0)
    history = [5, 6, 7]
    logits = b.eval(np.array(history, np.int32))
    a.eval(np.array(history, np.int32))
    tok = s_b.sample(logits, history)
    assert s_a.sample(logits, history) == tok                # both RNGs one draw in
    for _ in range(20):
        drawn = a.eval_sample(tok, s_a.core, history + [tok])
        history.append(tok)
        tok = s_b.sample(b.eval(np.array([tok], np.int32)), history)
        assert drawn == tok
    assert a.n_past == b.n_past == len(history)
    b.close()
    tiny._cached_ids.clear()
    a.truncate(0)


def test_eval_sample_errors(tmp_path):
    path = mf.write_default_model(tmp_path / "tiny.gguf", "llama", "F32")
    e = _core.Engine(path, 4, 1, 4, "f16")
    s = Sampler(SamplingParams(temperature=0.0)).core
    with pytest.raises(ValueError, match="out of range"):
        e.eval_sample(e.n_vocab, s, [])
    with pytest.raises(ValueError, match="out of range"):
        e.eval_sample(-1, s, [])
    assert e.n_past == 0
    for _ in range(4):
        e.eval_sample(1, s, [])
    with pytest.raises(ValueError, match="context overflow"):
        e.eval_sample(1, s, [])
    assert e.n_past == 4
    e.close()
    with pytest.raises(ValueError, match="closed"):
        e.eval_sample(1, s, [])


def test_model_and_llama_take_the_openai_fields(tmp_path):
    """presence_penalty / frequency_penalty / logit_bias through Model.generate and lowbit.Llama
    (llama-cpp-python's names): the same greedy tokens both ways, a +100 bias forces its token,
    and bad values are ValueErrors naming the field."""
    path = mf.write_default_model(tmp_path / "tiny.gguf", "llama", "Q8_0")
    kw = dict(presence_penalty=0.9, frequency_penalty=0.6, logit_bias={3: 2.5, 4: -1.0})
    with lowbit.load(path, n_ctx=48, n_threads=1) as m:
        plain = m.generate("hello world", temperature=0, max_new_tokens=12)
        want = m.generate("hello world", temperature=0, max_new_tokens=12, **kw)
        assert want.tokens != plain.tokens and want.generated_tokens == 12
        forced_id = next(t for t in range(5, m.n_vocab) if t not in m.tokenizer.eot_ids)
        with pytest.raises(ValueError, match=f"logit_bias: token id {m.n_vocab} is out of range"):
            m.generate("hi", logit_bias={m.n_vocab: 1.0})
        with pytest.raises(ValueError, match=r"frequency_penalty must be in \[-2, 2\], got 2.5"):
            m.generate("hi", frequency_penalty=2.5)
    with lowbit.Llama(model_path=path, n_ctx=48, n_threads=1, verbose=False) as llm:
        out = llm.create_completion("hello world", temperature=0, max_tokens=12, **kw)
        assert out["choices"][0]["text"] == want.text
        forced = llm.create_completion("hello world", max_tokens=4, seed=3, logit_bias={forced_id: 100.0})
        assert forced["choices"][0]["text"] == llm.detokenize([forced_id] * 4).decode("utf-8", "replace")
        with pytest.raises(ValueError, match="presence_penalty"):
            llm.create_completion("hi", presence_penalty=-2.1)

"""Sampling filters on hand-made distributions; seeded reproducibility."""
import numpy as np
import pytest

from lowbit.runtime.sampling import (Sampler, SamplingParams, check_bias_ids, greedy, logit_bias, min_p,
                                     presence_frequency_penalty, repetition_penalty, softmax, top_k, top_p)


def logits_of(probs):
    return np.log(np.asarray(probs, dtype=np.float64))


def kept(x):
    return set(np.flatnonzero(np.isfinite(x)).tolist())


def test_softmax_and_greedy():
    p = np.array([0.1, 0.6, 0.3])
    assert np.allclose(softmax(logits_of(p)), p)
    assert greedy(logits_of(p)) == 1


def test_top_k_keeps_the_k_largest():
    x = np.array([0.1, 3.0, -1.0, 2.0, 2.5])
    assert kept(top_k(x, 2)) == {1, 4}
    assert kept(top_k(x, 0)) == set(range(5))
    assert np.array_equal(top_k(x, 2)[[1, 4]], x[[1, 4]])


def test_top_p_smallest_set_reaching_mass():
    x = logits_of([0.05, 0.5, 0.15, 0.3])
    assert kept(top_p(x, 0.75)) == {1, 3}
    assert kept(top_p(x, 0.81)) == {1, 3, 2}
    assert kept(top_p(x, 0.1)) == {1}
    assert kept(top_p(x, 1.0)) == {0, 1, 2, 3}


def test_min_p_relative_threshold():
    x = logits_of([0.5, 0.3, 0.04, 0.16])
    assert kept(min_p(x, 0.1)) == {0, 1, 3}        # threshold 0.05
    assert kept(min_p(x, 0.5)) == {0, 1}           # threshold 0.25
    assert kept(min_p(x, 0.0)) == {0, 1, 2, 3}


def test_repetition_penalty_llama_cpp_rule():
    x = np.array([2.0, -2.0, 1.0, 4.0])
    y = repetition_penalty(x, [0, 1, 1, 9, -3], 2.0)     # duplicates and out-of-range ids ignored
    assert np.array_equal(y, [1.0, -4.0, 1.0, 4.0])
    assert np.array_equal(x, [2.0, -2.0, 1.0, 4.0])      # input untouched


def test_penalty_window_only_sees_recent_tokens():
    x = np.array([5.0, 5.0, 5.0])
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=10.0, repeat_last_n=1))
    y = s.filtered_logits(x, history=[0, 1])
    assert np.array_equal(y, [5.0, 0.5, 5.0])


def test_seed_reproducible_and_seeds_differ():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500) * 2
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a = [Sampler(params).sample(x) for _ in range(1)]
    s1, s2 = Sampler(params), Sampler(params)
    seq1 = [s1.sample(x) for _ in range(50)]
    seq2 = [s2.sample(x) for _ in range(50)]
    assert seq1 == seq2 and a[0] == seq1[0]
    s3 = Sampler(params.with_(seed=99))
    assert [s3.sample(x) for _ in range(50)] != seq1


def test_draws_follow_the_distribution():
    p = np.array([0.5, 0.25, 0.15, 0.1])
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7))
    n = 20000
    counts = np.bincount([s.sample(logits_of(p)) for _ in range(n)], minlength=4)
    assert np.all(np.abs(counts / n - p) < 0.015), counts / n


def test_temperature_zero_is_greedy_and_filters_apply():
    x = logits_of([0.2, 0.45, 0.35])
    assert Sampler(SamplingParams(temperature=0)).sample(x) == 1
    s = Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0))
    assert {s.sample(x) for _ in range(30)} == {1}
    cold = Sampler(SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0))
    assert np.allclose(softmax(cold.filtered_logits(x)), softmax(2 * x))


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(min_p=2.0),
                                 dict(repetition_penalty=0.0), dict(temperature=float("nan"))])
def test_bad_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()


@pytest.mark.parametrize("bad,message", [
    (dict(top_p=2.0), "top_p must be in (0, 1], got 2.0"), (dict(min_p=-0.5), "min_p must be in [0, 1], got -0.5"),
    (dict(top_k=-1), "top_k must be >= 0, got -1"), (dict(repeat_last_n=-2), "repeat_last_n must be >= -1, got -2"),
    (dict(repetition_penalty=0), "repetition_penalty must be in (0, inf), got 0"),
    (dict(temperature=float("inf")), "temperature must be a finite number, got inf"),
    (dict(seed=-3), "seed must be >= -1, got -3")])
def test_bad_params_message_names_only_the_field(bad, message):
    with pytest.raises(ValueError) as info:
        SamplingParams(**bad).validate()
    assert str(info.value) == message


@pytest.mark.parametrize("bad", [dict(top_k=2.5), dict(top_p="0.9"), dict(seed=True), dict(temperature=None),
                                 dict(repeat_last_n=1.0)])
def test_wrong_types_are_type_errors(bad):
    with pytest.raises(TypeError, match=next(iter(bad))):
        SamplingParams(**bad).validate()


def test_bad_logits():
    with pytest.raises(ValueError, match="1-D"):
        softmax(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no finite"):
        softmax(np.full(3, -np.inf))


def test_fast_path_draws_the_same_distribution_as_the_filter_chain():
    rng = np.random.default_rng(11)
    x = rng.normal(size=3000) * 3
    params = SamplingParams(temperature=0.7, top_k=25, top_p=0.9, min_p=0.05, repetition_penalty=1.3, seed=5)
    history = list(rng.integers(0, 3000, size=40))
    s = Sampler(params)
    want = softmax(s.filtered_logits(x, history))
    n = 30000
    counts = np.bincount([s.sample(x, history) for _ in range(n)], minlength=x.size) / n
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(want > 0))
    assert np.abs(counts - want).max() < 0.012


# ---------------------------------------------------------------------------------------
# The C++ sampler against numpy: the chain written with numpy's own calls (the reference the
# Python sampler was before it moved to C++), drawing with numpy's default_rng(seed).choice.
# ---------------------------------------------------------------------------------------
def numpy_reference_draws(x, history, params, n_draws):
    """Each draw is counted as generated (the presence / frequency penalties' counts)."""
    rng = np.random.default_rng(params.seed)
    out = []
    counts = np.zeros(np.asarray(x).size, dtype=np.int64)
    for _ in range(n_draws):
        y = np.asarray(x)
        if params.logit_bias:
            y = y.astype(np.float64)
            for t, b in params.logit_bias.items():
                y[int(t)] += b
        if params.repetition_penalty != 1.0 and history:
            window = history[-params.repeat_last_n:] if params.repeat_last_n > 0 else history
            y = y.astype(np.float64)
            ids = np.unique(np.asarray(window, dtype=np.int64))
            y[ids] = np.where(y[ids] > 0, y[ids] / params.repetition_penalty, y[ids] * params.repetition_penalty)
        if params.presence_penalty or params.frequency_penalty:
            y = y - (counts * params.frequency_penalty + (counts > 0) * params.presence_penalty)
        k = params.top_k if 0 < params.top_k < y.size else y.size
        cand = np.argsort(-y.astype(np.float64), kind="stable")[:k]
        vals = y[cand].astype(np.float64)
        if params.top_p < 1.0:
            e = np.exp(vals - vals.max())
            cum = np.cumsum(e / e.sum())
            vals[max(int(np.searchsorted(cum, params.top_p) + 1), 1):] = -np.inf
        if params.min_p > 0.0:
            vals[vals < vals.max() + np.log(params.min_p)] = -np.inf
        vals = vals / params.temperature
        e = np.exp(vals - vals.max())
        out.append(int(cand[rng.choice(e.size, p=e / e.sum())]))
        counts[out[-1]] += 1
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    SamplingParams(seed=1),                                                       # the defaults
    SamplingParams(temperature=1.3, top_k=0, top_p=0.9, min_p=0.0, seed=7),
    SamplingParams(temperature=0.6, top_k=100, top_p=1.0, min_p=0.1, repetition_penalty=1.3,
                   repeat_last_n=16, seed=2**40 + 3),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=2**70 + 11),
    SamplingParams(temperature=0.9, top_k=60, top_p=0.95, min_p=0.0, presence_penalty=1.5,
                   frequency_penalty=0.8, seed=21),
    SamplingParams(temperature=1.1, top_k=0, top_p=0.9, min_p=0.01, repetition_penalty=1.2, presence_penalty=-0.5,
                   frequency_penalty=2.0, logit_bias={7: 100.0, 12: -100.0, 4999: 3.5, 2: -1.25}, seed=22),
])
def test_seeded_tokens_equal_numpy_default_rng(params, dtype):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=5000) * 2.5).astype(dtype)
    history = [int(t) for t in rng.integers(0, 5000, size=30)] + [int(np.argmax(x))]
    want = numpy_reference_draws(x, history, params, 200)
    s = Sampler(params)
    assert [s.sample(x, history) for _ in range(200)] == want


def test_filtered_logits_support_is_the_reference_math():
    rng = np.random.default_rng(5)
    x = rng.normal(size=2000) * 2
    p = SamplingParams(temperature=0.5, top_k=300, top_p=0.8, min_p=0.02)
    order = np.argsort(-x, kind="stable")
    probs = softmax(np.where(np.isin(np.arange(x.size), order[:300]), x, -np.inf))
    cum = np.cumsum(probs[order])
    support = order[:int(np.searchsorted(cum, 0.8)) + 1]
    support = support[x[support] >= x.max() + np.log(0.02)]
    got = Sampler(p).filtered_logits(x)
    assert kept(got) == set(support.tolist())
    assert np.array_equal(got[support], x[support] / 0.5)


def test_ties_go_to_the_lower_index():
    x = np.array([1.0, 3.0, 2.0, 3.0, 3.0, 0.5])
    assert kept(top_k(x, 2)) == {1, 3}
    assert kept(top_p(np.zeros(4), 0.5)) == {0, 1}                  # equal probabilities: first two
    assert kept(min_p(np.array([-np.inf, -np.inf]), 0.5)) == set()    # min_keep keeps index 0 (at -inf)
    assert top_k(np.full(5, -np.inf), 2).tolist() == [-np.inf] * 5
    s = Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0))
    assert {s.sample(x) for _ in range(20)} == {1}
    assert Sampler(SamplingParams(temperature=0)).sample(x) == 1


def test_min_keep_and_filter_edges():
    x = logits_of([0.6, 0.3, 0.1])
    assert kept(top_p(x, 0.01, min_keep=2)) == {0, 1}
    assert kept(min_p(x, 1.0, min_keep=2)) == {0, 1}
    assert kept(top_k(x, 3)) == {0, 1, 2} and kept(top_k(x, 7)) == {0, 1, 2}


def test_float32_rows_are_read_in_place_and_never_written():
    x = np.random.default_rng(2).normal(size=1000).astype(np.float32)
    before = x.copy()
    s = Sampler(SamplingParams(repetition_penalty=1.5, seed=3))
    for _ in range(5):
        s.sample(x, [1, 2, 3])
    s.filtered_logits(x, [1, 2, 3])
    assert np.array_equal(x, before)
    # a strided view is sampled as its values (copied to a contiguous row)
    y = np.random.default_rng(3).normal(size=2000)
    assert Sampler(SamplingParams(temperature=0)).sample(y[::2]) == int(np.argmax(y[::2]))


def test_chi_square_on_a_known_distribution():
    p = np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    n = 40000
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=123))
    counts = np.bincount([s.sample(logits_of(p)) for _ in range(n)], minlength=5)
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert chi2 < 18.47, (chi2, counts)     # chi-square 0.999 quantile at 4 degrees of freedom
    # temperature 2 flattens the same logits to softmax(log p / 2)
    q = softmax(logits_of(p) / 2)
    s = Sampler(SamplingParams(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, seed=321))
    counts = np.bincount([s.sample(logits_of(p)) for _ in range(n)], minlength=5)
    chi2 = float((((counts - n * q) ** 2) / (n * q)).sum())
    assert chi2 < 18.47, (chi2, counts)


def test_bad_rows_are_clear_errors():
    s = Sampler(SamplingParams(seed=1))
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        Sampler(SamplingParams(temperature=0)).sample(np.array([np.nan, 1.0], dtype=np.float32))
    with pytest.raises(ValueError, match="no finite"):
        s.sample(np.full(4, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        s.sample(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="1-D"):
        s.sample(np.zeros(0, dtype=np.float32))
    # a masked row (allowed tokens only) samples among the survivors
    x = np.full(50, -np.inf, dtype=np.float32)
    x[[7, 9]] = [1.0, 1.5]
    assert {s.sample(x) for _ in range(40)} == {7, 9}


def test_unseeded_samplers_differ():
    x = np.zeros(1000)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=None)
    a, b = Sampler(params), Sampler(params)
    assert [a.sample(x) for _ in range(20)] != [b.sample(x) for _ in range(20)]


# ---------------------------------------------------------------------------------------
# presence / frequency penalties and logit bias
# ---------------------------------------------------------------------------------------
def test_logit_bias_adds_to_the_named_logits():
    x = np.array([1.0, -2.0, 0.5, 3.0])
    assert np.array_equal(logit_bias(x, {1: 5.0, "3": -100}), [1.0, 3.0, 0.5, -97.0])
    assert np.array_equal(x, [1.0, -2.0, 0.5, 3.0])                  # input untouched
    with pytest.raises(ValueError, match="logit_bias: token id 4 is out of range for 4 logits"):
        logit_bias(x, {4: 1.0})


def test_presence_frequency_openai_rule():
    x = np.array([2.0, -2.0, 1.0, 4.0, 0.0])
    y = presence_frequency_penalty(x, [0, 1, 1, 1, 3, 9], presence=0.5, frequency=0.25)   # 9: outside
    assert np.array_equal(y, [2.0 - 0.75, -2.0 - 1.25, 1.0, 4.0 - 0.75, 0.0])
    assert np.array_equal(presence_frequency_penalty(x, [2, 2], presence=-1.0, frequency=0.0), [2, -2, 2, 4, 0])


def test_penalties_count_the_generated_tokens_not_the_history():
    """The counts are the sampler's draws (and accept()ed tokens); the history's prompt is only
    the repetition penalty's window."""
    x = np.array([5.0, 4.9, 4.8])
    s = Sampler(SamplingParams(temperature=0, presence_penalty=2.0, frequency_penalty=0.0))
    assert s.sample(x, history=[0, 0, 0]) == 0                       # prompt tokens: no penalty
    assert s.sample(x, history=[0]) == 1                             # 0 was generated: 5 - 2 < 4.9
    assert s.sample(x, history=[0]) == 2
    s.accept(2)
    assert s.core.counts == {0: 1, 1: 1, 2: 2}
    assert np.array_equal(s.filtered_logits(x), x - 2.0)
    f = Sampler(SamplingParams(temperature=0, frequency_penalty=0.06))
    assert [f.sample(x) for _ in range(4)] == [0, 0, 1, 0]           # 5 - 0.06 > 4.9 > 5 - 0.12 > 4.9 - 0.06


def test_bias_then_repetition_then_presence_order():
    """bias -> repetition penalty (on the biased value) -> presence / frequency (llama.cpp's and
    vLLM's order)."""
    x = np.array([1.0, 2.0, 3.0])
    s = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25,
                               logit_bias={0: 3.0, 2: -4.0}))
    s.accept(0)
    s.accept(0)
    got = s.filtered_logits(x, history=[0, 2])
    assert np.array_equal(got, [(1.0 + 3.0) / 2.0 - 0.5 - 0.5, 2.0, (3.0 - 4.0) * 2.0])


@pytest.mark.parametrize("bad,message", [
    (dict(presence_penalty=2.5), "presence_penalty must be in [-2, 2], got 2.5"),
    (dict(frequency_penalty=-3), "frequency_penalty must be in [-2, 2], got -3"),
    (dict(logit_bias={5: 101}), "logit_bias[5] must be in [-100, 100], got 101"),
    (dict(logit_bias={"x": 1}), "logit_bias keys must be token ids (integers >= 0), got 'x'"),
    (dict(logit_bias={-1: 1}), "logit_bias keys must be token ids (integers >= 0), got -1"),
    (dict(logit_bias={1: float("nan")}), "logit_bias[1] must be a finite number, got nan")])
def test_bad_penalty_and_bias_messages(bad, message):
    with pytest.raises(ValueError) as info:
        SamplingParams(**bad).validate()
    assert str(info.value) == message


def test_bias_of_wrong_types_are_type_errors():
    with pytest.raises(TypeError, match="logit_bias must be a mapping"):
        SamplingParams(logit_bias=[(1, 2.0)]).validate()
    with pytest.raises(TypeError, match="logit_bias"):
        SamplingParams(logit_bias={1: "2"}).validate()
    with pytest.raises(TypeError, match="presence_penalty"):
        SamplingParams(presence_penalty=None).validate()


def test_bias_ids_are_checked_against_the_vocabulary():
    check_bias_ids(SamplingParams(logit_bias={9: 1.0}), 10)
    with pytest.raises(ValueError, match="logit_bias: token id 10 is out of range for a vocabulary of 10"):
        check_bias_ids(SamplingParams(logit_bias={"10": 1.0}), 10)


def test_restricted_row_maps_ids_to_tokens():
    """sample(row, ids=...) on a grammar's allowed tokens: bias and counts by token id, a token
    id comes back and is counted."""
    x = np.array([1.0, 2.0, 3.0])                 # tokens 10, 20, 30
    ids = np.array([10, 20, 30])
    s = Sampler(SamplingParams(temperature=0, presence_penalty=2.0, logit_bias={20: 1.5, 99: 50.0}))
    assert s.sample(x, [], ids=ids) == 20         # 2 + 1.5 beats 3; the bias of 99 (not in the row) is skipped
    assert s.sample(x, [], ids=ids) == 30         # 20 generated once: 3.5 - 2 < 3
    assert s.core.counts == {20: 1, 30: 1}
    with pytest.raises(ValueError, match="ascending"):
        s.sample(x, [], ids=np.array([10, 30, 20]))
    with pytest.raises(ValueError, match="one token id per logit"):
        s.sample(x, [], ids=np.array([10, 20]))

"""Perplexity / KL divergence: llama-perplexity's chunking and scoring against a direct
computation on a stand-in model, KLD of a model against itself = 0, and the real models
within 1% of llama.cpp's perplexity (needs the engine)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from lowbit import _core
from lowbit.quant.evaluate import make_chunks, perplexity

from _models import real_model_path

ORACLES = "/work/shared/oracles"


class FakeTokenizer:
    def __init__(self, add_bos=True):
        self.bos_id = 1 if add_bos else None
        self.add_bos = add_bos

    def encode(self, text, add_special=True, parse_special=False):
        ids = [2 + (ord(c) % 60) for c in text]
        return ([self.bos_id] if add_special and self.add_bos else []) + ids


class FakeModel:
    """Causal stand-in: logits of position t depend on tokens[t] and tokens[t-1]."""

    def __init__(self, seed, n_vocab=64, add_bos=True, noise=0.0):
        rng = np.random.default_rng(seed)
        self.table = rng.standard_normal((n_vocab, n_vocab)) * 2
        self.prev = rng.standard_normal((n_vocab, n_vocab)) * 0.5
        if noise:
            self.table = self.table + rng.standard_normal(self.table.shape) * noise
        self.tokenizer = FakeTokenizer(add_bos)
        self.calls = []

    def logits(self, ids):
        ids = np.asarray(ids)
        self.calls.append(ids.copy())
        prev = np.concatenate([[0], ids[:-1]])
        return (self.table[ids] + self.prev[prev]).astype(np.float32)


def text_of(n_chars, seed=0):
    rng = np.random.default_rng(seed)
    return "".join(chr(65 + int(c)) for c in rng.integers(0, 60, n_chars))


def direct_ppl(model, tokens, n_ctx, n_chunks, bos):
    nll = []
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        logits = model.logits(chunk).astype(np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            row = logits[j]
            lse = row.max() + math.log(np.exp(row - row.max()).sum())
            nll.append(lse - row[chunk[j + 1]])
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    return ppl, ppl * math.sqrt((np.mean(nll ** 2) - nll.mean() ** 2) / (len(nll) - 1)), len(nll)


@pytest.mark.parametrize("add_bos", [True, False])
def test_matches_direct_definition(add_bos):
    text = text_of(1000, seed=1)
    m = FakeModel(3, add_bos=add_bos)
    r = perplexity(m, text, n_ctx=64, n_chunks=5)
    tokens = m.tokenizer.encode(text, add_special=False)
    ppl, err, n = direct_ppl(FakeModel(3, add_bos=add_bos), tokens, 64, 5, 1 if add_bos else None)
    assert r.n_scored == n == 5 * 31 and r.n_chunks == 5
    assert r.ppl == pytest.approx(ppl, rel=1e-9) and r.ppl_err == pytest.approx(err, rel=1e-6)
    assert all(c[0] == (1 if add_bos else tokens[i * 64]) for i, c in enumerate(m.calls))
    assert r.kl is None


def test_chunks_all_and_too_short():
    chunks = make_chunks(list(range(10, 110)), 32, None, bos=1)
    assert len(chunks) == 3 and [c[0] for c in chunks] == [1, 1, 1] and chunks[1][1] == 43
    with pytest.raises(ValueError, match="fewer than one chunk"):
        make_chunks([1, 2, 3], 32, None, bos=1)


def test_kld_against_itself_is_zero_and_against_other_positive():
    text = text_of(800, seed=2)
    r = perplexity(FakeModel(5), text, n_ctx=64, n_chunks=4, kl_base=FakeModel(5))
    assert r.kl.mean == 0.0 and r.kl.max == 0.0 and r.kl.rms_dp == 0.0
    assert r.kl.same_top1_pct == 100.0 and r.kl.base_ppl == pytest.approx(r.ppl, rel=1e-12)
    noisy = perplexity(FakeModel(5, noise=0.3), text, n_ctx=64, n_chunks=4, kl_base=FakeModel(5))
    k = noisy.kl
    assert 0 < k.median < k.p99 <= k.max and k.mean > 0 and k.mean_err > 0
    assert 0 < k.rms_dp < 1 and 0 < k.same_top1_pct < 100
    assert k.base_ppl == pytest.approx(r.ppl, rel=1e-12)


def needs_engine():
    if not hasattr(_core, "Engine"):
        pytest.skip("this build has no inference engine (lowbit._core.Engine)")


def pydoc_corpus():
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_real_model_perplexity_within_1pct_of_llama_cpp(name):
    needs_engine()
    path = real_model_path(name)
    if path is None:
        pytest.skip(f"{name} not available")
    with open(os.path.join(ORACLES, f"{name}.json")) as f:
        oracle = json.load(f)["perplexity"]
    r = perplexity(path, pydoc_corpus(), n_ctx=oracle["n_ctx"], n_chunks=oracle["chunks"], n_threads=2)
    assert r.n_scored == oracle["scored_tokens"]
    assert abs(r.ppl / oracle["ppl"] - 1) < 0.01, (r.ppl, oracle["ppl"])


def test_real_model_kld_against_itself_is_zero():
    needs_engine()
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct not available")
    r = perplexity(path, pydoc_corpus(), n_ctx=256, n_chunks=1, kl_base=path, n_threads=2)
    assert r.kl.mean == 0.0 and r.kl.max == 0.0 and r.kl.same_top1_pct == 100.0
    assert r.kl.base_ppl == r.ppl


def test_bootstrap_is_paired_and_reproducible():
    from lowbit.quant.evaluate import bootstrap_means, interval
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 2.0, 8)
    b = 2 * a                                   # the same chunks, exactly twice as bad
    m = bootstrap_means([a, b])
    assert m.shape[1] == 2 and np.allclose(m[:, 1] / m[:, 0], 2.0)   # paired: ratio 2 in every resample
    np.testing.assert_array_equal(m, bootstrap_means([a, b]))
    lo, hi = interval(m[:, 0])
    assert lo < a.mean() < hi and lo >= a.min() and hi <= a.max()
    with pytest.raises(ValueError, match="at least one chunk"):
        bootstrap_means([[]])

"""The real models on the CUDA device against the CPU (issue 19's end-to-end check).

Skips without a CUDA device or without the model file ($LOWBIT_TEST_MODELS, else the lowbit cache;
on a lent GPU machine bench/cuda_real_check.sh assembles SmolLM2 from the parts that travelled with
the calls). Per model, for every layer on the device and for half of them (layer offload: the
first half on the CPU):
- greedy: the first 32 tokens of each oracle prompt equal the CPU engine's (act_precision "high",
  the CPU's most precise path);
- perplexity chunks of the CPython docs (n_ctx 512, 2 chunks): the same top-1 token at every
  scored position and mean KL(CPU-high || GPU) <= 1e-3.
The GPU rounds decode activations to 8 bits per 32 (q8, as llama.cpp's mmvq) and prefill
activations to f16; the bounds are the issue's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lowbit import _core
from _models import real_model_path

status = _core.cuda_status()
pytestmark = pytest.mark.skipif(status["device_count"] == 0, reason=f"CUDA: {status['message']}")

ORACLES = Path(os.environ.get("LOWBIT_ORACLES", Path(__file__).resolve().parents[2] / "shared" / "oracles"))
MODELS = ("smollm2-135m-instruct", "gemma3-270m")


def _model_or_skip(name):
    path = real_model_path(name)
    if path is None:
        pytest.skip(f"{name} not available")
    return path


def _prompts(name):
    f = ORACLES / f"{name}.json"
    if f.is_file():
        return [g["prompt"] for g in json.loads(f.read_text())["greedy"]]
    return ["Once upon a time, in a small village by the sea,", "The three primary colors are"]


def _docs_text():
    from pydoc_data.topics import topics as t
    return "\n\n".join(t[k] for k in sorted(t))


@pytest.fixture(scope="module", params=MODELS)
def models(request):
    import lowbit

    path = _model_or_skip(request.param)
    with lowbit.load(path, n_ctx=512, act_precision="high") as cpu:
        yield request.param, path, cpu


def _on_gpu(path, cpu, half):
    """The model on the device: every layer, or the last half (the first half on the CPU)."""
    import lowbit

    ngl = int(cpu._engine.n_layers) // 2 if half else -1
    gpu = lowbit.load(path, n_ctx=512, device="cuda", n_gpu_layers=ngl)
    assert gpu.device == "cuda"
    return gpu, ngl


@pytest.mark.parametrize("half", [False, True], ids=["all-layers", "half-offloaded"])
def test_greedy_tokens_equal_the_cpu(models, half):
    name, path, cpu = models
    gpu, ngl = _on_gpu(path, cpu, half)
    with gpu:
        for prompt in _prompts(name):
            want = cpu.generate(prompt, max_new_tokens=32, temperature=0).tokens
            got = gpu.generate(prompt, max_new_tokens=32, temperature=0).tokens
            assert got == want, (name, ngl, prompt, want, got)


@pytest.mark.parametrize("half", [False, True], ids=["all-layers", "half-offloaded"])
def test_perplexity_top1_and_kl_against_the_cpu(models, half):
    from lowbit.quant.evaluate import format_perplexity, perplexity

    name, path, cpu = models
    gpu, ngl = _on_gpu(path, cpu, half)
    with gpu:
        r = perplexity(gpu, _docs_text(), n_ctx=512, n_chunks=2, kl_base=cpu)
    print(f"\n{name} n_gpu_layers={ngl}\n{format_perplexity(r, name)}")
    assert r.kl.same_top1_pct == 100.0, format_perplexity(r, name)
    assert r.kl.mean <= 1e-3, format_perplexity(r, name)

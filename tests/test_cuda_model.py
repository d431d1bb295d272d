"""The model on the CUDA device (csrc/cuda/device_model.*) and its memory plan (device_plan.*).

The plan is host code: its tests run in every build. They check it against the GGUF file (every
matrix the device pass reads, at its file size plus the 16-byte pad, 256-byte aligned, nothing
overlapping), the KV formula, and the fit check: InsufficientMemory (a MemoryError) names the
largest n_ctx that fits, and that n_ctx does fit while one more does not.

The device tests (skip without a CUDA device) run synthetic models of every dense architecture
on the GPU and the CPU engine on the same tokens: prefill (pieces of n_batch rows, several logits
chunks) and decode logits within DESIGN's GPU tolerance for q8 / f16 paths, greedy tokens equal,
sliding windows past their width, cancel between layers, truncate, and a plan too big for the
device refused before anything is allocated, the device still usable after.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from lowbit import _core  # noqa: E402
from lowbit.errors import Cancelled, CudaError, InsufficientMemory, ModelError  # noqa: E402

import model_factory as mf  # noqa: E402

status = _core.cuda_status()
needs_device = pytest.mark.skipif(status["device_count"] == 0, reason=f"CUDA: {status['message']}")

DENSE = ("llama", "qwen2", "qwen3", "gemma3", "phi3", "gemma2", "granite", "olmo2", "smollm3")


def engine_for(tmp_path, arch, weight_type="Q8_0", n_ctx=64, n_batch=64, precision="auto", **overrides):
    path = mf.write_default_model(tmp_path / f"{arch}-{weight_type}.gguf", arch, weight_type, **overrides)
    return path, _core.Engine(str(path), n_ctx, 2, n_batch, "f16", precision)


def file_tensor_bytes(path):
    return {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}


# ---- the plan: host code, every build -----------------------------------------------------------

@pytest.mark.parametrize("arch,weight_type", [("llama", "Q8_0"), ("gemma3", "Q4_K"), ("phi3", "Q4_0"),
                                              ("qwen2", "F16")])
def test_plan_holds_every_matrix_at_its_file_size(tmp_path, arch, weight_type):
    path, engine = engine_for(tmp_path, arch, weight_type)
    plan = _core.cuda_plan(engine, 64, 16)
    spec = mf.default_spec(arch, weight_type)
    sizes = file_tensor_bytes(path)
    tensors = plan["tensors"]
    # aligned, in order, not overlapping, and the arena ends with the last one
    for (_, off, size), (_, nxt, _) in zip(tensors, tensors[1:]):
        assert off % 256 == 0 and off + size <= nxt
    assert plan["weights_bytes"] == tensors[-1][1] + tensors[-1][2]
    # every layer matrix of the file is on the device, whole (fused copies hold their parts)
    on_device = {}
    for name, _, size in tensors:
        on_device[name] = size
    file_matrices = {k: v for k, v in sizes.items() if k.startswith("blk.") and len(_shape(path, k)) == 2}
    device_matrix_bytes = sum(size - 16 for name, _, size in tensors
                              if "norm" not in name and ".bias" not in name and name.startswith("blk."))
    assert device_matrix_bytes == sum(file_matrices.values())
    head = "output.weight" if "output.weight" in sizes else "token_embd.weight"
    head_name = [n for n, _, _ in tensors if n.startswith(("output", "token_embd"))][-1]
    assert on_device[head_name] == sizes[head] + 16
    assert plan["kv_bytes"] == 4 * spec.n_layer * 64 * spec.n_head_kv * spec.head_dim
    assert plan["total_bytes"] == (plan["weights_bytes"] + plan["kv_bytes"] + plan["scratch_bytes"]
                                   + plan["transient_bytes"])
    assert sum(plan["weights_by_type"].values()) == plan["weights_bytes"] - sum(
        (-(off + size)) % 256 for _, off, size in tensors[:-1])


_SHAPES = {}


def _shape(path, name):
    if path not in _SHAPES:
        _SHAPES[path] = {t.name: tuple(int(x) for x in t.shape) for t in gguf.GGUFReader(str(path)).tensors}
    return _SHAPES[path][name]


def test_plan_scales_with_context_and_batch(tmp_path):
    _, engine = engine_for(tmp_path, "llama", "Q8_0", n_ctx=512)
    a, b = _core.cuda_plan(engine, 256, 8), _core.cuda_plan(engine, 512, 8)
    assert b["kv_bytes"] == 2 * a["kv_bytes"] and b["weights_bytes"] == a["weights_bytes"]
    one, many = _core.cuda_plan(engine, 256, 1), _core.cuda_plan(engine, 256, 64)
    assert one["transient_bytes"] == 0 < many["transient_bytes"]      # one row never takes the f16 matmul
    assert many["scratch_bytes"] > one["scratch_bytes"]
    with pytest.raises(ValueError, match="n_batch"):
        _core.cuda_plan(engine, 256, 0)


def q8_heads(arch):
    """Head shapes a q8_0 cache takes (head_dim a multiple of 32; gemma3's and qwen3's already are)."""
    return {} if mf.default_spec(arch).head_dim % 32 == 0 else dict(n_head=2, n_head_kv=1, head_dim=32)


def test_plan_of_a_q8_0_cache(tmp_path):
    _, engine = engine_for(tmp_path, "llama", "Q8_0", **q8_heads("llama"))
    spec = mf.default_spec("llama", "Q8_0", **q8_heads("llama"))
    f16, q8 = _core.cuda_plan(engine, 64, 8), _core.cuda_plan(engine, 64, 8, kv_type="q8_0")
    assert (f16["kv_type"], q8["kv_type"]) == ("f16", "q8_0")
    # the CPU cache's rows: head_dim / 32 blocks of 34 bytes per kv head and position, K and V
    assert q8["kv_bytes"] == 2 * spec.n_layer * 64 * spec.n_head_kv * (spec.head_dim // 32) * 34
    assert q8["weights_bytes"] == f16["weights_bytes"] and q8["kv_bytes"] < f16["kv_bytes"]
    with pytest.raises(ValueError, match="kv_type must be"):
        _core.cuda_plan(engine, 64, 8, kv_type="q4_0")
    with pytest.raises(ValueError, match="head_dim divisible by 32"):
        _core.cuda_plan(engine_for(tmp_path, "qwen2", "Q8_0")[1], 64, 8, kv_type="q8_0")


def test_fit_check_names_the_largest_context_that_fits(tmp_path):
    _, engine = engine_for(tmp_path, "llama", "Q8_0", n_ctx=4096)
    plan = _core.cuda_plan(engine, 4096, 32)
    free = plan["total_bytes"] + plan["reserve_bytes"]
    _core.cuda_check_fit(engine, 4096, 32, free)                       # exactly enough
    tight = free - plan["kv_bytes"] // 2                               # about half the cache is missing
    with pytest.raises(InsufficientMemory) as info:
        _core.cuda_check_fit(engine, 4096, 32, tight)
    assert isinstance(info.value, MemoryError)
    best = _core.cuda_largest_n_ctx(engine, 32, tight, 4096)
    assert 0 < best < 4096
    msg = str(info.value)
    assert f"the largest n_ctx that fits is {best}" in msg and "n_ctx 4096" in msg and "MiB are free" in msg
    fit = _core.cuda_plan(engine, best, 32)
    over = _core.cuda_plan(engine, best + 1, 32)
    assert fit["total_bytes"] + fit["reserve_bytes"] <= tight < over["total_bytes"] + over["reserve_bytes"]
    with pytest.raises(InsufficientMemory, match="do not fit at any n_ctx"):
        _core.cuda_check_fit(engine, 4096, 32, plan["weights_bytes"] // 2)
    assert _core.cuda_largest_n_ctx(engine, 32, plan["weights_bytes"] // 2, 4096) == 0


def test_plan_of_the_last_layers_holds_only_them_and_the_head(tmp_path):
    path, engine = engine_for(tmp_path, "llama", "Q8_0")
    n_layer = mf.default_spec("llama", "Q8_0").n_layer
    full = _core.cuda_plan(engine, 64, 8)
    assert full["first_layer"] == 0 and _core.cuda_plan(engine, 64, 8, n_layer + 3)["first_layer"] == 0
    for k in range(1, n_layer):
        part = _core.cuda_plan(engine, 64, 8, k)
        assert part["first_layer"] == n_layer - k
        layers = {int(n.split(".")[1]) for n, _, _ in part["tensors"] if n.startswith("blk.")}
        assert layers == set(range(n_layer - k, n_layer))
        assert part["tensors"][-1][0] == full["tensors"][-1][0]          # the head is on the device
        assert part["kv_bytes"] * n_layer == full["kv_bytes"] * k
        # the same tensors, byte for byte, as the full plan's
        sizes = {n: b for n, _, b in full["tensors"]}
        assert all(sizes[n] == b for n, _, b in part["tensors"])
        assert part["weights_bytes"] < full["weights_bytes"]
    with pytest.raises(ValueError, match="n_gpu_layers"):
        _core.cuda_plan(engine, 64, 8, 0)


def test_fit_check_names_the_most_layers_that_fit(tmp_path):
    _, engine = engine_for(tmp_path, "llama", "Q8_0", n_ctx=256)
    n_layer = mf.default_spec("llama", "Q8_0").n_layer
    plans = {k: _core.cuda_plan(engine, 256, 8, k) for k in range(1, n_layer + 1)}
    need = {k: p["total_bytes"] + p["reserve_bytes"] for k, p in plans.items()}
    assert all(need[k] < need[k + 1] for k in range(1, n_layer))
    free = need[n_layer - 1]                             # one layer short of every one
    assert _core.cuda_largest_n_gpu_layers(engine, 256, 8, free) == n_layer - 1
    assert _core.cuda_largest_n_gpu_layers(engine, 256, 8, free - 1) == n_layer - 2
    assert _core.cuda_largest_n_gpu_layers(engine, 256, 8, need[1] - 1) == 0
    with pytest.raises(InsufficientMemory) as info:
        _core.cuda_check_fit(engine, 256, 8, free)
    assert f"n_gpu_layers={n_layer - 1} fits at n_ctx 256" in str(info.value)
    assert f"{n_layer} of {n_layer} layers" in str(info.value)
    _core.cuda_check_fit(engine, 256, 8, free, n_layer - 1)         # that many do fit
    with pytest.raises(InsufficientMemory, match="nor one layer's"):
        _core.cuda_check_fit(engine, 256, 8, 1 << 20)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3", "qwen2"])
def test_layer_hand_over_is_exact_on_the_cpu(tmp_path, arch):
    """The split a partly offloaded engine makes (its CPU pass over the first layers, the residual
    stream handed to the rest) with a CPU pass on the other side: the same bits as one pass, over
    prefill in several pieces, decode, sliding windows past their width and a truncation."""
    path = mf.write_default_model(tmp_path / f"{arch}.gguf", arch, "Q8_0")
    n_layer = mf.default_spec(arch, "Q8_0").n_layer
    ids = np.random.default_rng(11).integers(0, 200, 40)
    for first in sorted({1, n_layer // 2, n_layer - 1}):
        whole = _core.Engine(str(path), 96, 2, 16, "f16", "auto")
        split = _core.Engine(str(path), 96, 2, 16, "f16", "auto")
        _core.engine_split_on_cpu(split, first)
        assert split.backend == f"cpu split at layer {first}"
        kv_whole, kv_split = whole.memory()["kv_cache"], split.memory()["kv_cache"]
        assert kv_split["layers"] == first and kv_whole["layers"] == n_layer   # the host holds its own layers' KV
        assert 0 < kv_split["bytes"] < kv_whole["bytes"] and kv_split["cells"] < kv_whole["cells"]
        a, b = whole.eval(ids, all_logits=True), split.eval(ids, all_logits=True)   # pieces of 16, 16, 8
        assert np.array_equal(a, b), (first, float(np.abs(a - b).max()))
        for t in (5, 9, 3):
            assert np.array_equal(whole.eval([t]), split.eval([t]))
        whole.truncate(30), split.truncate(30)
        assert np.array_equal(whole.eval(ids[:7], all_logits=True), split.eval(ids[:7], all_logits=True))
    with pytest.raises(ValueError, match="not in \\[1, "):
        _core.engine_split_on_cpu(_core.Engine(str(path), 96, 2, 16, "f16", "auto"), n_layer)


def test_hidden_states_through_a_backend_equal_the_cpu_pass(tmp_path):
    """eval_batch(hidden=True) (what embeddings pool) through a forward backend, alone and next to
    a CPU session in one batch (then every item goes through its own engine), gives the bits of the
    batched CPU pass."""
    path = mf.write_default_model(tmp_path / "m.gguf", "gemma3", "Q8_0")
    ids = [int(t) for t in np.random.default_rng(6).integers(0, 200, 21)]
    whole = _core.Engine(str(path), 64, 2, 16, "f16", "auto")
    want = np.asarray(_core.eval_batch([(whole, ids)], hidden=True)[0])
    split = whole.new_session(64, 2, 16, "f16", "auto")          # sessions of one model
    _core.engine_split_on_cpu(split, 2)
    assert np.array_equal(np.asarray(_core.eval_batch([(split, ids)], hidden=True)[0]), want)
    split.truncate(0), whole.truncate(0)
    cpu_too = whole.new_session(64, 2, 16, "f16", "auto")
    both = _core.eval_batch([(split, ids), (cpu_too, ids[:9])], hidden=True)
    assert np.array_equal(np.asarray(both[0]), want)
    assert np.array_equal(np.asarray(both[1]), np.asarray(_core.eval_batch([(whole, ids[:9])], hidden=True)[0]))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_copy_between_split_sessions(tmp_path, arch):
    """copy_prefix_from between two sessions behind forward backends: the host half copies the
    layers it runs, the backend its own (what a server's prompt cache does on the device); the
    copied prefix then gives the logits of evaluating it. Mixed kinds are refused, nothing copied."""
    path = mf.write_default_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", n_layer=4)
    ids = [int(t) for t in np.random.default_rng(8).integers(0, 200, 30)]
    whole = _core.Engine(str(path), 64, 2, 16, "f16", "auto")
    want = whole.eval(ids, all_logits=True)
    a, b = whole.new_session(64, 2, 16, "f16", "auto"), whole.new_session(64, 2, 16, "f16", "auto")
    _core.engine_split_on_cpu(a, 2)
    _core.engine_split_on_cpu(b, 2)
    a.eval(ids[:20])
    b.copy_prefix_from(a, 12)
    assert b.n_past == 12
    assert np.array_equal(b.eval(ids[12:], all_logits=True), want[12:])
    assert b.memory()["kv_cache"]["layers"] == 2
    cpu = whole.new_session(64, 2, 16, "f16", "auto")
    other = whole.new_session(64, 2, 16, "f16", "auto")
    _core.engine_split_on_cpu(other, 1)
    for dst, src in ((cpu, a), (a, cpu), (other, a)):
        with pytest.raises(ValueError, match="runs on"):
            dst.copy_prefix_from(src, 5)
    assert other.n_past == 0 and cpu.n_past == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3"])
def test_context_shift_through_a_backend_equals_the_cpu_shift(tmp_path, arch):
    """Engine.shift behind a forward backend: the host's layers shift in its cache, then the
    backend's (the CPU split: the same KVCache::shift); decoding on gives the unsplit engine's bits."""
    path = mf.write_default_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", n_layer=4)
    ids = [int(t) for t in np.random.default_rng(10).integers(0, 200, 40)]
    whole = _core.Engine(str(path), 48, 2, 8, "f16", "auto")
    split = whole.new_session(48, 2, 8, "f16", "auto")
    _core.engine_split_on_cpu(split, 2)
    assert np.array_equal(whole.eval(ids, all_logits=True), split.eval(ids, all_logits=True))
    assert whole.shift(4, 16) == split.shift(4, 16) == 24
    for t in (7, 8, 9, 10):
        assert np.array_equal(whole.eval([t]), split.eval([t]))
    whole.truncate(20), split.truncate(20)
    assert whole.shift(2, 5) == split.shift(2, 5) == 15
    assert np.array_equal(whole.eval(ids[:6], all_logits=True), split.eval(ids[:6], all_logits=True))


def test_plan_refuses_what_the_device_pass_does_not_run(tmp_path):
    _, engine = engine_for(tmp_path, "qwen3moe", "Q8_0")
    with pytest.raises(ModelError, match="mixture-of-experts"):
        _core.cuda_plan(engine, 64, 8)


@pytest.mark.skipif(status["device_count"] > 0, reason="a CUDA device is present")
def test_without_a_device_cuda_model_raises_cuda_error(tmp_path):
    _, engine = engine_for(tmp_path, "llama", "Q8_0")
    with pytest.raises(CudaError, match="no CUDA"):
        _core.CudaModel(engine, 64, 8)
    with pytest.raises(ModelError):                     # the model check comes first, with or without a device
        _core.CudaModel(engine_for(tmp_path, "qwen3moe", "Q8_0")[1], 64, 8)


# ---- on the device ------------------------------------------------------------------------------

def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# GPU against the CPU engine at act_precision "high" (~16-bit activations): the GPU's decode rounds
# activations to 8 bits per 32 (q8, as llama.cpp's mmvq) and its prefill rounds them to f16;
# random-weight logits are less forgiving than a trained model's, hence 2 % per row.
TOL = 2e-2


@needs_device
@pytest.mark.parametrize("arch", DENSE)
@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_K", "F16"])
def test_prefill_and_decode_match_the_cpu(tmp_path, arch, weight_type):
    _, cpu = engine_for(tmp_path, arch, weight_type, n_ctx=64, n_batch=64, precision="high")
    gpu = _core.CudaModel(cpu, 64, 8)                   # 20 prompt tokens: pieces of 8, 8, 4
    rng = np.random.default_rng(7)
    n_vocab = cpu.n_vocab
    prompt = rng.integers(0, n_vocab, 20)
    ref = cpu.eval(prompt, all_logits=True)
    out = gpu.eval(prompt, all_logits=True)
    assert out.shape == ref.shape and np.isfinite(out).all()
    errs = [rel_err(out[i], ref[i]) for i in range(len(prompt))]
    assert max(errs) <= TOL, errs
    assert gpu.n_past == 20
    for step in range(12):                              # decode, the CPU's greedy tokens fed to both
        tok = int(np.argmax(ref[-1] if step == 0 else ref))
        ref = cpu.eval([tok])
        got = gpu.eval([tok])
        assert rel_err(got, ref) <= TOL, (step, rel_err(got, ref))
        top2 = np.sort(ref)[-2:]
        if top2[1] - top2[0] > 0.05 * (np.abs(ref).max() + 1e-9):   # a clear winner: the same token
            assert int(np.argmax(got)) == int(np.argmax(ref))


@needs_device
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_decode_graph_replays_the_eager_steps_bit_for_bit(tmp_path, arch, monkeypatch):
    """Decode steps after the first replay one captured CUDA graph (positions read on the device,
    attention's grid sized for the whole context): the same bits as launching each kernel, across
    a sliding window's wrap and after a truncation."""
    _, cpu = engine_for(tmp_path, arch, "Q4_K", n_ctx=96, n_batch=16, precision="high")
    graph = _core.CudaModel(cpu, 96, 16)
    monkeypatch.setenv("LOWBIT_CUDA_GRAPHS", "0")
    eager = _core.CudaModel(cpu, 96, 16)
    assert eager.memory()["decode_graph"] == "off (LOWBIT_CUDA_GRAPHS=0)"
    ids = np.random.default_rng(9).integers(0, cpu.n_vocab, 20)
    assert np.array_equal(graph.eval(ids), eager.eval(ids))
    for round_ in range(2):
        for step in range(12):
            tok = int(ids[step])
            a, b = graph.eval([tok]), eager.eval([tok])
            assert np.array_equal(a, b), (round_, step, rel_err(a, b))
        assert graph.memory()["decode_graph"].startswith("captured"), graph.memory()["decode_graph"]
        graph.truncate(15), eager.truncate(15)


@needs_device
@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_q8_0_cache_matches_the_cpu_q8_0_cache(tmp_path, arch):
    path = mf.write_default_model(tmp_path / f"{arch}.gguf", arch, "Q8_0", **q8_heads(arch))
    cpu = _core.Engine(str(path), 64, 2, 64, "q8_0", "high")
    gpu = _core.CudaModel(cpu, 64, 8, kv_type="q8_0")
    assert gpu.memory()["kv_type"] == "q8_0"
    ids = np.random.default_rng(4).integers(0, cpu.n_vocab, 20)
    ref, out = cpu.eval(ids, all_logits=True), gpu.eval(ids, all_logits=True)
    assert max(rel_err(out[i], ref[i]) for i in range(len(ids))) <= TOL
    for tok in (3, 1, 4, 1, 5, 9):                      # decode: eager, then the captured graph
        assert rel_err(gpu.eval([tok]), cpu.eval([tok])) <= TOL


@needs_device
def test_sliding_window_past_its_width_and_last_logits_only(tmp_path):
    _, cpu = engine_for(tmp_path, "gemma3", "Q8_0", n_ctx=128, n_batch=128, precision="high")   # window 4
    gpu = _core.CudaModel(cpu, 128, 128)
    ids = np.random.default_rng(3).integers(0, cpu.n_vocab, 70)
    ref = cpu.eval(ids)
    got = gpu.eval(ids)                                 # one piece, last row only
    assert got.shape == (cpu.n_vocab,) and rel_err(got, ref) <= TOL


@needs_device
def test_truncate_then_replay_gives_the_same_logits(tmp_path):
    _, cpu = engine_for(tmp_path, "llama", "Q4_K", precision="high")
    gpu = _core.CudaModel(cpu, 64, 16)
    ids = np.random.default_rng(5).integers(0, cpu.n_vocab, 24)
    first = gpu.eval(ids, all_logits=True)
    gpu.truncate(10)
    again = gpu.eval(ids[10:], all_logits=True)
    assert np.array_equal(again, first[10:]) or rel_err(again, first[10:]) <= 1e-6
    with pytest.raises(ValueError, match="exceed the device context"):
        gpu.eval(np.zeros(64, np.int64))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        gpu.eval([cpu.n_vocab])


@needs_device
def test_cancel_stops_between_layers_and_keeps_n_past(tmp_path):
    _, cpu = engine_for(tmp_path, "qwen3", "Q8_0")
    gpu = _core.CudaModel(cpu, 64, 8)
    gpu.eval([1, 2, 3])
    gpu.cancel()
    with pytest.raises(Cancelled):
        gpu.eval([4, 5])
    assert gpu.n_past == 3
    gpu.reset_cancel()
    assert gpu.eval([4, 5]).shape == (cpu.n_vocab,) and gpu.n_past == 5


@needs_device
def test_a_plan_too_big_for_the_device_is_refused_and_the_device_stays_usable(tmp_path):
    _, cpu = engine_for(tmp_path, "llama", "Q8_0", n_ctx=64)
    # ~2**40 cells: the KV cache alone is far past any device; refused before allocating
    with pytest.raises(InsufficientMemory, match="the largest n_ctx that fits is"):
        _core.CudaModel(cpu, 1 << 40, 8)
    gpu = _core.CudaModel(cpu, 64, 8)
    mem = gpu.memory()
    assert mem["peak_used_bytes"] >= mem["weights_bytes"] + mem["kv_bytes"] + mem["scratch_bytes"]
    assert gpu.eval([1, 2, 3]).shape == (cpu.n_vocab,)


# ---- placement through lowbit.load, the CLI and lowbit.Llama ------------------------------------

def test_device_arguments_are_checked(tmp_path):
    import lowbit

    path = mf.write_default_model(tmp_path / "m.gguf", "llama", "Q8_0")
    with pytest.raises(ValueError, match="device must be"):
        lowbit.load(str(path), n_ctx=32, device="gpu")
    with pytest.raises(ValueError, match="n_gpu_layers"):
        lowbit.load(str(path), n_ctx=32, device="cuda", n_gpu_layers=-2)
    with lowbit.load(str(path), n_ctx=32, device="cuda", n_gpu_layers=0) as m:   # 0 layers: the CPU, as llama.cpp
        assert m.device == "cpu" and m.memory()["backend"] == "cpu"


@pytest.mark.skipif(status["device_count"] > 0, reason="a CUDA device is present")
def test_without_a_device_cuda_raises_and_auto_runs_on_the_cpu(tmp_path):
    import subprocess
    import sys
    import warnings

    import lowbit

    path = str(mf.write_default_model(tmp_path / "m.gguf", "llama", "Q8_0"))
    with pytest.raises(CudaError, match="device='cuda' is not available: no CUDA"):
        lowbit.load(path, n_ctx=32, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # auto falls back silently when there is no device
        with lowbit.load(path, n_ctx=32, device="auto") as m:
            assert m.device == "cpu" and m.generate("hello", max_new_tokens=2, temperature=0).text is not None
    r = subprocess.run([sys.executable, "-m", "lowbit", "run", path, "hi", "-n", "2", "--device", "cuda", "-q"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no CUDA" in r.stderr, (r.returncode, r.stderr)


def _greedy(m, prompt, n):
    return m.generate(prompt, max_new_tokens=n, temperature=0).tokens


@needs_device
@pytest.mark.parametrize("arch", ["llama", "gemma3", "phi3"])
def test_load_on_cuda_generates_the_cpu_tokens(tmp_path, arch):
    import lowbit

    path = str(mf.write_default_model(tmp_path / f"{arch}.gguf", arch, "Q8_0"))
    with lowbit.load(path, n_ctx=96, act_precision="high") as cpu, lowbit.load(path, n_ctx=96, device="cuda") as gpu:
        assert gpu.device == "cuda" and gpu.memory()["backend"].startswith("cuda: ")
        mem = gpu.memory()["device_bytes"]
        assert mem["weights"] > 0 and mem["kv"] > 0
        prompt = "once upon a time the world"
        a, b = _greedy(cpu, prompt, 24), _greedy(gpu, prompt, 24)
        # random weights: near-ties can flip late tokens; the first ones must agree
        assert a[:8] == b[:8], (a, b)
        # a session on the device shares the weights and gives its own model's tokens
        with gpu.session() as s:
            assert _greedy(s, prompt, 8) == b[:8]
            assert s.memory()["device_bytes"]["weights"] == mem["weights"]
        assert gpu._engine.n_past > 1                    # the generation's tokens stay cached


@needs_device
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_partial_offload_matches_the_cpu(tmp_path, arch):
    import lowbit

    path = str(mf.write_default_model(tmp_path / f"{arch}.gguf", arch, "Q8_0"))
    n_layer = mf.default_spec(arch, "Q8_0").n_layer
    prompt = "once upon a time the world"
    with lowbit.load(path, n_ctx=96, act_precision="high") as cpu:
        want = _greedy(cpu, prompt, 16)
        ref = cpu._engine
        for k in (1, n_layer - 1):
            with lowbit.load(path, n_ctx=96, device="cuda", n_gpu_layers=k, act_precision="high") as gpu:
                assert gpu.device == "cuda" and f"layers {n_layer - k}+" in gpu.memory()["backend"]
                assert _greedy(gpu, prompt, 16)[:8] == want[:8]
                ids = np.random.default_rng(2).integers(0, ref.n_vocab, 20)
                ref.truncate(0), gpu._engine.truncate(0)
                a, b = ref.eval(ids, all_logits=True), gpu._engine.eval(ids, all_logits=True)
                assert max(rel_err(b[i], a[i]) for i in range(len(ids))) <= TOL
                with gpu.session() as s:                 # sessions keep the model's layer split
                    assert "layers" in s.memory()["backend"]


@needs_device
def test_load_on_cuda_with_a_q8_0_cache(tmp_path):
    import lowbit

    path = str(mf.write_default_model(tmp_path / "m.gguf", "llama", "Q8_0", **q8_heads("llama")))
    with lowbit.load(path, n_ctx=96, kv_type="q8_0", act_precision="high") as cpu, \
            lowbit.load(path, n_ctx=96, kv_type="q8_0", device="cuda") as gpu:
        assert gpu.device == "cuda"
        prompt = "once upon a time the world"
        assert _greedy(cpu, prompt, 8) == _greedy(gpu, prompt, 8)
        with gpu.session(n_ctx=48) as s:               # sessions keep the model's cache type
            assert s._engine.kv_type == "q8_0" and _greedy(s, prompt, 8) == _greedy(gpu, prompt, 8)


@needs_device
def test_embeddings_on_the_device_match_the_cpu(tmp_path):
    import lowbit

    path = str(mf.write_default_model(tmp_path / "m.gguf", "qwen2", "Q8_0"))
    texts = ["the quick brown fox", "jumps over the lazy dog again and again"]
    with lowbit.load(path, n_ctx=64, act_precision="high") as cpu, lowbit.load(path, n_ctx=64, device="cuda") as gpu:
        a, b = np.asarray(cpu.embed(texts)), np.asarray(gpu.embed(texts))
        assert a.shape == b.shape and max(rel_err(b[i], a[i]) for i in range(len(texts))) <= TOL


@needs_device
def test_prefix_copy_between_device_sessions(tmp_path):
    import lowbit

    path = str(mf.write_default_model(tmp_path / "m.gguf", "llama", "Q8_0"))
    ids = [int(t) for t in np.random.default_rng(12).integers(0, 200, 30)]
    with lowbit.load(path, n_ctx=64, device="cuda") as m:
        a, b = m.session(), m.session()
        ref = a._engine.eval(ids, all_logits=True)
        b.copy_prefix_from(a, 0)                         # nothing cached there yet through the wrapper
        b._engine.copy_prefix_from(a._engine, 20)
        assert np.array_equal(b._engine.eval(ids[20:], all_logits=True), ref[20:])
        a.close(), b.close()


@needs_device
@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_context_shift_on_the_device_matches_the_cpu(tmp_path, kv_type):
    path = str(mf.write_default_model(tmp_path / "m.gguf", "gemma3", "Q8_0"))   # head_dim 32, sliding layers
    ids = [int(t) for t in np.random.default_rng(14).integers(0, 200, 40)]
    cpu = _core.Engine(path, 48, 2, 48, kv_type, "high")
    gpu = cpu.new_session(48, 2, 48, kv_type, "high")
    _core.engine_to_cuda(gpu)
    cpu.eval(ids), gpu.eval(ids)
    assert cpu.shift(4, 16) == gpu.shift(4, 16) == 24
    for t in (7, 8, 9, 10):
        a, b = cpu.eval([t]), gpu.eval([t])
        assert rel_err(b, a) <= TOL


@needs_device
def test_batched_steps_of_device_sessions_equal_their_single_steps(tmp_path):
    import lowbit
    from lowbit.runtime.batch import eval_batch

    path = str(mf.write_default_model(tmp_path / "m.gguf", "qwen2", "Q8_0"))
    with lowbit.load(path, n_ctx=64, device="cuda") as m:
        a, b = m.session(), m.session()
        out = eval_batch([(a, [1, 2, 3, 4]), (b, [5, 6])])
        a2, b2 = m.session(), m.session()
        assert np.array_equal(out[0], a2._engine.eval([1, 2, 3, 4]))
        assert np.array_equal(out[1], b2._engine.eval([5, 6]))
        for s in (a, b, a2, b2):
            s.close()

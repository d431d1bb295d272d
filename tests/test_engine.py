"""lowbit._core.Engine: the C++ decoding engine against the float64 reference forward.

Synthetic models come from tests/model_factory.py (tiny random weights, every architecture),
the reference from tests/reference_forward.py. Bounds used here:
  - f32 / f16 weights: max over positions of ||ours - ref|| / ||ref|| <= 1e-3 (the f16 KV
    cache is the main error), argmax equal at every position;
  - quantized weights: the CPU kernels quantize activations to 8 bits (q8_0 / q8_K), about
    0.5% relative noise per projection, compounding over the layers (measured 1.3e-2..4.0e-2
    on these models, the most on 6-layer gemma3); bound 6e-2, and argmax equal wherever the
    reference's top-2 gap exceeds 0.5 logits (logits have std 3; measured flips at gaps
    up to 0.38);
  - q8_0 KV cache vs f16 KV cache: <= 3e-2 relative (K and V rounded to 8 bits per 32 values,
    the noise of one more 8-bit activation; measured 1.4e-2 qwen3, 1.6e-2 gemma3);
  - prefill/decode splits and n_batch variations: 1e-5 relative (same arithmetic per row).
Real models (skipped when absent) are compared with llama.cpp's outputs in
/work/shared/oracles, see the bounds at test_real_model_top5.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import gguf  # noqa: E402
from lowbit import _core  # noqa: E402
from lowbit.errors import Cancelled, ModelError  # noqa: E402
import model_factory as mf  # noqa: E402
from reference_forward import ReferenceModel, log_softmax  # noqa: E402
from _models import real_model_path  # noqa: E402
from _llama_cpp import llama_cpp_or_skip  # noqa: E402

ORACLES = "/work/shared/oracles"
ARCHS = mf.ARCHITECTURES


def rel_err(a, b):
    """Max over rows of ||a - b|| / ||b||."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def random_ids(n_vocab, n, seed):
    return np.random.default_rng(seed).integers(0, n_vocab, size=n).astype(np.int32)


_MODELS = {}


def tiny_model(tmp_path_factory, arch, weight_type="F32", **overrides):
    """Path of a cached tiny model file for (arch, weight_type, overrides)."""
    key = (arch, weight_type, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        folder = tmp_path_factory.mktemp("models")
        spec = mf.default_spec(arch, weight_type, **overrides)
        _MODELS[key] = mf.write_tiny_model(folder / f"{arch}-{weight_type}.gguf", spec)
    return _MODELS[key]


def engine(path, n_ctx=128, n_threads=2, n_batch=32, kv_type="f16"):
    return _core.Engine(path, n_ctx, n_threads, n_batch, kv_type)


# ---- logits vs the float64 reference ---------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("weight_type", ["F32", "F16"])
def test_logits_match_reference_float_weights(tmp_path_factory, arch, weight_type):
    path = tiny_model(tmp_path_factory, arch, weight_type)
    e = engine(path)
    ids = random_ids(e.n_vocab, 20, seed=1)   # gemma3's window is 4: sliding layers matter
    ours = e.eval(ids, all_logits=True)
    ref = ReferenceModel(path).logits(ids)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert rel_err(ours, ref) <= 1e-3
    assert np.array_equal(ours.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_K", "Q4_1", "Q6_K", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K"])
def test_logits_match_reference_quantized_weights(tmp_path_factory, arch, weight_type):
    """At two-pass activations ("high"): auto's arithmetic depends on the CPU (8 bits everywhere
    without the AVX-512 strip GEMMs, cpu/matmul.h), and 8-bit rounding alone moves these tiny
    models' logits up to 0.6 (a router flip on gpt-oss, llama.cpp's own distance too);
    test_architectures_more bounds auto against llama.cpp."""
    path = tiny_model(tmp_path_factory, arch, weight_type)
    e = _core.Engine(path, 128, 2, 32, "f16", "high")
    ids = random_ids(e.n_vocab, 16, seed=2)
    ours = e.eval(ids, all_logits=True)
    ref = ReferenceModel(path).logits(ids)
    assert rel_err(ours, ref) <= 6e-2
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.5
    assert np.array_equal(ours.argmax(1)[clear], ref.argmax(1)[clear])


def test_odd_head_dim_matches_reference(tmp_path_factory):
    """head_dim 40 (not a multiple of the attention kernels' 16 / 64 widths): multi-query scores
    and values with masked tails, prefill tiles of 8 tokens (two groups of 4) and decode steps."""
    path = tiny_model(tmp_path_factory, "llama", "F32", head_dim=40, n_embd=160)
    e = engine(path)
    ids = random_ids(e.n_vocab, 23, seed=5)
    ref = ReferenceModel(path).logits(ids)
    assert rel_err(e.eval(ids[:19], all_logits=True), ref[:19]) <= 1e-3
    for i in range(19, 23):
        assert rel_err(e.eval(ids[i:i + 1]), ref[i]) <= 1e-3


def test_rope_variants_match_reference(tmp_path_factory):
    """Partial rotary dims, linear rope scaling and llama3 rope_freqs factors."""
    path = tiny_model(tmp_path_factory, "llama", "F32", rope_dim=8, rope_scale=4.0,
                      rope_freq_factors=True, tied=False)
    e = engine(path)
    ids = random_ids(e.n_vocab, 24, seed=3)
    assert rel_err(e.eval(ids, all_logits=True), ReferenceModel(path).logits(ids)) <= 1e-3


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_yarn_rope_scaling_matches_reference(tmp_path_factory, arch):
    """rope.scaling.type = yarn: original context 32 puts the ramp's bounds at pairs 0 and 2 of 8
    (all three regimes: kept, mixed, interpolated frequencies) and mscale 1 + 0.1 ln 4."""
    path = tiny_model(tmp_path_factory, arch, "F32", rope_scale=4.0, rope_scaling="yarn", rope_orig_ctx=32)
    e = engine(path)
    ids = random_ids(e.n_vocab, 40, seed=6)
    ref = ReferenceModel(path).logits(ids)
    assert rel_err(e.eval(ids, all_logits=True), ref) <= 1e-3
    # yarn is not linear scaling: the same file with rope.scaling.type = linear gives other logits
    lin = ReferenceModel(tiny_model(tmp_path_factory, arch, "F32", rope_scale=4.0)).logits(ids)
    assert rel_err(lin, ref) > 1e-2


@pytest.mark.parametrize("n_ctx", [16, 64])
def test_longrope_matches_reference(tmp_path_factory, n_ctx):
    """phi3 LongRoPE: short factors up to rope.scaling.original_context_length (32), long above,
    cos / sin times rope.scaling.attn_factor (llama.cpp's choice, measured against it)."""
    path = tiny_model(tmp_path_factory, "phi3", "F32", longrope=True)
    e = engine(path, n_ctx=n_ctx)
    ids = random_ids(e.n_vocab, 14, seed=7)
    ref = ReferenceModel(path, n_ctx=n_ctx).logits(ids)
    assert rel_err(e.eval(ids, all_logits=True), ref) <= 1e-3
    other = ReferenceModel(path, n_ctx=80 - n_ctx).logits(ids)   # the other factor set
    assert rel_err(other, ref) > 1e-2


def test_unsupported_rope_scaling_raises(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "llama", "F32", rope_scale=4.0, rope_scaling="longrope")
    with pytest.raises(ModelError, match=r"rope\.scaling\.type' = 'longrope' is not supported; supported: linear, yarn, none"):
        engine(path)


def test_logit_softcap_matches_reference(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "gemma3", "F32", final_logit_softcap=5.0)
    e = engine(path)
    ids = random_ids(e.n_vocab, 12, seed=4)
    ours = e.eval(ids, all_logits=True)
    assert np.abs(ours).max() <= 5.0
    assert rel_err(ours, ReferenceModel(path).logits(ids)) <= 1e-3


# ---- batching, decode, cache options ---------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_then_decode_equals_one_prefill(tmp_path_factory, arch):
    path = tiny_model(tmp_path_factory, arch)
    ids = random_ids(engine(path).n_vocab, 30, seed=5)
    full = engine(path).eval(ids, all_logits=True)
    e = engine(path)
    steps = [e.eval(ids[:10], all_logits=True)]
    steps += [e.eval(ids[i:i + 1], all_logits=True) for i in range(10, 30)]
    assert e.n_past == 30
    assert rel_err(np.concatenate(steps), full) <= 1e-5
    last = engine(path).eval(ids)                        # default: last position only
    assert last.shape == (full.shape[1],)
    assert rel_err(last, full[-1]) <= 1e-5


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_n_batch_variations_agree(tmp_path_factory, arch):
    path = tiny_model(tmp_path_factory, arch)
    ids = random_ids(engine(path).n_vocab, 40, seed=6)
    base = engine(path, n_batch=64).eval(ids, all_logits=True)
    for n_batch in (1, 3, 7, 16):
        assert rel_err(engine(path, n_batch=n_batch).eval(ids, all_logits=True), base) <= 1e-5


@pytest.mark.parametrize("n_threads", [1, 3])
def test_thread_counts_agree(tmp_path_factory, n_threads):
    path = tiny_model(tmp_path_factory, "qwen2")
    ids = random_ids(engine(path).n_vocab, 20, seed=7)
    base = engine(path, n_threads=2).eval(ids, all_logits=True)
    assert rel_err(engine(path, n_threads=n_threads).eval(ids, all_logits=True), base) <= 1e-5


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])   # head_dim 32: q8_0 rows fit
def test_q8_0_kv_cache_within_bound(tmp_path_factory, arch):
    path = tiny_model(tmp_path_factory, arch)
    ids = random_ids(engine(path).n_vocab, 24, seed=8)
    f16 = engine(path).eval(ids, all_logits=True)
    e = engine(path, kv_type="q8_0")
    assert e.kv_type == "q8_0"
    q8 = e.eval(ids, all_logits=True)
    err = rel_err(q8, f16)
    assert 0 < err <= 3e-2
    assert e.memory()["kv_cache"]["bytes"] < engine(path).memory()["kv_cache"]["bytes"]


def test_q8_0_kv_needs_head_dim_multiple_of_32(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "llama")   # head_dim 16
    with pytest.raises(ValueError, match="head_dim"):
        engine(path, kv_type="q8_0")
    with pytest.raises(ValueError, match="kv_type"):
        engine(path, kv_type="q4_0")


def test_portable_loops_agree(tmp_path_factory):
    """LOWBIT_CPU=scalar: scalar kernels and the portable attention loops (no AVX2), in a
    subprocess because both are chosen once per process."""
    path = tiny_model(tmp_path_factory, "gemma3")
    ids = random_ids(engine(path).n_vocab, 20, seed=30)
    script = (
        "import sys, numpy as np; from lowbit import _core; "
        f"ids = np.array({ids.tolist()}, np.int32); "
        "out = [_core.Engine(sys.argv[1], 64, 2, 7, kv).eval(ids, all_logits=True) for kv in ('f16', 'q8_0')]; "
        "np.save(sys.argv[2], np.stack(out))")
    out_file = str(tmp_path_factory.mktemp("scalar") / "logits.npy")
    env = dict(os.environ, LOWBIT_CPU="scalar",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(_core.__file__))] + sys.path))
    subprocess.run([sys.executable, "-c", script, path, out_file], env=env, check=True, timeout=120)
    scalar = np.load(out_file)
    # Different summation orders (~1e-7) can flip a rounding when K / V are stored in f16 or q8_0,
    # which the later layers amplify: bounds 1e-3 (f16 cache) and 1e-2 (q8_0 cache).
    assert rel_err(scalar[0], engine(path, n_ctx=64, n_batch=7).eval(ids, all_logits=True)) <= 1e-3
    assert rel_err(scalar[1], engine(path, n_ctx=64, n_batch=7, kv_type="q8_0").eval(ids, all_logits=True)) <= 1e-2
    assert rel_err(scalar[0], ReferenceModel(path).logits(ids)) <= 1e-3


def test_runs_on_a_cpu_without_avx512(tmp_path_factory):
    """The module loads and computes on an x86-64 CPU without AVX-512. `import lowbit` died of
    SIGILL on Zen 3: the AVX-512 kernel set was a load-time initializer of its ISA file, filled with
    AVX-512 stores. Under qemu's `max` CPU (AVX2, no AVX-512: QEMU's TCG has none), a quantized
    model's logits equal this host's AVX2 kernel set's, bit for bit (same instructions)."""
    qemu = shutil.which("qemu-x86_64")
    if not qemu or platform.machine() != "x86_64":
        pytest.skip("needs qemu-x86_64 (Debian: qemu-user) on an x86-64 host")
    if "avx2" not in _core.cpu_features()["supported"]:
        pytest.skip("the host has no AVX2 kernel set to compare with")
    path = tiny_model(tmp_path_factory, "llama", "Q4_K")
    ids = random_ids(engine(path).n_vocab, 12, seed=31)
    script = (
        "import sys, numpy as np; from lowbit import _core; "
        f"ids = np.array({ids.tolist()}, np.int32); "
        "e = _core.Engine(sys.argv[1], 64, 2, 5, 'f16'); "
        "np.save(sys.argv[2], e.eval(ids, all_logits=True)); "
        "print(_core.cpu_features()['kernels'], _core.cpu_features()['avx512f'])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(_core.__file__))] + sys.path))
    env.pop("LOWBIT_CPU", None)
    folder = tmp_path_factory.mktemp("no_avx512")
    emulated = subprocess.run([qemu, "-cpu", "max", sys.executable, "-c", script, path, str(folder / "qemu.npy")],
                              env=env, capture_output=True, text=True, timeout=600)
    assert emulated.returncode == 0, emulated.stderr[-2000:]
    if emulated.stdout.split()[-1] != "False":
        pytest.skip("this qemu's CPU has AVX-512")
    assert emulated.stdout.split()[-2] == "avx2"
    native = subprocess.run([sys.executable, "-c", script, path, str(folder / "native.npy")],
                            env=dict(env, LOWBIT_CPU="avx2"), capture_output=True, text=True, timeout=120)
    assert native.returncode == 0, native.stderr[-2000:]
    np.testing.assert_array_equal(np.load(folder / "qemu.npy"), np.load(folder / "native.npy"))


# ---- truncate / shift ----------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_truncate_reuses_prefix(tmp_path_factory, arch):
    path = tiny_model(tmp_path_factory, arch)
    n_vocab = engine(path).n_vocab
    a, b, c = random_ids(n_vocab, 12, 9), random_ids(n_vocab, 3, 10), random_ids(n_vocab, 5, 11)
    e = engine(path, n_batch=8)   # gemma3 window 4: ring of 12 cells keeps the window
    e.eval(np.concatenate([a, b]))
    assert e.truncate(12) == 12 and e.n_past == 12
    got = e.eval(c, all_logits=True)
    want = engine(path).eval(np.concatenate([a, c]), all_logits=True)[12:]
    assert rel_err(got, want) <= 1e-5


def test_truncate_past_sliding_window_ring_drops_everything(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "gemma3")   # window 4, n_batch 2 -> ring of 6 cells
    e = engine(path, n_batch=2)
    ids = random_ids(e.n_vocab, 30, seed=12)
    e.eval(ids)
    assert e.truncate(10) == 0 and e.n_past == 0     # positions 7..9 were overwritten
    got = e.eval(ids[:5], all_logits=True)
    assert rel_err(got, engine(path).eval(ids[:5], all_logits=True)) <= 1e-5
    assert e.truncate(3) == 3                          # within the ring: kept


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_shift_matches_fresh_eval_one_layer(tmp_path_factory, arch):
    """With one layer, cached K/V depend only on token and position, so after
    shift(n_keep, n_discard) the cache equals a fresh eval of the kept tokens (K re-rotated)."""
    path = tiny_model(tmp_path_factory, arch, n_layer=1)
    n_vocab = engine(path).n_vocab
    ids = random_ids(n_vocab, 40, seed=13)
    nxt = random_ids(n_vocab, 3, seed=14)
    e = engine(path, n_ctx=64, n_batch=16)
    e.eval(ids)
    assert e.shift(4, 10) == 30 and e.n_past == 30
    got = e.eval(nxt, all_logits=True)
    kept = np.concatenate([ids[:4], ids[14:], nxt])
    want = engine(path, n_ctx=64).eval(kept, all_logits=True)[30:]
    assert rel_err(got, want) <= 2e-3   # re-rotated keys are rounded to f16 again


def test_shift_bad_arguments(tmp_path_factory):
    e = engine(tiny_model(tmp_path_factory, "llama"))
    e.eval(random_ids(e.n_vocab, 10, 15))
    with pytest.raises(ValueError, match="n_past"):
        e.shift(5, 6)
    with pytest.raises(ValueError):
        e.shift(-1, 2)
    assert e.shift(3, 0) == 10


def test_shift_refused_when_ring_lost_the_window(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "gemma3", n_layer=1)   # window 4
    e = engine(path, n_ctx=64, n_batch=2)                       # ring of 6 cells
    e.eval(random_ids(e.n_vocab, 20, 16))
    with pytest.raises(ValueError, match="sliding-window"):
        e.shift(8, 10)    # the new window 6..9 would need old positions 6, 7 (overwritten)
    assert e.n_past == 20
    assert e.shift(2, 3) == 17


# ---- cancel and threads --------------------------------------------------------------------

def test_cancel_before_eval_and_reset(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "llama")
    e = engine(path)
    ids = random_ids(e.n_vocab, 8, 17)
    e.cancel()
    with pytest.raises(Cancelled):
        e.eval(ids)
    assert e.n_past == 0
    e.reset_cancel()
    assert rel_err(e.eval(ids), engine(path).eval(ids)) <= 1e-6


def test_cancel_from_another_thread_keeps_cache_consistent(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "llama", n_ctx=4096)
    e = engine(path, n_ctx=4096, n_batch=1)
    ids = random_ids(e.n_vocab, 4000, 18)
    errors = []

    def run():
        try:
            e.eval(ids)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.05)
    e.cancel()
    t.join(timeout=30)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    done = e.n_past
    assert 0 < done < len(ids)
    e.reset_cancel()
    nxt = random_ids(e.n_vocab, 3, 19)
    got = e.eval(nxt, all_logits=True)
    want = engine(path, n_ctx=4096, n_batch=512).eval(np.concatenate([ids[:done], nxt]), all_logits=True)
    assert rel_err(got, want[done:]) <= 1e-4


def test_two_engines_in_two_threads(tmp_path_factory):
    paths = [tiny_model(tmp_path_factory, "qwen3"), tiny_model(tmp_path_factory, "gemma3")]
    seqs = [random_ids(engine(p).n_vocab, 60, 20 + i) for i, p in enumerate(paths)]
    want = [engine(p, n_batch=8).eval(s, all_logits=True) for p, s in zip(paths, seqs)]
    got = [None, None]

    def run(i):
        e = engine(paths[i], n_batch=8)
        got[i] = np.concatenate([e.eval(seqs[i][:20], all_logits=True)]
                                + [e.eval(seqs[i][j:j + 1], all_logits=True) for j in range(20, 60)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert rel_err(got[i], want[i]) <= 1e-5


def test_one_engine_serializes_concurrent_evals(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "llama", n_ctx=512)
    e = engine(path, n_ctx=512, n_batch=4)
    ids = random_ids(e.n_vocab, 100, 21)
    threads = [threading.Thread(target=e.eval, args=(ids,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert e.n_past == 300


# ---- properties, memory, close -------------------------------------------------------------

def test_properties_and_memory(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "gemma3")
    spec = mf.default_spec("gemma3")
    e = engine(path, n_ctx=100, n_threads=2, n_batch=10)
    assert (e.arch, e.n_layers, e.n_embd, e.n_ctx, e.n_threads) == ("gemma3", 6, spec.n_embd, 100, 2)
    assert e.n_ctx_train == spec.n_ctx and e.n_vocab == mf.vocab_size(spec)
    assert e.kv_type == "f16" and e.kernels in ("scalar", "avx2", "avx512") and e.n_past == 0
    m = e.memory()
    assert m["weights"] == {"F32": m["weights_bytes"]} and m["weights_bytes"] > 0
    E, F, Q, KV = spec.n_embd, spec.n_ff, spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    assert m["weights_copied_bytes"] == 6 * 4 * E * (Q + 2 * KV + 2 * F)   # fused q|k|v and gate|up
    kv = m["kv_cache"]
    # 5 sliding layers keep window 4 + n_batch 10 cells, the global layer keeps n_ctx
    assert kv["layers"] == 6 and kv["cells"] == 5 * 14 + 100 and kv["type"] == "f16"
    assert kv["bytes"] == kv["cells"] * spec.n_head_kv * spec.head_dim * 2 * 2
    assert m["total_bytes"] == m["weights_bytes"] + kv["bytes"] + m["scratch_bytes"]


def test_close(tmp_path_factory):
    e = engine(tiny_model(tmp_path_factory, "llama"))
    e.close()
    e.close()
    for call in (lambda: e.eval(np.array([1], np.int32)), lambda: e.n_past, e.memory,
                 lambda: e.truncate(0), lambda: e.arch):
        with pytest.raises(ValueError, match="engine is closed"):
            call()


# ---- bad input -----------------------------------------------------------------------------

def test_token_out_of_range_and_context_overflow(tmp_path_factory):
    e = engine(tiny_model(tmp_path_factory, "llama"), n_ctx=16)
    with pytest.raises(ValueError, match=rf"token id {e.n_vocab} .*vocabulary size {e.n_vocab}"):
        e.eval(np.array([1, e.n_vocab], np.int32))
    with pytest.raises(ValueError, match="token id -3"):
        e.eval(np.array([-3], np.int64))
    with pytest.raises(ValueError, match="integers"):
        e.eval(np.array([1.5]))
    with pytest.raises(ValueError, match="at least one"):
        e.eval(np.array([], np.int32))
    e.eval(random_ids(e.n_vocab, 10, 22))
    with pytest.raises(ValueError, match="10 cached \\+ 7 new tokens > n_ctx 16"):
        e.eval(random_ids(e.n_vocab, 7, 23))
    assert e.n_past == 10


def test_bad_engine_arguments(tmp_path_factory):
    path = tiny_model(tmp_path_factory, "llama")
    for kwargs, word in (({"n_ctx": 0}, "n_ctx"), ({"n_threads": 0}, "n_threads"), ({"n_batch": 0}, "n_batch"),
                         ({"n_ctx": 1 << 30}, "n_ctx"), ({"n_ctx": 1 << 28}, "physical memory")):
        with pytest.raises(ValueError, match=word):
            engine(path, **kwargs)


def write_modified(tmp_path, spec, drop=None, reshape=None, arch=None):
    """The factory's model with one tensor dropped or given a wrong shape, or another arch name."""
    tensors = mf.make_tensors(spec)
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), arch or spec.arch)
    mf._write_hparams(writer, replace(spec, arch=arch or spec.arch), tensors["token_embd.weight"][0].shape[0])
    for name, (data, qtype) in tensors.items():
        if name == drop:
            continue
        if name == reshape:
            data = data[:-1]
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(tmp_path / "bad.gguf")


def test_missing_tensor(tmp_path):
    path = write_modified(tmp_path, mf.default_spec("llama"), drop="blk.1.attn_k.weight")
    with pytest.raises(ModelError, match="missing tensor 'blk.1.attn_k.weight'"):
        engine(path)


def test_wrong_tensor_shape(tmp_path):
    path = write_modified(tmp_path, mf.default_spec("qwen2"), reshape="blk.0.ffn_down.weight")
    with pytest.raises(ModelError, match=r"'blk.0.ffn_down.weight' has shape \[128, 63\], expected \[128, 64\]"):
        engine(path)


def test_unsupported_architecture(tmp_path):
    path = write_modified(tmp_path, mf.default_spec("llama"), arch="gpt2")
    with pytest.raises(ModelError, match="unsupported architecture 'gpt2'.*llama, qwen2, qwen3, gemma3, phi3"):
        engine(path)


def test_missing_file(tmp_path):
    with pytest.raises(OSError):
        engine(str(tmp_path / "nope.gguf"))


# ---- real models vs llama.cpp ----------------------------------------------------------------
# The float64 reference on the same (dequantized) weights differs from llama.cpp's outputs by
# up to 0.44 nats in these top-5 log-probs and has a different top-5 set on 3 of the 6
# prompts: llama.cpp's own 8-bit activation arithmetic moves them that much. An engine can
# match llama.cpp within 0.05 only by reproducing its rounding, not by being accurate, so the
# bounds here are: the oracle's top-1 is ours, the top-5 sets share >= 4 ids, log-probs of the
# shared ids within 0.6; greedy: teacher-forced over the oracle's first 16 tokens, each oracle
# token is our argmax or within 0.3 nats of it (a near-tie). The strict tier-4 bar itself is held
# where both runtimes do the same arithmetic, on the F32 weights: test_tier4_against_llama_cpp_*.

REAL = ["smollm2-135m-instruct", "gemma3-270m"]


def oracle(name):
    path = real_model_path(name)
    oracle_file = os.path.join(ORACLES, f"{name}.json")
    if path is None or not os.path.isfile(oracle_file):
        pytest.skip(f"{name}: model or oracle not available")
    with open(oracle_file) as f:
        return path, json.load(f)


@pytest.mark.parametrize("name", REAL)
def test_real_model_top5(name):
    path, d = oracle(name)
    e = engine(path, n_ctx=512, n_batch=64)
    for entry in d["top5"]:
        e.truncate(0)
        lp = log_softmax(e.eval(np.array(entry["prompt_ids"], np.int32)).astype(np.float64))
        ours = np.argsort(-lp)[:5]
        assert ours[0] == entry["ids"][0], entry["prompt"]
        shared = [i for i in entry["ids"] if i in set(ours.tolist())]
        assert len(shared) >= 4, entry["prompt"]
        want = dict(zip(entry["ids"], entry["logprobs"]))
        assert max(abs(lp[i] - want[i]) for i in shared) <= 0.6, entry["prompt"]


@pytest.mark.parametrize("name", REAL)
def test_real_model_greedy_teacher_forced(name):
    path, d = oracle(name)
    prompt_ids = {t["prompt"]: t["prompt_ids"] for t in d["top5"]}
    e = engine(path, n_ctx=512, n_batch=64)
    checked = 0
    for entry in d["greedy"]:
        if entry["prompt"] not in prompt_ids:
            continue
        e.truncate(0)
        lp = log_softmax(e.eval(np.array(prompt_ids[entry["prompt"]], np.int32)).astype(np.float64))
        for tok in entry["ids"][:16]:
            assert lp.max() - lp[tok] <= 0.3, (entry["prompt"], tok)
            lp = log_softmax(e.eval(np.array([tok], np.int32)).astype(np.float64))
        checked += 1
    assert checked > 0


# ---- tier 4 at equal arithmetic: lowbit vs llama.cpp on the same F32 weights (dev oracle) ------
# The shipped-file oracles differ from an exact forward by up to 0.44 nats in top-5 log-probs
# (llama.cpp's 8-bit activations, see above). On F32 weights neither runtime quantizes anything,
# so there the full tier-4 bar holds: same top-5 set, log-probs within 0.05, the same 16 greedy
# tokens. Skips unless LOWBIT_LLAMA_CPP_SITE names a site-packages with llama-cpp-python.

@pytest.mark.parametrize("arch, scaling", [
    (arch, scaling) for arch in ("llama", "qwen2")
    for scaling in ({}, {"rope_scale": 4.0}, {"rope_scale": 4.0, "rope_scaling": "yarn", "rope_orig_ctx": 32})
] + [("phi3", {"longrope": True})])
def test_rope_scaling_against_llama_cpp(tmp_path_factory, arch, scaling):
    """Tiny F32 models, all logits of 40 tokens vs llama.cpp's (dev oracle): the same RoPE
    (none, linear, YaRN, phi3 LongRoPE with its long factors: llama.cpp pads n_ctx 64 to 256, both
    above the original 32). Measured 3.2e-4..4.9e-4 relative (f16 KV, llama.cpp's f16 queries)."""
    llama_cpp = llama_cpp_or_skip()
    path = tiny_model(tmp_path_factory, arch, "F32", **scaling)
    ref = llama_cpp.Llama(path, n_ctx=64, n_threads=1, n_batch=64, logits_all=True, verbose=False)
    e = engine(path, n_ctx=64)
    ids = random_ids(e.n_vocab, 40, seed=1)
    ref.eval(ids.tolist())
    assert rel_err(e.eval(ids, all_logits=True), np.array(ref.scores[:40])) <= 2e-3


@pytest.mark.parametrize("name", REAL)
def test_tier4_against_llama_cpp_on_f32_weights(tmp_path, name):
    llama_cpp = llama_cpp_or_skip()
    path, d = oracle(name)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from bench_fidelity import write_f32_reference  # noqa: PLC0415
    f32 = str(tmp_path / "f32.gguf")
    write_f32_reference(path, f32)
    ref = llama_cpp.Llama(f32, n_ctx=512, n_threads=2, n_batch=64, logits_all=True, verbose=False)
    e = engine(f32, n_ctx=512, n_batch=64)
    for entry in d["top5"]:
        ids = list(entry["prompt_ids"])
        ref.reset()
        ref.eval(ids)
        want = log_softmax(np.array(ref.scores[len(ids) - 1], np.float64))
        e.truncate(0)
        got = log_softmax(e.eval(np.array(ids, np.int32)).astype(np.float64))
        top = np.argsort(-want)[:5]
        assert set(np.argsort(-got)[:5].tolist()) == set(top.tolist()), entry["prompt"]
        assert np.abs(got[top] - want[top]).max() <= 0.05, entry["prompt"]
        # 16 greedy tokens, each runtime feeding its own choice
        seq, ours = list(ids), []
        for _ in range(16):
            tok = int(np.argmax(got))
            ours.append(tok)
            got = log_softmax(e.eval(np.array([tok], np.int32)).astype(np.float64))
        theirs = []
        for _ in range(16):
            tok = int(np.argmax(ref.scores[len(seq) - 1]))
            theirs.append(tok)
            seq.append(tok)
            ref.eval([tok])
        assert ours == theirs, entry["prompt"]
    e.close()

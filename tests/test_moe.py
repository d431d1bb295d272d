"""Mixture-of-experts specifics (csrc/model/moe.cpp): batching and grouping by expert, what the
observer sees, the metadata and tensor checks. Logits of every MoE architecture against the
float64 reference and llama.cpp are in tests/test_architectures_more.py."""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import gguf
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lowbit import _core  # noqa: E402
from lowbit.errors import ModelError  # noqa: E402
import model_factory as mf  # noqa: E402
import reference_forward as rf  # noqa: E402
from reference_forward import ReferenceModel  # noqa: E402
from _llama_cpp import llama_cpp_or_skip  # noqa: E402

_FILES = {}


def moe_model(tmp_path_factory, arch="qwen3moe", weight_type="F32", **overrides):
    key = (arch, weight_type, tuple(sorted(overrides.items())))
    if key not in _FILES:
        spec = mf.default_spec(arch, weight_type, **overrides)
        _FILES[key] = mf.write_tiny_model(tmp_path_factory.mktemp("moe") / f"{arch}.gguf", spec)
    return _FILES[key]


def rel_rows(a, b):
    """Each row's relative L2 distance of a from b."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def rel_err(a, b):
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def engine(path, n_ctx=128, n_batch=32, n_threads=2):
    return _core.Engine(path, n_ctx, n_threads, n_batch, "f16")


def test_routing_spreads_over_experts(tmp_path_factory):
    """The factory's router is not degenerate: over 40 tokens every expert is picked by some token
    and most tokens mix their experts (so the tests below exercise real mixtures)."""
    path = moe_model(tmp_path_factory)
    ref = ReferenceModel(path)
    ids = np.random.default_rng(0).integers(0, ref.hparams.n_vocab, 40)
    x = ref.embed(ids)
    picked, weights = ref.route(0, x / np.sqrt(np.mean(x * x, axis=1, keepdims=True)))
    assert set(picked.ravel().tolist()) == set(range(ref.hparams.n_expert))
    assert np.median(weights.max(1)) < 0.8 and np.allclose(weights.sum(1), 1.0)


@pytest.mark.parametrize("arch", ["qwen3moe", "olmoe"])
def test_batch_sizes_and_threads_agree(tmp_path_factory, arch):
    """Grouping a batch by expert does not change any token's result: n_batch 1 (decode: the k
    experts in parallel, or one by one on the whole pool when k < threads: olmoe's k = 2 on 3), 3,
    7 and 40 (each expert's tokens in one matmul), 1, 2 or 3 threads."""
    path = moe_model(tmp_path_factory, arch)
    ids = np.random.default_rng(6).integers(0, engine(path).n_vocab, 40).astype(np.int32)
    base = engine(path, n_batch=40).eval(ids, all_logits=True)
    for n_batch, n_threads in ((1, 2), (1, 3), (3, 1), (7, 3)):
        got = engine(path, n_batch=n_batch, n_threads=n_threads).eval(ids, all_logits=True)
        assert rel_err(got, base) <= 1e-5, (n_batch, n_threads)


def test_observer_sees_each_token_k_times_per_layer(tmp_path_factory):
    """Expert inputs are reported under the stacked tensors' names: each token's normed input
    once per selected expert, so n * k rows and k times the router's sums of squares."""
    path = moe_model(tmp_path_factory)
    spec = mf.default_spec("qwen3moe")
    e = engine(path)
    obs = _core.SumSquaresObserver()
    e.set_observer(obs)
    n = 13
    e.eval(np.random.default_rng(7).integers(0, e.n_vocab, n).astype(np.int32))
    entries = obs.entries()
    for il in range(spec.n_layer):
        router_sums, router_rows = entries[f"blk.{il}.ffn_gate_inp.weight"]
        assert router_rows == n
        for role in ("gate", "up"):
            sums, rows = entries[f"blk.{il}.ffn_{role}_exps.weight"]
            assert rows == n * spec.n_expert_used
            np.testing.assert_allclose(sums, spec.n_expert_used * np.asarray(router_sums), rtol=1e-9)
        sums, rows = entries[f"blk.{il}.ffn_down_exps.weight"]
        assert rows == n * spec.n_expert_used and len(sums) == spec.n_ff_exp
    assert not any("ffn_gate.weight" in name for name in entries)


def test_engine_memory_counts_moe_scratch(tmp_path_factory):
    """The MoE scratch is part of the engine's scratch bytes: it grows with n_batch."""
    path = moe_model(tmp_path_factory)
    small, large = engine(path, n_batch=4).memory(), engine(path, n_batch=64).memory()
    spec = mf.default_spec("qwen3moe")
    # per token at least: router logits, gathered row, gate, up, down (floats)
    per_token = 4 * (spec.n_expert + 2 * spec.n_embd + 2 * spec.n_ff_exp)
    assert large["scratch_bytes"] - small["scratch_bytes"] >= 60 * per_token


# ---- bad files -----------------------------------------------------------------------------

def write_variant(tmp_path, spec, *, drop_keys=(), extra_keys=None, reshape=None, values=None):
    """The factory's model with metadata keys dropped / added, one tensor reshaped, or tensors'
    data replaced (values: {name: array})."""
    tensors = mf.make_tensors(spec)
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), spec.arch)
    mf._write_hparams(writer, spec, tensors["token_embd.weight"][0].shape[0])
    for key in drop_keys:
        del writer.kv_data[0][key]
    for key, (value, vtype) in (extra_keys or {}).items():
        writer.add_key_value(key, value, vtype)
    for name, (data, qtype) in tensors.items():
        if name == reshape:
            data = data[:-1]
        data = (values or {}).get(name, data)
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(tmp_path / "bad.gguf")


def test_moe_arch_without_experts_is_refused(tmp_path):
    path = write_variant(tmp_path, mf.default_spec("qwen3moe"), drop_keys=("qwen3moe.expert_count",))
    with pytest.raises(ModelError, match="'qwen3moe.expert_count' is missing or 0"):
        engine(path)


def test_more_used_than_experts_is_refused(tmp_path):
    spec = mf.default_spec("qwen3moe")
    path = write_variant(tmp_path, spec, drop_keys=("qwen3moe.expert_used_count",),
                         extra_keys={"qwen3moe.expert_used_count": (7, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ModelError, match="expert_used_count' = 7 exceeds qwen3moe.expert_count = 6"):
        engine(path)


def test_wrong_expert_tensor_shape(tmp_path):
    spec = mf.default_spec("olmoe")
    path = write_variant(tmp_path, spec, reshape="blk.1.ffn_up_exps.weight")
    with pytest.raises(ModelError, match=r"'blk.1.ffn_up_exps.weight' has shape \[64, 96, 4\], expected \[64, 96, 5\]"):
        engine(path)


def test_experts_on_a_dense_architecture_are_refused(tmp_path):
    path = write_variant(tmp_path, mf.default_spec("qwen2"),
                         extra_keys={"qwen2.expert_count": (4, gguf.GGUFValueType.UINT32)})
    with pytest.raises(ModelError, match="experts are not supported for architecture qwen2"):
        engine(path)


def test_dense_llama_with_zero_expert_count_loads(tmp_path):
    """Dense llama files may say expert_count = 0 (llama.cpp's converter writes it for some)."""
    spec = mf.default_spec("llama")
    path = write_variant(tmp_path, spec, extra_keys={"llama.expert_count": (0, gguf.GGUFValueType.UINT32)})
    ids = np.arange(5, dtype=np.int32)
    assert rel_err(engine(path).eval(ids, all_logits=True), ReferenceModel(path).logits(ids)) <= 1e-3


def test_factory_refuses_impossible_specs(tmp_path):
    with pytest.raises(ValueError, match="n_expert_used"):
        mf.write_tiny_model(tmp_path / "a.gguf", replace(mf.default_spec("qwen3moe"), n_expert_used=7))
    with pytest.raises(ValueError, match="needs n_expert"):
        mf.write_tiny_model(tmp_path / "b.gguf", replace(mf.default_spec("olmoe"), n_expert=0))


# ---- info and the estimate before load -------------------------------------------------------

def test_info_counts_active_parameters_and_decode_reads(tmp_path_factory):
    """Total vs active parameters and the bytes a decode step reads, from the factory's own shapes:
    experts count k / n of their size, token_embd one row (the file has output.weight)."""
    from lowbit.runtime.info import describe_file, format_info  # noqa: PLC0415
    spec = mf.default_spec("olmoe", "Q8_0")
    path = moe_model(tmp_path_factory, "olmoe", "Q8_0")
    shapes = mf.tensor_shapes(spec)
    n = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    total = sum(n.values())
    experts = sum(v for name, v in n.items() if "_exps." in name)
    share = spec.n_expert_used / spec.n_expert
    d = describe_file(path, n_ctx=64)
    m = d["memory"]
    assert d["n_params"] == m["n_params"] == total
    assert m["expert_params"] == experts and m["n_expert"] == 5 and m["n_expert_used"] == 2
    assert m["active_params"] == round(total - experts * (1 - share))

    def q8_bytes(name):   # F32 vectors and router, Q8_0 matrices: 34 bytes per 32 values
        return 4 * n[name] if len(shapes[name]) == 1 or "ffn_gate_inp" in name else n[name] // 32 * 34
    tensor_bytes = sum(q8_bytes(name) for name in n)
    reads = sum(q8_bytes(name) * (share if "_exps." in name else 1) for name in n if name != "token_embd.weight")
    reads += q8_bytes("token_embd.weight") / shapes["token_embd.weight"][0]
    assert d["tensor_bytes"] == tensor_bytes
    assert m["decode_bytes_per_token"] == round(reads)
    assert m["decode_read_fraction"] == pytest.approx(reads / tensor_bytes)
    text = format_info(d)
    assert "experts: 2 of 5 per token" in text and "a decode step reads" in text


def test_info_of_a_dense_model_reads_everything_but_the_embedding(tmp_path_factory):
    from lowbit.runtime.info import describe_file  # noqa: PLC0415
    path = moe_model(tmp_path_factory, "qwen3", "F32")   # tied: token_embd is also the output head
    m = describe_file(path, n_ctx=64)["memory"]
    assert m["n_expert"] == 0 and m["active_params"] == m["n_params"] and m["expert_params"] == 0
    assert m["decode_bytes_per_token"] == m["weights_bytes"] and m["decode_read_fraction"] == 1.0


def test_auto_precision_uses_8_bit_experts_at_every_batch_size(tmp_path_factory):
    """act_precision auto: 8-bit activations in the expert matmuls of every batch, a decode step's
    included (moe.cpp), two-pass elsewhere; "high": two-pass everywhere. So under auto a token
    gets the same expert arithmetic decoded alone as in a prefill of 20 (gate / up items of ~10
    rows: the strip GEMM, or the packed GEMM on packed experts), while decode at "high" differs
    from decode at "auto" by the 8-bit rounding; every variant within the quantized tier of the
    reference, "high" far inside it (measured 3.6e-4 vs 1.3e-2 at auto). Without AVX-512 auto is
    8 bits in every matmul: prefill and decode equal the "q8" engine's bit for bit."""
    path = moe_model(tmp_path_factory, "qwen3moe", "Q4_K")
    ids = np.random.default_rng(8).integers(0, engine(path).n_vocab, 20).astype(np.int32)
    prefill = _core.Engine(path, 64, 2, 32, "f16", "auto").eval(ids, all_logits=True)
    decode = {p: _core.Engine(path, 64, 2, 1, "f16", p).eval(ids, all_logits=True) for p in ("auto", "high")}
    assert rel_err(decode["auto"], decode["high"]) > 1e-3   # decode experts not two-pass under auto
    ref = ReferenceModel(path).logits(ids)
    assert rel_err(decode["high"], ref) <= 5e-3
    if not _AVX512:   # no strip GEMMs: auto is 8 bits in every matmul (cpu/matmul.h), llama.cpp's arithmetic
        for n_batch, got in ((32, prefill), (1, decode["auto"])):
            assert np.array_equal(got, _core.Engine(path, 64, 2, n_batch, "f16", "q8").eval(ids, all_logits=True))
        return
    # packed experts: the same bits in the gemv and the packed GEMM
    assert rel_err(decode["auto"], prefill) <= 1e-5
    assert rel_err(prefill, ref) <= 6e-2 and rel_err(decode["auto"], ref) <= 6e-2


@pytest.mark.parametrize("arch, weight_type, overrides", [
    ("qwen3moe", "Q4_K", {}),                       # k-quant dots and strips (q8_K rows)
    ("qwen3moe", "Q8_0", {}),                       # legacy: panel rows on AVX-512 (q8_0 rows)
    ("gpt-oss", "Q8_0", {"expert_type": "MXFP4"}),  # expert biases, SwiGLU-OAI, q8_0 rows
])
def test_8_bit_expert_path_matches_matmul(tmp_path_factory, arch, weight_type, overrides):
    """With 8-bit activations a batch's experts take moe.cpp's prefill path (each token quantized
    once, items multiplying their tokens' rows in place through cpu::matmul_quantized: the strip
    GEMM from 9 rows for gate and up and from 6 for down, the multi-row dots below); with an
    observer attached every expert goes through matmul() instead. Same kernels and activation
    layouts, so the logits agree to the strip-vs-dots tier (items of 6-15 rows take the strip here,
    the dots in matmul()); a row gathered from the wrong token, slot or layout would be off by O(1).
    Batches of 40 (mostly strips), 16 (~8 rows an expert: both paths) and 5 (dots only) tokens,
    1-3 threads."""
    path = moe_model(tmp_path_factory, arch, weight_type, **overrides)
    ids = np.random.default_rng(9).integers(0, engine(path).n_vocab, 40).astype(np.int32)
    for n, n_threads in ((40, 2), (40, 3), (16, 2), (5, 2), (40, 1)):
        fast = _core.Engine(path, 64, n_threads, 40, "f16", "q8").eval(ids[:n], all_logits=True)
        slow_engine = _core.Engine(path, 64, n_threads, 40, "f16", "q8")
        slow_engine.set_observer(_core.SumSquaresObserver())
        slow = slow_engine.eval(ids[:n], all_logits=True)
        assert rel_err(fast, slow) <= 2e-5, (n, n_threads)
        if not overrides:   # MXFP4 experts against the reference: test_architectures_more.py's tier
            assert rel_err(fast, ReferenceModel(path).logits(ids[:n])) <= 6e-2


def test_nan_router_does_not_break_selection(tmp_path):
    """A router row of NaN (a damaged file) must not break the top-k selection (a comparator that
    NaN makes non-strict is undefined behaviour in std::partial_sort): the eval completes with its
    shape (the softmax spreads the NaN to the outputs, as llama.cpp's does)."""
    spec = mf.default_spec("qwen3moe")
    router = mf.make_tensors(spec)["blk.0.ffn_gate_inp.weight"][0].copy()
    router[2, :] = np.nan
    path = write_variant(tmp_path, spec, values={"blk.0.ffn_gate_inp.weight": router})
    ids = np.arange(3, 15, dtype=np.int32)
    out = engine(path).eval(ids, all_logits=True)
    assert out.shape == (12, engine(path).n_vocab)


# ---- packed experts (weights.cpp pack_experts, moe.cpp) --------------------------------------

_AVX512 = "avx512" in [s.strip() for s in _core.cpu_features()["supported"].split(",")]
_PACKED = _AVX512 or "avx2" in [s.strip() for s in _core.cpu_features()["supported"].split(",")]
needs_packed_gemm = pytest.mark.skipif(not _PACKED, reason="experts are packed only for a packed GEMM (AVX2, AVX-512)")


def packed_and_plain(monkeypatch, path, n_batch, act_precision="auto"):
    """Two engines on one file: experts (and every dense matrix) packed at load, and nothing packed."""
    engines = {}
    for repack in ("1", "0"):
        monkeypatch.setenv("LOWBIT_REPACK", repack)
        engines[repack] = _core.Engine(path, 128, 2, n_batch, "f16", act_precision)
    monkeypatch.delenv("LOWBIT_REPACK")
    return engines["1"], engines["0"]


def expert_bytes(path):
    return sum(int(t.n_bytes) for t in gguf.GGUFReader(path).tensors if "_exps." in t.name)


@needs_packed_gemm
@pytest.mark.parametrize("arch, weight_type", [
    ("qwen3moe", "Q8_0"), ("qwen3moe", "Q4_0"), ("qwen3moe", "Q5_1"),
    ("qwen2moe", "Q4_1"),   # the shared expert's matrices packed as dense ones
    ("gpt-oss", "Q8_0"),    # expert biases, SwiGLU-OAI on packed experts
])
def test_packed_experts_match_unpacked(tmp_path_factory, monkeypatch, arch, weight_type):
    """Types with a packed layout have their experts repacked at load: counted once among the
    copied bytes (the mapped pages are released), and the logits stay within the packed-vs-dots
    tier of the unpacked model's in decode (the one-token packed gemv at "high"; at "auto", 8-bit
    expert rows, both within the reference's tier) and in prefill (8-bit expert rows through matmul_quantized on the packed strips: 120 tokens, ~40 rows an expert,
    40, ~13, and 16, ~5: the unpacked model takes the strip GEMM or the dots there); both within
    the quantized tier of the reference. An expert read at the wrong offset, or a row gathered from
    the wrong token, would be off by O(1)."""
    path = moe_model(tmp_path_factory, arch, weight_type)
    packed, plain = packed_and_plain(monkeypatch, path, n_batch=120)
    mp, mu = packed.memory(), plain.memory()
    assert mp["weights_bytes"] == mu["weights_bytes"]
    assert mp["weights_copied_bytes"] - mu["weights_copied_bytes"] >= expert_bytes(path)
    assert mp["weights_copied_bytes"] <= 1.05 * mp["weights_bytes"]
    ids = np.random.default_rng(10).integers(0, packed.n_vocab, 120).astype(np.int32)
    ref = ReferenceModel(path)
    # Q2_K: 16-element blocks with mins, twice the float steps of a 32-block type and the mins'
    # cancellation (AVX-512, 16 tokens, ~5 rows an expert on the unpacked model's dots: 1.7e-4)
    tier = 2e-4 if weight_type == "Q2_K" else 1e-4
    for n in (120, 40, 16):
        packed.truncate(0)
        plain.truncate(0)
        got, want = packed.eval(ids[:n], all_logits=True), plain.eval(ids[:n], all_logits=True)
        assert rel_err(got, want) <= tier, n   # strip-vs-dots tier, through the layers
        # the 8-bit tier of test_8_bit_expert_path_matches_matmul (its batches of up to 40); gpt-oss
        # against the reference with the same 8-bit rounding of the expert inputs, which breaks its
        # router near-ties as the engine does (test_gpt_oss_8_bit_outlier_is_a_router_near_tie)
        if n <= 40:
            want = (EightBitExpertsReference(path) if arch == "gpt-oss" else ref).logits(ids[:n])
            assert rel_err(got, want) <= 6e-2
    # decode: at "high" (two-pass everywhere) the packed gemv and the unpacked dots are tier-1
    # reorderings of every matrix, through the layers; at "auto" (8-bit expert rows) those tier-1
    # differences of the dense matmuls can move an expert input's 8-bit rounding by one step
    # (~2e-3 at the logits of these 64-wide models), so there both against the reference's tier
    dec_packed, dec_plain = packed_and_plain(monkeypatch, path, n_batch=1, act_precision="high")
    got, want = dec_packed.eval(ids[:8], all_logits=True), dec_plain.eval(ids[:8], all_logits=True)
    assert rel_err(got, want) <= 1e-3
    dec_packed, dec_plain = packed_and_plain(monkeypatch, path, n_batch=1)
    want = (EightBitExpertsReference(path) if arch == "gpt-oss" else ref).logits(ids[:8])
    for dec in (dec_packed, dec_plain):
        assert rel_err(dec.eval(ids[:8], all_logits=True), want) <= 6e-2


@needs_packed_gemm
def test_packed_experts_decode_equals_batch(tmp_path_factory):
    """Packed experts give a token's row the same bits whatever the batch (moe.h: the packed GEMM
    for every n, the one-token gemv included): 9 tokens decoded one by one, in batches of 3, and as
    one batch of 9 (under 16 tokens: two-pass activations, as decode) give equal logits."""
    path = moe_model(tmp_path_factory, "qwen3moe", "Q4_0")
    ids = np.random.default_rng(11).integers(0, engine(path).n_vocab, 9).astype(np.int32)
    whole = engine(path, n_batch=9).eval(ids, all_logits=True)
    for n_batch in (1, 3):
        got = engine(path, n_batch=n_batch).eval(ids, all_logits=True)
        np.testing.assert_array_equal(got, whole, err_msg=f"n_batch {n_batch}")


@needs_packed_gemm
def test_packed_experts_under_scalar_kernels_equal_unpacked(tmp_path_factory, monkeypatch):
    """Experts packed at load, then the scalar kernel set (no packed GEMM): strips are unpacked
    and multiplied by the set's dots, exactly what the unpacked model computes (both paths: the
    decode's float rows and the prefill's 8-bit expert rows, matmul_quantized's packed fallback)."""
    path = moe_model(tmp_path_factory, "qwen3moe", "Q8_0")
    ids = np.random.default_rng(12).integers(0, engine(path).n_vocab, 30).astype(np.int32)
    packed, plain = packed_and_plain(monkeypatch, path, n_batch=30)
    dec_packed, dec_plain = packed_and_plain(monkeypatch, path, n_batch=1)
    before = _core.cpu_get_kernels()
    _core.cpu_set_kernels("scalar")
    try:
        np.testing.assert_array_equal(packed.eval(ids, all_logits=True), plain.eval(ids, all_logits=True))
        np.testing.assert_array_equal(dec_packed.eval(ids[:4], all_logits=True), dec_plain.eval(ids[:4], all_logits=True))
    finally:
        _core.cpu_set_kernels(before)


@needs_packed_gemm
def test_packed_experts_batched_decode_equals_each_alone(tmp_path_factory):
    """A decode step of several sessions (eval_batch: one MoE block over their tokens, under 16
    rows so two-pass as decode) gives each session the bits of its decode alone: packed experts
    go through the packed GEMM for the batch and the one-token gemv alone (the same bits)."""
    import lowbit  # noqa: PLC0415
    from lowbit.runtime.batch import eval_batch  # noqa: PLC0415
    m = lowbit.load(moe_model(tmp_path_factory, "qwen3moe", "Q4_0"), n_ctx=64, n_threads=2, n_batch=16)
    rng = np.random.default_rng(13)
    prompts = [rng.integers(3, m.n_vocab, n).astype(np.int32) for n in (5, 9, 2, 7, 4)]
    sessions = [m.session(64, n_batch=16) for _ in prompts]
    alone = [m.session(64, n_batch=16) for _ in prompts]
    for s, a, p in zip(sessions, alone, prompts):
        s._engine.eval(p); s._cached_ids.extend(p.tolist())
        a._engine.eval(p)
    for step in range(3):
        toks = [[int(t)] for t in rng.integers(3, m.n_vocab, len(prompts))]
        got = eval_batch(list(zip(sessions, toks)))
        for a, t, g in zip(alone, toks, got):
            np.testing.assert_array_equal(g, a._engine.eval(np.asarray(t, np.int32)), err_msg=f"step {step}")
    for s in sessions + alone:
        s.close()
    m.close()


# ---- gpt-oss with 8-bit expert activations: a router near-tie, not an error ------------------

def q8_0_rows(x):
    """x (n, m), m % 32 == 0, rounded as the engine's (and llama.cpp's) q8_0 activation rows:
    blocks of 32, d = amax / 127 stored as fp16, q = round(x / d); returned dequantized."""
    blocks = np.asarray(x, np.float32).reshape(len(x), -1, 32)
    d = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127.0)
    q = np.round(blocks / np.where(d > 0, d, 1.0))
    return (q * d.astype(np.float16).astype(np.float64)).reshape(np.shape(x))


class EightBitExpertsReference(ReferenceModel):
    """gpt-oss's float64 reference with the expert matmuls fed what the engine's 8-bit expert path
    feeds them (moe.cpp run_item_q8): each token's normed row and each gated row h rounded to q8_0
    rows; the router keeps the unrounded row (an F32 matrix). rounded=False: the plain reference.
    Records each layer's picks (sorted ids) and each token's top-k margin of the router logits
    (the k-th minus the (k+1)-th); force ({layer: (T, k) ids}) replaces the selection."""

    def __init__(self, path, rounded=True, force=None):
        super().__init__(path)
        assert self.hparams.arch == "gpt-oss"
        self.rounded, self.force, self.picks, self.margins = rounded, force, {}, {}

    def route(self, il, x):
        k = self.hparams.n_expert_used
        logits = self._linear(x, f"blk.{il}.ffn_gate_inp")
        ranked = -np.sort(-logits, axis=1)
        self.margins[il] = ranked[:, k - 1] - ranked[:, k]
        picked, _ = super().route(il, x)
        if self.force is not None:
            picked = self.force[il]
        self.picks[il] = np.sort(picked, axis=1)
        top = np.take_along_axis(logits, picked, axis=1)   # gpt-oss: softmax over the k picked logits
        weights = np.exp(top - top.max(axis=1, keepdims=True))
        return picked, weights / weights.sum(axis=1, keepdims=True)

    def _experts(self, il, x):
        p, limit, alpha = f"blk.{il}", rf.OAI_SWIGLU_LIMIT, rf.OAI_SWIGLU_ALPHA
        gate, up, down = (self.weight(f"{p}.ffn_{r}_exps.weight") for r in ("gate", "up", "down"))
        gate_b, up_b, down_b = (self.weight(f"{p}.ffn_{r}_exps.bias") for r in ("gate", "up", "down"))
        rounded = q8_0_rows if self.rounded else (lambda rows: rows)
        picked, weights = self.route(il, x)
        xq, out = rounded(x), np.zeros_like(x)
        for t in range(len(x)):
            for e, w in zip(picked[t], weights[t]):
                g = np.minimum(gate[e] @ xq[t] + gate_b[e], limit)
                u = np.clip(up[e] @ xq[t] + up_b[e], -limit, limit)
                h = g / (1.0 + np.exp(-alpha * g)) * (u + 1.0)
                out[t] += w * (down[e] @ rounded(h[None])[0] + down_b[e])
        return out


_NEAR_TIE = {}


def gpt_oss_near_tie_batch(tmp_path_factory):
    """gpt-oss Q8_0 and the 40 tokens of test_packed_experts_match_unpacked (seed 10): the engine's
    logits at 8-bit expert activations ("auto" from 16 tokens) and the exact and rounded references
    (their logits and picks), computed once."""
    if not _NEAR_TIE:
        path = moe_model(tmp_path_factory, "gpt-oss", "Q8_0")
        ids = np.random.default_rng(10).integers(0, engine(path).n_vocab, 120).astype(np.int32)[:40]
        exact, rounded = EightBitExpertsReference(path, rounded=False), EightBitExpertsReference(path)
        _NEAR_TIE.update(path=path, ids=ids, exact=exact, rounded=rounded,
                         got=_core.Engine(path, 128, 2, 40, "f16", "auto").eval(ids, all_logits=True),
                         want=exact.logits(ids), want8=rounded.logits(ids))
    return _NEAR_TIE


def test_gpt_oss_8_bit_outlier_is_a_router_near_tie(tmp_path_factory):
    """gpt-oss Q8_0, 40 tokens at 8-bit expert activations: token 27 is 0.43 (relative) from the
    float64 reference, the rest <= 4.5e-2. Not an error: in layer 2 its router's 2nd and 3rd
    logits are 0.0076 apart (their spread over the experts: std 1.7), and the 8-bit rounding of
    layers 0-1's expert inputs moves layer 2's router logits by 0.025 rms (0.13 at most), so the
    engine picks expert 4 instead of 2 there; another token (32, margin 0.0073) flips too. Shown:
    the reference with the same rounding flips only where its exact margin is under 0.02 and has
    no margin under 0.02 itself (0.030 at least), and the engine follows it within the 8-bit tier
    on every token (measured 1.9e-2); the exact reference made to break the ties the same way
    agrees too (2.6e-2)."""
    b = gpt_oss_near_tie_batch(tmp_path_factory)
    exact, rounded, got = b["exact"], b["rounded"], b["got"]
    flipped = sorted({int(t) for il in exact.picks for t in np.nonzero((exact.picks[il] != rounded.picks[il]).any(1))[0]})
    assert flipped, "this batch was chosen for its near-ties"
    for il in exact.picks:
        changed = (exact.picks[il] != rounded.picks[il]).any(1)
        assert np.all(exact.margins[il][changed] < 0.02), il
        # no near-tie left on the rounded side (measured >= 0.030): the engine's own float order
        # cannot flip a choice there, so comparing it with this reference is well-posed
        assert rounded.margins[il].min() > 0.02, il
    err, err8 = rel_rows(got, b["want"]), rel_rows(got, b["want8"])
    assert err8.max() <= 6e-2
    assert int(err.argmax()) in flipped and err.max() > 0.2   # the outlier is a flipped token
    assert np.delete(err, flipped).max() <= 6e-2
    tie_broken_alike = EightBitExpertsReference(b["path"], rounded=False, force=rounded.picks).logits(b["ids"])
    assert rel_err(got, tie_broken_alike) <= 6e-2


def test_llama_cpp_takes_a_side_of_the_gpt_oss_near_ties(tmp_path_factory):
    """llama.cpp on the same file and tokens (8-bit activations too; dev oracle): each token
    within the tier of the exact or the rounded reference (its own rounding picks the side of
    each tie), and at the engine's outlier (token 27) on the rounded side: 1.8e-2 from it, 0.42
    from the exact one."""
    llama_cpp = llama_cpp_or_skip()
    b = gpt_oss_near_tie_batch(tmp_path_factory)
    ref = llama_cpp.Llama(b["path"], n_ctx=64, n_threads=1, n_batch=64, logits_all=True, verbose=False)
    ref.eval(b["ids"].tolist())
    theirs = np.array(ref.scores[:40])
    near_exact, near_rounded = rel_rows(theirs, b["want"]), rel_rows(theirs, b["want8"])
    assert np.all(np.minimum(near_exact, near_rounded) <= 6e-2)
    worst = int(rel_rows(b["got"], b["want"]).argmax())
    assert near_rounded[worst] <= 6e-2 < near_exact[worst]

"""Packed weights (csrc/cpu/kernels.h, PackedLayout): the legacy types, IQ4_NL, the k-quants (Q2_K ..
Q6_K) and IQ4_XS repacked at load into strips of 16 interleaved rows that the strip GEMMs read in place
(AVX2 and AVX-512 pack every one of them; `_core.cpu_packs` tells what the set in use packs).

Claims checked here, on fresh random blocks (random quants, sane random scales and mins), odd
shapes and partial last strips:
  * pack / unpack are byte permutations: every strip unpacks to exactly the GGML rows it came from.
  * AVX-512 and AVX2: the packed GEMM equals the strip GEMM on the unpacked rows bit for bit (same integer
    sums, same float order), is within tier 1 of the scalar spec's dots, and gives each x row the
    same bits whatever the number of rows in the call (so batched decode equals unbatched): for
    2..15 rows the pair GEMM (two strips a call) against the one-row call's one-strip GEMM.
  * a set without a packed GEMM of the type (scalar): packed weights give
    exactly what matmul's dots give on the GGML rows.
  * a model loaded with packed weights counts them once (weights_copied_bytes, not twice) and keeps
    the same resident size (a tied head's token embedding lookups read the packed copy).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit
from lowbit import _core
from lowbit.runtime import cpu

from _models import real_model_path
from model_factory import write_default_model
from test_kernels import dequant_weights, kernel_set, level, make_act, random_weights, strip_blocks  # noqa: F401 (fixtures)

PACKED_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K"]
K_TYPES = ("Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "Q2_K", "Q3_K")   # 256-element super-blocks


def cols_of(type_name, legacy_cols):
    """A test's column count for the type: the k-quants take whole super-blocks (256 columns), as
    many as the legacy count has 32-blocks modulo 9, plus one (1..9 super-blocks across tests)."""
    return 256 * (legacy_cols // 32 % 9 + 1) if type_name in K_TYPES else legacy_cols


def packed_matmul(p, type_name, rows, cols, x, threads=2, precision="q8"):
    return np.asarray(_core.cpu_matmul(p, type_name, rows, cols, np.ascontiguousarray(x, np.float32),
                                       _core.CpuThreadPool(threads), precision, packed=True))


def raw_matmul(w, type_name, rows, cols, x, threads=2, precision="q8", small_batches=False):
    return np.asarray(_core.cpu_matmul(w.reshape(-1), type_name, rows, cols, np.ascontiguousarray(x, np.float32),
                                       _core.CpuThreadPool(threads), precision, small_batches=small_batches))


@pytest.mark.parametrize("type_name", PACKED_TYPES)
@pytest.mark.parametrize("rows,cols", [(1, 32), (15, 96), (16, 64), (17, 608), (67, 96), (5, 160), (31, 224),
                                       (33, 256), (47, 288), (3, 128), (19, 192)])
def test_pack_unpack_roundtrip(type_name, rows, cols):
    """Every strip unpacks to its GGML rows, byte for byte (k-quants: 1..9 super-blocks a row)."""
    cols = cols_of(type_name, cols)
    rng = np.random.default_rng(rows * 1000 + cols + PACKED_TYPES.index(type_name))
    w = random_weights(rng, type_name, rows, cols)
    p = np.asarray(_core.cpu_pack_rows(w.reshape(-1), type_name, rows, cols))
    n_strips = (rows + 15) // 16
    assert p.size % n_strips == 0 and (p.size // n_strips) % 64 == 0
    assert p.size - w.size < n_strips * (16 * w.shape[1] + 64)   # only the partial strip and alignment added
    if type_name not in ("Q5_0", "Q5_1"):   # (their qh bits are transposed) a byte permutation:
        extra = np.bincount(p, minlength=256) - np.bincount(w.reshape(-1), minlength=256)
        assert extra[0] >= 0 and not extra[1:].any()   # the same bytes, plus zeros (partial strip, alignment)
    for s in range(n_strips):
        back = np.asarray(_core.cpu_unpack_strip(p, type_name, rows, cols, s)).reshape(-1, w.shape[1])
        assert np.array_equal(back, w[16 * s:16 * s + 16]), (type_name, s)
    with pytest.raises(ValueError):
        _core.cpu_pack_rows(w.reshape(-1)[:-1], type_name, rows, cols)
    with pytest.raises(ValueError):
        _core.cpu_unpack_strip(p, type_name, rows, cols, n_strips)


def test_types_without_packed_layout_are_refused():
    for type_name in ("IQ2_XS", "TQ2_0"):
        w = random_weights(np.random.default_rng(1), type_name, 16, 256)
        with pytest.raises(ValueError, match="no packed layout"):
            _core.cpu_pack_rows(w.reshape(-1), type_name, 16, 256)
    w = random_weights(np.random.default_rng(1), "Q4_K", 16, 256)
    with pytest.raises(ValueError, match="not a multiple of the Q4_K block size 256"):   # not whole super-blocks
        _core.cpu_pack_rows(w.reshape(-1)[:16 * 72], "Q4_K", 16, 128)


@pytest.mark.parametrize("type_name", PACKED_TYPES)
def test_pack_runs_equal_packing_the_stacked_rows(type_name):
    """Load packs q | k | v and gate | up straight from the parts (pack_strips over row runs, strip
    ranges on several threads): the same bytes as packing the rows stacked, whether the parts
    end inside a strip or on its edge, whatever strip range a call covers."""
    cols = cols_of(type_name, 96)
    rng = np.random.default_rng(7900 + PACKED_TYPES.index(type_name))
    for counts in ([23, 5, 5], [16, 16], [3], [40, 1, 17, 9]):
        parts = [random_weights(rng, type_name, n, cols) for n in counts]
        ref = np.asarray(_core.cpu_pack_rows(np.concatenate(parts).reshape(-1), type_name, sum(counts), cols))
        for chunk in (0, 1, 2, 3):
            got = np.asarray(_core.cpu_pack_runs([p.reshape(-1) for p in parts], type_name, cols, chunk))
            assert np.array_equal(got, ref), (counts, chunk)
    with pytest.raises(ValueError, match="not whole"):
        _core.cpu_pack_runs([parts[0].reshape(-1)[:-1]], type_name, cols)


@pytest.mark.parametrize("type_name", PACKED_TYPES)
def test_packed_matmul_tiers(type_name, level, kernel_set):
    """67 rows (4 strips + 3), 19 blocks (k-quants: 2 super-blocks): the packed path at every
    kernel level vs the scalar spec. On AVX-512 and AVX2 each call of 1..8 x rows is one packed
    GEMM call of that many activation rows (q8), and equals the strip GEMM on the decoded GGML rows."""
    rng = np.random.default_rng(7300 + PACKED_TYPES.index(type_name))
    rows, cols = 67, cols_of(type_name, 608)
    w = random_weights(rng, type_name, rows, cols)
    p = np.asarray(_core.cpu_pack_rows(w.reshape(-1), type_name, rows, cols))
    x = (rng.standard_normal((41, cols)) * rng.uniform(0.1, 10, size=(41, 1))).astype(np.float32)
    got = {prec: packed_matmul(p, type_name, rows, cols, x, precision=prec) for prec in ("q8", "high")}
    for prec, y in got.items():
        for t in (1, 3):
            assert np.array_equal(packed_matmul(p, type_name, rows, cols, x, threads=t, precision=prec), y)
        for n in (1, 2, 3, 4, 5, 6, 7, 8, 16):   # any number of rows: the same bits per row (on every level)
            if level != "scalar" or n < 16 or prec == "high":
                assert np.array_equal(packed_matmul(p, type_name, rows, cols, x[:n], precision=prec), y[:n]), (prec, n)
        if not _core.cpu_packs(type_name):   # unpacked strip by strip: exactly matmul's dots on the GGML rows
            for n in (1, 5, 41) if level == "scalar" else (1, 5):   # (AVX-512's 41 rows: its strip GEMM)
                assert np.array_equal(y[:n], raw_matmul(w, type_name, rows, cols, x[:n], precision=prec)), (prec, n)
        else:   # the strip GEMM on the unpacked rows: the same bits
            for n in (8, 16, 41) if prec == "high" else (16, 41):
                assert np.array_equal(y[:n], raw_matmul(w, type_name, rows, cols, x[:n], precision=prec,
                                                        small_batches=True)), (prec, n)
    kernel_set("scalar")
    w64 = np.abs(dequant_weights(type_name, w)).reshape(rows, cols)
    for i in range(0, 41, 4):
        act, a64 = make_act(type_name, x[i])
        ref = np.array([cpu.vec_dot(type_name, w[r], act) for r in range(rows)])
        tol = 2e-7 * strip_blocks(type_name, cols) * (w64 @ np.abs(a64))
        assert np.all(np.abs(got["q8"][i] - ref) <= tol), (type_name, level, i)
    ref = x.astype(np.float64) @ dequant_weights(type_name, w).reshape(rows, cols).T
    assert np.linalg.norm(got["high"] - ref) / np.linalg.norm(ref) < 1e-4


@pytest.mark.parametrize("type_name", PACKED_TYPES)
def test_packed_batched_rows_2_to_15(type_name, level, kernel_set):
    """A batched decode step's shapes: every x row count 2..15 (2..30 activation rows at "high"),
    99 rows (6 strips + 3: strip pairs for the pair GEMM and a lone strip), 11 blocks, 2 threads.
    Each row equals the one-row call bit for bit (AVX-512: pair GEMM vs one-strip GEMM), and the
    q8 rows are within tier 1 of the scalar spec's dots."""
    rng = np.random.default_rng(7400 + PACKED_TYPES.index(type_name))
    rows, cols = 99, cols_of(type_name, 352)
    w = random_weights(rng, type_name, rows, cols)
    p = np.asarray(_core.cpu_pack_rows(w.reshape(-1), type_name, rows, cols))
    x = (rng.standard_normal((15, cols)) * rng.uniform(0.1, 10, size=(15, 1))).astype(np.float32)
    for prec in ("q8", "high"):
        alone = np.stack([packed_matmul(p, type_name, rows, cols, x[i:i + 1], precision=prec)[0] for i in range(15)])
        for n in range(2, 16):
            got = packed_matmul(p, type_name, rows, cols, x[:n], precision=prec)
            assert np.array_equal(got, alone[:n]), (prec, n, np.flatnonzero(got != alone[:n])[:5])
    got = packed_matmul(p, type_name, rows, cols, x, precision="q8")
    kernel_set("scalar")
    w64 = np.abs(dequant_weights(type_name, w)).reshape(rows, cols)
    for i in range(15):
        act, a64 = make_act(type_name, x[i])
        ref = np.array([cpu.vec_dot(type_name, w[r], act) for r in range(rows)])
        tol = 2e-7 * strip_blocks(type_name, cols) * (w64 @ np.abs(a64))
        assert np.all(np.abs(got[i] - ref) <= tol), (type_name, level, i)


@pytest.mark.parametrize("type_name", PACKED_TYPES)
def test_one_token_gemv_equals_packed_gemm_on_wide_matrices(type_name, level, kernel_set):
    """The one-token path (packed_gemv: a run of strips a thread, read with requests 8 KB ahead,
    batches taken off the back of slower threads' runs) on matrices of many wide strips, a partial
    last one and 1, 2, 5 and more threads than strips (38 on 38 strips: one each): the same bits as
    the packed GEMM gives that x row in a call of several rows, at both precisions."""
    rng = np.random.default_rng(7400 + PACKED_TYPES.index(type_name))
    rows, cols = 16 * 37 + 5, 1536
    w = random_weights(rng, type_name, rows, cols)
    p = np.asarray(_core.cpu_pack_rows(w.reshape(-1), type_name, rows, cols))
    x = (rng.standard_normal((5, cols)) * rng.uniform(0.1, 10, size=(5, 1))).astype(np.float32)
    for prec in ("q8", "high"):
        batched = packed_matmul(p, type_name, rows, cols, x, precision=prec)
        for i in range(len(x)):
            for threads in (1, 2, 5) if i else (1, 2, 5, 38):
                one = packed_matmul(p, type_name, rows, cols, x[i:i + 1], threads=threads, precision=prec)
                assert np.array_equal(one[0], batched[i]), (prec, i, threads)
    ref = x.astype(np.float64) @ dequant_weights(type_name, w).reshape(rows, cols).T
    one = np.concatenate([packed_matmul(p, type_name, rows, cols, x[i:i + 1], precision="high") for i in range(len(x))])
    assert np.linalg.norm(one - ref) / np.linalg.norm(ref) < 1e-4

def run_model(env_repack: str, code: str) -> str:
    env = dict(os.environ, LOWBIT_REPACK=env_repack,
               PYTHONPATH=os.path.dirname(os.path.dirname(lowbit.__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


_SUPPORTED = [s.strip() for s in cpu.features()["supported"].split(",")]
PACKED_LEVELS = [lv for lv in ("avx2", "avx512") if lv in _SUPPORTED]   # the sets with packed GEMMs
_PACKED = bool(PACKED_LEVELS)


@pytest.mark.parametrize("weight_type", ["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_NL", "IQ4_XS", "Q2_K", "Q3_K"])
def test_avx2_prompt_logits_do_not_depend_on_the_batch(tmp_path, kernel_set, weight_type):
    """The AVX2 set at its auto precision (8-bit everywhere): a prompt's logits are the same bits
    prefilled in one batch (the strip GEMM on strips from the packed rows), in batches of 5 (the
    packed GEMM in place) and token by token (the packed gemv), attention included. With the strip
    GEMM alone and decode left on the per-row dots, a 1e-7 reordering moved an 8-bit rounding and
    SmolLM2's logits by 1-9 % between a batch and the same token alone (test_batch)."""
    if "avx2" not in PACKED_LEVELS:
        pytest.skip("CPU lacks avx2")
    kernel_set("avx2")   # before load: the set in use decides the packing
    path = write_default_model(tmp_path / f"llama-{weight_type}.gguf", "llama", weight_type)
    ids = np.random.default_rng(7600).integers(0, _core.Engine(path, 64, 1, 8).n_vocab, 24).astype(np.int32)
    whole = np.asarray(_core.Engine(path, 64, 2, 32, "f16", "auto").eval(ids, all_logits=True))
    for n_batch in (1, 5):
        got = np.asarray(_core.Engine(path, 64, 2, n_batch, "f16", "auto").eval(ids, all_logits=True))
        np.testing.assert_array_equal(got, whole, err_msg=f"n_batch {n_batch}")


@pytest.mark.skipif(not _PACKED, reason="no packed GEMM without AVX2")
@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma3-270m"])
def test_model_packed_counts_once_and_matches_unpacked(tmp_path, model):
    """SmolLM2 (Q4_1 + a tied Q8_0 head), gemma3 (Q5_0, Q4_K, Q6_K + a tied Q8_0 head): with
    packing the copied bytes are the packed matrices (about the weights' size, not twice it), the
    load's resident peak stays near them too, the logits stay within the strip tier of the
    unpacked model's, and LOWBIT_REPACK=0 packs nothing."""
    if not real_model_path(model):
        pytest.skip(f"{model} not cached")
    path = str(real_model_path(model))
    code = (
        "import numpy as np, json\n"
        "from lowbit import _core\n"
        # VmHWM: this process's peak (ru_maxrss would carry the forking parent's over exec)
        "def status(k): return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)][0] * 1024\n"
        "before = status('VmRSS:')\n"
        f"e = _core.Engine({path!r}, 600, 2, 64, 'f16', 'high')\n"   # AVX-512's auto; q8 flips amplify reorderings
        "load_peak = status('VmHWM:') - before\n"
        "m = e.memory()\n"
        "y = np.asarray(e.eval(np.array([1, 400, 2000, 17], np.int32)))\n"
        "e.eval(np.random.default_rng(0).integers(100, 49000, 500).astype(np.int32))\n"   # embedding rows all over
        "rss = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')][0] * 1024\n"
        f"np.save({str(tmp_path)!r} + '/y_' + __import__('os').environ['LOWBIT_REPACK'] + '.npy', y)\n"
        "print(json.dumps(dict({k: m[k] for k in ('weights_bytes', 'weights_copied_bytes', 'total_bytes')}, rss=rss,\n"
        "                      load_peak=load_peak)))\n"
    )
    import json
    packed = json.loads(run_model("1", code))
    plain = json.loads(run_model("0", code))
    assert packed["weights_bytes"] == plain["weights_bytes"]
    # plain: the fused q|k|v and gate|up copies; packed: every matrix once (the head too), nothing more
    assert plain["weights_copied_bytes"] < packed["weights_copied_bytes"] <= packed["weights_bytes"] * 1.01
    assert packed["total_bytes"] - plain["total_bytes"] < 0.01 * plain["weights_bytes"]
    # resident: the packed copies replace the mapped rows; the tied head's embedding lookups read
    # the packed copy (a mapped table would fault back in around every looked-up row)
    assert packed["rss"] - plain["rss"] < 0.05 * plain["weights_bytes"], (packed["rss"], plain["rss"])
    # while loading: each matrix's mapped rows leave as soon as it is packed (threads pack several
    # at once), so resident memory peaks near the packed copies', not at copies + the whole file
    # (peak - RSS before the load: 1.04-1.09x the weights; 1.4-1.8x when each matrix's rows were released
    # after the whole matrix, 2.0x when after all of them)
    assert packed["load_peak"] < 1.25 * packed["weights_bytes"], packed["load_peak"] / packed["weights_bytes"]
    y1, y0 = np.load(tmp_path / "y_1.npy"), np.load(tmp_path / "y_0.npy")
    assert np.linalg.norm(y1 - y0) / np.linalg.norm(y0) < 1e-3   # 30 layers of tier-1 reorderings
    assert np.array_equal(np.argmax(y1, axis=-1), np.argmax(y0, axis=-1))


@pytest.mark.skipif(not _PACKED, reason="experts are packed only for a packed GEMM (AVX2, AVX-512)")
@pytest.mark.parametrize("weight_type", ["Q4_K", "Q5_K", "Q2_K", "Q3_K", "IQ4_XS"])
def test_packed_kquant_experts_match_unpacked(tmp_path_factory, monkeypatch, weight_type):
    """MoE experts of a k-quant (the MoE bench's Q4_K; Q2_K, Q3_K, IQ4_XS) are packed at load like the legacy types and
    flow through moe.cpp's packed paths (decode: the one-token gemv; prefill: matmul_quantized on
    the packed strips): test_moe's packed-vs-unpacked check on a qwen3moe file of that type.
    (Not Q6_K: there the unpacked model's experts of < 9 rows take the dots, and that tier-1
    difference flips router near-ties of the random file (4.6e-3 on a few of 40 tokens); with the
    unpacked experts on the strip GEMM at every size the packed and unpacked Q6_K models agree bit
    for bit at 16, 40 and 120 tokens, checked by hand. Not IQ4_NL: packed and unpacked agree (1e-4), but
    the random IQ4_NL file's 8-bit logits sit 7.5e-2 from the float reference, past test_moe's
    6e-2, packed or not.)"""
    import test_moe
    test_moe.test_packed_experts_match_unpacked(tmp_path_factory, monkeypatch, "qwen3moe", weight_type)


@pytest.mark.parametrize("type_name", PACKED_TYPES)
def test_avx2_and_avx512_packed_paths_are_the_same_bits(type_name, kernel_set):
    """Both x86 sets pack a matrix into the same bytes, and their packed paths (one-token gemv,
    the packed GEMM of a few rows, packed -> strip for many) and the strip GEMM on GGML rows give
    the same bits in both precisions: exact int32 block sums (VNNI dpbusd on AVX-512; maddubs +
    madd on AVX2, never saturating) and the same float steps in the same order. So a model packed
    on one host computes what it would on the other, at every batch size."""
    if PACKED_LEVELS != ["avx2", "avx512"]:
        pytest.skip("needs a CPU with AVX-512 (both packed sets)")
    kernel_set("avx512")
    if not _core.cpu_packs(type_name):
        pytest.skip(f"the AVX-512 set has no packed {type_name} GEMM")
    rng = np.random.default_rng(7700 + PACKED_TYPES.index(type_name))
    rows, cols = 67, cols_of(type_name, 608)
    w = random_weights(rng, type_name, rows, cols)
    x = (rng.standard_normal((41, cols)) * rng.uniform(0.1, 10, size=(41, 1))).astype(np.float32)
    out = {}
    for lv in PACKED_LEVELS:
        kernel_set(lv)
        p = np.asarray(_core.cpu_pack_rows(w.reshape(-1), type_name, rows, cols))
        out[lv] = [p] + [packed_matmul(p, type_name, rows, cols, x[:n], precision=prec)
                         for prec in ("q8", "high") for n in (1, 5, 41)]
        out[lv] += [raw_matmul(w, type_name, rows, cols, x, precision=prec) for prec in ("q8", "high")]
    for i, (a, b) in enumerate(zip(out["avx2"], out["avx512"])):
        assert np.array_equal(a, b), (type_name, i)


@pytest.mark.skipif(not _PACKED, reason="no packed GEMM without AVX2")
@pytest.mark.parametrize("packed_level", ["avx2", "avx512"])
def test_packed_q6k_extreme_blocks_equal_strip_gemm(kernel_set, packed_level):
    """Q6_K's own kernels (AVX-512: packed_q6k_avx512.cpp; AVX2: strip_avx2.h; the unpack of ql nibbles + qh pairs, dw from the
    int8 scales through d * 2^-24 * (sc * 2^24)) at the edges random blocks rarely reach together:
    quants all 0 or all 63 (every qh bit set / clear), scales -128 / 127 / 0, fp16 d subnormal
    (2^-24), 1 and 65504. Every path (one-token gemv, the 1..8-row GEMM and the pair GEMM of 2..15
    rows, packed -> strip for many rows) equals the strip GEMM on the unpacked GGML rows bit for
    bit, and the q8 rows stay within tier 1 of the scalar spec."""
    if packed_level not in PACKED_LEVELS:
        pytest.skip(f"CPU lacks {packed_level}")
    kernel_set(packed_level)
    rng = np.random.default_rng(7500)
    rows, cols = 16 * 5 + 7, 768
    w = random_weights(rng, "Q6_K", rows, cols)
    blocks = w.reshape(-1, 210)   # ql[128] qh[64] scales int8[16] d fp16
    kind = np.arange(len(blocks)) % 6
    blocks[kind == 0, :192] = 0xFF                         # every quant 63
    blocks[kind == 1, :192] = 0x00                         # every quant 0
    blocks[kind == 2, 128:192] = 0xFF                      # high pairs all set, low nibbles random
    blocks[kind == 3, 192:208] = np.array([-128, 127] * 8, np.int8).view(np.uint8)
    blocks[kind == 4, 192:208] = np.array([-128, 0, 1, -1] * 4, np.int8).view(np.uint8)
    d_choices = np.array([2.0 ** -24, 1.0, 65504.0, 1e-3], np.float16)
    blocks[:, 208:210] = d_choices[rng.integers(0, 4, len(blocks))].view(np.uint8).reshape(-1, 2)
    p = np.asarray(_core.cpu_pack_rows(w.reshape(-1), "Q6_K", rows, cols))
    x = (rng.standard_normal((16, cols)) * rng.uniform(0.1, 10, size=(16, 1))).astype(np.float32)
    for prec in ("q8", "high"):   # 16 rows: matmul takes the strip GEMM (fewer: the multi-row dots)
        strip = raw_matmul(w, "Q6_K", rows, cols, x, precision=prec, small_batches=True)
        for n in (1, 2, 3, 5, 8, 9, 15, 16):
            assert np.array_equal(packed_matmul(p, "Q6_K", rows, cols, x[:n], precision=prec), strip[:n]), (prec, n)
        for i in (0, 7):
            one = packed_matmul(p, "Q6_K", rows, cols, x[i:i + 1], threads=1, precision=prec)
            assert np.array_equal(one[0], strip[i]), (prec, i)
    got = packed_matmul(p, "Q6_K", rows, cols, x[:4], precision="q8")
    kernel_set("scalar")
    w64 = np.abs(dequant_weights("Q6_K", w)).reshape(rows, cols)
    for i in range(4):
        act, a64 = make_act("Q6_K", x[i])
        ref = np.array([cpu.vec_dot("Q6_K", w[r], act) for r in range(rows)])
        tol = 2e-7 * strip_blocks("Q6_K", cols) * (w64 @ np.abs(a64))
        assert np.all(np.abs(got[i] - ref) <= tol), i

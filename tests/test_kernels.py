"""CPU dot kernels, activation quantizers and threaded matmul.

Oracles: gguf.quants.dequantize for the weights (float64 dot of dequantized weights and
dequantized activations), the scalar kernel set for the SIMD ones.

Claims checked here (see csrc/cpu/kernels.h):
  * k-quants, IQ4_XS and the IQ1 / IQ2 / IQ3 i-quants: every SIMD dot == scalar dot bit for bit.
  * legacy 32-blocks (Q4_0 .. IQ4_NL), FP4 and ternary (MXFP4 NVFP4 TQ1_0 TQ2_0): exact integer block sums, SIMD
    float reduction order differs: tier 1, |simd - scalar| <= 2e-7 * n_blocks * sum|w_i a_i|
    (n_blocks: float steps of the spec, FLOAT_STEP elements each).
  * F32/F16/BF16: scalar sums in double, SIMD in f32 lanes: |diff| <= 1e-7 * n * sum|w_i a_i|.
  * activation quantizers: SIMD == scalar byte for byte.
  * matmul: threaded == single-thread, mat-mat == per-row mat-vec, all bit for bit, except
    the strip GEMM (has_strip: AVX-512: STRIP_TYPES; AVX2: AVX2_STRIP_TYPES; >= 16 activation rows,
    csrc/cpu/kernels.h): exact int32 block sums in another float order, tier 1 against the
    scalar dots; its outputs do not depend on threads, tiles or how many rows a call has (bit
    for bit), and the AVX2 strip GEMM's equal the AVX-512 one's.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from lowbit import _core
from lowbit.runtime import cpu

IQ_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"]
QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
               "IQ4_XS"] + IQ_TYPES
FLOAT_TYPES = ["F32", "F16", "BF16"]
ALL_TYPES = QUANT_TYPES + FLOAT_TYPES
TIER1_IQ_TYPES = {"MXFP4", "NVFP4", "TQ1_0", "TQ2_0"}   # float steps in vector lanes (dot_iq_x86_256.h)
EXACT_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", *IQ_TYPES} - TIER1_IQ_TYPES
FLOAT_STEP = {"NVFP4": 16}   # elements per float step (else 32: a block, or a lane of 32 weights)
LEVELS = ["scalar", "avx2", "avx512"]

# Byte offsets of the fp16 scale fields of each block (set to sane values; the rest is random).
SCALE_OFFSETS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0],
    "TQ1_0": [52], "TQ2_0": [64], "IQ1_M": [], "NVFP4": [],   # NVFP4: any E4M3 byte is a sane scale
    "MXFP4": [],
}


def set_odd_scales(rng, type_name: str, raw: np.ndarray) -> None:
    """Scales that are not one fp16 field: IQ1_M's fp16 in the top nibbles of its four scale
    words, MXFP4's E8M0 exponent byte (kept near 2^-8 so products stay finite)."""
    nb = raw.shape[0]
    if type_name == "IQ1_M":
        d = rng.uniform(1e-3, 1e-1, size=nb).astype(np.float16).view(np.uint16)
        words = raw[:, 48:56].copy().view(np.uint16)
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((d >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    elif type_name == "MXFP4":
        raw[:, 0] = rng.integers(112, 128, size=nb)


def supported_levels() -> list[str]:
    return [s.strip() for s in cpu.features()["supported"].split(",")]


@pytest.fixture(params=LEVELS)
def level(request):
    if request.param not in supported_levels():
        pytest.skip(f"CPU lacks {request.param}")
    before = cpu.get_kernels()
    cpu.set_kernels(request.param)
    yield request.param
    cpu.set_kernels(before)


@pytest.fixture
def kernel_set():
    """Run a block under a given kernel set, restoring the previous one."""
    before = cpu.get_kernels()

    class Use:
        def __call__(self, name):
            cpu.set_kernels(name)
            return self

    yield Use()
    cpu.set_kernels(before)


def block_geometry(type_name: str) -> tuple[int, int]:
    return GGML_QUANT_SIZES[QT[type_name]]


def random_weights(rng, type_name: str, rows: int, cols: int) -> np.ndarray:
    """Raw weight bytes (rows, row_bytes): random quants, fp16 scales in +-[1e-3, 1e-1]."""
    if type_name == "F32":
        return rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    if type_name == "F16":
        return rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    if type_name == "BF16":
        f = rng.standard_normal((rows, cols)).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    bs, bb = block_geometry(type_name)
    nb = rows * cols // bs
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for k, off in enumerate(SCALE_OFFSETS[type_name]):
        mag = rng.uniform(1e-3, 1e-1, size=nb)
        sign = np.where(rng.random(nb) < 0.5, -1.0, 1.0) if k > 0 else 1.0  # mins of either sign
        raw[:, off:off + 2] = (mag * sign).astype(np.float16).view(np.uint8).reshape(nb, 2)
    set_odd_scales(rng, type_name, raw)
    return raw.reshape(rows, -1)


def dequant_weights(type_name: str, raw: np.ndarray) -> np.ndarray:
    if type_name == "F32":
        return raw.view(np.float32).astype(np.float64)
    if type_name == "F16":
        return raw.view(np.float16).astype(np.float64)
    if type_name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return dequantize(raw, QT[type_name]).astype(np.float64)


def dequant_act(fmt: str, act: np.ndarray) -> np.ndarray:
    if fmt == "Q8_0":
        return dequantize(act, QT.Q8_0).astype(np.float64)
    blocks = act.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32).astype(np.float64)
    qs = blocks[:, 4:260].view(np.int8).astype(np.float64)
    return (d * qs).reshape(-1)


def make_act(type_name: str, x: np.ndarray):
    """(activation argument for vec_dot, its float64 values)."""
    fmt = cpu.act_format(type_name)
    if fmt == "F32":
        return x, x.astype(np.float64)
    act = cpu.quantize_act(fmt, x)
    return act, dequant_act(fmt, act)


def sizes_for(type_name: str) -> list[int]:
    bs, _ = block_geometry(type_name)
    step = max(bs, 32)
    return [step * 1, step * 3, step * 7, step * 19, 16384]


# ---- (a) scalar dot == float64 dot of dequantized operands -----------------------------------

@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_scalar_dot_matches_dequantized_dot(type_name, kernel_set):
    kernel_set("scalar")
    rng = np.random.default_rng(1000 + ALL_TYPES.index(type_name))
    for n in sizes_for(type_name):
        w = random_weights(rng, type_name, 1, n)[0]
        act, a64 = make_act(type_name, rng.standard_normal(n).astype(np.float32))
        wa = dequant_weights(type_name, w) * a64
        got = cpu.vec_dot(type_name, w, act)
        ref = wa.sum()
        assert abs(got - ref) <= 2e-6 * np.abs(wa).sum() + 1e-30, (type_name, n, got, ref)


# ---- (b) every SIMD dot == scalar dot ----------------------------------------------------------

def dot_tolerance(type_name: str, n: int, w: np.ndarray, a64: np.ndarray) -> float:
    scale = np.abs(dequant_weights(type_name, w) * a64).sum()
    if type_name in EXACT_TYPES:
        return 0.0
    if type_name in FLOAT_TYPES:
        return 1e-7 * n * scale
    return 2e-7 * (n // FLOAT_STEP.get(type_name, 32)) * scale


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_simd_dot_matches_scalar(type_name, level, kernel_set):
    rng = np.random.default_rng(2000 + ALL_TYPES.index(type_name))
    for n in sizes_for(type_name):
        for _ in range(3):
            w = random_weights(rng, type_name, 1, n)[0]
            x = (rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(np.float32)
            kernel_set("scalar")
            act, a64 = make_act(type_name, x)
            ref = cpu.vec_dot(type_name, w, act)
            kernel_set(level)
            got = cpu.vec_dot(type_name, w, act)
            tol = dot_tolerance(type_name, n, w, a64)
            assert abs(got - ref) <= tol, (type_name, level, n, got, ref, tol)


# ---- (d) activation quantizers ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["Q8_0", "Q8_K"])
def test_activation_quantizer_simd_equals_scalar(fmt, level, kernel_set):
    rng = np.random.default_rng(3000)
    for n in [256, 768, 4096]:
        x = (rng.standard_normal(n) * rng.uniform(0.01, 100)).astype(np.float32)
        x[rng.integers(0, n)] *= -20  # a dominant negative element (q8_K sign rule)
        x[:256][rng.random(256) < 0.05] = 0.0
        kernel_set("scalar")
        ref = cpu.quantize_act(fmt, x)
        kernel_set(level)
        got = cpu.quantize_act(fmt, x)
        assert got.tobytes() == ref.tobytes(), (fmt, level, n)
    kernel_set(level)
    zeros_then_data = np.concatenate([np.zeros(256, np.float32), np.ones(256, np.float32)])
    back = dequant_act(fmt, cpu.quantize_act(fmt, zeros_then_data))
    assert np.all(back[:256] == 0) and np.allclose(back[256:], 1.0, rtol=1e-3)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q8_0", "MXFP4", "Q4_K", "Q6_K", "IQ2_XS"])   # q8_0 / q8_K x block 32 / 16
def test_fused_strip_quantizer_equals_the_composed_steps(type_name, level, kernel_set):
    """The strip GEMM's activation groups (both precisions, one thread and the pool, zero blocks
    and a dominant negative element included): every set's bytes equal the scalar set's (there
    quantize_act, the residual and the regrouping run one after another; the AVX-512 set fuses
    them into one pass). The layout feeds the AVX-512 strip GEMM alone: a CPU without AVX-512
    gets a ValueError naming what it supports instead of a layout nothing there reads."""
    rng = np.random.default_rng(3050)
    pool = cpu.pool(2)
    if "avx512" not in supported_levels():
        with pytest.raises(ValueError, match="AVX-512.*this CPU supports: scalar"):
            _core.cpu_strip_acts(type_name, np.ones((8, 256), np.float32), "q8", pool)
        pytest.skip("the strip activation layout is the AVX-512 strip GEMM's")
    for precision, n, cols in [("high", 4, 512), ("q8", 8, 768), ("high", 36, 2048), ("auto", 12, 256)]:
        x = (rng.standard_normal((n, cols)) * rng.uniform(0.001, 100, size=(n, 1))).astype(np.float32)
        x[0, :256] = 0.0
        x[1, rng.integers(0, cols)] *= -50
        x[2, :32] = np.float32(1e-30)   # residual scales below fp16's normal range
        kernel_set("scalar")
        ref = _core.cpu_strip_acts(type_name, x, precision, pool)
        kernel_set(level)
        got = _core.cpu_strip_acts(type_name, x, precision, pool)
        assert got.tobytes() == ref.tobytes(), (type_name, level, precision, n, cols)
    with pytest.raises(ValueError, match="whole groups"):
        _core.cpu_strip_acts(type_name, x[:3], "high", pool)


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS", "F16"])
def test_matmul_of_rows_made_on_demand_equals_plain(type_name, level, kernel_set):
    """cpu::matmul over a RowMaker (the forward's FFN down projection makes its gated rows that
    way) gives the plain call's bits on every path: the fused strip quantizer (rows made one by
    one), the composed one, panels / dots, packed weights, one row, both precisions."""
    rng = np.random.default_rng(3070)
    rows, cols = 37, 512
    w = random_weights(rng, type_name, rows, cols)
    pool = cpu.pool(2)
    packable = type_name in ("Q4_1", "Q8_0")
    wp = cpu_pack(w, type_name, rows, cols) if packable else None
    for n in (1, 5, 16, 40):
        x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 10, size=(n, 1))).astype(np.float32)
        for precision in ("auto", "q8", "high"):
            for small in (False, True):
                args = (w.reshape(-1), type_name, rows, cols, x, pool, precision, False, small)
                ref = _core.cpu_matmul(*args)
                assert np.array_equal(_core.cpu_matmul(*args, made_rows=True), ref), (type_name, n, precision, small)
            if wp is not None:
                args = (wp, type_name, rows, cols, x, pool, precision, True, False)
                assert np.array_equal(_core.cpu_matmul(*args, made_rows=True), _core.cpu_matmul(*args)), (n, precision)


def cpu_pack(w, type_name, rows, cols):
    return _core.cpu_pack_rows(w.reshape(-1), type_name, rows, cols)


def test_q8_0_quantizer_matches_gguf():
    rng = np.random.default_rng(3100)
    x = rng.standard_normal(4096).astype(np.float32)
    assert cpu.quantize_act("Q8_0", x).tobytes() == quantize(x, QT.Q8_0).tobytes()


def test_q8_K_sign_rule_and_bsums(kernel_set):
    rng = np.random.default_rng(3200)
    for level_name in supported_levels():
        kernel_set(level_name)
        x = rng.standard_normal(512).astype(np.float32)
        x[5] = -7.5  # largest magnitude is negative: maps to -127, d = 7.5/127 > 0
        x[300] = 9.0  # positive: maps to -127 with d < 0
        blocks = cpu.quantize_act("Q8_K", x).reshape(2, 292)
        d = blocks[:, :4].copy().view(np.float32)[:, 0]
        qs = blocks[:, 4:260].view(np.int8)
        bsums = blocks[:, 260:].copy().view(np.int16)
        assert qs[0, 5] == -127 and d[0] > 0 and qs[1, 300 - 256] == -127 and d[1] < 0
        assert np.array_equal(bsums, qs.reshape(2, 16, 16).astype(np.int32).sum(-1))
        assert np.max(np.abs(d[:, None] * qs - x.reshape(2, 256))) <= np.abs(d).max() * 0.5 + 1e-6


# ---- (c) matmul -------------------------------------------------------------------------------

def matvec_rows(type_name, w, rows, cols, x, n_threads):
    return np.stack([cpu.matmul(w, type_name, (rows, cols), xi, n_threads=n_threads) for xi in x])


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_matmul_threads_and_tiles_agree(type_name, level):
    rng = np.random.default_rng(4000 + ALL_TYPES.index(type_name))
    bs, _ = block_geometry(type_name)
    # legacy: 2 batches of 8 blocks + a 3-block tail; k-quants: 3 super-blocks; floats: odd width
    rows, cols = 67, {1: 611, 32: 608, 64: 640, 256: 768}[bs]
    w = random_weights(rng, type_name, rows, cols)
    x = rng.standard_normal((17, cols)).astype(np.float32)
    single = cpu.matmul(w, type_name, (rows, cols), x[0], n_threads=1)
    for t in (2, 3):
        assert np.array_equal(cpu.matmul(w, type_name, (rows, cols), x[0], n_threads=t), single)
    # mat-vec == the dot of each row
    act, _ = make_act(type_name, x[0])
    dots = np.array([cpu.vec_dot(type_name, w[r], act) for r in range(rows)], np.float32)
    assert np.array_equal(single, dots)
    for sub in (65, 66):   # mat-vec tails of 1 and 2 weight rows
        assert np.array_equal(cpu.matmul(w[:sub], type_name, (sub, cols), x[0], n_threads=1), dots[:sub])
    per_row = matvec_rows(type_name, w, rows, cols, x, 2)
    for n in (1, 3, 8, 15):
        for t in (1, 2):
            got = cpu.matmul(w, type_name, (rows, cols), x[:n], n_threads=t)
            assert got.shape == (n, rows) and np.array_equal(got, per_row[:n]), (type_name, n, t)
    # two-pass activations (the default for decode): the mat-vec's (hi, lo) rows, several weight
    # rows per call on AVX-512 (legacy types), give each row what the mat-mat's calls give
    per_row_hi = np.stack([cpu.matmul(w, type_name, (rows, cols), xi, n_threads=2, act_precision="high") for xi in x[:7]])
    for n in (2, 3, 7):
        for t in (1, 3):
            got = cpu.matmul(w, type_name, (rows, cols), x[:n], n_threads=t, act_precision="high")
            assert np.array_equal(got, per_row_hi[:n]), (type_name, n, t)
    got = cpu.matmul(w, type_name, (rows, cols), x, n_threads=2)   # 17 rows: the strip GEMM may take it
    if has_strip(level, type_name):
        w64 = np.abs(dequant_weights(type_name, w)).reshape(rows, cols)
        tol = 2e-7 * strip_blocks(type_name, cols) * (np.abs(x.astype(np.float64)) @ w64.T) * 1.01   # q8 rounds x by < 1%
        assert np.all(np.abs(got - per_row) <= tol), type_name
    else:
        assert np.array_equal(got, per_row), type_name


STRIP_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"] + IQ_TYPES + ["Q2_K", "Q3_K"]
AVX2_STRIP_TYPES = STRIP_TYPES[:6] + ["Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "Q2_K", "Q3_K"]   # the AVX2 strip GEMM (strip_avx2.h): types with a packed layout


def has_strip(level, type_name):
    """Whether the kernel set `level` has a strip GEMM for the type (mat-mat of >= 16 rows)."""
    return type_name in (AVX2_STRIP_TYPES if level == "avx2" else STRIP_TYPES if level == "avx512" else [])


STRIP_16 = {"Q6_K", "IQ2_XS", "IQ2_S", "IQ1_M", "NVFP4", "Q2_K", "Q3_K"}   # one weight scale per 16 elements


def strip_blocks(type_name, cols):
    """Blocks per row of the strip GEMM: one float step per weight scale (16 or 32 elements)."""
    return cols // (16 if type_name in STRIP_16 else 32)


@pytest.mark.parametrize("type_name", STRIP_TYPES)
def test_strip_gemm_matches_scalar_dots(type_name, level, kernel_set):
    """Mat-mat of >= 16 rows (the AVX-512 strip GEMM for these types): each output vs the scalar
    dot of the same quantized activation row (tier 1), the same bits whatever the thread count,
    tile or number of rows in the call, in both activation precisions."""
    rng = np.random.default_rng(4100 + STRIP_TYPES.index(type_name))
    rows, cols = 67, (608 if block_geometry(type_name)[0] == 32 else 768)   # 4 strips + 3 rows; 19 blocks / 3 super-blocks
    w = random_weights(rng, type_name, rows, cols)
    x = (rng.standard_normal((41, cols)) * rng.uniform(0.1, 10, size=(41, 1))).astype(np.float32)
    got = cpu.matmul(w, type_name, (rows, cols), x, n_threads=1)
    for t in (2, 3):
        assert np.array_equal(cpu.matmul(w, type_name, (rows, cols), x, n_threads=t), got)
    for n in (16, 23):   # fewer rows and other tile ends: the same bits per row
        assert np.array_equal(cpu.matmul(w, type_name, (rows, cols), x[:n], n_threads=2), got[:n])
    kernel_set("scalar")
    w64 = np.abs(dequant_weights(type_name, w)).reshape(rows, cols)
    for i in range(0, 41, 5):
        act, a64 = make_act(type_name, x[i])
        ref = np.array([cpu.vec_dot(type_name, w[r], act) for r in range(rows)])
        tol = 2e-7 * strip_blocks(type_name, cols) * (w64 @ np.abs(a64))
        assert np.all(np.abs(got[i] - ref) <= tol), (type_name, level, i)
    kernel_set(level)
    hi = cpu.matmul(w, type_name, (rows, cols), x, act_precision="high")
    ref = x.astype(np.float64) @ dequant_weights(type_name, w).reshape(rows, cols).T
    assert np.linalg.norm(hi - ref) / np.linalg.norm(ref) < 1e-4
    assert np.array_equal(cpu.matmul(w, type_name, (rows, cols), x[:20], act_precision="high"), hi[:20])
    # the strip path ran: another float order than the per-row dots (MXFP4's scales are powers of
    # two, so both orders round the same products once: equal there)
    if has_strip(level, type_name) and type_name != "MXFP4":
        assert not np.array_equal(got[:15], cpu.matmul(w, type_name, (rows, cols), x[:15]))


@pytest.mark.parametrize("type_name", STRIP_TYPES)
def test_strip_pairs_of_a_batched_step_match_the_strip_gemm(type_name, level, kernel_set):
    """A batched decode step of 8..15 sessions at high precision (small_batches: the strip GEMM from
    16 activation rows, in pairs of strips where the set has a pair GEMM; fewer sessions take the
    multi-row dots), and 16..23 rows at q8 (pair calls of every count of 1..8 activation rows):
    each row equals the same row in a call too large for one activation tile (one strip a GEMM
    call) bit for bit; q8 rows within tier 1 of the scalar dots. 99 rows: 6 strips + 3 rows
    (pairs and a lone strip), 2 threads."""
    rng = np.random.default_rng(4300 + STRIP_TYPES.index(type_name))
    rows, cols = 99, (608 if block_geometry(type_name)[0] == 32 else 768)
    w = random_weights(rng, type_name, rows, cols)
    x = (rng.standard_normal((400, cols)) * rng.uniform(0.1, 10, size=(400, 1))).astype(np.float32)

    def run(xs, prec):
        return np.asarray(_core.cpu_matmul(w.reshape(-1), type_name, rows, cols, np.ascontiguousarray(xs),
                                           cpu.pool(2), prec, small_batches=True))
    big = {"high": run(x[:200], "high"), "q8": run(x, "q8")}   # > 1 tile: 400 activation rows
    for n in range(8, 16):
        assert np.array_equal(run(x[:n], "high"), big["high"][:n]), ("high", n)
    for n in range(16, 24):
        got = run(x[:n], "q8")
        assert np.array_equal(got, big["q8"][:n]), ("q8", n)
    kernel_set("scalar")
    w64 = np.abs(dequant_weights(type_name, w)).reshape(rows, cols)
    for i in range(23):
        act, a64 = make_act(type_name, x[i])
        ref = np.array([cpu.vec_dot(type_name, w[r], act) for r in range(rows)])
        tol = 2e-7 * strip_blocks(type_name, cols) * (w64 @ np.abs(a64))
        assert np.all(np.abs(got[i] - ref) <= tol), (type_name, level, i)


def test_matmul_against_dequantized_reference():
    rng = np.random.default_rng(4500)
    rows, cols = 40, 512
    for type_name in ALL_TYPES:
        w = random_weights(rng, type_name, rows, cols)
        x = rng.standard_normal((5, cols)).astype(np.float32)
        got = cpu.matmul(w, type_name, (rows, cols), x)
        ref = x.astype(np.float64) @ dequant_weights(type_name, w).reshape(rows, cols).T
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err < (1e-6 if type_name in FLOAT_TYPES else 2e-2), (type_name, err)


# ---- (e) bad input ----------------------------------------------------------------------------

def test_bad_input_raises_value_error():
    rng = np.random.default_rng(5000)
    w = random_weights(rng, "Q4_K", 4, 512)
    x = rng.standard_normal(512).astype(np.float32)
    with pytest.raises(ValueError, match=r"1151 bytes; Q4_K shape \(4, 512\) needs 1152"):
        cpu.matmul(w.reshape(-1)[:-1], "Q4_K", (4, 512), x)
    with pytest.raises(ValueError, match=r"cols 500 is not a multiple of the Q4_K block size 256"):
        cpu.matmul(w, "Q4_K", (4, 500), x[:500])
    with pytest.raises(ValueError, match=r"no CPU kernel for type 'Q9_K'.*Q4_K"):
        cpu.matmul(w, "Q9_K", (4, 512), x)
    with pytest.raises(ValueError, match=r"shape \(n, 512\), got width 511"):
        cpu.matmul(w, "Q4_K", (4, 512), x[:511])
    with pytest.raises(ValueError, match=r"must be positive"):
        cpu.matmul(w, "Q4_K", (0, 512), x)
    with pytest.raises(ValueError, match=r"a Q4_K row of 512 elements needs 584"):
        cpu.vec_dot("Q4_K", w[0], np.zeros(583, np.uint8))
    with pytest.raises(ValueError, match=r"multiple of 256"):
        cpu.quantize_act("Q8_K", x[:100])
    with pytest.raises(ValueError, match=r"valid choices are scalar, avx2, avx512.*supports: scalar"):
        cpu.set_kernels("avx9000")


def test_features_report_detected_flags():
    f = cpu.features()
    assert f["kernels"] in supported_levels() and f["supported"].startswith("scalar")
    assert f["physical_cores"] >= 1
    if "avx512" in supported_levels():
        assert f["avx512f"] and f["avx512vnni"] and f["os_avx512"]
    if "avx2" in supported_levels():
        assert f["avx2"] and f["fma"] and f["os_avx"]


def test_env_override_and_bad_value(tmp_path):
    import subprocess
    import sys
    code = "from lowbit.runtime import cpu; print(cpu.get_kernels())"
    env = {"PYTHONPATH": str(__import__("pathlib").Path(cpu.__file__).parents[2]), "LOWBIT_CPU": "scalar"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "scalar", out.stderr
    env["LOWBIT_CPU"] = "sse9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "ValueError" in out.stderr and "valid choices are scalar, avx2, avx512" in out.stderr


def test_weight_hint_env_and_no_bits_change():
    """The weight requests' hint (csrc/cpu/weight_stream.h: 'nta' on AMD, 't0' elsewhere, env
    LOWBIT_WEIGHT_HINT) only moves requests: a packed one-token gemv, a few-row packed GEMM and a
    prefill-sized strip GEMM give the same bits under both; a bad value is a ValueError naming the
    choices, as LOWBIT_CPU's."""
    import subprocess
    import sys
    before = _core.cpu_weight_hint()
    assert before in ("nta", "t0") and _core.cpu_features()["weight_hint"] == before
    rng = np.random.default_rng(6100)
    type_name = "Q4_K" if _core.cpu_packs("Q4_K") else "Q8_0"
    rows, cols = 67, 768
    w = random_weights(rng, type_name, rows, cols)
    x = rng.standard_normal((40, cols)).astype(np.float32)
    out = {}
    try:
        for hint in ("nta", "t0"):
            _core.cpu_set_weight_hint(hint)
            assert _core.cpu_weight_hint() == hint
            out[hint] = [cpu.matmul(w, type_name, (rows, cols), x[:n], n_threads=2) for n in (1, 5, 40)]
        with pytest.raises(ValueError, match="nta, t0"):
            _core.cpu_set_weight_hint("t1")
    finally:
        _core.cpu_set_weight_hint(before)
    for a, b in zip(out["nta"], out["t0"]):
        assert np.array_equal(a, b)
    code = "from lowbit import _core; print(_core.cpu_get_kernels(), _core.cpu_weight_hint())"
    env = {"PYTHONPATH": str(__import__("pathlib").Path(cpu.__file__).parents[2]), "LOWBIT_WEIGHT_HINT": "nta"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.split()[-1] == "nta", run.stderr
    env["LOWBIT_WEIGHT_HINT"] = "t2"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode != 0 and "ValueError" in run.stderr and "is not one of: nta, t0" in run.stderr


def test_thread_pool_many_small_jobs_and_shutdown():
    """Back-to-back jobs on one pool, more threads than cores, and pools created and dropped."""
    from lowbit import _core
    rng = np.random.default_rng(6000)
    w = random_weights(rng, "Q8_0", 37, 256)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    ref = cpu.matmul(w, "Q8_0", (37, 256), x, n_threads=1)
    for t in (2, 5):
        for _ in range(200):
            assert np.array_equal(cpu.matmul(w, "Q8_0", (37, 256), x, n_threads=t), ref)
    for t in (1, 3, 8):
        pool = _core.CpuThreadPool(t)
        assert pool.size == t
        assert np.array_equal(_core.cpu_matmul(w.reshape(-1), "Q8_0", 37, 256, x, pool), ref)
        del pool
    assert _core.CpuThreadPool(0).size == cpu.features()["physical_cores"]


# ---- real weights ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def real_tensors(model: str) -> dict:
    """{type name: (tensor name, cols, first 96 rows as bytes)}: one 2-D tensor per type."""
    from _models import real_model_path
    from gguf import GGUFReader
    path = real_model_path(model)
    if path is None:
        return {}
    out = {}
    for t in GGUFReader(path).tensors:
        ty = t.tensor_type.name
        if ty not in out and ty in ALL_TYPES and len(t.data.shape) == 2:
            out[ty] = (t.name, int(t.shape[0]), np.ascontiguousarray(t.data[:96]))
    return out


@pytest.mark.parametrize("model", ["gemma3-270m", "smollm2-135m-instruct"])
def test_matmul_on_real_tensors(model, level):
    """One tensor of every type in the real models: matmul (which quantizes the activations)
    vs float64 x @ dequantized W.T; the error is the q8 activation rounding."""
    tensors = real_tensors(model)
    if not tensors:
        pytest.skip(f"{model} not available")
    rng = np.random.default_rng(7000)
    for ty, (name, cols, w) in tensors.items():
        rows = w.shape[0]
        x = rng.standard_normal((4, cols)).astype(np.float32)
        got = cpu.matmul(w, ty, (rows, cols), x)
        ref = x.astype(np.float64) @ dequant_weights(ty, w).reshape(rows, cols).T
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err < (1e-6 if ty in FLOAT_TYPES else 1.5e-2), (model, name, ty, err)
        assert np.array_equal(got[1], cpu.matmul(w, ty, (rows, cols), x[1], n_threads=1))
    assert len(tensors) >= 2


# ---- (g) no kernel reads past the last byte of its operands -----------------------------------

_GUARD_SCRIPT = r"""
import ctypes, mmap, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from lowbit.runtime import cpu
from test_kernels import random_weights, make_act, block_geometry, ALL_TYPES

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
keep = []

def at_page_end(data):
    # a copy of data whose last byte is the last byte before a PROT_NONE page
    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    pages = (data.nbytes + PAGE - 1) // PAGE + 1
    buf = mmap.mmap(-1, pages * PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(base + (pages - 1) * PAGE, PAGE, 0) == 0
    keep.append(buf)
    out = np.frombuffer(buf, np.uint8, data.nbytes, (pages - 1) * PAGE - data.nbytes)
    out[:] = data
    return out

rng = np.random.default_rng(7)
for level in cpu.features()["supported"].split(","):
    cpu.set_kernels(level.strip())
    for ty in ALL_TYPES:
        bs, _ = block_geometry(ty)
        step = max(bs, 32)
        for nb in (1, 2, 3, 5, 7, 9, 19):
            n = step * nb
            w = random_weights(rng, ty, 3, n)
            x = rng.standard_normal((2, n)).astype(np.float32)
            act, _ = make_act(ty, x[0])
            ref = cpu.vec_dot(ty, w[2], act)
            a = np.asarray(act)
            got = cpu.vec_dot(ty, at_page_end(w[2]), at_page_end(a).view(a.dtype))
            assert got == ref, (level, ty, n)
            for prec in ("q8", "high"):
                for xs in (x, np.tile(x, (8, 1))):   # 2 and 16 rows (strip GEMM)
                    ref = cpu.matmul(w, ty, (3, n), xs, act_precision=prec)
                    got = cpu.matmul(at_page_end(w).reshape(3, -1), ty, (3, n), xs, act_precision=prec)
                    assert np.array_equal(got, ref), (level, ty, n, prec)
print("ok")
"""


def test_kernels_never_read_past_their_operands(tmp_path):
    """Weights and activations placed right before an unmapped page: a kernel that reads one byte
    too far (a tail block, a masked batch) crashes the child process."""
    import os
    import subprocess
    import sys
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "guard.py"
    script.write_text(_GUARD_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), tests_dir], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (proc.returncode, proc.stderr[-2000:])

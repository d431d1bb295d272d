"""Block formats: the type table, dequantize == gguf.quants bit for bit, legacy + BF16 quantize ==
gguf.quants.quantize bit for bit, round-trip error within ggml's limits, imatrix steering,
idempotence, and every bad-input path."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from lowbit.quant import blocks
from _models import real_model_path

ALL_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
             "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS"]
GGUF_DEQUANT_TYPES = [t for t in ALL_TYPES if t != "Q8_K"]  # gguf-py has no Q8_K
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]
SEARCHED = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]

# Byte offsets of the fp16 scale fields inside one block (see csrc/quant/blocks.h).
FP16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
}


def random_fp16_bits(rng, size):
    """Finite fp16 values with varied exponents (no NaN/Inf bit patterns), as raw uint16."""
    mags = np.exp(rng.uniform(np.log(1e-6), np.log(6e4), size)).astype(np.float16)
    return (mags * rng.choice([-1, 1], size).astype(np.float16)).view(np.uint16)


def random_blocks(rng, qtype, n_blocks):
    """Random bytes for n_blocks of qtype with sane (finite) scales and float payloads."""
    info = blocks.type_info(qtype)
    if qtype == "F32":
        return (rng.standard_normal(n_blocks) * 100).astype(np.float32).view(np.uint8)
    if qtype == "F16":
        return random_fp16_bits(rng, n_blocks).view(np.uint8)
    if qtype == "BF16":
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint32).astype(np.uint16)
        exp = (bits >> 7) & 0xFF
        bits[exp == 0xFF] &= np.uint16(0xBFFF)  # clear one exponent bit: finite
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, info["type_size"]), dtype=np.uint8)
    if qtype == "Q8_K":
        raw[:, 0:4] = (rng.standard_normal((n_blocks, 1)).astype(np.float32)).view(np.uint8)
    for off in FP16_FIELDS.get(qtype, []):
        raw[:, off:off + 2] = random_fp16_bits(rng, (n_blocks, 1)).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def ggml_total_error(x, y):
    """test-quantize-fns' error measure: sqrt(sum of squared differences) / n."""
    d = x.astype(np.float64) - y.astype(np.float64)
    return float(np.sqrt(np.sum(d * d)) / x.size)


# ---------------------------------------------------------------- type table


def test_type_table_lists_every_computable_type():
    table = {t["name"]: t for t in blocks.types()}
    # the i-quant / ternary / FP4 types are checked in test_iquants.py
    assert set(table) == set(ALL_TYPES) | {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
                                           "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"}
    assert table["Q4_K"]["block_size"] == 256 and table["Q4_K"]["type_size"] == 144
    assert table["Q4_K"]["bits_per_weight"] == 4.5
    assert table["IQ4_XS"]["bits_per_weight"] == 4.25
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL"]:
        assert table[name]["vec_dot_type"] == "Q8_0"
    for name in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]:
        assert table[name]["vec_dot_type"] == "Q8_K"
    for name in ["F32", "F16", "BF16"]:
        assert table[name]["vec_dot_type"] == "F32"
    for name, t in table.items():
        assert t["type_id"] == int(GT[name])


def test_type_info_is_case_insensitive_and_unknown_names_list_supported():
    assert blocks.type_info("q4_k") == blocks.type_info("Q4_K")
    with pytest.raises(ValueError, match=r"unknown quantization type 'Q7_K'.*Q4_K"):
        blocks.type_info("Q7_K")
    with pytest.raises(ValueError, match="IQ2_XXS"):
        blocks.quantize(np.ones(256, np.float32), "IQ2_XXS")


# ---------------------------------------------------------------- dequantize


@pytest.mark.parametrize("qtype", GGUF_DEQUANT_TYPES)
def test_dequantize_matches_gguf_bit_exact_on_random_blocks(qtype):
    rng = np.random.default_rng(1000 + ALL_TYPES.index(qtype))
    info = blocks.type_info(qtype)
    rows, blocks_per_row = 5, 3
    raw = random_blocks(rng, qtype, rows * blocks_per_row)
    shape = (rows, blocks_per_row * info["block_size"])
    ours = blocks.dequantize(raw, qtype, shape)
    ref = gguf_dequantize(raw.reshape(rows, -1), GT[qtype]).reshape(shape).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_dequantize_q8_K_is_d_times_q():
    rng = np.random.default_rng(7)
    raw = random_blocks(rng, "Q8_K", 4).reshape(4, 292)
    d = raw[:, :4].copy().view(np.float32)
    q = raw[:, 4:260].copy().view(np.int8).astype(np.float32)
    assert np.array_equal(blocks.dequantize(raw, "Q8_K", (4, 256)), (d * q).astype(np.float32))


def _check_model_tensors(path, max_tensors=None, rng=None):
    reader = GGUFReader(path)
    tensors = [t for t in reader.tensors if t.tensor_type.name in ALL_TYPES]
    if max_tensors is not None and len(tensors) > max_tensors:
        keep = rng.choice(len(tensors), max_tensors, replace=False)
        tensors = [tensors[i] for i in sorted(keep)]
    seen = set()
    for t in tensors:
        name = t.tensor_type.name
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF dims are innermost-first
        ours = blocks.dequantize(np.asarray(t.data), name, shape)
        ref = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32)), t.name
        seen.add(name)
    return seen


def test_dequantize_every_tensor_of_smollm2():
    path = real_model_path("smollm2-135m-instruct")
    if path is None:
        pytest.skip("smollm2-135m-instruct.gguf not available")
    seen = _check_model_tensors(path)
    assert {"Q8_0"} <= seen


def test_dequantize_sample_of_gemma3_tensors():
    path = real_model_path("gemma3-270m")
    if path is None:
        pytest.skip("gemma3-270m.gguf not available")
    seen = _check_model_tensors(path, max_tensors=40, rng=np.random.default_rng(3))
    assert len(seen) >= 2


# ---------------------------------------------------------------- legacy + float quantize


def legacy_test_rows(rng):
    """Rows of 96 weights (3 blocks): scaled normals, extremes, all-equal, tiny, mixed-sign maxima."""
    rows = [rng.standard_normal(96) * s for s in (1e-3, 0.05, 1.0, 30.0, 1000.0)]
    rows.append(np.full(96, 0.37))                       # all equal, positive
    rows.append(np.full(96, -2.5))                       # all equal, negative
    rows.append(np.where(np.arange(96) % 7 == 0, 60000.0, -60000.0))  # fp16-range extremes
    rows.append(rng.standard_normal(96) * 1e-6)          # tiny (fp16 subnormal scales)
    rows.append(rng.standard_normal(96) * 1e-30)         # far below fp16: scales flush to 0
    r = rng.standard_normal(96)
    r[5], r[40] = 4.0, -4.0                               # tie in magnitude: first one wins
    rows.append(r)
    rows.append(np.zeros(96))
    rows.append(rng.uniform(-1, 1, 96).round(1))         # many exact .5-step products
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("qtype", LEGACY + ["BF16"])
def test_legacy_and_bf16_quantize_match_gguf_bit_exact(qtype):
    rng = np.random.default_rng(20 + (LEGACY + ["BF16"]).index(qtype))
    for x in (legacy_test_rows(rng), (rng.standard_normal((13, 160)) * 3).astype(np.float32),
              (rng.standard_normal((1, 32)) - 5).astype(np.float32)):
        ours = blocks.quantize(x, qtype)
        ref = gguf_quantize(x, GT[qtype]).view(np.uint8).reshape(x.shape[0], -1)
        assert ours.shape == ref.shape
        bad = np.nonzero((ours != ref).any(axis=1))[0]
        assert bad.size == 0, f"rows {bad.tolist()} differ"


def test_float_types_quantize_like_numpy():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, 64)) * np.array([[1e-6], [1.0], [1e4]])).astype(np.float32)
    assert np.array_equal(blocks.quantize(x, "F32").view(np.float32), x)
    assert np.array_equal(blocks.quantize(x, "F16").view(np.uint16), x.astype(np.float16).view(np.uint16))
    assert np.array_equal(blocks.quantize(x, "BF16"), gguf_quantize(x, GT.BF16).view(np.uint8))


def test_q8_K_quantize_matches_numpy_port():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((4, 512)) * 2).astype(np.float32)
    x[1, 256:] = 0
    raw = blocks.quantize(x, "Q8_K").reshape(-1, 292)
    rows = x.reshape(-1, 256)
    for b, blk in zip(raw, rows):
        amax_i = np.argmax(np.abs(blk))
        if blk[amax_i] == 0:
            assert not b.any()
            continue
        iscale = np.float32(-127.0) / blk[amax_i]
        q = np.minimum(127, np.rint(iscale * blk)).astype(np.int8)
        assert np.array_equal(b[4:260].view(np.int8), q)
        assert b[:4].view(np.float32)[0] == np.float32(1) / iscale
        assert np.array_equal(b[260:].view(np.int16), q.astype(np.int32).reshape(16, 16).sum(1))


# ---------------------------------------------------------------- round-trip error


# ggml test-quantize-fns: 0.1 + 2 cos(i) on 4096 values, error sqrt(sum d^2)/n.
GGML_LIMITS = {"Q2_K": 0.0075, "Q3_K": 0.0040}


@pytest.mark.parametrize("qtype", [t for t in ALL_TYPES if t != "F32"])
def test_round_trip_error_within_ggml_limits(qtype):
    x = (0.1 + 2 * np.cos(np.arange(4096, dtype=np.float32))).astype(np.float32)
    y = blocks.dequantize(blocks.quantize(x, qtype), qtype, x.shape)
    assert ggml_total_error(x, y) < GGML_LIMITS.get(qtype, 0.002)


# ---------------------------------------------------------------- imatrix


@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_imatrix_lowers_importance_weighted_error(qtype):
    rng = np.random.default_rng(40 + IMATRIX_TYPES.index(qtype))
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    imatrix = np.exp(2.0 * rng.standard_normal(1024)).astype(np.float32)
    plain = blocks.dequantize(blocks.quantize(x, qtype), qtype, x.shape)
    steered = blocks.dequantize(blocks.quantize(x, qtype, imatrix=imatrix), qtype, x.shape)
    err_plain = float(np.sum(imatrix * (x - plain) ** 2))
    err_steered = float(np.sum(imatrix * (x - steered) ** 2))
    assert err_steered < 0.97 * err_plain, (err_steered, err_plain)


def test_imatrix_ignored_where_ggml_ignores_it():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    w = rng.uniform(0.1, 5, 256).astype(np.float32)
    for qtype in ["Q8_0", "F16", "BF16", "F32", "Q8_K"]:
        assert np.array_equal(blocks.quantize(x, qtype, imatrix=w), blocks.quantize(x, qtype))


def test_uniform_imatrix_changes_search_but_stays_accurate():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    for qtype in ["Q4_K", "IQ4_XS", "Q4_0"]:
        y = blocks.dequantize(blocks.quantize(x, qtype, imatrix=np.ones(512, np.float32)), qtype, x.shape)
        assert np.sqrt(np.mean((x - y) ** 2)) < 0.12


# ---------------------------------------------------------------- idempotence


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_requantizing_dequantized_values_is_stable(qtype):
    rng = np.random.default_rng(60)
    x = (rng.standard_normal((8, 256)) * rng.uniform(0.01, 50, (8, 1))).astype(np.float32)
    q1 = blocks.quantize(x, qtype)
    q2 = blocks.quantize(blocks.dequantize(q1, qtype, x.shape), qtype)
    assert np.array_equal(q1, q2)


@pytest.mark.parametrize("qtype", SEARCHED)
def test_requantizing_searched_types_stays_close(qtype):
    """Scale searches are not exactly idempotent, but a second pass must not drift."""
    rng = np.random.default_rng(61)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    y1 = blocks.dequantize(blocks.quantize(x, qtype), qtype, x.shape)
    y2 = blocks.dequantize(blocks.quantize(y1, qtype), qtype, x.shape)
    e1 = np.sqrt(np.mean((x - y1) ** 2))
    assert np.sqrt(np.mean((y1 - y2) ** 2)) <= 0.5 * e1


# ---------------------------------------------------------------- shapes and bad input


def test_1d_and_2d_shapes():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    q2 = blocks.quantize(x, "Q4_K")
    assert q2.shape == (3, 2 * 144) and q2.dtype == np.uint8
    q1 = blocks.quantize(x[1], "Q4_K")
    assert q1.shape == (288,) and np.array_equal(q1, q2[1])
    assert blocks.dequantize(q2, "Q4_K", (3, 512)).shape == (3, 512)
    assert blocks.dequantize(q1.tobytes(), "Q4_K", 512).shape == (512,)
    assert blocks.dequantize(q2, "Q4_K", (3, 1, 512)).shape == (3, 1, 512)
    # float64 and non-contiguous input is converted
    assert np.array_equal(blocks.quantize(x.astype(np.float64)[:, ::1], "Q8_0"), blocks.quantize(x, "Q8_0"))
    assert np.array_equal(blocks.quantize(np.asfortranarray(x), "Q5_K"), blocks.quantize(x, "Q5_K"))
    assert blocks.row_bytes("q6_k", 512) == 420


def test_large_input_is_parallel_and_equal_to_row_by_row():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((64, 2048)).astype(np.float32)
    whole = blocks.quantize(x, "Q4_K")
    for r in (0, 31, 63):
        assert np.array_equal(whole[r], blocks.quantize(x[r], "Q4_K"))


def test_bad_inputs_raise_value_error_with_numbers():
    x = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match=r"row length 100 .* Q4_K's block size 256"):
        blocks.quantize(np.ones(100, np.float32), "Q4_K")
    with pytest.raises(ValueError, match=r"row length 48 .* block size 32"):
        blocks.quantize(np.ones((2, 48), np.float32), "Q8_0")
    with pytest.raises(ValueError, match="unknown quantization type 'Q9'"):
        blocks.quantize(x, "Q9")
    with pytest.raises(ValueError, match=r"imatrix has shape \(128,\), expected \(256,\)"):
        blocks.quantize(x, "Q4_K", imatrix=np.ones(128, np.float32))
    with pytest.raises(ValueError, match=r"imatrix\[3\] = -1"):
        blocks.quantize(x, "Q4_K", imatrix=np.where(np.arange(256) == 3, -1, 1).astype(np.float32))
    with pytest.raises(ValueError, match="not a finite"):
        blocks.quantize(x, "Q4_K", imatrix=np.full(256, np.nan, np.float32))
    bad = x.copy()
    bad[1, 7] = np.nan
    with pytest.raises(ValueError, match="non-finite value nan at row 1, column 7"):
        blocks.quantize(bad, "Q4_0")
    bad[1, 7] = np.inf
    with pytest.raises(ValueError, match="non-finite value inf"):
        blocks.quantize(bad, "IQ4_XS")
    assert blocks.quantize(bad, "F16").shape == (2, 512)  # float types carry inf as is
    with pytest.raises(ValueError, match=r"1-D row or a 2-D"):
        blocks.quantize(np.ones((2, 2, 256), np.float32), "Q4_K")
    raw = blocks.quantize(x, "Q4_K")
    with pytest.raises(ValueError, match=r"raw data has 287 bytes .* needs 288"):
        blocks.dequantize(raw.reshape(-1)[:287], "Q4_K", (2, 256))
    with pytest.raises(ValueError, match=r"raw data has 144 bytes .* needs 288"):
        blocks.dequantize(raw[0], "Q4_K", (2, 256))
    with pytest.raises(ValueError, match=r"raw data has 288 bytes .* needs 144"):
        blocks.dequantize(raw, "Q4_K", 256)
    with pytest.raises(ValueError, match=r"row length 200"):
        blocks.dequantize(raw, "Q4_K", (2, 200))
    with pytest.raises(ValueError, match="bad shape"):
        blocks.dequantize(raw, "Q4_K", (-2, 256))


def test_core_checks_byte_counts_itself():
    from lowbit import _core
    with pytest.raises(ValueError, match=r"raw data has 10 bytes but 1 rows of 256 Q4_K weights need 144"):
        _core.dequantize(np.zeros(10, np.uint8), "Q4_K", 1, 256)
    with pytest.raises(ValueError, match="imatrix has 3 values"):
        _core.quantize(np.ones((1, 256), np.float32), "Q4_K", np.ones(3, np.float32))
    with pytest.raises(ValueError, match="negative row count"):
        _core.dequantize(np.zeros(0, np.uint8), "Q4_K", -1, 256)

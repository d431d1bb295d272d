"""The IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M quantizers (csrc/quant/iq2_quant.cpp, iq1_quant.cpp,
the shared lattice search in iq_search.cpp).

Oracle: ggml_quantize_chunk of the dev oracle's libggml-base (llama-cpp-python 0.3.36, skipped
without it), which is what llama.cpp's model quantizer calls per tensor: every byte equal, on
varied synthetic rows and on real tensors (SmolLM2's ffn_down, dequantized from its Q4_1 to F32:
full of exact ties, which IQ1's sorted split search must order as glibc's stable qsort does).
Without the oracle: the imatrix rule (IQ2_XXS / IQ2_XS / IQ1_S refuse without one, as ggml asserts),
round-trip error of a 1.5-2.6 bit format, and importance steering the error.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from lowbit.quant import blocks

sys.path.insert(0, os.path.dirname(__file__))
from test_iquants import ggml_quantize_or_skip  # noqa: E402
from test_quant_llama_cpp import _weights  # noqa: E402

NEW_TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
NEEDS_IMATRIX = ["IQ2_XXS", "IQ2_XS", "IQ1_S"]          # ggml_quantize_requires_imatrix
# relative RMSE bound of Gaussian rows (measured 0.36 0.31 0.26 0.50 0.46 with a flat imatrix)
MAX_REL_ERR = {"IQ2_XXS": 0.42, "IQ2_XS": 0.36, "IQ2_S": 0.30, "IQ1_S": 0.58, "IQ1_M": 0.54}


def gaussian_rows(rng, rows=8, cols=1024):
    return (rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-3, 2, (rows, 1)))).astype(np.float32)


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_imatrix_rule(type_name):
    """IQ2_XXS / IQ2_XS / IQ1_S need importances (ggml asserts one): ValueError naming the type;
    IQ2_S / IQ1_M quantize without one, as in ggml."""
    x = gaussian_rows(np.random.default_rng(1), 2, 512)
    info = blocks.type_info(type_name)
    assert info["can_quantize"] and info["uses_imatrix"]
    assert info["requires_imatrix"] == (type_name in NEEDS_IMATRIX)
    if type_name in NEEDS_IMATRIX:
        with pytest.raises(ValueError, match=f"{type_name} needs an importance matrix"):
            blocks.quantize(x, type_name)
    else:
        assert blocks.quantize(x, type_name).shape == (2, blocks.row_bytes(type_name, 512))


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_round_trip_and_importance(type_name):
    """The error is that of the format's bit rate, and weighting the even columns 100x moves the
    error off them."""
    rng = np.random.default_rng(9)
    x = gaussian_rows(rng)
    flat = np.ones(x.shape[1], np.float32)
    back = blocks.dequantize(blocks.quantize(x, type_name, imatrix=flat), type_name, x.shape)
    err = np.linalg.norm(back - x, axis=1) / np.linalg.norm(x, axis=1)
    assert np.all(err < MAX_REL_ERR[type_name]), err
    imp = np.where(np.arange(x.shape[1]) % 2 == 0, 100.0, 1.0).astype(np.float32)
    steered = blocks.dequantize(blocks.quantize(x, type_name, imatrix=imp), type_name, x.shape)
    even_err = lambda b: np.linalg.norm((b - x)[:, ::2]) / np.linalg.norm(x[:, ::2])  # noqa: E731
    assert even_err(steered) < 0.92 * even_err(back)


def test_zero_and_tiny_rows_stay_finite():
    """All-zero and sub-epsilon groups: scale 0 (nothing divides by it), finite output."""
    x = np.zeros((3, 512), np.float32)
    x[1] = 1e-20
    x[2, :256] = np.random.default_rng(2).standard_normal(256)
    imatrix = np.ones(512, np.float32)
    for type_name in NEW_TYPES:
        back = blocks.dequantize(blocks.quantize(x, type_name, imatrix=imatrix), type_name, x.shape)
        assert np.all(np.isfinite(back)) and np.abs(back[:2]).max() < 1e-3, type_name


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_bytes_equal_ggml(type_name):
    """ggml_quantize_chunk on varied rows (scales over 6 decades, outliers, zero, constant, +-1,
    exact halves, sub-epsilon rows), with an imatrix and, where ggml allows, without: every byte."""
    ggml_quantize = ggml_quantize_or_skip()
    rng = np.random.default_rng(5)
    x = _weights(rng, 96, 512)
    imatrix = np.exp(rng.standard_normal(512)).astype(np.float32)
    assert blocks.quantize(x, type_name, imatrix=imatrix).tobytes() == ggml_quantize(x, type_name, imatrix).tobytes()
    if type_name not in NEEDS_IMATRIX:
        assert blocks.quantize(x, type_name).tobytes() == ggml_quantize(x, type_name).tobytes()


@pytest.fixture(scope="module")
def smollm2_ffn_down():
    """Two of SmolLM2's ffn_down matrices (its only ones with rows of a multiple of 256),
    dequantized to F32, with a log-normal imatrix."""
    import gguf
    from gguf import quants as gq
    from _models import real_model_or_skip
    reader = gguf.GGUFReader(real_model_or_skip("smollm2-135m-instruct"))
    out = {}
    for t in reader.tensors:
        if t.name in ("blk.0.ffn_down.weight", "blk.17.ffn_down.weight"):
            out[t.name] = gq.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0])).astype(np.float32)
    rng = np.random.default_rng(3)
    return out, np.exp(1.5 * rng.standard_normal(1536)).astype(np.float32)


@pytest.mark.parametrize("type_name", NEW_TYPES)
def test_real_tensors_bytes_equal_ggml(type_name, smollm2_ffn_down):
    ggml_quantize = ggml_quantize_or_skip()
    tensors, imatrix = smollm2_ffn_down
    for name, x in tensors.items():
        ours = blocks.quantize(x, type_name, imatrix=imatrix)
        assert ours.tobytes() == ggml_quantize(x, type_name, imatrix).tobytes(), name
        if type_name not in NEEDS_IMATRIX:
            assert blocks.quantize(x, type_name).tobytes() == ggml_quantize(x, type_name).tobytes(), name

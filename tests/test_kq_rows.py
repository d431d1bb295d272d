"""The k-quant multi-row dots at every row length's group remainder.
The AVX-512 k-quant rows kernels take super-blocks in groups of 4 and the last n_sb % 4 (1..3)
as one partial group (csrc/cpu/dot_avx512.cpp); a decode step dots a token's hi and lo rows
(act_precision "high": 2 activation rows per call) or one q8 row. Oracle: the scalar kernel set,
bit for bit (kernels.h: k-quant SIMD dots equal the scalar spec). Rows of 1..9 super-blocks cover
no / one / two full groups with each remainder; 1..8 x rows cover every rows-kernel width below
the strip GEMM (16 x rows).
"""
from __future__ import annotations

import numpy as np
import pytest

from lowbit.runtime import cpu
from test_kernels import kernel_set, random_weights, supported_levels  # noqa: F401 (fixture)

K_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]


@pytest.mark.parametrize("type_name", K_TYPES)
def test_k_rows_every_group_remainder_equals_scalar(type_name, kernel_set):
    simd = [lv for lv in supported_levels() if lv != "scalar"]
    if not simd:
        pytest.skip("no SIMD kernel set on this CPU")
    rng = np.random.default_rng(5100 + K_TYPES.index(type_name))
    rows = 3
    for n_sb in range(1, 10):
        cols = 256 * n_sb
        w = random_weights(rng, type_name, rows, cols)
        x = (rng.standard_normal((8, cols)) * rng.uniform(0.1, 10, size=(8, 1))).astype(np.float32)
        for precision in ("q8", "high"):
            for n in (1, 2, 3, 5, 8):
                kernel_set("scalar")
                ref = cpu.matmul(w, type_name, (rows, cols), x[:n], n_threads=1, act_precision=precision)
                assert np.all(np.isfinite(ref))
                for level in simd:
                    kernel_set(level)
                    got = cpu.matmul(w, type_name, (rows, cols), x[:n], n_threads=1, act_precision=precision)
                    assert np.array_equal(got, ref), (type_name, level, n_sb, precision, n)

"""The CUDA backend's block arithmetic, checked on the host in every build (GPU or not).

csrc/cuda/quant_hd.h holds each format's block decode and block dot as inline functions that nvcc
compiles into the kernels and the host compiler compiles into lowbit._core.cuda_host_check, which
runs them on fresh random valid blocks against the scalar spec (csrc/cuda/host_check.h):
  * decode == quant/reference.h's dequantizer, bit for bit;
  * dot with unit scales and activations in [-4, 4] (all sums exact floats) == cpu::scalar's dot;
  * dot with random scales within tier 1 (1e-6 of sum |w_i a_i|) of cpu::scalar's dot.
"""
from __future__ import annotations

import random

import pytest

from lowbit import _core

# Every format the CPU computes with, except Q8_K (an activation format, never a weight).
CPU_WEIGHT_FORMATS = sorted(t["name"] for t in _core.quant_types() if t["name"] != "Q8_K")


def test_every_cpu_weight_format_has_a_device_path():
    assert sorted(_core.cuda_formats()) == CPU_WEIGHT_FORMATS


@pytest.mark.parametrize("blocks", [1, 3, 16])
def test_block_arithmetic_matches_scalar_spec(blocks):
    seed = random.getrandbits(63)
    checks = _core.cuda_host_check(seed, blocks)
    assert sorted(checks) == CPU_WEIGHT_FORMATS
    for name, c in checks.items():
        ctx = f"{name} seed={seed} blocks={blocks}"
        assert c["values"] >= 32 * blocks, ctx
        assert c["decode_mismatches"] == 0, ctx
        assert c["dot_int_mismatches"] == 0, ctx
        assert c["dot_rel_err"] <= 1e-6, (ctx, c["dot_rel_err"])


def test_host_check_rejects_bad_sizes():
    with pytest.raises(ValueError, match="blocks must be in"):
        _core.cuda_host_check(1, 0)


def test_kv_cache_rows_match_the_cpu_cache_bit_for_bit():
    """The device KV cache's f16 and q8_0 rows (csrc/cuda/kv_hd.h) are the CPU cache's bytes and
    decode to its values: what lets a device session with kv_type="q8_0" see the CPU's keys."""
    seed = random.getrandbits(63)
    c = _core.cuda_kv_host_check(seed, 256)
    assert c["values"] == 256 * 128
    assert (c["q8_quantize_mismatches"], c["q8_decode_mismatches"], c["f16_mismatches"]) == (0, 0, 0), (seed, c)
    with pytest.raises(ValueError, match="rows must be in"):
        _core.cuda_kv_host_check(1, 0)

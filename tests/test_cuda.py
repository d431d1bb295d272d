"""CUDA kernels on a device against the CPU path (skips without a CUDA build and device).

lowbit._core.cuda_selftest runs every kernel of csrc/cuda/ on fresh random data of odd shapes
(csrc/cuda/selftest.cu says what each error measures): the decode mat-vec of every format against
the same arithmetic emulated on the host (1e-5) and against cpu::matvec (1e-2 of sum |w x|, both
quantize activations to 8 bits their own way), dequantize bit for bit, prefill mat-mat, RMSNorm,
softmax, RoPE (normal / NeoX), SiLU / GELU gating, the f16 KV-cache write and decode attention.
bench/cuda_check.sh runs this on a lent GPU and prints the bandwidth table.
"""
from __future__ import annotations

import random

import pytest

from lowbit import _core

status = _core.cuda_status()
needs_device = pytest.mark.skipif(status["device_count"] == 0, reason=f"CUDA: {status['message']}")


@pytest.mark.skipif(status["device_count"] > 0, reason="a CUDA device is present")
def test_without_a_device_the_entry_points_raise_cuda_error():
    from lowbit.errors import CudaError

    with pytest.raises(CudaError, match="no CUDA"):
        _core.cuda_selftest(1, False)
    with pytest.raises(CudaError):
        _core.cuda_alloc_probe(1 << 20)


@needs_device
def test_selftest_every_kernel_within_tolerance():
    seed = random.getrandbits(63)
    device, report = _core.cuda_selftest(seed, False)
    assert device
    bad = {k: v for k, v in report.items() if not v["max_err"] <= v["tol"]}   # failed checks show as error/...
    assert not bad, f"seed={seed}: {bad}"
    formats = set(_core.cuda_formats())
    for kind in ("matvec", "matvec_cpu", "dequant", "matmul"):
        assert {k.split("/", 1)[1] for k in report if k.startswith(kind + "/")} == formats, kind
    for op in ("rmsnorm", "softmax", "rope_normal", "rope_neox", "silu_mul", "gelu_tanh_mul", "kv_write_f16",
               "kv_write_q8_0", "attention_decode", "attention_prefill", "attention_decode_q8_0",
               "attention_prefill_q8_0", "kv_shift_f16", "kv_shift_f16_neox", "kv_shift_q8_0", "kv_shift_q8_0_neox"):
        assert op in report


@needs_device
def test_failed_allocation_raises_and_leaves_the_device_usable():
    from lowbit.errors import CudaError

    with pytest.raises(CudaError, match="cudaMalloc of 1125899906842624 bytes failed"):
        _core.cuda_alloc_probe(1 << 50)
    _core.cuda_alloc_probe(1 << 20)
    device, report = _core.cuda_selftest(1, False)
    assert report["rmsnorm"]["max_err"] <= report["rmsnorm"]["tol"]

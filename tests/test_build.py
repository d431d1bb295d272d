"""The extension module imports and reports its CUDA state cleanly on any machine."""
import lowbit


def test_cuda_status_is_clean_without_a_device():
    s = lowbit.cuda_status()
    assert set(s) >= {"compiled", "device_count", "message", "devices"}
    assert isinstance(s["compiled"], bool)
    assert s["compiled"] == lowbit._core.BUILT_WITH_CUDA
    if s["device_count"] == 0:
        assert s["message"].startswith("no CUDA device")
        assert s["devices"] == []
    else:
        assert len(s["devices"]) == s["device_count"]
        for d in s["devices"]:
            assert d["total_bytes"] > 0 and d["name"]


def test_error_hierarchy():
    assert issubclass(lowbit.GGUFError, ValueError)
    assert issubclass(lowbit.ModelError, ValueError)
    assert issubclass(lowbit.CudaError, RuntimeError)
    for cls in (lowbit.GGUFError, lowbit.ModelError, lowbit.TemplateError, lowbit.RegistryError):
        assert issubclass(cls, lowbit.LowbitError)


def test_issue_api_names():
    import numpy as np
    feats = lowbit.cpu_features()
    assert feats["kernels"] in ("scalar", "avx2", "avx512") and feats["physical_cores"] >= 1
    rng = np.random.default_rng(5)
    w = lowbit.quant.blocks.quantize(rng.normal(size=(4, 64)).astype(np.float32), "Q8_0")
    x = rng.normal(size=64).astype(np.float32)
    y = lowbit.quant.blocks.matmul(w, "Q8_0", (4, 64), x, n_threads=1)
    ref = lowbit.quant.blocks.dequantize(w, "Q8_0", (4, 64)).astype(np.float64) @ x
    assert y.shape == (4,) and np.allclose(y, ref, rtol=0.02, atol=0.02 * np.abs(ref).max())

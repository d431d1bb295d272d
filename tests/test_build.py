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

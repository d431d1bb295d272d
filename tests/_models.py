"""Where the real models are for tests: $LOWBIT_TEST_MODELS/<name>.gguf, else the lowbit
cache (pulled on first use, as `lowbit pull` would). None when unavailable (offline, or
LOWBIT_TEST_NO_PULL=1 and not cached), so real-model tests skip with a reason."""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

from lowbit.runtime import registry
from lowbit.errors import RegistryError


@lru_cache(maxsize=None)
def real_model_path(name: str) -> Optional[str]:
    folder = os.environ.get("LOWBIT_TEST_MODELS")
    if folder and os.path.isfile(os.path.join(folder, f"{name}.gguf")):
        return os.path.join(folder, f"{name}.gguf")
    cached = registry.cached_path(name)
    if cached is not None:
        return str(cached)
    if os.environ.get("LOWBIT_TEST_NO_PULL"):
        return None
    try:
        return str(registry.pull(name, quiet=True))
    except (RegistryError, OSError):
        return None


def real_model_or_skip(name: str) -> str:
    """The path of a real model, or skip the calling test saying which one is missing."""
    import pytest
    path = real_model_path(name)
    if path is None:
        pytest.skip(f"{name} not available")
    return path

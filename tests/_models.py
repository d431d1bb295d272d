"""Where tests find the real GGUF models (None -> the test skips)."""
from __future__ import annotations

import os
from pathlib import Path


def real_model_path(name: str) -> str | None:
    """Path of the model file `<name>.gguf`: env LOWBIT_TEST_MODELS dir, /tmp/models, then the cache."""
    candidates = []
    if os.environ.get("LOWBIT_TEST_MODELS"):
        candidates.append(Path(os.environ["LOWBIT_TEST_MODELS"]) / f"{name}.gguf")
    candidates.append(Path("/tmp/models") / f"{name}.gguf")
    candidates.append(Path.home() / ".cache" / "lowbit" / "models" / f"{name}.gguf")
    for p in candidates:
        if p.is_file():
            return str(p)
    return None

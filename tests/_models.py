"""Where the real GGUF models used by dev checks live (one lookup for every test)."""
from __future__ import annotations

import os
from pathlib import Path


def real_model_path(name: str) -> str | None:
    """Path of ``<name>.gguf`` from $LOWBIT_TEST_MODELS, /tmp/models or ~/.cache/lowbit/models;
    None when absent (tests then skip)."""
    candidates = []
    env_dir = os.environ.get("LOWBIT_TEST_MODELS")
    if env_dir:
        candidates.append(Path(env_dir) / f"{name}.gguf")
    candidates.append(Path("/tmp/models") / f"{name}.gguf")
    candidates.append(Path.home() / ".cache" / "lowbit" / "models" / f"{name}.gguf")
    for path in candidates:
        if path.is_file():
            return str(path)
    return None

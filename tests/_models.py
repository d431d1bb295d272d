"""Where the real GGUF models used by tests live. The one place to change that lookup."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def real_model_path(name: str) -> Optional[str]:
    """Path of ``<name>.gguf``, or None (tests then skip). Looks in $LOWBIT_TEST_MODELS, then
    /tmp/models, then ~/.cache/lowbit/models."""
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

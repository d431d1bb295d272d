"""The runtime: load, Model, sessions, generation, sampling, chat templates, tokenizer."""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple


@lru_cache(maxsize=None)
def engine_architectures() -> Tuple[str, ...]:
    """The ``general.architecture`` values the compiled engine runs, in its order."""
    from lowbit import _core
    return tuple(a.strip() for a in _core.supported_architectures().split(","))

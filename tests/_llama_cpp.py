"""llama-cpp-python as a dev-only oracle: importable from the site-packages directory named by
LOWBIT_LLAMA_CPP_SITE (e.g. /work/oracle-venv/lib/python3.11/site-packages, appended to sys.path),
else the calling test skips with the reason."""
from __future__ import annotations

import os
import sys

import pytest


def llama_cpp_or_skip():
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE")
    if not site:
        pytest.skip("set LOWBIT_LLAMA_CPP_SITE to a site-packages with llama-cpp-python to run")
    if site not in sys.path:
        sys.path.append(site)
    try:
        import llama_cpp  # noqa: PLC0415
    except Exception as exc:  # pragma: no cover - depends on the dev machine
        pytest.skip(f"llama_cpp not importable from {site}: {exc}")
    return llama_cpp

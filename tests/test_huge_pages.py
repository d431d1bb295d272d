"""Weights copied or packed at load live on transparent huge pages (common.h: Pages::Huge, the
arena of huge_pages.cpp) where the system's THP mode lets a process ask for them, and the arena
gives its memory back when the model is closed (no growth over load / close cycles).

Each check runs in a fresh interpreter: /proc/self/smaps_rollup counts the whole process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import lowbit  # noqa: E402
import model_factory as mf  # noqa: E402

THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"

# Loads the model `cycles` times (eval of a few tokens, close), printing the process's anonymous
# huge-page kB and resident kB after the first load and after each close, plus the copied bytes.
SCRIPT = r"""
import gc, json, sys
import numpy as np
from lowbit import _core

def rollup():
    out = {}
    for line in open("/proc/self/smaps_rollup"):
        key, _, rest = line.partition(":")
        if key in ("AnonHugePages", "Rss"):
            out[key] = int(rest.split()[0])
    return out

path, cycles = sys.argv[1], int(sys.argv[2])
report = {"before": rollup(), "loaded": [], "closed": []}
for _ in range(cycles):
    e = _core.Engine(path, 64, 2, 16)
    e.eval(np.arange(1, 9, dtype=np.int32))
    report["copied"] = e.memory()["weights_copied_bytes"]
    report["loaded"].append(rollup())
    e.close()
    del e
    gc.collect()
    report["closed"].append(rollup())
print(json.dumps(report))
"""


def thp_mode() -> str | None:
    try:
        text = open(THP_MODE).read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def run_cycles(path, cycles: int) -> dict:
    if not os.path.exists("/proc/self/smaps_rollup"):
        pytest.skip("no /proc/self/smaps_rollup on this system")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lowbit.__file__)))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(cycles)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    # n_ff large enough that the fused gate|up copies span several 2 MB pages
    spec = mf.default_spec("llama")
    return mf.write_tiny_model(tmp_path_factory.mktemp("huge") / "llama.gguf", spec)


def test_copied_weights_on_huge_pages(model_path):
    mode = thp_mode()
    if mode not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages unavailable here (mode {mode!r})")
    rep = run_cycles(model_path, 1)
    assert rep["copied"] > 0   # the tiny llama fuses q|k|v and gate|up: copies made at load
    gained = rep["loaded"][0]["AnonHugePages"] - rep["before"]["AnonHugePages"]
    # the copies' region is one 2 MB-aligned huge page at least (unless memory is too fragmented
    # for the kernel to find one: then this fails and says so)
    assert gained >= 2048, f"no huge page for the copied weights: {rep}"
    assert rep["closed"][0]["AnonHugePages"] <= rep["before"]["AnonHugePages"], rep


def test_closing_returns_the_arena_memory(model_path):
    rep = run_cycles(model_path, 6)
    rss = [r["Rss"] for r in rep["closed"]]
    # every close unmaps the regions its copies lived in: no growth from the second cycle on
    # beyond allocator noise (each cycle's copies are 2 MB+ with huge pages)
    assert max(rss[1:]) - rss[1] < 2048, rss

"""The weight requests' hint (csrc/cpu/weight_stream.h: prefetchnta on AMD, prefetcht0 elsewhere)
measured both ways in one process: per model, one engine, the hint switched with
`_core.cpu_set_weight_hint` between passes (interleaved, best of -r), one-token decode tok/s and
pp tok/s. Bits do not depend on the hint (tests/test_kernels.py), only speed does.

    PYTHONPATH=python python bench/bench_weight_hint.py [MODELS ...] [-r 3] [--threads 2]
        [--steps 32] [-p 512] [--json out.json]

MODELS: registry names or .gguf paths (default: the two real models).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from lowbit import _core, registry

HINTS = ("t0", "nta")


def measure(path: str, reps: int, threads: int, steps: int, prompt: int) -> dict:
    e = _core.Engine(path, prompt + steps + 8, threads, prompt, "f16", "auto")
    ids = np.random.default_rng(0).integers(0, e.n_vocab, prompt + steps + 1).astype(np.int32)
    tg = {h: [] for h in HINTS}
    pp = {h: [] for h in HINTS}
    before = _core.cpu_weight_hint()
    try:
        for _ in range(reps):
            for h in HINTS:
                _core.cpu_set_weight_hint(h)
                e.truncate(0)
                t = time.perf_counter()
                e.eval(ids[:prompt])
                pp[h].append(prompt / (time.perf_counter() - t))
                e.truncate(0)
                e.eval(ids[:1])
                t = time.perf_counter()
                for i in range(1, steps + 1):
                    e.eval(ids[i:i + 1])
                tg[h].append(steps / (time.perf_counter() - t))
    finally:
        _core.cpu_set_weight_hint(before)
    return {"model": os.path.basename(path), "tg": tg, "pp": pp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("--json")
    a = ap.parse_args()
    f = _core.cpu_features()
    print(f"kernels {f['kernels']}, default hint {f['weight_hint']}, load {os.getloadavg()}", flush=True)
    print(f"| model | tg t0 | tg nta | t0 / nta | pp{a.p} t0 | pp{a.p} nta |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for m in a.models:
        path = m if m.endswith(".gguf") else str(registry.resolve(m))
        r = measure(path, a.r, a.threads, a.steps, a.p)
        rows.append(r)
        tg = {h: max(r["tg"][h]) for h in HINTS}
        pp = {h: max(r["pp"][h]) for h in HINTS}
        print(f"| {r['model']} | {tg['t0']:.1f} | {tg['nta']:.1f} | {tg['t0'] / tg['nta']:.2f}x | {pp['t0']:.0f} | {pp['nta']:.0f} |",
              flush=True)
    if a.json:
        with open(a.json, "w") as out:
            json.dump({"features": f, "load": os.getloadavg(), "models": rows}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prefill speed of two builds side by side: pp of one prompt (random ids) through `_core.Engine`,
each build in its own process, alternating which goes first, and the paired median of new / old.
For a kernel change that moves prefill (bench_profile.py --ab does the same for decode steps).

    python bench/bench_prefill_ab.py --old OLD_PKG_DIR --new NEW_PKG_DIR [-p 512] [-r 6] [--threads 2]
        [--json out.json] MODEL.gguf [MODEL.gguf ...]

OLD_PKG_DIR / NEW_PKG_DIR: directories holding a `lowbit` package with its built `_core` (e.g. a
git worktree's `python/`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ONE_RUN = r'''
import sys, time, numpy as np
from lowbit import _core
path, n_prompt, n_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
e = _core.Engine(path, n_prompt + 64, n_threads, n_prompt, "f16")
ids = np.random.default_rng(0).integers(100, min(20000, e.n_vocab), n_prompt).astype(np.int32)
e.eval(ids[:64]); e.truncate(0)                  # warm: pages, pool, scratch
t = time.perf_counter(); e.eval(ids); print(n_prompt / (time.perf_counter() - t))
'''


def pp(pkg: str, model: str, n_prompt: int, n_threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=pkg)
    out = subprocess.run([sys.executable, "-c", ONE_RUN, model, str(n_prompt), str(n_threads)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-r", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    report = {"load_avg_before": os.getloadavg(), "models": {}}
    print(f"| model | old pp{a.p} tok/s | new pp{a.p} tok/s | paired median new / old |\n|---|---|---|---:|")
    for model in a.models:
        runs = {"old": [], "new": []}
        for i in range(a.r):
            for k in ("old", "new") if i % 2 == 0 else ("new", "old"):
                runs[k].append(pp(getattr(a, k), model, a.p, a.threads))
        ratios = [n / o for n, o in zip(runs["new"], runs["old"])]
        med = statistics.median(ratios)
        print(f"| {os.path.basename(model)} | {min(runs['old']):.0f}-{max(runs['old']):.0f} | "
              f"{min(runs['new']):.0f}-{max(runs['new']):.0f} | {med:.3f} |", flush=True)
        report["models"][model] = dict(runs, ratios=ratios, paired_median=med)
    report["load_avg_after"] = os.getloadavg()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The packed one-token gemv (and few-row packed GEMM) of one weight type: GB/s of weight bytes,
hot (one matrix that stays in L2/L3, 1 thread: the kernel's compute rate) and cold (copies cycled
past 4x the L3, 2 threads: what decode sees), for one or two builds of the core side by side
(interleaved subprocesses, best of -r passes each).

    PYTHONPATH=python python bench/bench_packed_gemv.py [--types Q6_K,Q8_0] [--ab OLD_core.so [NEW_core.so]]
        [--rows 2048 --cols 2048] [--nact 1 4 8] [--act-precision q8|high] [-r 5] [--json out.json]

The hot figure is the one an unpack change moves; the cold one is capped by the read bandwidth.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np


def load_core(path: str | None):
    """lowbit._core, or the build at `path` installed as lowbit._core (before lowbit is imported,
    so that bench_kernels' import of lowbit uses it: two builds cannot share a process)."""
    if path:
        spec = importlib.util.spec_from_file_location("lowbit._core", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["lowbit._core"] = mod
    from lowbit import _core
    return _core


def best_seconds(fn, calls: int) -> float:
    best = float("inf")
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(core, args) -> list[dict]:
    """GB/s of every (type, nact, mode) with one build (this process's core)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_kernels import COLD_BYTES, random_weights
    rng = np.random.default_rng(1)
    rows = []
    for type_name in args.types.split(","):
        w = random_weights(rng, type_name, args.rows, args.cols)
        packed = np.asarray(core.cpu_pack_rows(w.reshape(-1), type_name, args.rows, args.cols))
        cold = [packed] + [packed.copy() for _ in range(max(1, -(-COLD_BYTES // w.nbytes)) - 1)]
        for nact in args.nact:
            x = rng.standard_normal((nact, args.cols)).astype(np.float32)
            for mode, threads in (("hot", 1), ("cold", 2)):
                pool = core.CpuThreadPool(threads)
                mats = [packed] if mode == "hot" else cold
                run = lambda i: core.cpu_matmul(mats[i % len(mats)], type_name, args.rows, args.cols, x, pool, args.act_precision,
                                                packed=True)
                run(0)
                best = best_seconds(run, 40 if mode == "hot" else 2 * len(mats))
                rows.append({"type": type_name, "nact": nact, "mode": mode, "threads": threads,
                             "gbs": w.nbytes / best / 1e9})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="Q6_K")
    ap.add_argument("--ab", nargs="+", default=None, metavar="CORE", help="one or two _core*.so builds")
    ap.add_argument("--core", help=argparse.SUPPRESS)   # a subprocess of --ab: this build, JSON out
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--nact", type=int, nargs="+", default=[1, 4, 8], help="activation rows per call")
    ap.add_argument("-r", type=int, default=5, help="passes per build (interleaved subprocesses with --ab)")
    ap.add_argument("--act-precision", default="q8", choices=["q8", "high"],
                    help="activations: q8 (one int8 pass) or high (two-pass: twice the int8 work)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.core is not None:
        print(json.dumps(measure(load_core(args.core or None), args)))
        return
    builds = args.ab or [""]
    best: dict[tuple, list[float]] = {}
    for _ in range(args.r):   # two builds of one module cannot share a process: one subprocess per pass
        for k, b in enumerate(builds):
            cmd = [sys.executable, os.path.abspath(__file__), "--core", b, "--types", args.types, "--rows",
                   str(args.rows), "--cols", str(args.cols), "--nact", *map(str, args.nact), "--act-precision", args.act_precision]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for row in json.loads(out.strip().splitlines()[-1]):
                key = (row["type"], row["nact"], row["mode"], row["threads"])
                got = best.setdefault(key, [0.0] * len(builds))
                got[k] = max(got[k], row["gbs"])
    results = []
    for (type_name, nact, mode, threads), gbs in best.items():
        row = {"type": type_name, "rows": args.rows, "cols": args.cols, "nact": nact, "mode": mode, "threads": threads,
               "gbs": gbs}
        if len(gbs) == 2:
            row["new_over_old"] = gbs[1] / gbs[0]
        results.append(row)
        ratio = f"  x{row['new_over_old']:.3f}" if len(gbs) == 2 else ""
        print(f"{type_name:6} {args.rows}x{args.cols} nact={nact} {mode:4} t={threads}  GB/s "
              + "  ".join(f"{g:7.1f}" for g in gbs) + ratio)
    print("builds:", [b or "this build" for b in builds], "best of", args.r, "passes; load:", os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"builds": [b or "this build" for b in builds], "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

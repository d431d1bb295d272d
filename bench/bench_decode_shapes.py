"""One-token mat-vec at the real models' decode shapes, 8-bit ("q8") against two-pass ("high", the
default's decode precision) activations, weights streaming from memory as in a decode step (each
call reads another copy of the matrix, ~96 MB of copies in all), CPU time per call.

    PYTHONPATH=python python bench/bench_decode_shapes.py [--threads 1] [-r 3] [--json out.json]
        [--ab OLD_core.so [NEW_core.so]] [--packed] [--wall]

--packed: the legacy types (Q4_1, Q5_0, Q8_0) as the model loads them, packed strips (the one-token
gemv), K-quants as they are. --wall: wall time per call instead of CPU time (with --threads 2: what
a decode step sees; CPU time would count the pool's waiting).

With --ab the two builds of the core run in alternating subprocesses (-r rounds each, medians), so
a varying machine load hits them alike; without it, this build only. Shapes (rows x cols):
SmolLM2's Q4_1 layers and Q8_0 head, gemma3's Q5_0 / Q4_K / Q6_K layers and Q8_0 head, the
Qwen2.5-0.5B shape's Q5_0 / Q4_K / Q6_K layers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SHAPES = [("Q4_1", 1536, 576), ("Q4_1", 576, 1536), ("Q8_0", 49152, 576), ("Q5_0", 2048, 640),
          ("Q4_K", 640, 2048), ("Q6_K", 640, 2048), ("Q8_0", 262144, 640), ("Q5_0", 4864, 896),
          ("Q4_K", 896, 4864), ("Q6_K", 896, 4864)]
# byte offsets of each block's fp16 scale fields (kept sane; the rest of the block is random)
SCALE_OFFSETS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}
BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q8_0": (32, 34), "Q4_K": (256, 144),
         "Q6_K": (256, 210)}
COPIES_BYTES = 96e6


def random_weights(rng, t: str, rows: int, cols: int) -> np.ndarray:
    bs, bb = BLOCK[t]
    nb = rows * cols // bs
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for off in SCALE_OFFSETS[t]:
        raw[:, off:off + 2] = rng.uniform(1e-3, 1e-1, size=nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(-1)


PACKABLE = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def measure(core_path: str, threads: int, packed: bool = False, wall: bool = False) -> dict:
    """{"TYPE RxC": {"q8": s, "high": s, "bytes": n}} for the core at core_path (best of 5 passes)."""
    if core_path:
        spec = importlib.util.spec_from_file_location("_core", core_path)
        core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(core)
    else:
        from lowbit import _core as core
    rng = np.random.default_rng(0)
    clock = time.perf_counter if wall else time.process_time
    pool = core.CpuThreadPool(threads)
    out = {}
    for t, rows, cols in SHAPES:
        w = random_weights(rng, t, rows, cols)
        pk = packed and t in PACKABLE
        if pk:
            w = np.asarray(core.cpu_pack_rows(w, t, rows, cols))
        copies = [w.copy() for _ in range(max(1, int(COPIES_BYTES // w.nbytes)))]
        x = rng.standard_normal((1, cols)).astype(np.float32)
        row = {"bytes": int(w.nbytes)}
        for prec in ("q8", "high"):
            for c in copies:
                core.cpu_matmul(c, t, rows, cols, x, pool, prec, pk)
            best = float("inf")
            for _ in range(5):
                c0 = clock()
                for c in copies:
                    core.cpu_matmul(c, t, rows, cols, x, pool, prec, pk)
                best = min(best, (clock() - c0) / len(copies))
            row[prec] = best
        out[f"{t} {rows}x{cols}"] = row
    return out


def run_worker(core_path: str, threads: int, packed: bool, wall: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", core_path or "", "--threads", str(threads)]
    cmd += ["--packed"] * packed + ["--wall"] * wall
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-r", "--repeats", type=int, default=3)
    ap.add_argument("--ab", nargs="+", metavar="CORE_SO", help="OLD_core.so [NEW_core.so] (default new: this build)")
    ap.add_argument("--packed", action="store_true", help="legacy types as packed strips (as a model loads them)")
    ap.add_argument("--wall", action="store_true", help="wall time per call (default: CPU time)")
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.threads, args.packed, args.wall)))
        return
    builds = (args.ab + [""])[:2] if args.ab else [""]
    names = ["old", "new"] if args.ab else ["this"]
    load0 = os.getloadavg()
    runs = {n: [] for n in names}
    for _ in range(args.repeats):
        for n, b in zip(names, builds):
            runs[n].append(run_worker(b, args.threads, args.packed, args.wall))
    med = {n: {k: {p: statistics.median(r[k][p] for r in runs[n]) for p in ("q8", "high")} for k in runs[n][0]}
           for n in names}
    print(f"load average {load0} -> {os.getloadavg()}; {args.threads} thread(s), medians of {args.repeats}, "
          f"{'wall' if args.wall else 'CPU'} us per call (GB/s of weights){', legacy types packed' if args.packed else ''}")
    head = " | ".join(f"{n} q8 | {n} high | {n} high/q8" for n in names)
    print(f"| shape | MB | {head} |" + (" new/old high |" if args.ab else ""))
    print("|---|---:|" + "---:|" * (3 * len(names)) + ("---:|" if args.ab else ""))
    for k, row in runs[names[0]][0].items():
        mb = row["bytes"] / 1e6
        cells = []
        for n in names:
            q8, hi = med[n][k]["q8"], med[n][k]["high"]
            cells += [f"{q8 * 1e6:.1f} ({mb / 1e3 / q8:.1f})", f"{hi * 1e6:.1f} ({mb / 1e3 / hi:.1f})", f"{hi / q8:.2f}"]
        extra = f" {med['new'][k]['high'] / med['old'][k]['high']:.2f} |" if args.ab else ""
        print(f"| {k} | {mb:.1f} | " + " | ".join(cells) + " |" + extra)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": [load0, os.getloadavg()], "threads": args.threads, "packed": args.packed, "wall": args.wall, "builds": dict(zip(names, builds)),
                       "median_seconds": med, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()

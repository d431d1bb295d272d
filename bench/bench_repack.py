"""Same-run A/B of packed weights (csrc/cpu/kernels.h, PackedLayout; LOWBIT_REPACK=1, the default)
against the GGML rows (LOWBIT_REPACK=0): prefill (pp, one eval of `-p` tokens) and single-session
decode (tg, `-n` eval steps) through the engine, on the real models and the 0.5B-shaped file of
bench_three_models.py when it is cached, plus the per-op profile of the prefill (LOWBIT_PROFILE's
totals: where its time goes).

    PYTHONPATH=python python bench/bench_repack.py [--threads 2] [-r 3] [-p 512] [-n 64]
        [--models smollm2-135m-instruct gemma3-270m ~/.cache/lowbit/bench/...gguf] [--json out.json]

Each repetition runs both variants in fresh subprocesses, interleaved (0, 1, 0, 1, ...); a
subprocess takes the best of 2 prefills and of 2 decode runs; the table gives medians over the
repetitions and the load average seen.

`--kernels`: one matmul at a time (cpu_matmul on the GGML rows, small_batches as the forward
passes it, against cpu_matmul on cpu_pack_rows' output), the shapes of the three models' matrices,
1 to 512 rows, two-pass activations, both variants alternated in one process (medians of 0.3 s
of calls each, best of 3 rounds): the kernel-level view, much less sensitive to a loaded machine."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MODELS = ["smollm2-135m-instruct", "gemma3-270m", "~/.cache/lowbit/bench/random-qwen2.5-0.5b-shape-q4_k_m.gguf"]


def model_path(name: str) -> str | None:
    p = os.path.expanduser(name)
    if os.path.isfile(p):
        return p
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from _models import real_model_path
    found = real_model_path(name)
    return str(found) if found else None


def worker(path: str, threads: int, p: int, n: int) -> dict:
    from lowbit import _core
    e = _core.Engine(path, p + n + 8, threads, p, "f16", "auto")
    toks = np.random.default_rng(0).integers(100, min(e.n_vocab, 40000), p).astype(np.int32)
    pp, prof = [], None
    for i in range(3):   # a warm-up, then 2 timed (the profile of the last)
        e.truncate(0)
        if i == 2:
            _core.cpu_set_op_profile(True)
            _core.cpu_op_profile(reset=True)
        t0 = time.perf_counter()
        e.eval(toks)
        if i:
            pp.append(p / (time.perf_counter() - t0))
        if i == 2:
            prof = _core.cpu_op_profile(reset=True)
            _core.cpu_set_op_profile(False)
    tg = []
    for _ in range(2):
        e.truncate(p)
        t0 = time.perf_counter()
        for _ in range(n):
            e.eval(np.array([7], np.int32))
        tg.append(n / (time.perf_counter() - t0))
    mem = e.memory()
    e.close()
    ops = {k: v["seconds"] for k, v in prof["ops"].items() if v["seconds"] > 0}
    return {"pp": max(pp), "tg": max(tg), "prefill_ops_s": ops, "weights_copied_bytes": mem["weights_copied_bytes"],
            "total_bytes": mem["total_bytes"]}


KERNEL_SHAPES = [("Q4_1", 3072, 576), ("Q8_0", 49152, 576), ("Q5_0", 4096, 640), ("Q8_0", 262144, 640),
                 ("Q5_0", 9728, 896),
                 # the k-quant matrices: gemma3's and the 0.5B shape's ffn_down, a Qwen3-30B-A3B expert (bench_moe)
                 ("Q4_K", 640, 2048), ("Q6_K", 640, 2048), ("Q4_K", 896, 4864), ("Q6_K", 896, 4864),
                 ("Q4_K", 768, 2048), ("Q4_K", 2048, 768)]


def kernel_ab(threads: int) -> list[dict]:
    from lowbit import _core
    pool = _core.CpuThreadPool(threads)
    rng = np.random.default_rng(5)

    def med_us(f, secs=0.3):
        f()
        ts, end = [], time.time() + secs
        while time.time() < end:
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e6

    rows_out = []
    for typ, rows, cols in KERNEL_SHAPES:
        w = np.asarray(_core.quantize(rng.standard_normal((rows, cols)).astype(np.float32), typ)).reshape(-1)
        p = np.asarray(_core.cpu_pack_rows(w, typ, rows, cols))
        for n in (1, 2, 4, 8, 16, 512):
            if n == 512 and rows > 10000:
                continue
            x = rng.standard_normal((n, cols)).astype(np.float32)
            best = None
            for _ in range(3):
                a = med_us(lambda: _core.cpu_matmul(w, typ, rows, cols, x, pool, "high", small_batches=True))
                b = med_us(lambda: _core.cpu_matmul(p, typ, rows, cols, x, pool, "high", packed=True))
                best = (a, b) if best is None else (min(best[0], a), min(best[1], b))
            rows_out.append({"type": typ, "rows": rows, "cols": cols, "n": n, "plain_us": best[0], "packed_us": best[1],
                             "load": os.getloadavg()[0]})
            print(f"| {typ} {rows}x{cols} | {n} | {best[0]:.0f} | {best[1]:.0f} | {best[0] / best[1]:.2f} |", flush=True)
    return rows_out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--kernels", action="store_true", help="per-matmul A/B instead of the models")
    args = ap.parse_args()
    if args.kernels:
        print(f"load average {os.getloadavg()[0]:.1f}, {args.threads} threads, two-pass activations")
        print("| matrix | x rows | plain us | packed us | packed speed-up |\n|---|---:|---:|---:|---:|")
        res = kernel_ab(args.threads)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.p, args.n)))
        return 0
    results, loads = [], [os.getloadavg()[0]]
    for name in args.models:
        path = model_path(name)
        if not path:
            print(f"skip {name}: not found")
            continue
        runs = {"0": [], "1": []}
        for _ in range(args.r):
            for v in ("0", "1"):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", path, "--threads",
                                      str(args.threads), "-p", str(args.p), "-n", str(args.n)],
                                     env=dict(os.environ, LOWBIT_REPACK=v), capture_output=True, text=True, check=True)
                runs[v].append(json.loads(out.stdout.strip().splitlines()[-1]))
                loads.append(os.getloadavg()[0])
        med = {v: {k: statistics.median(r[k] for r in runs[v]) for k in ("pp", "tg")} for v in runs}
        results.append({"model": os.path.basename(path), "plain": med["0"], "packed": med["1"], "runs": runs})
    print(f"load average {min(loads):.1f}-{max(loads):.1f}; medians of {args.r} interleaved runs, {args.threads} threads")
    print(f"| model | pp{args.p} plain | pp{args.p} packed | packed / plain | tg plain | tg packed | packed / plain |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        a, b = r["plain"], r["packed"]
        print(f"| {r['model']} | {a['pp']:.1f} | {b['pp']:.1f} | {b['pp'] / a['pp']:.2f} | {a['tg']:.1f} | "
              f"{b['tg']:.1f} | {b['tg'] / a['tg']:.2f} |")
    print("\nprefill profile (ms, median over runs): op: plain -> packed")
    for r in results:
        ops = sorted(r["runs"]["1"][0]["prefill_ops_s"], key=lambda k: -r["runs"]["1"][0]["prefill_ops_s"][k])
        parts = []
        for op in ops[:6]:
            m = {v: statistics.median(x["prefill_ops_s"].get(op, 0.0) for x in r["runs"][v]) * 1e3 for v in ("0", "1")}
            parts.append(f"{op} {m['0']:.0f} -> {m['1']:.0f}")
        print(f"  {r['model']}: " + ", ".join(parts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_avg": loads, "threads": args.threads, "p": args.p, "n": args.n, "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Attention's share of prefill and decode (the C++ op profile's `attention` seconds), A/B of two
builds of the core in the same run (interleaved subprocesses, median of -r runs):

    PYTHONPATH=python python bench/bench_attention.py --ab OLD_core.so [NEW_core.so] [-r 3]
        [--models smollm2-135m-instruct gemma3-270m ~/.cache/lowbit/bench/random-qwen2.5-0.5b-shape-q4_k_m.gguf]
        [--threads 2] [--json out.json]

Per model: pp512 (one 512-token prompt: attention ms and pass ms), decode of 1 and 8 sessions
after a 32-token prompt (attention ms per step over 64 steps), and one session decoding at
position 1024 (attention ms per token over 32 steps: a long context, where a model with one KV
head must still use every thread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_profile import load_core, model_path  # noqa: E402

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def attention_ms(core) -> float:
    return core.cpu_op_profile(reset=True)["ops"]["attention"]["seconds"] * 1e3


def measure(core, path: str, threads: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    e = core.Engine(path, 1200, threads, 512, "f16", "auto")
    n_vocab = e.n_vocab
    toks = lambda n: rng.integers(100, n_vocab - 100, n).astype(np.int32)   # noqa: E731
    e.eval(toks(512))                       # warm-up: weight pages in
    core.cpu_set_op_profile(True)
    best = None
    for _ in range(2):
        e.truncate(0)
        core.cpu_op_profile(reset=True)
        t0 = time.perf_counter()
        e.eval(toks(512))
        wall = time.perf_counter() - t0
        att = attention_ms(core)
        if best is None or wall < best[0]:
            best = (wall, att)
    out["pp512_ms"], out["pp512_attention_ms"] = best[0] * 1e3, best[1]
    e.truncate(0)                            # one session at position 1024
    e.eval(toks(512))
    e.eval(toks(512))
    core.cpu_op_profile(reset=True)
    for _ in range(32):
        e.eval(toks(1))
    out["decode_at_1024_attention_ms"] = attention_ms(core) / 32
    e.close()
    for n in (1, 8):
        lead = core.Engine(path, 128, threads, 64, "f16", "auto")
        engines = [lead] + [lead.new_session(128, threads, 64, "f16", "auto") for _ in range(n - 1)]
        if n == 1:
            lead.eval(toks(32))
        else:
            core.eval_batch([(x, toks(32)) for x in engines])
        core.cpu_op_profile(reset=True)
        t0 = time.perf_counter()
        for _ in range(64):
            if n == 1:
                lead.eval(toks(1))
            else:
                core.eval_batch([(x, toks(1)) for x in engines])
        out[f"decode{n}_step_ms"] = (time.perf_counter() - t0) / 64 * 1e3
        out[f"decode{n}_attention_ms"] = attention_ms(core) / 64
        for x in engines:
            x.close()
    core.cpu_set_op_profile(False)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ab", nargs="+", metavar="CORE_SO", help="old [new] _core builds (new: lowbit._core)")
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:   # one subprocess: one core, one model
        print(json.dumps(measure(load_core(args.worker), args.models[0], args.threads)))
        return 0
    import importlib.util
    cores = {"old": os.path.abspath(args.ab[0]),
             "new": os.path.abspath(args.ab[1]) if len(args.ab) > 1 else importlib.util.find_spec("lowbit._core").origin}
    load0 = os.getloadavg()[0]
    res = {}
    print("| model | metric | old | new | new/old |\n|---|---|---:|---:|---:|")
    for name in args.models:
        path = model_path(os.path.expanduser(name))
        runs = {k: [] for k in cores}
        for _ in range(args.r):
            for label, so in cores.items():
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", so, "--models", path,
                       "--threads", str(args.threads)]
                p = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[label].append(json.loads(p.stdout.strip().splitlines()[-1]))
        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
        res[os.path.basename(path)] = {"median": med, "runs": runs}
        for m in med["old"]:
            print(f"| {os.path.basename(path).removesuffix('.gguf')} | {m} | {med['old'][m]:.3f} | "
                  f"{med['new'][m]:.3f} | {med['new'][m] / med['old'][m]:.2f} |", flush=True)
    print(f"(load average {load0:.1f} -> {os.getloadavg()[0]:.1f}, {args.threads} threads, median of {args.r})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": cores, "threads": args.threads, "load": [load0, os.getloadavg()[0]], "models": res},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

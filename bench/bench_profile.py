"""Where a decode step's time goes: the per-op profile of the C++ forward (lowbit._core's
cpu_op_profile: matmuls, norms, RoPE, attention, activation quantization, pool idle, output
head) for one-token decode and for a batched step of N sessions, next to the read-bandwidth
roofline (weight bytes read per step / read bandwidth measured in the same run).

    PYTHONPATH=python python bench/bench_profile.py [--models smollm2-135m-instruct gemma3-270m]
        [--threads 2] [--steps 64] [--sessions 1 8] [--core OTHER_core.so --models A.gguf B.gguf]
        [--json out.json]

A/B of two builds of the core (same run, interleaved subprocesses, decode tok/s only):

    PYTHONPATH=python python bench/bench_profile.py --ab OLD_core.so [NEW_core.so] [-r 5]
        [--sessions 1 8 16]

Prefill instead of decode (--prefill N: one N-token prompt into a fresh cache, best of -r passes
per process, with the per-op profile of that pass; with --ab, both builds' profiles side by side):

    PYTHONPATH=python python bench/bench_profile.py --prefill 512 [--ab OLD_core.so [NEW_core.so]]

`idle` is what the pool measured for the op's parallel_for calls: threads x wall - time running
chunks (wake-ups, waiting for the slowest thread). `other` is the step's wall time outside the
forward (Python, logits copy). Roofline: bytes = the model's weight bytes (every weight is read
once per step: SmolLM2 and gemma3 tie the output head to the embedding).
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

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
PROMPT = 32


def load_core(path: str | None):
    """lowbit._core, or the extension module at `path` (another build of it)."""
    if not path:
        from lowbit import _core
        return _core
    spec = importlib.util.spec_from_file_location("_core", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def model_path(name: str) -> str:
    """A model name from tests/_models.py (imports lowbit), or a .gguf path (imports nothing)."""
    if os.path.isfile(name):
        return name
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from _models import real_model_path
    p = real_model_path(name)
    if not p:
        raise SystemExit(f"model {name} not found (tests/_models.py)")
    return str(p)


ACT = "auto"          # activation precision of every engine (--act-precision)


def open_sessions(core, path: str, threads: int, n: int, n_ctx: int):
    lead = core.Engine(path, n_ctx, threads, 64, "f16", ACT)
    return [lead] + [lead.new_session(n_ctx, threads, 64, "f16", ACT) for _ in range(n - 1)]


def decode_steps(core, engines, steps: int, profile: bool = False) -> float:
    """Seconds for `steps` decode steps of every engine (one eval, or one eval_batch of all), after
    a fresh PROMPT-token prefill of each (untimed; profile: the op profile is reset after it)."""
    rng = np.random.default_rng(len(engines))
    n_vocab = engines[0].n_vocab
    for e in engines:
        e.truncate(0)
    if len(engines) == 1:
        logits = [engines[0].eval(rng.integers(100, n_vocab - 100, PROMPT).astype(np.int32))]
    else:
        logits = core.eval_batch([(e, rng.integers(100, n_vocab - 100, PROMPT).astype(np.int32)) for e in engines])
    if profile:
        core.cpu_set_op_profile(True)
        core.cpu_op_profile(reset=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        toks = [np.array([int(np.argmax(l))], np.int32) for l in logits]
        if len(engines) == 1:
            logits = [engines[0].eval(toks[0])]
        else:
            logits = core.eval_batch(list(zip(engines, toks)))
    wall = time.perf_counter() - t0
    if profile:
        core.cpu_set_op_profile(False)
    return wall


def bandwidth_gbs(core, threads: int) -> float:
    return core.cpu_read_bandwidth(core.CpuThreadPool(threads), 256 << 20, 5)


def profile_model(core, name: str, threads: int, steps: int, sessions: int, reps: int) -> dict:
    path = model_path(name)
    engines = open_sessions(core, path, threads, sessions, PROMPT + steps + 8)
    weight_bytes = engines[0].memory()["weights_bytes"]
    decode_steps(core, engines, 4)   # warm-up: weight pages in
    best = None
    for _ in range(reps):
        wall = decode_steps(core, engines, steps, profile=True)
        prof = core.cpu_op_profile(reset=True)
        if best is None or wall < best[0]:
            best = (wall, prof)
    wall, prof = best
    for e in engines:
        e.close()
    bw = bandwidth_gbs(core, threads)
    step_s = wall / steps
    ops = {k: {"ms_per_step": v["seconds"] / steps * 1e3, "idle_ms_per_step": v["idle_seconds"] / steps * 1e3,
               "parallel_fors_per_step": v["parallel_fors"] / steps} for k, v in prof["ops"].items()}
    in_forward = sum(v["seconds"] for v in prof["ops"].values()) / steps
    ops["other"] = {"ms_per_step": max(0.0, step_s - in_forward) * 1e3, "idle_ms_per_step": 0.0,
                    "parallel_fors_per_step": 0.0}
    roofline_steps = bw * 1e9 / weight_bytes
    return {"model": os.path.basename(name).removesuffix(".gguf"), "threads": threads, "sessions": sessions, "steps": steps,
            "step_ms": step_s * 1e3, "tok_s": sessions / step_s, "weight_bytes": weight_bytes,
            "read_gbs": bw, "roofline_fraction": (1.0 / step_s) / roofline_steps, "ops": ops,
            "load_avg": os.getloadavg()[0]}


def table(rep: dict) -> str:
    lines = [f"{rep['model']}  {rep['sessions']} session(s), {rep['threads']} threads: "
             f"{rep['step_ms']:.2f} ms/step, {rep['tok_s']:.1f} tok/s, weights {rep['weight_bytes'] / 1e6:.1f} MB, "
             f"read {rep['read_gbs']:.1f} GB/s -> {100 * rep['roofline_fraction']:.0f}% of the roofline "
             f"(load {rep['load_avg']:.2f})",
             "| op | ms/step | % | idle ms/step | parallel_for/step |", "|---|---:|---:|---:|---:|"]
    for k, v in sorted(rep["ops"].items(), key=lambda kv: -kv[1]["ms_per_step"]):
        if v["ms_per_step"] < 1e-4 and v["parallel_fors_per_step"] == 0:
            continue
        lines.append(f"| {k} | {v['ms_per_step']:.3f} | {100 * v['ms_per_step'] / rep['step_ms']:.1f} | "
                     f"{v['idle_ms_per_step']:.3f} | {v['parallel_fors_per_step']:.0f} |")
    return "\n".join(lines)


def prefill_model(core, path: str, threads: int, n_tokens: int, reps: int) -> dict:
    """Best of `reps` N-token prefills into a fresh cache (after one untimed warm-up) and its op profile."""
    eng = core.Engine(path, n_tokens + 8, threads, n_tokens, "f16", ACT)
    toks = np.random.default_rng(0).integers(100, eng.n_vocab - 100, n_tokens).astype(np.int32)
    eng.eval(toks)
    best = None
    for _ in range(reps):
        eng.truncate(0)
        core.cpu_set_op_profile(True)
        core.cpu_op_profile(reset=True)
        t0 = time.perf_counter()
        eng.eval(toks)
        wall = time.perf_counter() - t0
        core.cpu_set_op_profile(False)
        prof = core.cpu_op_profile(reset=True)
        if best is None or wall < best[0]:
            best = (wall, prof)
    eng.close()
    wall, prof = best
    ops = {k: v["seconds"] * 1e3 for k, v in prof["ops"].items() if v["seconds"] > 0}
    return {"tok_s": n_tokens / wall, "ms": wall * 1e3, "ops_ms": ops}


def prefill_table(name: str, reps: dict) -> str:
    """Per-op ms of each build's best pass (medians over the processes for tok/s)."""
    labels = list(reps)
    lines = [f"{name}: " + ", ".join(f"{k} {statistics.median(r['tok_s'] for r in v):.1f} tok/s" for k, v in reps.items()),
             "| op | " + " | ".join(f"{k} ms" for k in labels) + " |", "|---|" + "---:|" * len(labels)]
    keys = sorted({op for v in reps.values() for r in v for op in r["ops_ms"]},
                  key=lambda op: -max(r["ops_ms"].get(op, 0) for r in reps[labels[0]]))
    for op in keys:
        lines.append(f"| {op} | " + " | ".join(
            f"{statistics.median(r['ops_ms'].get(op, 0.0) for r in reps[k]):.1f}" for k in labels) + " |")
    return "\n".join(lines)


# --- A/B of two core builds --------------------------------------------------------------------

def worker(args) -> int:
    """One subprocess of the A/B: decode tok/s of each session count on one model with one core."""
    core = load_core(args.core)   # no lowbit import here: two builds of _core cannot share a process
    path = args.models[0]
    if args.prefill:
        print(json.dumps(prefill_model(core, path, args.threads, args.prefill, 2)))
        return 0
    out = {"read_gbs": bandwidth_gbs(core, args.threads)}
    for n in args.sessions:
        engines = open_sessions(core, path, args.threads, n, PROMPT + args.steps + 8)
        decode_steps(core, engines, 4)
        out[str(n)] = n * args.steps / min(decode_steps(core, engines, args.steps) for _ in range(2))
        out.setdefault("weight_bytes", engines[0].memory()["weights_bytes"])
        for e in engines:
            e.close()
    print(json.dumps(out))
    return 0


def ab(args) -> dict:
    cores = {"old": os.path.abspath(args.ab[0]),
             "new": os.path.abspath(args.ab[1]) if len(args.ab) > 1 else importlib.util.find_spec("lowbit._core").origin}
    results = {}
    for name in args.models:
        path = model_path(name)
        runs = {k: [] for k in cores}
        for _ in range(args.r):
            for label, so in cores.items():   # interleaved: old, new, old, new...
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--core", so, "--models", path,
                       "--threads", str(args.threads), "--steps", str(args.steps), "--sessions",
                       *map(str, args.sessions), "--prefill", str(args.prefill), "--act-precision", ACT]
                p = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[label].append(json.loads(p.stdout.strip().splitlines()[-1]))
        if args.prefill:
            med = {k: statistics.median(r["tok_s"] for r in v) for k, v in runs.items()}
            results[name] = {"prefill": args.prefill, "runs": runs, "new_over_old": med["new"] / med["old"],
                             "table": prefill_table(os.path.basename(path), runs)}
            continue
        rows = {}
        for n in args.sessions:
            med = {k: statistics.median(r[str(n)] for r in v) for k, v in runs.items()}
            rows[n] = {"old_tok_s": med["old"], "new_tok_s": med["new"], "new_over_old": med["new"] / med["old"]}
        bw = statistics.median(r["read_gbs"] for v in runs.values() for r in v)
        wb = runs["new"][0]["weight_bytes"]
        for k in ("old", "new"):
            one = rows[args.sessions[0]][f"{k}_tok_s"] if args.sessions[0] == 1 else None
            if one:
                rows[1][f"{k}_roofline"] = one / (bw * 1e9 / wb)
            for n in args.sessions:
                if one:
                    rows[n][f"{k}_x_vs_1"] = rows[n][f"{k}_tok_s"] / one
        results[name] = {"read_gbs": bw, "weight_bytes": wb, "rows": rows, "runs": runs}
    results["load_avg"] = os.getloadavg()
    results["cores"] = cores
    return results


def ab_table(res: dict) -> str:
    lines = ["| model | sessions | old tok/s | new tok/s | new/old | old x vs 1 | new x vs 1 | roofline old / new |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in res.items():
        if isinstance(r, dict) and "table" in r:
            lines.insert(0, f"{r['table']}\nnew/old (median tok/s): {r['new_over_old']:.3f}\n")
        if not isinstance(r, dict) or "rows" not in r:
            continue
        for n, row in r["rows"].items():
            roof = (f"{100 * row['old_roofline']:.0f}% / {100 * row['new_roofline']:.0f}%"
                    if "old_roofline" in row else "")
            lines.append(f"| {name} | {n} | {row['old_tok_s']:.1f} | {row['new_tok_s']:.1f} | {row['new_over_old']:.2f} | "
                         f"{row.get('old_x_vs_1', 0):.2f} | {row.get('new_x_vs_1', 0):.2f} | {roof} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--sessions", type=int, nargs="*", default=[1, 8])
    ap.add_argument("-r", type=int, default=3, help="repetitions (profile: best of; A/B: interleaved runs)")
    ap.add_argument("--ab", nargs="+", metavar="CORE_SO", help="A/B decode speed: old [new] _core builds")
    ap.add_argument("--prefill", type=int, default=0, help="time an N-token prefill instead of decode steps")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--core", help="profile this build of the core (a _core*.so path; give --models as .gguf paths)")
    ap.add_argument("--act-precision", default="auto", choices=["auto", "high", "q8"],
                    help="activation precision of the engines (lowbit serve's default is q8)")
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args()
    global ACT
    ACT = args.act_precision
    if args.worker:
        return worker(args)
    if args.ab:
        res = ab(args)
        print(f"load average: {res['load_avg']}")
        print(ab_table(res))
        report = res
    else:
        core = load_core(args.core)
        if args.prefill:
            report = {m: [prefill_model(core, model_path(m), args.threads, args.prefill, args.r)] for m in args.models}
            for m, reps in report.items():
                print(prefill_table(m, {"this": reps}))
        else:
            report = [profile_model(core, m, args.threads, args.steps, n, args.r) for m in args.models for n in args.sessions]
            for rep in report:
                print(table(rep))
                print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

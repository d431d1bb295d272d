"""Aggregate decode speed of N sessions on one model, batched through eval_batch: tok/s at
1, 2, 4, 8, 16 concurrent sequences on both real models (one step = one token of every
session, one forward over all of them), next to N sessions decoded one after another
(what N conversations get without batching) and the single-session Model.generate rate. The
"sampled in the core" columns run the same batched steps with a greedy sampler per session
passed to eval_batch (token ids out, as the server's decode steps), interleaved with the
logits-row runs.

    python bench/bench_batch.py [--threads 2] [--steps 32] [--sessions 1 2 4 8 16] [--act-precision auto]
                                [--json out.json]

Same-run A/B of packed weights (LOWBIT_REPACK=1, the default) against the GGML rows with the
per-call strip decode (LOWBIT_REPACK=0): `--ab-repack` runs each variant `-r` times in fresh
subprocesses, interleaved (0, 1, 0, 1, ...), one repetition each, and reports medians.

Every session starts from its own 32-token prompt (prefilled outside the timing) and decodes
`steps` tokens; tok/s = sessions x steps / seconds, best of `-r` repetitions."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import lowbit
from lowbit.runtime import registry
from lowbit.runtime.batch import eval_batch
from lowbit.runtime.sampling import Sampler, SamplingParams

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
PROMPT_TOKENS = 32


def decode_rates(model, n_sessions: int, steps: int, reps: int) -> dict:
    rng = np.random.default_rng(n_sessions)
    sessions = [model.session(PROMPT_TOKENS + steps + 8) for _ in range(n_sessions)]
    prompts = [rng.integers(100, model.n_vocab - 100, size=PROMPT_TOKENS) for _ in sessions]
    batched, in_core, serial = [], [], []
    for _ in range(reps):
        for s, p in zip(sessions, prompts):
            s._engine.truncate(0); del s._cached_ids[:]
        logits = eval_batch(list(zip(sessions, prompts)))
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = eval_batch([(s, [int(np.argmax(l))]) for s, l in zip(sessions, logits)])
        batched.append(n_sessions * steps / (time.perf_counter() - t0))
        # the same steps with greedy samplers in the core (a server's decode): token ids out
        for s, p in zip(sessions, prompts):
            s._engine.truncate(0); del s._cached_ids[:]
        samplers = [(Sampler(SamplingParams(temperature=0)), []) for _ in sessions]
        tokens = eval_batch(list(zip(sessions, prompts)), samplers=samplers)
        t0 = time.perf_counter()
        for _ in range(steps):
            tokens = eval_batch([(s, [t]) for s, t in zip(sessions, tokens)], samplers=samplers)
        in_core.append(n_sessions * steps / (time.perf_counter() - t0))
    for _ in range(reps if n_sessions <= 4 else 1):   # serial is linear in N: one rep is plenty
        for s, p in zip(sessions, prompts):
            s._engine.truncate(PROMPT_TOKENS)
        t0 = time.perf_counter()
        for s in sessions:
            for _ in range(steps):
                s._engine.eval(np.asarray([7]))
        serial.append(n_sessions * steps / (time.perf_counter() - t0))
    for s in sessions:
        s.close()
    return {"sessions": n_sessions, "batched_tok_s": max(batched), "sampled_in_core_tok_s": max(in_core),
            "serial_tok_s": max(serial)}


def bench(path: str, threads: int, counts, steps: int, reps: int, act_precision: str) -> dict:
    model = lowbit.load(path, n_ctx=256, n_threads=threads, act_precision=act_precision)
    gen = model.generate("The history of", max_new_tokens=steps + 1, temperature=0)
    rows = [decode_rates(model, n, steps, reps) for n in counts]
    base = rows[0]["batched_tok_s"]
    base_core = rows[0]["sampled_in_core_tok_s"]
    for r in rows:
        r["speedup_vs_1"] = r["batched_tok_s"] / base
        r["in_core_speedup_vs_1"] = r["sampled_in_core_tok_s"] / base_core
    model.close()
    return {"model": os.path.basename(path), "threads": threads, "steps": steps, "act_precision": act_precision,
            "generate_decode_tok_s": gen.decode_tok_s, "rows": rows, "kernels": lowbit.cpu_features().get("kernels")}


def table(reports) -> str:
    lines = ["| model | sessions | batched tok/s | x vs 1 | sampled in the core tok/s | x vs 1 | one-by-one tok/s | "
             "Model.generate tok/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rep in reports:
        for r in rep["rows"]:
            lines.append(f"| {rep['model']} | {r['sessions']} | {r['batched_tok_s']:.1f} | {r['speedup_vs_1']:.2f} | "
                         f"{r['sampled_in_core_tok_s']:.1f} | {r['in_core_speedup_vs_1']:.2f} | "
                         f"{r['serial_tok_s']:.1f} | {rep['generate_decode_tok_s']:.1f} |")
    return "\n".join(lines)


def ab_repack(args) -> dict:
    """Interleaved subprocess runs with LOWBIT_REPACK=0 / 1: medians per model and session count."""
    runs = {"0": [], "1": []}
    loads = [os.getloadavg()[0]]
    for _ in range(args.r):
        for variant in ("0", "1"):
            cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads), "--steps", str(args.steps),
                   "-r", "1", "--act-precision", args.act_precision, "--worker-json", "-",
                   "--sessions", *map(str, args.sessions), "--models", *args.models]
            out = subprocess.run(cmd, env=dict(os.environ, LOWBIT_REPACK=variant), capture_output=True, text=True,
                                 check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
    rows = []
    for mi, model in enumerate(runs["0"][0]):
        for si, row in enumerate(model["rows"]):
            med = {v: statistics.median(run[mi]["rows"][si]["batched_tok_s"] for run in runs[v]) for v in runs}
            base = {v: statistics.median(run[mi]["rows"][0]["batched_tok_s"] for run in runs[v]) for v in runs}
            rows.append({"model": model["model"], "sessions": row["sessions"], "plain_tok_s": med["0"],
                         "packed_tok_s": med["1"], "packed_over_plain": med["1"] / med["0"],
                         "plain_x_vs_1": med["0"] / base["0"], "packed_x_vs_1": med["1"] / base["1"]})
    return {"threads": args.threads, "steps": args.steps, "repetitions": args.r, "load_avg": loads, "rows": rows,
            "runs": runs}


def ab_table(res: dict) -> str:
    lines = [f"load average {min(res['load_avg']):.1f}-{max(res['load_avg']):.1f}; medians of {res['repetitions']} "
             "interleaved runs", "| model | sessions | plain tok/s | packed tok/s | packed / plain | plain x vs 1 | "
             "packed x vs 1 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['sessions']} | {r['plain_tok_s']:.1f} | {r['packed_tok_s']:.1f} | "
                     f"{r['packed_over_plain']:.2f} | {r['plain_x_vs_1']:.2f} | {r['packed_x_vs_1']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--act-precision", default="auto", choices=["auto", "high", "q8"])
    ap.add_argument("--json", help="write the reports to this file")
    ap.add_argument("--ab-repack", action="store_true", help="A/B: LOWBIT_REPACK=0 vs 1, interleaved subprocesses")
    ap.add_argument("--worker-json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ab_repack:
        res = ab_repack(args)
        print(ab_table(res))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=2)
        return 0
    reports = [bench(str(registry.resolve(m)), args.threads, args.sessions, args.steps, args.r, args.act_precision)
               for m in args.models]
    if args.worker_json:
        print(json.dumps(reports))
        return 0
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate decode speed of N sessions on one model, batched through eval_batch: tok/s at
1, 2, 4, 8, 16 concurrent sequences on both real models (one step = one token of every
session, one forward over all of them), next to N sessions decoded one after another
(what N conversations get without batching) and the single-session Model.generate rate.

    python bench/bench_batch.py [--threads 2] [--steps 32] [--sessions 1 2 4 8 16] [--json out.json]

Every session starts from its own 32-token prompt (prefilled outside the timing) and decodes
`steps` tokens; tok/s = sessions x steps / seconds, best of `-r` repetitions."""
import argparse
import json
import os
import sys
import time

import numpy as np

import lowbit
from lowbit.runtime import registry
from lowbit.runtime.batch import eval_batch

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
PROMPT_TOKENS = 32


def decode_rates(model, n_sessions: int, steps: int, reps: int) -> dict:
    rng = np.random.default_rng(n_sessions)
    sessions = [model.session(PROMPT_TOKENS + steps + 8) for _ in range(n_sessions)]
    prompts = [rng.integers(100, model.n_vocab - 100, size=PROMPT_TOKENS) for _ in sessions]
    batched, serial = [], []
    for _ in range(reps):
        for s, p in zip(sessions, prompts):
            s._engine.truncate(0); del s._cached_ids[:]
        logits = eval_batch(list(zip(sessions, prompts)))
        t0 = time.perf_counter()
        for _ in range(steps):
            logits = eval_batch([(s, [int(np.argmax(l))]) for s, l in zip(sessions, logits)])
        batched.append(n_sessions * steps / (time.perf_counter() - t0))
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
    return {"sessions": n_sessions, "batched_tok_s": max(batched), "serial_tok_s": max(serial)}


def bench(path: str, threads: int, counts, steps: int, reps: int) -> dict:
    model = lowbit.load(path, n_ctx=256, n_threads=threads)
    gen = model.generate("The history of", max_new_tokens=steps + 1, temperature=0)
    rows = [decode_rates(model, n, steps, reps) for n in counts]
    base = rows[0]["batched_tok_s"]
    for r in rows:
        r["speedup_vs_1"] = r["batched_tok_s"] / base
    model.close()
    return {"model": os.path.basename(path), "threads": threads, "steps": steps,
            "generate_decode_tok_s": gen.decode_tok_s, "rows": rows, "kernels": lowbit.cpu_features().get("kernels")}


def table(reports) -> str:
    lines = ["| model | sessions | batched tok/s | x vs 1 | one-by-one tok/s | Model.generate tok/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for rep in reports:
        for r in rep["rows"]:
            lines.append(f"| {rep['model']} | {r['sessions']} | {r['batched_tok_s']:.1f} | {r['speedup_vs_1']:.2f} | "
                         f"{r['serial_tok_s']:.1f} | {rep['generate_decode_tok_s']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--sessions", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args()
    reports = [bench(str(registry.resolve(m)), args.threads, args.sessions, args.steps, args.r) for m in args.models]
    print(f"load average: {os.getloadavg()[0]:.2f}")
    print(table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

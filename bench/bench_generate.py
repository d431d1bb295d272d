"""End-to-end speed of both real models: pp512 and tg128 tok/s (llama-bench definitions,
mean ± stddev over repetitions), load time and RSS, side by side with llama.cpp
(llama-cpp-python) in the same process when it is importable, with ratios.

    python bench/bench_generate.py [--threads 2] [-r 5] [--json bench/generate.json]

With --vs-engine-loop: Model.generate's tok/s (from the prompt to the n-th token, per wall
second and per process CPU second) against the engine's own loop (the prompt's eval, then
one-token evals, argmax in numpy: bench's tg), per sampling setting (greedy; the default temperature 0.8,
top-k 40, top-p 0.95, min-p 0.05; the default with repetition penalty 1.1), for both of
generate's decode paths: sampled in the engine (Engine.eval_sample, the default) and the general
path (each step's logits to the Python sampler, as before it). Same model, prompt and thread
count; every repetition runs each variant next to its own engine-loop run, the order alternating
(the first repetition is a warm-up). "x engine loop" divides the means of the whole run; "paired"
is the median over repetitions of each variant's tok/s over its neighbouring loop run's, the
figure this host's drifting read bandwidth moves least.

    python bench/bench_generate.py --vs-engine-loop [-r 5] [-n 128] [--json out.json]

With --python-overhead: the calling thread's CPU microseconds per token outside the engine's
evals (the engine wrapped to clock its eval / eval_sample calls), for the same variants: the
per-token cost of the Python loop itself, a figure the machine's load moves little.

Set LOWBIT_LLAMA_CPP_SITE to a site-packages holding llama-cpp-python (e.g. a separate venv)
to compare without installing it next to lowbit."""
import argparse
import json
import os
import statistics
import sys
import threading
import time

import numpy as np

from lowbit.runtime import registry
from lowbit.runtime.bench import bench_model, format_table, import_llama_cpp
from lowbit.errors import LowbitError

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
PROMPT = "The history of the city begins in the early middle ages, when"
SETTINGS = {"greedy": dict(temperature=0.0), "default": dict(seed=1),
            "penalty 1.1": dict(seed=1, repetition_penalty=1.1)}


def reset(model) -> None:
    """An empty cache, so every run evaluates the whole prompt (the model's cache is emptied
    behind its back here: nothing else runs on it)."""
    model._engine.truncate(0)
    model._cached_ids.clear()


def timed(fn):
    """(wall seconds, process CPU seconds of all threads) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def engine_loop(model, prompt_ids, n_gen: int) -> None:
    """bench's tg loop from the prompt: its eval, then one-token evals, the next token by numpy's
    argmax, n_gen tokens in all."""
    e = model._engine
    tok = int(np.argmax(e.eval(np.asarray(prompt_ids, np.int32))))
    for _ in range(n_gen - 1):
        tok = int(np.argmax(e.eval(np.array([tok], np.int32))))


def generate(model, prompt_ids, n_gen: int, settings: dict, in_engine: bool) -> int:
    """Model.generate of n_gen tokens from the prompt (the same evals as engine_loop)."""
    params = model._params(**{**dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.0,
                                     repeat_last_n=64, seed=None), **settings})
    g = model._generate_ids(list(prompt_ids), stream=False, max_new_tokens=n_gen, stop=(), params=params,
                            context_shift=False, n_keep=None, sample_in_engine=in_engine)
    return g.generated_tokens


def vs_engine_loop(name: str, n_threads: int, n_gen: int, reps: int) -> dict:
    """tok/s from the prompt to the n_gen-th token (wall, and per process CPU second: the CPU
    figure moves less with other work on the machine), every variant once per repetition."""
    import lowbit
    model = lowbit.load(str(registry.resolve(name)), n_ctx=512, n_threads=n_threads)
    ids = model.tokenize(PROMPT)
    variants = {"engine loop": lambda: engine_loop(model, ids, n_gen)}
    tokens = {"engine loop": n_gen}
    for s, settings in SETTINGS.items():
        for path, in_engine in (("in engine", True), ("general", False)):
            key = f"{s} / {path}"
            variants[key] = (lambda k=key, st=settings, ie=in_engine:
                             tokens.__setitem__(k, generate(model, ids, n_gen, st, ie)))
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    paired = {k: [] for k in variants}        # tok/s over the engine loop's run just before / after it

    def run(k):
        reset(model)
        w, c = timed(variants[k])
        return tokens[k] / w, tokens[k] / c

    for rep in range(reps + 1):               # rep 0 warms up
        for k in variants:
            if k == "engine loop":
                continue
            # each variant next to its own engine-loop run, the order alternating by repetition, so
            # that the ratio compares two runs a second apart (this host's read bandwidth moves
            # by 10-25 % over minutes, and the mean ratio of the whole run carried that noise)
            order = ("engine loop", k) if rep % 2 else (k, "engine loop")
            got = {j: run(j) for j in order}
            if rep:
                for j in order:
                    wall[j].append(got[j][0])
                    cpu[j].append(got[j][1])
                paired[k].append(got[k][0] / got["engine loop"][0])
    model.close()
    loop_wall, loop_cpu = statistics.fmean(wall["engine loop"]), statistics.fmean(cpu["engine loop"])
    return {"model": name, "threads": n_threads, "n_gen": n_gen, "reps": reps,
            "runs": {k: {"tok_s": wall[k], "mean": statistics.fmean(wall[k]),
                         "stdev": statistics.stdev(wall[k]) if len(wall[k]) > 1 else 0.0,
                         "vs_engine_loop": statistics.fmean(wall[k]) / loop_wall,
                         "paired_ratios": paired[k],
                         "paired_median": statistics.median(paired[k]) if paired[k] else 1.0,
                         "tok_per_cpu_s": cpu[k], "cpu_vs_engine_loop": statistics.fmean(cpu[k]) / loop_cpu,
                         "generated": tokens[k]}
                     for k in variants}}


class EngineClock:
    """The model's engine, adding up the main thread's CPU time inside eval / eval_sample, so the
    rest of a generation's time on that thread is the Python loop's own cost (a prompt's eval
    that generate runs in a worker thread is on neither side)."""

    def __init__(self, engine):
        self.engine = engine
        self.inside = 0.0

    def __getattr__(self, name):
        attr = getattr(self.engine, name)
        if name not in ("eval", "eval_sample") or threading.current_thread() is not threading.main_thread():
            return attr

        def clocked(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return attr(*args, **kwargs)
            finally:
                self.inside += time.thread_time() - t0
        return clocked


def python_overhead(name: str, n_threads: int, n_gen: int, reps: int) -> dict:
    """CPU microseconds per token the calling thread spends outside the engine's eval /
    eval_sample (for the general path that includes the Python-side sampler call; in the engine
    loop, numpy's argmax). Thread CPU time moves little with the load."""
    import lowbit
    model = lowbit.load(str(registry.resolve(name)), n_ctx=512, n_threads=n_threads)
    ids = model.tokenize(PROMPT)
    clock = EngineClock(model._engine)
    model._engine = clock
    out = {}
    runs = {"engine loop": lambda: engine_loop(model, ids, n_gen)}
    for s, settings in SETTINGS.items():
        for path, in_engine in (("in engine", True), ("general", False)):
            runs[f"{s} / {path}"] = lambda st=settings, ie=in_engine: generate(model, ids, n_gen, st, ie)
    for k, fn in runs.items():
        per_token = []
        for rep in range(reps + 1):
            reset(model)
            clock.inside = 0.0
            t0 = time.thread_time()
            n = fn() or n_gen
            if rep:
                per_token.append((time.thread_time() - t0 - clock.inside) / n * 1e6)
        out[k] = statistics.median(per_token)
    model._engine = clock.engine
    model.close()
    return {"model": name, "threads": n_threads, "n_gen": n_gen, "python_us_per_token": out}


def format_vs_loop(reports) -> str:
    lines = ["| model | decode | tok/s | x engine loop | x engine loop, paired (median) | tok per CPU s "
             "| x engine loop (CPU) | tokens |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for rep in reports:
        for k, r in rep["runs"].items():
            lines.append(f"| {rep['model']} | {k} | {r['mean']:.1f} ± {r['stdev']:.1f} | {r['vs_engine_loop']:.3f} "
                         f"| {r['paired_median']:.3f} | {statistics.fmean(r['tok_per_cpu_s']):.1f} "
                         f"| {r['cpu_vs_engine_loop']:.3f} | {r['generated']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--json", help="write the reports to this file")
    ap.add_argument("--vs-engine-loop", action="store_true",
                    help="Model.generate (both decode paths, three sampling settings) against the engine's loop")
    ap.add_argument("--python-overhead", action="store_true",
                    help="CPU us per token of the calling thread outside the engine's evals, per variant")
    args = ap.parse_args()
    if args.python_overhead:
        reports = [python_overhead(m, args.threads, args.n, args.r) for m in args.models]
        print("| model | " + " | ".join(reports[0]["python_us_per_token"]) + " |")
        print("|---|" + "---:|" * len(reports[0]["python_us_per_token"]))
        for rep in reports:
            print(f"| {rep['model']} | " + " | ".join(f"{v:.0f}" for v in rep["python_us_per_token"].values()) + " |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"load_avg": os.getloadavg(), "reports": reports}, f, indent=2)
        return 0
    if args.vs_engine_loop:
        load_before = os.getloadavg()
        reports = [vs_engine_loop(m, args.threads, args.n, args.r) for m in args.models]
        print(f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
        print(format_vs_loop(reports))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"load_avg_before": load_before, "load_avg_after": os.getloadavg(), "reports": reports},
                          f, indent=2)
        return 0
    try:
        import_llama_cpp()
        vs = True
    except LowbitError as e:
        print(f"(llama.cpp not available, lowbit only: {e})", file=sys.stderr)
        vs = False
    reports = [bench_model(str(registry.resolve(m)), n_prompt=args.p, n_gen=args.n, reps=args.r,
                           n_threads=args.threads, vs_llama_cpp=vs) for m in args.models]
    print(format_table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

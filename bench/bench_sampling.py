"""Sampling time per token on a real vocabulary (gemma3-270m: 262,144 logits) with the default
settings (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, repetition penalty 1.1 over the
last 64 tokens), plus greedy and top-k off. The row is the model's float32 logits after a short
prompt, as Model.generate hands it to the sampler.

    python bench/bench_sampling.py [--model gemma3-270m] [-n 300] [--json out.json]
    python bench/bench_sampling.py --sampling-module old_sampling.py   # time another version

--sampling-module loads a sampling.py from a file (e.g. `git show <commit>:python/lowbit/
runtime/sampling.py > old_sampling.py`) to measure it with the same row and settings."""
import argparse
import importlib.util
import json
import sys
import time

import numpy as np

import lowbit
from lowbit.runtime import registry

SETTINGS = {
    "default": dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1, repeat_last_n=64),
    "greedy": dict(temperature=0.0),
    "top-k off": dict(temperature=0.8, top_k=0, top_p=0.95, min_p=0.05, repetition_penalty=1.1, repeat_last_n=64),
}


def load_sampling(path):
    if path is None:
        from lowbit.runtime import sampling
        return sampling
    spec = importlib.util.spec_from_file_location("sampling_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def time_per_token(sampling, row, history, settings, n):
    s = sampling.Sampler(sampling.SamplingParams(seed=0, **settings))
    s.sample(row, history)                                   # warm caches
    t0 = time.perf_counter()
    for _ in range(n):
        s.sample(row, history)
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("-n", type=int, default=300, help="draws per setting")
    ap.add_argument("--sampling-module", help="a sampling.py file to time instead of lowbit's")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    model = lowbit.load(str(registry.resolve(args.model)), n_ctx=256)
    prompt = model.tokenize("The quick brown fox jumps over the lazy dog. Once upon a time")
    row = np.ascontiguousarray(model.logits(prompt)[-1], dtype=np.float32)
    history = list(prompt) * 8
    sampling = load_sampling(args.sampling_module)
    results = {name: time_per_token(sampling, row, history, st, args.n) for name, st in SETTINGS.items()}
    print(f"{args.model}: {row.size} logits, {args.n} draws per setting"
          f" ({args.sampling_module or 'lowbit.runtime.sampling'})")
    print(f"{'setting':<12} {'ms/token':>9}")
    for name, sec in results.items():
        print(f"{name:<12} {sec * 1e3:9.3f}")
    report = {"model": args.model, "n_vocab": int(row.size), "module": args.sampling_module or "lowbit",
              "ms_per_token": {k: v * 1e3 for k, v in results.items()}}
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

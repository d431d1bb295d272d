"""End-to-end engine benchmark: prefill and decode tokens/s of lowbit._core.Engine.

    PYTHONPATH=python python bench/bench_engine.py [--models smollm2-135m-instruct,gemma3-270m]
        [--threads 2] [--prompt 128] [--decode 64] [--repeats 3] [--json out.json]

Prefill: one eval of a `--prompt`-token prompt (best of `--repeats`, cache truncated to 0
between runs). Decode: `--decode` greedy one-token evals after that prompt (best of
`--repeats`, cache truncated back to the prompt). Token ids are fixed pseudo-random ids, so
runs are comparable; models come from tests/_models.py (skipped when absent).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from lowbit import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _models import real_model_path  # noqa: E402


def bench_model(path: str, n_threads: int, n_prompt: int, n_decode: int, repeats: int) -> dict:
    e = _core.Engine(path, n_prompt + n_decode + 8, n_threads, 512, "f16")
    ids = np.random.default_rng(0).integers(100, min(e.n_vocab, 10000), n_prompt).astype(np.int32)
    e.eval(ids[:8])   # warm-up: pages of the weights faulted in
    prefill = []
    for _ in range(repeats):
        e.truncate(0)
        t0 = time.perf_counter()
        logits = e.eval(ids)
        prefill.append(time.perf_counter() - t0)
    decode = []
    for _ in range(repeats):
        e.truncate(n_prompt)
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            tok = int(np.argmax(e.eval(np.array([tok], np.int32))))
        decode.append(time.perf_counter() - t0)
    return {"arch": e.arch, "kernels": e.kernels, "n_threads": n_threads, "prompt_tokens": n_prompt,
            "decode_tokens": n_decode, "prefill_tok_s": n_prompt / min(prefill),
            "decode_tok_s": n_decode / min(decode), "memory": e.memory()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {"machine": platform.processor() or platform.machine(), "load_avg": os.getloadavg(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    for name in args.models.split(","):
        path = real_model_path(name)
        if path is None:
            print(f"{name}: not available, skipped")
            continue
        r = bench_model(path, args.threads, args.prompt, args.decode, args.repeats)
        results["models"][name] = r
        print(f"{name} ({r['arch']}, {r['kernels']}, {r['n_threads']} threads): prefill {r['prefill_tok_s']:.0f} "
              f"tok/s ({args.prompt} tokens), decode {r['decode_tok_s']:.0f} tok/s ({args.decode} steps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

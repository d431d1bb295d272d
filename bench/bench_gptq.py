"""GPTQ quantization time: the Hessians (calibration through the engine) and the error feedback.

    PYTHONPATH=python python bench/bench_gptq.py F32.gguf [--type Q4_K_M] [--chunks 8] [--threads 2]

Calibration text: the first 40 % of the pydoc topics sorted by key (as bench_calibration.py).
Prints the seconds of ``collect_hessians`` and of ``quantize(method="gptq")`` with those Hessians,
and the load average.
"""
import argparse
import os
import tempfile
import time

import pydoc_data.topics as tp

import lowbit
from lowbit.quant.gptq import collect_hessians


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    keys = sorted(tp.topics)
    calib = "\n\n".join(tp.topics[k] for k in keys[:int(len(keys) * 0.4)])
    t0 = time.perf_counter()
    hs = collect_hessians(args.model, calib, n_ctx=512, n_chunks=args.chunks, n_threads=args.threads)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        lowbit.quantize(args.model, os.path.join(d, "out.gguf"), args.type, method="gptq", calibration=hs,
                        n_threads=args.threads)
    t2 = time.perf_counter()
    print(f"hessians {t1 - t0:.1f} s, quantize {t2 - t1:.1f} s, total {t2 - t0:.1f} s, "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

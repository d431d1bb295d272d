"""How fast the C API stops a long prefill: tests/capi/abort_prefill.c (compiled against the
installed liblowbit.so) evaluates a 2,000-token prompt on SmolLM2 and is stopped once the prefill
is under way, by the abort callback or by lowbit_session_cancel from another thread. Reported per
n_batch: the stop latency (the stop asked -> the call returned) and one layer of one pass (the
poll interval), median and max over the repetitions.

    python bench/bench_capi_abort.py [--n-batch 128 256 512] [-r 5] [--tokens 2000] [--json out.json]"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import lowbit
from lowbit.runtime import registry

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, os.pardir, "tests", "capi", "abort_prefill.c")


def compile_program(folder: str) -> str:
    libdir = os.path.dirname(lowbit.get_library())
    exe = os.path.join(folder, "abort_prefill")
    subprocess.run(["cc", "-std=c11", "-O2", "-I", lowbit.get_include(), SOURCE, "-L", libdir, "-llowbit",
                    f"-Wl,-rpath,{libdir}", "-pthread", "-o", exe], check=True)
    return exe


def measure(exe: str, model: str, tokens: int, n_batch: int, mode: str) -> dict:
    out = subprocess.run([exe, model, str(tokens), str(n_batch), mode], capture_output=True, text=True,
                         check=True, timeout=600).stdout.split("\n")[0].split()
    got = dict(zip(out[::2], out[1::2]))
    return {"latency_ms": float(got["latency_ms"]), "layer_ms": float(got["layer_ms"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-batch", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--json")
    args = ap.parse_args()
    model = str(registry.resolve("smollm2-135m-instruct", quiet=True))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_program(tmp)
        for n_batch in args.n_batch:
            for mode in ("callback", "cancel"):
                runs = [measure(exe, model, args.tokens, n_batch, mode) for _ in range(args.reps)]
                lat = [r["latency_ms"] for r in runs]
                layer = [r["layer_ms"] for r in runs]
                rows.append({"n_batch": n_batch, "mode": mode, "latency_ms_median": statistics.median(lat),
                             "latency_ms_max": max(lat), "layer_ms_median": statistics.median(layer),
                             "reps": args.reps})
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, {args.tokens}-token prefill, SmolLM2")
    print(f"{'n_batch':>7} {'stop by':>8} {'latency ms (median)':>20} {'(max)':>8} {'one layer ms':>13}")
    for r in rows:
        print(f"{r['n_batch']:>7} {r['mode']:>8} {r['latency_ms_median']:>20.1f} {r['latency_ms_max']:>8.1f} "
              f"{r['layer_ms_median']:>13.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

"""``lowbit bench``: llama-bench style pp / tg tok/s, optionally beside llama.cpp."""
from __future__ import annotations

import json
import sys
import warnings

from lowbit.cli.common import DEFAULT_MODEL, add_device_flags, resolve_model


def run(args) -> int:
    from lowbit.runtime.bench import bench_model, format_table, import_llama_cpp
    from lowbit.runtime.bench import busy_warning
    if args.vs_llama_cpp:
        import_llama_cpp()          # fail early with the install hint
    paths = [str(resolve_model(name, quiet=args.json)) for name in args.models or [DEFAULT_MODEL]]
    busy = busy_warning(args.threads)
    if busy:
        warnings.warn(busy)
    reports = []
    for name, path in zip(args.models or [DEFAULT_MODEL], paths):
        say = None if args.json else (lambda msg, n=name: print(f"  {n}: {msg}", file=sys.stderr, flush=True))
        reports.append(bench_model(path, n_prompt=args.p, n_gen=args.n, reps=args.r, n_threads=args.threads,
                                   n_batch=args.batch, vs_llama_cpp=args.vs_llama_cpp,
                                   act_precision=args.act_precision, progress=say, device=args.device,
                                   n_gpu_layers=args.n_gpu_layers))
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(format_table(reports))
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("bench", help="llama-bench style speed test (pp/tg tok/s, load time, memory)")
    sp.add_argument("models", nargs="*", metavar="MODEL", help=f"paths or registry names (default {DEFAULT_MODEL})")
    sp.add_argument("-p", type=int, default=512, help="prompt tokens for the pp test (0 skips it)")
    sp.add_argument("-n", type=int, default=128, help="generated tokens for the tg test (0 skips it)")
    sp.add_argument("-r", type=int, default=5, help="repetitions")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    sp.add_argument("--batch", type=int, default=512, help="prefill batch size")
    sp.add_argument("--act-precision", default="auto", choices=["auto", "high", "q8"],
                    help="activation precision of the quantized matmuls (see lowbit.load)")
    add_device_flags(sp)
    sp.add_argument("--vs-llama-cpp", action="store_true",
                    help="also run llama.cpp (llama-cpp-python) on the same file, alternating, and print ratios")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=run)


"""End-to-end speed of both real models: pp512 and tg128 tok/s (llama-bench definitions,
mean ± stddev over repetitions), load time and RSS, side by side with llama.cpp
(llama-cpp-python) in the same process when it is importable, with ratios.

    python bench/bench_generate.py [--threads 2] [-r 5] [--json bench/generate.json]

Set LOWBIT_LLAMA_CPP_SITE to a site-packages holding llama-cpp-python (e.g. a separate venv)
to compare without installing it next to lowbit."""
import argparse
import json
import sys

from lowbit.runtime import registry
from lowbit.runtime.bench import bench_model, format_table, import_llama_cpp
from lowbit.errors import LowbitError

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--json", help="write the reports to this file")
    args = ap.parse_args()
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

"""Model load: seconds to build the engine (`_core.Engine`: map, fuse, repack) and the resident
memory it leaves and peaks at, one fresh process per load (the file already in the page cache),
for one build or two builds side by side (interleaved processes, alternating order, paired
medians).

    PYTHONPATH=python python bench/bench_load.py [MODEL ...] [-r 7] [--ab OLD_PYTHONPATH [NEW_PYTHONPATH]]
        [--json out.json]

MODEL: registry names or GGUF paths (default: smollm2-135m-instruct gemma3-270m). peak = the
process's peak RSS (VmHWM); `peak - before` over the weights' bytes is what a load costs beyond them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r'''
import json, sys, time
from lowbit import _core
def status(key):   # VmHWM: this process's peak (ru_maxrss would carry the forking parent's over exec)
    return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)][0] * 1024
before = status('VmRSS:')
t0 = time.perf_counter()
e = _core.Engine(sys.argv[1], 512, 2, 512)
seconds = time.perf_counter() - t0
peak = status('VmHWM:')
print(json.dumps({"seconds": seconds, "rss_bytes": status('VmRSS:'), "peak_bytes": peak, "before_bytes": before,
                  "weights_bytes": e.memory()["weights_bytes"], "kernels": _core.cpu_features()["kernels"]}))
'''


def one_load(pythonpath: str, model: str) -> dict:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run([sys.executable, "-c", _CHILD, model], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("-r", type=int, default=7, help="loads per build and model")
    ap.add_argument("--ab", nargs="+", metavar="PYTHONPATH", help="OLD [NEW] package dirs (NEW: ./python)")
    ap.add_argument("--json")
    args = ap.parse_args()
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")
    builds = {"this build": here} if not args.ab else {"old": args.ab[0], "new": args.ab[1] if len(args.ab) > 1 else here}
    sys.path.insert(0, here)
    from lowbit import registry
    report = {"load_avg_before": os.getloadavg(), "builds": builds, "models": {}}
    for model in args.models:
        path = str(registry.resolve(model, quiet=True)) if not os.path.exists(model) else model
        one_load(next(iter(builds.values())), path)   # page cache warm
        runs = {k: [] for k in builds}
        for i in range(args.r):
            order = list(builds) if i % 2 == 0 else list(builds)[::-1]
            for k in order:
                runs[k].append(one_load(builds[k], path))
        row = {}
        for k, rs in runs.items():
            w = rs[0]["weights_bytes"]
            row[k] = {"seconds": statistics.median(r["seconds"] for r in rs),
                      "rss_mib": statistics.median(r["rss_bytes"] for r in rs) / 2**20,
                      "peak_mib": statistics.median(r["peak_bytes"] for r in rs) / 2**20,
                      "peak_over_weights": statistics.median((r["peak_bytes"] - r["before_bytes"]) / w for r in rs),
                      "kernels": rs[0]["kernels"], "runs": rs}
            print(f"{os.path.basename(path)} {k}: load {row[k]['seconds']:.3f} s, RSS {row[k]['rss_mib']:.0f} MiB, "
                  f"peak {row[k]['peak_mib']:.0f} MiB ((peak - before) / weights {row[k]['peak_over_weights']:.2f})")
        if len(builds) == 2:
            ratios = sorted(o["seconds"] / n["seconds"] for o, n in zip(runs["old"], runs["new"]))
            row["old_over_new_paired_median"] = ratios[len(ratios) // 2]
            print(f"{os.path.basename(path)}: old / new load time, paired median {row['old_over_new_paired_median']:.2f}x")
        report["models"][os.path.basename(path)] = row
    report["load_avg_after"] = os.getloadavg()
    print(f"load average {report['load_avg_before'][0]:.1f} -> {report['load_avg_after'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

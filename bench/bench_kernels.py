"""CPU kernel benchmark: decode mat-vec bandwidth and prefill mat-mat throughput per type.

    PYTHONPATH=python python bench/bench_kernels.py [--json out.json] [--types Q4_0,Q4_K] [--quick]

Mat-vec: GB/s of weight bytes for decode shapes (rows x cols) with 1 and 2 threads, weights cycled
through enough copies to exceed 4x the L3 (so every call streams from DRAM), against the read
bandwidth measured in the same run (lowbit.runtime.cpu.read_bandwidth: threads summing a 1 GiB buffer),
at the start (the % in the table) and again at the end (pct_of_best_read_bw in the JSON uses the
better of the two).
Prefill: GOP/s (2*rows*cols*n) of one mat-mat of n activation rows vs looping the mat-vec.
llama.cpp side by side (when LOWBIT_LLAMA_CPP_SITE names a site-packages with llama-cpp-python,
the dev oracle): ggml's MUL_MAT op on the same weight bytes and activations through ctypes
(bench/ggml_ref.py: persistent ggml threadpool, only ggml_graph_compute timed), interleaved with
lowbit's calls: decode GB/s at 2 threads on the same cold copies, and prefill rows/s (x rows per
second of one n-row mat-mat) with the ratio lowbit / llama.cpp; the outputs are compared (max
relative difference in the JSON) so both ran the same product.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from lowbit.runtime import cpu

import ggml_ref

IQ_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"]
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS",
         "F16", "BF16", "F32"] + IQ_TYPES
BLOCK = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
         "IQ4_NL": (32, 18), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210), "IQ4_XS": (256, 136), "F16": (1, 2), "BF16": (1, 2), "F32": (1, 4),
         "IQ1_S": (256, 50), "IQ1_M": (256, 56), "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ2_S": (256, 82),
         "IQ3_XXS": (256, 98), "IQ3_S": (256, 110), "TQ1_0": (256, 54), "TQ2_0": (256, 66), "MXFP4": (32, 17),
         "NVFP4": (64, 36)}
SCALE_OFFSETS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
                 "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0],
                 "IQ1_S": [0], "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0],
                 "TQ1_0": [52], "TQ2_0": [64], "IQ1_M": [], "MXFP4": [], "NVFP4": []}
COLD_BYTES = 128 << 20  # > 4x the 32 MiB L3 of the dev machine


def random_weights(rng, type_name, rows, cols) -> np.ndarray:
    bs, bb = BLOCK[type_name]
    if type_name == "F32":
        return rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint8)
    if type_name in ("F16", "BF16"):
        return rng.integers(0x3000, 0x3c00, size=(rows, cols), dtype=np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(rows * cols // bs, bb), dtype=np.uint8)
    for off in SCALE_OFFSETS[type_name]:
        raw[:, off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if type_name == "IQ1_M":     # the fp16 scale lives in the top nibbles of the 4 scale words
        words = raw[:, 48:56].copy().view(np.uint16)
        h = int(np.float16(0.01).view(np.uint16))
        for k in range(4):
            words[:, k] = (words[:, k] & 0x0FFF) | (((h >> (4 * k)) & 0xF) << 12)
        raw[:, 48:56] = words.view(np.uint8)
    elif type_name == "MXFP4":   # E8M0 exponent byte: 2^-8
        raw[:, 0] = 120
    return raw.reshape(rows, -1)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_calls(fn, n_calls) -> float:
    """Median seconds per call."""
    times = []
    for i in range(n_calls):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_matvec(rng, type_name, rows, cols, threads_list, llama_threads) -> tuple[dict, float | None]:
    """Decode GB/s per thread count ({threads: GB/s}) and llama.cpp's at llama_threads (or None),
    on the same cold weight copies, lowbit and llama.cpp calls interleaved."""
    w = random_weights(rng, type_name, rows, cols)
    copies = [w] + [w.copy() for _ in range(max(0, -(-COLD_BYTES // w.nbytes) - 1))]
    x = rng.standard_normal(cols, dtype=np.float32)
    n_calls = max(8, min(60, int(2e9 // (w.nbytes * 4))))
    gbs = {}
    ref = ggml_ref.GgmlMatmul(type_name, copies, rows, cols, 1, llama_threads) \
        if llama_threads and ggml_ref.available() and type_name in ggml_ref.GGML_TYPE else None
    theirs = None
    try:
        if ref:
            ref.set_x(x)
        for t in threads_list:
            cpu.matmul(copies[0], type_name, (rows, cols), x, n_threads=t)  # warm the pool
            ours_t, theirs_t = [], []
            for rep in range(2 if ref and t == llama_threads else 1):
                ours_t.append(time_calls(lambda i: cpu.matmul(copies[i % len(copies)], type_name, (rows, cols), x,
                                                              n_threads=t), n_calls))
                if ref and t == llama_threads:
                    ref.resume()
                    ref.run(0)
                    theirs_t.append(time_calls(lambda i: ref.run(i % len(copies)), n_calls))
                    ref.pause()
            gbs[t] = w.nbytes / min(ours_t) / 1e9
            if theirs_t:
                theirs = w.nbytes / min(theirs_t) / 1e9
    finally:
        if ref:
            ref.close()
    return gbs, theirs


def bench_matvec_hot(rng, type_name, rows, cols) -> tuple[float, float | None]:
    """Kernel speed without DRAM: GB/s of one mat-vec on 1 thread with the same weights every
    call (L3-resident: the decode kernel's compute rate), best of many calls, lowbit and
    llama.cpp alternating; (lowbit, llama.cpp or None)."""
    w = random_weights(rng, type_name, rows, cols)
    x = rng.standard_normal(cols, dtype=np.float32)
    n_calls = max(20, min(200, int(4e8 // w.nbytes)))
    ref = ggml_ref.GgmlMatmul(type_name, [w], rows, cols, 1, 1) \
        if ggml_ref.available() and type_name in ggml_ref.GGML_TYPE else None
    ours, theirs = float("inf"), float("inf")
    try:
        if ref:
            ref.set_x(x)
        for _ in range(3):
            cpu.matmul(w, type_name, (rows, cols), x, n_threads=1)
            ours = min(ours, min(time_best(lambda: cpu.matmul(w, type_name, (rows, cols), x, n_threads=1), 1)
                                 for _ in range(n_calls)))
            if ref:
                ref.resume()
                theirs = min(theirs, min(time_best(ref.run, 1) for _ in range(n_calls)))
                ref.pause()
    finally:
        if ref:
            ref.close()
    return w.nbytes / ours / 1e9, (w.nbytes / theirs / 1e9 if ref else None)


def time_best(fn, repeats) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_prefill(rng, type_name, rows, cols, n, threads, repeats=3) -> dict:
    """lowbit's n-row mat-mat (rows/s and GOP/s), the looped mat-vec, and llama.cpp's mat-mat on
    the same bytes, lowbit and llama.cpp alternating (best of `repeats` each)."""
    w = random_weights(rng, type_name, rows, cols)
    x = rng.standard_normal((n, cols), dtype=np.float32)
    ops = 2.0 * rows * cols
    cpu.matmul(w, type_name, (rows, cols), x[:8], n_threads=threads)
    ref = ggml_ref.GgmlMatmul(type_name, [w], rows, cols, n, threads) \
        if ggml_ref.available() and type_name in ggml_ref.GGML_TYPE else None
    t_mm, t_ref, out = float("inf"), float("inf"), {}
    try:
        if ref:
            ref.set_x(x)
        for _ in range(repeats):
            t_mm = min(t_mm, time_best(lambda: out.__setitem__("y", cpu.matmul(w, type_name, (rows, cols), x,
                                                                               n_threads=threads)), 1))
            if ref:
                ref.resume()
                t_ref = min(t_ref, time_best(ref.run, 1))
                ref.pause()
        rel = None
        if ref:
            y_ref = ref.output()
            rel = float(np.abs(out["y"] - y_ref).max() / max(np.abs(y_ref).max(), 1e-30))
    finally:
        if ref:
            ref.close()
    n_loop = 64  # per-row cost of the loop is flat; time a slice of it
    t_loop = time_calls(lambda i: [cpu.matmul(w, type_name, (rows, cols), x[j], n_threads=threads)
                                   for j in range(n_loop)], 3)
    r = {"type": type_name, "rows": rows, "cols": cols, "n": n, "threads": threads,
         "matmul_gops": ops * n / t_mm / 1e9, "loop_matvec_gops": ops * n_loop / t_loop / 1e9,
         "rows_per_s": n / t_mm}
    r["speedup"] = r["matmul_gops"] / r["loop_matvec_gops"]
    if ref:
        r.update(llama_cpp_rows_per_s=n / t_ref, ratio_vs_llama_cpp=t_ref / t_mm, max_rel_diff_vs_llama_cpp=rel)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write results to this JSON file")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--kernels", default=None, help="force a kernel set (scalar, avx2, avx512)")
    ap.add_argument("--prefill-rows", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="4096x4096 only")
    ap.add_argument("--skip-prefill", action="store_true", help="decode mat-vec table only")
    ap.add_argument("--prefill-threads", type=int, default=None, help="threads of the prefill table (default: all cores)")
    ap.add_argument("--prefill-repeats", type=int, default=3,
                    help="best of this many calls each side (more on a loaded host: one slice lost costs a call)")
    ap.add_argument("--llama-decode-threads", type=int, default=2,
                    help="threads of llama.cpp's decode column (1 on a loaded host: ggml's pool waits a scheduler slice per barrier there)")
    args = ap.parse_args()
    if args.kernels:
        cpu.set_kernels(args.kernels)
    types = args.types.split(",")
    shapes = [(4096, 4096)] if args.quick else [(4096, 4096), (14336, 4096)]
    rng = np.random.default_rng(0)
    feats = cpu.features()
    threads = sorted({1, feats["physical_cores"]} | {2})
    bw = {t: cpu.read_bandwidth(t, 1 << 30, 3) for t in threads}
    res = {"machine": cpu_model(), "cores": feats["physical_cores"], "kernels": cpu.get_kernels(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           "load_avg_start": os.getloadavg(), "read_bandwidth_gbs": bw, "matvec": [], "prefill": []}

    llama = ggml_ref.available()
    res["llama_cpp"] = ggml_ref.version_note() if llama else None
    lt = args.llama_decode_threads if args.llama_decode_threads in threads else max(threads)
    print(f"{res['machine']}, {res['cores']} cores, {res['date']}, load average {res['load_avg_start'][0]:.2f}")
    print(f"kernels={res['kernels']}  read bandwidth: " + ", ".join(f"{t}T {g:.1f} GB/s" for t, g in bw.items()))
    print(f"llama.cpp: {res['llama_cpp'] or 'not found (set LOWBIT_LLAMA_CPP_SITE)'}")
    lcol = f" llama.cpp {lt}T GB/s (% of read bw) |" if llama else ""
    print("\n| type | shape | " + " | ".join(f"{t}T GB/s (% of read bw)" for t in threads) + " |" + lcol)
    print("|---|---|" + "---|" * (len(threads) + bool(llama)))
    for ty in types:
        for rows, cols in shapes:
            gbs, theirs = bench_matvec(rng, ty, rows, cols, threads, lt if llama else None)
            cells = []
            for t in threads:
                res["matvec"].append({"type": ty, "rows": rows, "cols": cols, "threads": t, "gbs": gbs[t],
                                      "pct_of_read_bw": 100 * gbs[t] / bw[t]})
                cells.append(f"{gbs[t]:.1f} ({100 * gbs[t] / bw[t]:.0f}%)")
            if theirs is not None:
                res["matvec"].append({"type": ty, "rows": rows, "cols": cols, "threads": lt, "gbs": theirs,
                                      "pct_of_read_bw": 100 * theirs / bw[lt], "impl": "llama.cpp"})
                cells.append(f"{theirs:.1f} ({100 * theirs / bw[lt]:.0f}%)")
            elif llama:
                cells.append("-")
            print(f"| {ty} | {rows}x{cols} | " + " | ".join(cells) + " |", flush=True)

    print("\nDecode kernel speed without DRAM (1 thread, 4096x4096, weights L3-resident, best call)\n")
    print("| type | lowbit GB/s | llama.cpp GB/s | lowbit / llama.cpp |")
    print("|---|---|---|---|")
    res["matvec_hot"] = []
    for ty in types:
        ours, theirs = bench_matvec_hot(rng, ty, 4096, 4096)
        res["matvec_hot"].append({"type": ty, "rows": 4096, "cols": 4096, "threads": 1, "gbs": ours,
                                  "llama_cpp_gbs": theirs})
        cell = f"{theirs:.1f} | {ours / theirs:.2f}x" if theirs else "- | -"
        print(f"| {ty} | {ours:.1f} | {cell} |", flush=True)

    n = args.prefill_rows
    t = args.prefill_threads or max(threads)
    types_prefill = [] if args.skip_prefill else types
    print(f"\nPrefill {n} rows x 4096x4096 weights, {t} threads\n")
    print("| type | lowbit rows/s | llama.cpp rows/s | lowbit / llama.cpp | mat-mat GOP/s | looped mat-vec GOP/s |"
          " speed-up per row |")
    print("|---|---|---|---|---|---|---|")
    for ty in types_prefill:
        r = bench_prefill(rng, ty, 4096, 4096, n, t, args.prefill_repeats)
        res["prefill"].append(r)
        theirs = (f"{r['llama_cpp_rows_per_s']:.0f} | {r['ratio_vs_llama_cpp']:.2f}x" if "llama_cpp_rows_per_s" in r
                  else "- | -")
        print(f"| {ty} | {r['rows_per_s']:.0f} | {theirs} | {r['matmul_gops']:.1f} | {r['loop_matvec_gops']:.1f} | "
              f"{r['speedup']:.2f}x |", flush=True)
    # bandwidth again at the end: the reference is the better of the two (conservative %)
    bw_end = {t: cpu.read_bandwidth(t, 1 << 30, 3) for t in threads}
    res["read_bandwidth_end_gbs"] = bw_end
    if any(bw_end[t] > bw[t] for t in threads):
        print("\nread bandwidth at the end: " + ", ".join(f"{t}T {g:.1f} GB/s" for t, g in bw_end.items()))
    for row in res["matvec"]:
        row.setdefault("impl", "lowbit")
        row["pct_of_best_read_bw"] = 100 * row["gbs"] / max(bw[row["threads"]], bw_end[row["threads"]])
    res["load_avg_end"] = os.getloadavg()
    print(f"\nload average start {res['load_avg_start']}, end {res['load_avg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

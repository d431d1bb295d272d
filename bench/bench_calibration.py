"""Calibrated quantization side by side: RTN / imatrix / GPTQ / AWQ / AWQ+GPTQ (lowbit) and
llama.cpp's own quantizer (RTN, and with lowbit's imatrix file), every file evaluated by lowbit's
engine against the F32 baseline; plus imatrix speed against llama.cpp's llama-imatrix.

    PYTHONPATH=python python bench/bench_calibration.py [--models smollm2-135m-instruct gemma3-270m] \
        [--types Q2_K,Q3_K_M,Q4_K_M,Q5_K_M] [--calib stdlib|pydoc] \
        [--llama-cpp-bin DIR [--imatrix-speed]] [--work /tmp/lowbit-calib] [--json OUT.json]

Baseline: the F32 dequantization of the registry model (both shipped files are quantized
already: SmolLM2 from Q4_1, gemma3 from Q4_K_M, so gemma3's Q4_K_M/Q5_K_M rows sit near its own
grid). Evaluation: the pydoc topics sorted by key, 8 chunks of 512 tokens from the last 60 %
(llama-perplexity's positions: the second half of each chunk). Calibration, disjoint from it:
``stdlib`` (default) = the source of the standard library's top-level modules in name order, a
different distribution from the evaluated prose; ``pydoc`` = the first 40 % of the topics.
8 chunks of 512 for the imatrix and the Hessians (GPTQ/AWQ fit 6 and hold 2 out).

Intervals: 95 % bootstrap over the 8 evaluation chunks; ratios paired (the same resampled chunks
for both files). llama.cpp columns need --llama-cpp-bin (llama-quantize, llama-imatrix).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sysconfig
import time

import pydoc_data.topics as tp

import lowbit
from lowbit.quant.calibrate import compute_imatrix
from lowbit.quant.evaluate import paired_ratio, perplexity
from lowbit.quant.gptq import collect_hessians
from lowbit.runtime.registry import resolve

N_CTX, N_CHUNKS = 512, 8
METHODS = ("rtn", "imatrix", "gptq", "awq", "awq+gptq")


def texts(calib: str):
    keys = sorted(tp.topics)
    cut = int(len(keys) * 0.4)
    evaluation = "\n\n".join(tp.topics[k] for k in keys[cut:])
    if calib == "pydoc":
        return "\n\n".join(tp.topics[k] for k in keys[:cut]), evaluation
    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
        size += len(parts[-1])
        if size > 400_000:
            break
    return "\n\n".join(parts), evaluation


def baseline(name: str, work: str) -> str:
    path = os.path.join(work, f"{name}-f32.gguf")
    if not os.path.exists(path):
        lowbit.quantize(str(resolve(name)), path, "F32")
    return path


def imatrix_speed(f32: str, calib: str, bin_dir: str, work: str, threads: int) -> dict:
    """tok/s of lowbit's imatrix and llama-imatrix on the same chunks, alternating, best of two."""
    n_tokens = N_CTX * N_CHUNKS
    calib_path = os.path.join(work, "calib.txt")
    with open(calib_path, "w") as f:
        f.write(calib)
    out = {"load_avg_before": os.getloadavg()[0], "lowbit_tok_s": [], "llama_cpp_tok_s": []}
    for _ in range(2):
        t0 = time.perf_counter()
        compute_imatrix(f32, calib, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=threads)
        out["lowbit_tok_s"].append(n_tokens / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        subprocess.run([os.path.join(bin_dir, "llama-imatrix"), "-m", f32, "-f", calib_path, "-c", str(N_CTX),
                        "--chunks", str(N_CHUNKS), "-t", str(threads), "-o", os.path.join(work, "llama.imatrix.gguf"),
                        "--no-ppl"], check=True, capture_output=True)
        out["llama_cpp_tok_s"].append(n_tokens / (time.perf_counter() - t0))
    out["load_avg_after"] = os.getloadavg()[0]
    out["ratio"] = max(out["lowbit_tok_s"]) / max(out["llama_cpp_tok_s"])
    return out


def evaluate(path: str, f32: str, evaluation: str, threads: int) -> dict:
    r = perplexity(path, evaluation, n_ctx=N_CTX, n_chunks=N_CHUNKS, kl_base=f32, n_threads=threads)
    return {"kld": r.kl.mean, "kld_ci": list(r.kl.mean_ci), "kld_chunks": list(r.kl.chunk_means),
            "same_top1_pct": r.kl.same_top1_pct, "ppl": r.ppl, "bytes": os.path.getsize(path)}


def quantize_all(name: str, f32: str, qtype: str, im_path: str, hessians, bin_dir, work: str, threads: int):
    rows = []
    for method in METHODS:
        out = os.path.join(work, f"{name}-{qtype}-{method}.gguf")
        t0 = time.perf_counter()
        calibrated = method not in ("rtn", "imatrix")
        lowbit.quantize(f32, out, qtype, imatrix=im_path if method == "imatrix" else None,
                        method=method if calibrated else "rtn", calibration=hessians if calibrated else None,
                        n_threads=threads)
        rows.append({"type": qtype, "method": f"lowbit {method}", "path": out,
                     "quantize_seconds": time.perf_counter() - t0})
    if bin_dir:
        for method, extra in (("rtn", []), ("imatrix", ["--imatrix", im_path])):
            out = os.path.join(work, f"{name}-{qtype}-llamacpp-{method}.gguf")
            t0 = time.perf_counter()
            subprocess.run([os.path.join(bin_dir, "llama-quantize"), *extra, f32, out, qtype, str(threads)],
                           check=True, capture_output=True)
            rows.append({"type": qtype, "method": f"llama.cpp {method}", "path": out,
                         "quantize_seconds": time.perf_counter() - t0})
    return rows


def ratio(row: dict, ref: dict):
    return paired_ratio(row["kld_chunks"], ref["kld_chunks"])


GREEDY_PROMPT = "The Python standard library"


def greedy_in_both(path: str, n: int = 32) -> dict:
    """The same greedy continuation in lowbit and in llama.cpp (llama-cpp-python) on one file: the
    file is a standard GGUF that llama.cpp runs unchanged. Returns both token lists and how many
    leading tokens agree."""
    from lowbit.runtime.bench import import_llama_cpp
    with lowbit.load(path, n_ctx=256, n_threads=2) as m:
        prompt = m.tokenize(GREEDY_PROMPT)
        ours = m.generate(GREEDY_PROMPT, max_new_tokens=n, temperature=0.0).tokens
    llm = import_llama_cpp().Llama(model_path=path, n_ctx=256, n_threads=2, verbose=False)
    try:
        theirs = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0):
            theirs.append(int(tok))
            if len(theirs) == len(ours):
                break
    finally:
        llm.close()
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return {"path": os.path.basename(path), "lowbit": ours, "llama_cpp": theirs, "same_prefix": same}


def table(rep: dict) -> str:
    lines = [f"**{rep['model']}** (calibration: {rep['calib']}; load {rep['load_avg_start']:.1f} -> "
             f"{rep['load_avg_end']:.1f})", "",
             "| type | method | MiB | mean KLD [95 % CI] | / rtn [CI] | / imatrix [CI] | same top-1 % | quantize s |",
             "|---|---|---:|---|---|---|---:|---:|"]
    for qtype in rep["types"]:
        rows = [r for r in rep["rows"] if r["type"] == qtype]
        ref = {r["method"]: r for r in rows}
        for r in rows:
            cells = []
            for base in ("lowbit rtn", "lowbit imatrix"):
                if r["method"] == base or base not in ref:
                    cells.append("-")
                    continue
                v, (lo, hi) = ratio(r, ref[base])
                cells.append(f"{v:.3f} [{lo:.3f}, {hi:.3f}]")
            lines.append(f"| {qtype} | {r['method']} | {r['bytes'] / 2**20:.1f} | {r['kld']:.5f} "
                         f"[{r['kld_ci'][0]:.5f}, {r['kld_ci'][1]:.5f}] | {cells[0]} | {cells[1]} "
                         f"| {r['same_top1_pct']:.2f} | {r['quantize_seconds']:.1f} |")
    for g in rep.get("greedy", []):
        lines.append(f"- greedy {len(g['lowbit'])} tokens, lowbit vs llama.cpp on {g['path']}: "
                     f"first {g['same_prefix']} equal")
    if "imatrix_speed" in rep:
        s = rep["imatrix_speed"]
        lines += ["", f"imatrix tok/s: lowbit {max(s['lowbit_tok_s']):.0f}, llama.cpp "
                      f"{max(s['llama_cpp_tok_s']):.0f}, **{s['ratio']:.2f}x** (load {s['load_avg_before']:.1f} -> "
                      f"{s['load_avg_after']:.1f})"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--types", default="Q2_K,Q3_K_M,Q4_K_M,Q5_K_M")
    ap.add_argument("--calib", choices=["stdlib", "pydoc"], default="stdlib")
    ap.add_argument("--llama-cpp-bin", default=None)
    ap.add_argument("--imatrix-speed", action="store_true", help="also time imatrix against llama-imatrix "
                    "(needs --llama-cpp-bin; an idle machine)")
    ap.add_argument("--work", default="/tmp/lowbit-calib")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    calib, evaluation = texts(args.calib)
    types = [t for t in args.types.split(",") if t]
    reports = []
    for name in args.models:
        rep = {"model": name, "calib": args.calib, "threads": args.threads, "types": types,
               "load_avg_start": os.getloadavg()[0], "rows": []}
        f32 = baseline(name, args.work)
        if args.llama_cpp_bin and args.imatrix_speed:
            rep["imatrix_speed"] = imatrix_speed(f32, calib, args.llama_cpp_bin, args.work, args.threads)
        im_path = os.path.join(args.work, f"{name}-imatrix.gguf")
        compute_imatrix(f32, calib, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=args.threads).save(im_path)
        t0 = time.perf_counter()
        hessians = collect_hessians(f32, calib, n_ctx=N_CTX, n_chunks=N_CHUNKS, n_threads=args.threads)
        rep["hessian_seconds"] = time.perf_counter() - t0
        for qtype in types:
            for row in quantize_all(name, f32, qtype, im_path, hessians, args.llama_cpp_bin, args.work, args.threads):
                row.update(evaluate(row.pop("path"), f32, evaluation, args.threads))
                rep["rows"].append(row)
                print(f"{name} {qtype} {row['method']}: KLD {row['kld']:.5f}", flush=True)
        if args.llama_cpp_bin:     # the best lowbit file of each type, run by llama.cpp as well
            for qtype in types:
                best = min((r for r in rep["rows"] if r["type"] == qtype and r["method"].startswith("lowbit")),
                           key=lambda r: r["kld"])
                method = best["method"].split()[1]
                rep.setdefault("greedy", []).append(
                    greedy_in_both(os.path.join(args.work, f"{name}-{qtype}-{method}.gguf")))
        rep["load_avg_end"] = os.getloadavg()[0]
        reports.append(rep)
        print(table(rep), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(reports, f, indent=1)


if __name__ == "__main__":
    main()

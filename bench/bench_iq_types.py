"""The i-quant file types (IQ1_S ... IQ3_M) made by `lowbit quantize` with lowbit's imatrix, next to
the K-quants: size, mean KLD against the F32 baseline, same top-1, PPL; and, with --llama-cpp-bin,
whether llama-quantize given the same imatrix file writes the same tensors (types and bytes) for
the i-quant types.

    PYTHONPATH=python python bench/bench_iq_types.py [--models smollm2-135m-instruct gemma3-270m] \
        [--types IQ1_S,IQ1_M,...] [--llama-cpp-bin DIR] [--work /tmp/lowbit-iq] [--json OUT.json]

Texts as bench_calibration.py --calib pydoc: the imatrix (`lowbit imatrix`, 8 chunks of 512) on the
first 40 % of the pydoc topics sorted by key, the evaluation on 8 chunks of 512 from the rest
(llama-perplexity's positions: the second half of each chunk), 95 % bootstrap intervals over the
chunks. Baseline: the F32 dequantization of the registry model (SmolLM2 ships in Q4_1, gemma3 in
Q4_K_M), so the rows measure requantization of those weights.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import gguf
import numpy as np

import lowbit
from bench_calibration import N_CHUNKS, N_CTX, baseline, evaluate, texts

IQ_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_M"]
K_TYPES = ["Q2_K", "Q3_K_M", "Q4_K_M"]


def make_imatrix(f32: str, calib: str, out: str) -> str:
    if not os.path.exists(out):
        calib_path = out + ".txt"
        with open(calib_path, "w") as f:
            f.write(calib)
        subprocess.run([sys.executable, "-m", "lowbit", "imatrix", f32, "--text", calib_path, "-o", out,
                        "--ctx", str(N_CTX), "--chunks", str(N_CHUNKS), "-q"], check=True)
    return out


def same_tensors(a: str, b: str) -> dict:
    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors}
    types = [n for n in tb if n not in ta or ta[n].tensor_type != tb[n].tensor_type]
    data = [n for n in tb if n in ta and np.asarray(ta[n].data).tobytes() != np.asarray(tb[n].data).tobytes()]
    return {"tensors": len(tb), "type_mismatches": types, "byte_mismatches": data}


def n_params(path: str) -> int:
    return sum(int(np.prod(t.shape)) for t in gguf.GGUFReader(path).tensors)


def run_model(name: str, types, work: str, bin_dir, threads: int) -> list:
    calib, evaluation = texts("pydoc")
    f32 = baseline(name, work)
    im = make_imatrix(f32, calib, os.path.join(work, f"{name}-imatrix.gguf"))
    weights = n_params(f32)
    rows = []
    for qtype in types:
        out = os.path.join(work, f"{name}-{qtype}.gguf")
        t0 = time.perf_counter()
        lowbit.quantize(f32, out, qtype, imatrix=im, n_threads=threads)
        row = {"model": name, "type": qtype, "quantize_seconds": time.perf_counter() - t0}
        row.update(evaluate(out, f32, evaluation, threads))
        row["bpw"] = 8 * row["bytes"] / weights
        if bin_dir and qtype not in K_TYPES:    # the K-quants' bytes: issue 3's tests
            theirs = os.path.join(work, f"{name}-{qtype}-llamacpp.gguf")
            subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--imatrix", im, f32, theirs, qtype,
                            str(threads)], check=True, capture_output=True)
            row["vs_llama_quantize"] = same_tensors(out, theirs)
            os.unlink(theirs)
        os.unlink(out)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "kld_chunks"}), flush=True)
    return rows


def table(rows: list) -> str:
    lines = ["| model | type | MiB | bpw | mean KLD [95 % CI] | same top-1 % | PPL | = llama-quantize |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = r.get("vs_llama_quantize")
        tag = "-" if same is None else ("types and bytes" if not same["type_mismatches"] and not same["byte_mismatches"]
                                        else f"{len(same['type_mismatches'])} types / {len(same['byte_mismatches'])} "
                                             "tensors differ")
        lo, hi = r["kld_ci"]
        lines.append(f"| {r['model']} | {r['type']} | {r['bytes'] / 2**20:.1f} | {r['bpw']:.2f} | "
                     f"{r['kld']:.4f} [{lo:.4f}, {hi:.4f}] | {r['same_top1_pct']:.1f} | {r['ppl']:.2f} | {tag} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--types", default=",".join(IQ_TYPES + K_TYPES))
    ap.add_argument("--llama-cpp-bin", default=None)
    ap.add_argument("--work", default="/tmp/lowbit-iq")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rows = []
    load_before = os.getloadavg()[0]
    for name in args.models:
        rows += run_model(name, args.types.split(","), args.work, args.llama_cpp_bin, args.threads)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
                       "n_ctx": N_CTX, "n_chunks": N_CHUNKS}, f, indent=1)


if __name__ == "__main__":
    main()

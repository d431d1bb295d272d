"""Runtime fidelity: how far lowbit's own arithmetic moves the outputs of the shipped models.

    LOWBIT_TEST_MODELS=/tmp/models PYTHONPATH=python python bench/bench_fidelity.py \\
        [--models smollm2-135m-instruct,gemma3-270m] [--precisions q8,high] [--chunks 8]
        [--threads 2] [--decode 32] [--repeats 3] [--json out.json]

As the oracles' `runtime_fidelity` (shared/oracles/README.md): the reference is lowbit running
the same weights dequantized to an F32 GGUF (every tensor through lowbit.quant.blocks.dequantize,
metadata copied; F32 weights dot float activations, exact up to f32 rounding), written to a
temporary folder. The candidate is lowbit on the shipped file at each activation precision
("q8": activations quantized once to 8 bits, llama.cpp's arithmetic; "high": hi + lo q8 rows,
csrc/cpu/matmul.h). Positions are the perplexity ones: the pydoc corpus tokenized without BOS,
chunks of 512 with the first token replaced by BOS, logits at 256..510 scoring tokens 257..511.
Per configuration: mean KL(reference || candidate), same-top-1 %, PPL, and speed (pp: the
512-token chunk prefills, best chunk; tg: `--decode` greedy one-token evals after half a chunk,
best of `--repeats`; configurations interleaved so a varying machine load hits them alike),
beside llama.cpp's figures for its own arithmetic.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from lowbit import _core
from lowbit.quant.blocks import dequantize
from lowbit.runtime.tokenizer import Tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _models import real_model_path  # noqa: E402

N_CTX = 512
FIRST_SCORED = 256
# llama.cpp's runtime_fidelity (shared/oracles/<model>.json): its own arithmetic (8-bit
# activations) against its f32 run of the dequantized weights, same positions.
LLAMA_CPP = {"smollm2-135m-instruct": {"mean_kld": 0.0030, "same_top1_pct": 97.01, "ppl": 12.003},
             "gemma3-270m": {"mean_kld": 0.00561, "same_top1_pct": 96.13, "ppl": 14.5476}}


def write_f32_reference(src: str, dst: str) -> None:
    """dst = src with every tensor dequantized to F32 (lowbit.quant.blocks.dequantize), metadata copied."""
    import gguf
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))   # numpy order: (..., row length)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            data = np.asarray(t.data, dtype=np.float32).reshape(shape)
        else:
            data = dequantize(np.asarray(t.data).view(np.uint8), t.tensor_type.name, shape)
        writer.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def corpus_chunks(path: str, n_chunks: int) -> np.ndarray:
    """(n_chunks, N_CTX) token ids of the pydoc corpus, first of each chunk replaced by BOS."""
    import pydoc_data.topics
    from lowbit.runtime.gguf_file import GGUFFile
    topics = pydoc_data.topics.topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    with GGUFFile(path) as g:
        tok = Tokenizer.from_metadata(g.metadata)
    ids = np.asarray(tok.encode(text, add_special=False), dtype=np.int32)
    if ids.size < n_chunks * N_CTX:
        raise SystemExit(f"corpus has {ids.size} tokens, fewer than {n_chunks} chunks of {N_CTX}")
    chunks = ids[: n_chunks * N_CTX].reshape(n_chunks, N_CTX).copy()
    chunks[:, 0] = tok.bos_id
    return chunks


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def scored_logprobs(engine, chunk: np.ndarray) -> tuple[np.ndarray, float]:
    """Log-probs at positions FIRST_SCORED..N_CTX-2 (float64) and the prefill seconds."""
    engine.truncate(0)
    t0 = time.perf_counter()
    logits = engine.eval(chunk, all_logits=True)
    seconds = time.perf_counter() - t0
    return log_softmax(logits[FIRST_SCORED:N_CTX - 1]), seconds


def decode_tok_s(engine, chunk: np.ndarray, n_decode: int) -> float:
    """Greedy one-token evals after half a chunk: tokens / second."""
    engine.truncate(0)
    tok = int(np.argmax(engine.eval(chunk[:FIRST_SCORED])))
    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = int(np.argmax(engine.eval(np.array([tok], np.int32))))
    return n_decode / (time.perf_counter() - t0)


def bench_model(name: str, path: str, precisions: list[str], n_chunks: int, n_threads: int, n_decode: int,
                repeats: int, tmp: str) -> dict:
    chunks = corpus_chunks(path, n_chunks)
    ref_path = os.path.join(tmp, f"{name}-f32.gguf")
    write_f32_reference(path, ref_path)
    ref = _core.Engine(ref_path, N_CTX, n_threads, N_CTX, "f16", act_precision="q8")
    cands = {p: _core.Engine(path, N_CTX, n_threads, N_CTX, "f16", act_precision=p) for p in precisions}
    targets = chunks[:, FIRST_SCORED + 1:]
    stats = {p: {"kld": [], "same_top1": 0, "nll": [], "pp_s": []} for p in ["f32"] + precisions}
    for c, chunk in enumerate(chunks):
        ref_lp, sec = scored_logprobs(ref, chunk)
        rows = np.arange(ref_lp.shape[0])
        stats["f32"]["nll"].extend(-ref_lp[rows, targets[c]])
        stats["f32"]["pp_s"].append(sec)
        p_ref = np.exp(ref_lp)
        for p, eng in cands.items():
            lp, sec = scored_logprobs(eng, chunk)
            s = stats[p]
            s["kld"].extend((p_ref * (ref_lp - lp)).sum(axis=-1))
            s["same_top1"] += int((lp.argmax(-1) == ref_lp.argmax(-1)).sum())
            s["nll"].extend(-lp[rows, targets[c]])
            s["pp_s"].append(sec)
    n_scored = len(stats["f32"]["nll"])
    engines = {"f32": ref, **cands}
    tg = {p: 0.0 for p in engines}
    for _ in range(repeats):   # interleaved, best of `repeats`: fair under a varying machine load
        for p, eng in engines.items():
            tg[p] = max(tg[p], decode_tok_s(eng, chunks[0], n_decode))
    out = {"model": name, "chunks": n_chunks, "scored_tokens": n_scored, "n_threads": n_threads,
           "kernels": ref.kernels, "llama_cpp": LLAMA_CPP.get(name), "configs": {}}
    for p, s in stats.items():
        cfg = {"ppl": float(np.exp(np.mean(s["nll"]))), "pp_tok_s": N_CTX / min(s["pp_s"]), "tg_tok_s": tg[p]}
        if p != "f32":
            cfg["mean_kld"] = float(np.mean(s["kld"]))
            cfg["max_kld"] = float(np.max(s["kld"]))
            cfg["same_top1_pct"] = 100.0 * s["same_top1"] / n_scored
        out["configs"][p] = cfg
    for eng in [ref, *cands.values()]:
        eng.close()
    os.remove(ref_path)
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| model | activations | mean KL vs f32 | same top-1 % | PPL | pp tok/s | tg tok/s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for p, c in r["configs"].items():
            label = "f32 weights (reference)" if p == "f32" else p
            kld = f"{c['mean_kld']:.2e}" if "mean_kld" in c else "-"
            top1 = f"{c['same_top1_pct']:.2f}" if "same_top1_pct" in c else "-"
            lines.append(f"| {r['model']} | {label} | {kld} | {top1} | {c['ppl']:.4f} | {c['pp_tok_s']:.1f} | "
                         f"{c['tg_tok_s']:.1f} |")
        if r["llama_cpp"]:
            l = r["llama_cpp"]
            lines.append(f"| {r['model']} | llama.cpp (q8) | {l['mean_kld']:.2e} | {l['same_top1_pct']:.2f} | "
                         f"{l['ppl']:.4f} | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--precisions", default="q8,high")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="decode timing: best of this many runs")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    args = ap.parse_args()
    precisions = args.precisions.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="lowbit-fidelity-") as tmp:
        for name in args.models.split(","):
            path = real_model_path(name)
            if path is None:
                print(f"skip {name}: model not available", file=sys.stderr)
                continue
            results.append(bench_model(name, path, precisions, args.chunks, args.threads, args.decode,
                                       args.repeats, tmp))
            print(markdown(results[-1:]), flush=True)
    print()
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_avg": os.getloadavg(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""Top-1 agreement of lowbit with llama.cpp on the same GGUF files (dev oracle: llama-cpp-python).

    LOWBIT_LLAMA_CPP_SITE=/work/oracle-venv/lib/python3.11/site-packages \\
    PYTHONPATH=python python tools/top1_vs_llama_cpp.py --text FILE [--ctx 256] [--chunks 4] a.gguf b.gguf ...

Both engines evaluate the same token ids (llama.cpp's tokenization of the text) in chunks of
--ctx tokens, every position's logits kept, as a perplexity run does; printed per file: the
tensor types it holds, the fraction of positions whose argmax agrees, the mean |logit| gap
relative to the logits' spread, and both perplexities. A table, then one JSON line per file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import numpy as np


def llama_cpp_module():
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE")
    if site and site not in sys.path:
        sys.path.append(site)
    import llama_cpp  # noqa: PLC0415
    return llama_cpp


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare(path: str, text: str, ctx: int, chunks: int, threads: int) -> dict:
    import gguf
    from lowbit import _core
    llama_cpp = llama_cpp_module()
    llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, logits_all=True, n_threads=threads, n_batch=ctx, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=True)
    agree = total = 0
    nll_ours = nll_theirs = 0.0
    gaps = []
    for c in range(chunks):
        ids = tokens[c * ctx:(c + 1) * ctx]
        if len(ids) < ctx:
            break
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[:ctx], dtype=np.float32)
        eng = _core.Engine(path, ctx, threads, 64, "f16")   # a fresh context per chunk
        ours = eng.eval(np.asarray(ids, np.int32), all_logits=True)
        agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
        total += ctx
        gaps.append(float(np.mean(np.abs(ours - theirs)) / np.std(theirs)))
        nxt = np.asarray(ids[1:])
        nll_ours -= float(log_softmax(ours[:-1])[np.arange(ctx - 1), nxt].sum())
        nll_theirs -= float(log_softmax(theirs[:-1])[np.arange(ctx - 1), nxt].sum())
    n_pred = total - total // ctx
    types = Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
    return {"file": os.path.basename(path), "types": dict(types), "positions": total,
            "top1_agreement": agree / max(total, 1), "mean_abs_gap_rel": float(np.mean(gaps)) if gaps else None,
            "ppl_lowbit": float(np.exp(nll_ours / max(n_pred, 1))),
            "ppl_llama_cpp": float(np.exp(nll_theirs / max(n_pred, 1)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    text = open(args.text, encoding="utf-8", errors="replace").read()
    rows = [compare(f, text, args.ctx, args.chunks, args.threads) for f in args.files]
    print(f"{'file':34s} {'positions':>9s} {'top-1':>7s} {'gap':>7s} {'ppl lowbit':>11s} {'ppl llama':>10s}  types")
    for r in rows:
        lowbit_types = ", ".join(f"{k}:{v}" for k, v in sorted(r["types"].items()))
        print(f"{r['file']:34s} {r['positions']:9d} {r['top1_agreement']:7.4f} {r['mean_abs_gap_rel']:7.4f} "
              f"{r['ppl_lowbit']:11.3f} {r['ppl_llama_cpp']:10.3f}  {lowbit_types}")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mixture-of-experts decode and prefill: lowbit vs llama.cpp on the same file, same run.

    PYTHONPATH=python LOWBIT_LLAMA_CPP_SITE=/work/oracle-venv/lib/python3.11/site-packages \
        python bench/bench_moe.py [--layers 2] [--threads 2] [--prompt 64] [--decode 32]
            [--act-precision auto|q8|high] [--json out.json]

The model: Qwen3-30B-A3B's layer shapes (n_embd 2048, 32 query / 4 KV heads of 128, 128 experts
of width 768, 8 used per token, QK-norm) with `--layers` layers instead of 48 and the factory's
small test vocabulary (so the output head does not dominate), every matrix random valid Q4_K
blocks (scales set for activations of O(1)), router and norms F32. Written once to `--file`.

Bytes per token: what a decode step reads (lowbit.runtime.memory.decode_reads: every non-expert
tensor, 8/128 of the experts, one embedding row). Roofline: the measured read bandwidth of the
same thread count divided by those bytes. Prefill: one eval of `--prompt` tokens; decode:
`--decode` one-token evals after it; best of `--repeats`. --act-precision: lowbit's activation
precision (default auto: 8-bit expert matmuls in prefill, two-pass elsewhere; q8: 8-bit
everywhere, llama.cpp's arithmetic). Prints a table and, with --json, the
figures; the load average is recorded (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import gguf
import numpy as np

from lowbit import _core
from lowbit.runtime.gguf_file import GGUFFile
from lowbit.runtime.memory import decode_reads

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import model_factory as mf  # noqa: E402

QWEN3_30B_A3B = dict(n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
                     n_ff_exp=768, n_ff=6144, rope_base=1e6, rms_eps=1e-6)


def q4_k_matrix(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Random valid Q4_K blocks of (..., n_out, n_in) values -> (..., n_out, bytes) uint8, the
    super-block scales chosen (from a small sample) for entries of standard deviation `std`."""
    layout = mf._KQUANT[gguf.GGMLQuantizationType.Q4_K]
    n_in = shape[-1]
    blocks = rng.integers(0, 256, (int(np.prod(shape[:-1])) * (n_in // 256), 144), dtype=np.uint8)
    sample = blocks[:64].copy()
    mf._set_kquant_scales(sample, layout, 1.0)
    unit = float(np.std(gguf.quants.dequantize(sample.reshape(64, -1), gguf.GGMLQuantizationType.Q4_K)))
    mf._set_kquant_scales(blocks, layout, std / unit)
    return blocks.reshape(*shape[:-1], (n_in // 256) * 144)


def write_model(path: str, n_layers: int) -> None:
    spec = mf.TinySpec(arch="qwen3moe", n_layer=n_layers, weight_type="Q4_K", **QWEN3_30B_A3B)
    rng = np.random.default_rng(0)
    n_vocab = mf.vocab_size(spec)
    w = gguf.GGUFWriter(path, "qwen3moe")
    mf._write_hparams(w, spec, n_vocab)
    mf._write_tokenizer(w, spec)
    vocab_rows = mf.tensor_shapes(spec)["token_embd.weight"][0]
    for name, shape in mf.tensor_shapes(spec).items():
        if len(shape) == 1:
            w.add_tensor(name, mf.random_vector(name, shape, rng))
        elif name.endswith("ffn_gate_inp.weight"):
            w.add_tensor(name, rng.normal(0.0, mf.target_std(name, shape, spec), shape).astype(np.float32))
        else:
            rows = shape if name != "token_embd.weight" else (vocab_rows, shape[1])
            w.add_tensor(name, q4_k_matrix(rng, rows, mf.target_std(name, shape, spec)),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def time_lowbit(path, ids, n_decode, n_threads, repeats, act_precision="auto"):
    e = _core.Engine(path, len(ids) + n_decode + 8, n_threads, 512, "f16", act_precision)
    e.eval(ids[:8])   # fault the pages in
    prefill, decode = [], []
    for _ in range(repeats):
        e.truncate(0)
        t0 = time.perf_counter()
        logits = e.eval(ids)
        prefill.append(time.perf_counter() - t0)
        tok = int(np.argmax(logits))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            tok = int(np.argmax(e.eval(np.array([tok], np.int32))))
        decode.append(time.perf_counter() - t0)
    return len(ids) / min(prefill), n_decode / min(decode)


def time_llama_cpp(path, ids, n_decode, n_threads, repeats):
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE")
    if not site:
        return None
    sys.path.append(site)
    import llama_cpp  # noqa: PLC0415
    llm = llama_cpp.Llama(path, n_ctx=len(ids) + n_decode + 8, n_threads=n_threads, n_threads_batch=n_threads,
                          n_batch=512, verbose=False)
    llm.eval(ids[:8].tolist())
    prefill, decode = [], []
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids.tolist())
        prefill.append(time.perf_counter() - t0)
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        decode.append(time.perf_counter() - t0)
    return len(ids) / min(prefill), n_decode / min(decode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--act-precision", default="auto", choices=["auto", "q8", "high"])
    ap.add_argument("--file", default="/tmp/lowbit-bench-qwen3moe-q4k.gguf")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not os.path.isfile(args.file):
        write_model(args.file, args.layers)
    with GGUFFile(args.file) as g:
        reads = decode_reads(g.model_config(), g.tensors)
        file_bytes = sum(t.nbytes for t in g.tensors)
    ids = np.random.default_rng(1).integers(0, 250, args.prompt).astype(np.int32)
    load_before = os.getloadavg()
    ours = time_lowbit(args.file, ids, args.decode, args.threads, args.repeats, args.act_precision)
    theirs = time_llama_cpp(args.file, ids, args.decode, args.threads, args.repeats)
    bandwidth = _core.cpu_read_bandwidth(_core.CpuThreadPool(args.threads), 1 << 28, 3)
    per_token = reads["decode_bytes_per_token"]
    roofline = bandwidth * 1e9 / per_token
    res = {"layers": args.layers, "threads": args.threads, "prompt": args.prompt, "act_precision": args.act_precision,
           "file_bytes": file_bytes,
           "decode_bytes_per_token": per_token, "decode_read_fraction": reads["decode_read_fraction"],
           "read_bandwidth_gbs": bandwidth, "roofline_decode_tok_s": roofline,
           "lowbit": {"prefill_tok_s": ours[0], "decode_tok_s": ours[1]},
           "llama_cpp": {"prefill_tok_s": theirs[0], "decode_tok_s": theirs[1]} if theirs else None,
           "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    print(f"qwen3moe (Qwen3-30B-A3B layers) x {args.layers}, Q4_K, {args.threads} threads; file "
          f"{file_bytes / 2**20:.0f} MiB, a decode step reads {per_token / 2**20:.1f} MiB "
          f"({100 * reads['decode_read_fraction']:.1f}%); read bandwidth {bandwidth:.1f} GB/s -> roofline "
          f"{roofline:.1f} tok/s; load {load_before[0]:.1f} -> {res['load_avg_after'][0]:.1f}; lowbit "
          f"act_precision {args.act_precision}, prompt {args.prompt}")
    print("| runtime | prefill tok/s | decode tok/s | decode / roofline |")
    print("|---|---:|---:|---:|")
    for name, r in (("lowbit", ours), ("llama.cpp", theirs)):
        if r:
            print(f"| {name} | {r[0]:.1f} | {r[1]:.2f} | {r[1] / roofline:.2f} |")
    if theirs:
        print(f"lowbit / llama.cpp: prefill {ours[0] / theirs[0]:.2f}x, decode {ours[1] / theirs[1]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

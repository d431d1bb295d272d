"""Mixture-of-experts decode and prefill: lowbit vs llama.cpp on the same file, same run.

    PYTHONPATH=python LOWBIT_LLAMA_CPP_SITE=/work/oracle-venv/lib/python3.11/site-packages \
        python bench/bench_moe.py [--layers 2] [--threads 2] [--prompt 64 256] [--decode 32]
            [--repeats 2] [--act-precision auto|q8|high] [--type Q4_K|Q4_0|Q8_0] [--profile] [--json out.json]

The model: Qwen3-30B-A3B's layer shapes (n_embd 2048, 32 query / 4 KV heads of 128, 128 experts
of width 768, 8 used per token, QK-norm) with `--layers` layers instead of 48 and the factory's
small test vocabulary (so the output head does not dominate), every matrix random valid Q4_K
blocks (scales set for activations of O(1)), router and norms F32. Written once to `--file`.
--type Q4_0 / Q8_0: the same model in a legacy type (random quants, every block's scale set the
same way). lowbit repacks the experts of every type with a packed layout (Q4_K included) at load
(weights.h ExpertMatrices); LOWBIT_REPACK=0 reads them from the mapping instead.

Bytes per token: what a decode step reads (lowbit.runtime.memory.decode_reads: every non-expert
tensor, 8/128 of the experts, one embedding row). Roofline: the measured read bandwidth of the
same thread count divided by those bytes. Prefill: one eval of each `--prompt` length (an expert
gets n * 8 / 128 of its tokens on average: 4 rows at 64, 16 at 256); decode: `--decode` one-token
evals after the first prompt; best of `--repeats`, lowbit and llama.cpp alternating within each
repeat so that both see the same load. --profile adds lowbit's per-op prefill and decode times.
--act-precision: lowbit's activation precision (default auto: 8-bit expert matmuls, prefill and
decode, two-pass elsewhere; q8: 8-bit everywhere, llama.cpp's arithmetic; high: two-pass everywhere). Prints a table and, with
--json, the figures; the load average is recorded (the machine is shared).
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


# Legacy 32-blocks: (bytes per block, bytes of fp16 scales before the quants, std of the raw quant values).
_LEGACY = {"Q4_0": (18, 2, np.sqrt((16 ** 2 - 1) / 12)), "Q8_0": (34, 2, np.sqrt((256 ** 2 - 1) / 12))}


def legacy_matrix(rng: np.random.Generator, shape, std: float, qtype: str) -> np.ndarray:
    """Random valid Q4_0 / Q8_0 blocks of (..., n_out, n_in) values -> (..., n_out, bytes) uint8:
    uniform random quants, every block's fp16 scale set for entries of standard deviation `std`."""
    block_bytes, scale_bytes, unit = _LEGACY[qtype]
    n_in = shape[-1]
    blocks = rng.integers(0, 256, (int(np.prod(shape[:-1])) * (n_in // 32), block_bytes), dtype=np.uint8)
    blocks[:, :scale_bytes] = np.frombuffer(np.float16(std / unit).tobytes(), np.uint8)
    return blocks.reshape(*shape[:-1], (n_in // 32) * block_bytes)


def write_model(path: str, n_layers: int, qtype: str = "Q4_K") -> None:
    spec = mf.TinySpec(arch="qwen3moe", n_layer=n_layers, weight_type=qtype, **QWEN3_30B_A3B)
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
            std = mf.target_std(name, shape, spec)
            data = q4_k_matrix(rng, rows, std) if qtype == "Q4_K" else legacy_matrix(rng, rows, std, qtype)
            w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class Lowbit:
    def __init__(self, path, n_ctx, n_threads, act_precision):
        self.e = _core.Engine(path, n_ctx, n_threads, 512, "f16", act_precision)
        self.e.eval(np.arange(8, dtype=np.int32))   # fault the pages in

    def prefill(self, ids):
        self.e.truncate(0)
        t0 = time.perf_counter()
        logits = self.e.eval(ids)
        return time.perf_counter() - t0, int(np.argmax(logits))

    def decode(self, tok, n):
        t0 = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(self.e.eval(np.array([tok], np.int32))))
        return time.perf_counter() - t0

    def profile(self, ids, repeats, n_decode=0):
        """Per-op milliseconds (cpu_op_profile, mean of `repeats`) of one prefill of ids, or with
        n_decode > 0 of one decode step (n_decode steps after the prefill, per step)."""
        passes = repeats * max(n_decode, 1)
        _core.cpu_set_op_profile(True)
        _core.cpu_op_profile(reset=True)
        for _ in range(repeats):
            if n_decode:
                _core.cpu_set_op_profile(False)
                _, tok = self.prefill(ids)
                _core.cpu_set_op_profile(True)
                self.decode(tok, n_decode)
            else:
                self.prefill(ids)
        ops = _core.cpu_op_profile(reset=True)["ops"]
        _core.cpu_set_op_profile(False)
        return {name: {"ms": 1e3 * o["seconds"] / passes, "idle_ms": 1e3 * o["idle_seconds"] / passes}
                for name, o in ops.items() if o["seconds"] > 0}


class LlamaCpp:
    def __init__(self, path, n_ctx, n_threads):
        import llama_cpp  # noqa: PLC0415
        self.llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                   n_batch=512, verbose=False)
        self.llm.eval(list(range(8)))

    def prefill(self, ids):
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(ids.tolist())
        return time.perf_counter() - t0, int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))

    def decode(self, tok, n):
        t0 = time.perf_counter()
        for _ in range(n):
            self.llm.eval([tok])
            tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
        return time.perf_counter() - t0


def measure(runtimes, prompts, n_decode, repeats):
    """Best prefill seconds per (runtime, prompt length) and best decode seconds per runtime; the
    runtimes alternate within every repeat (same load for both). Decode follows the first prompt."""
    prefill = {name: {len(p): float("inf") for p in prompts} for name in runtimes}
    decode = {name: float("inf") for name in runtimes}
    for _ in range(repeats):
        for ids in prompts:
            for name, rt in runtimes.items():
                prefill[name][len(ids)] = min(prefill[name][len(ids)], rt.prefill(ids)[0])
        for name, rt in runtimes.items():
            _, tok = rt.prefill(prompts[0])
            decode[name] = min(decode[name], rt.decode(tok, n_decode))
    return prefill, decode


def print_profile(what, prof):
    print(f"lowbit {what} (idle: pool threads waiting): " + ", ".join(
        f"{name} {o['ms']:.3f} ({o['idle_ms']:.3f})" for name, o in sorted(prof.items(), key=lambda kv: -kv[1]["ms"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, nargs="+", default=[64, 256], help="prefill lengths (<= 512)")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--act-precision", default="auto", choices=["auto", "q8", "high"])
    ap.add_argument("--profile", action="store_true", help="also lowbit's per-op prefill and decode profiles")
    ap.add_argument("--type", default="Q4_K", choices=["Q4_K", *_LEGACY],
                    help="type of every matrix (Q4_K, or a legacy type: Q4_0 / Q8_0)")
    ap.add_argument("--file", help="default /tmp/lowbit-bench-qwen3moe-<type>.gguf (q4k for Q4_K)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not all(1 <= p <= 512 for p in args.prompt):
        ap.error("--prompt lengths must be in [1, 512] (one batch)")
    if args.file is None:
        args.file = f"/tmp/lowbit-bench-qwen3moe-{'q4k' if args.type == 'Q4_K' else args.type.lower()}.gguf"
    if not os.path.isfile(args.file):
        write_model(args.file, args.layers, args.type)
    with GGUFFile(args.file) as g:
        reads = decode_reads(g.model_config(), g.tensors)
        file_bytes = sum(t.nbytes for t in g.tensors)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 250, p).astype(np.int32) for p in args.prompt]
    n_ctx = max(args.prompt) + args.decode + 8
    load_before = os.getloadavg()
    runtimes = {"lowbit": Lowbit(args.file, n_ctx, args.threads, args.act_precision)}
    site = os.environ.get("LOWBIT_LLAMA_CPP_SITE")
    if site:
        sys.path.append(site)
        runtimes["llama.cpp"] = LlamaCpp(args.file, n_ctx, args.threads)
    prefill, decode = measure(runtimes, prompts, args.decode, args.repeats)
    bandwidth = _core.cpu_read_bandwidth(_core.CpuThreadPool(args.threads), 1 << 28, 3)
    per_token = reads["decode_bytes_per_token"]
    roofline = bandwidth * 1e9 / per_token
    res = {"layers": args.layers, "type": args.type, "threads": args.threads, "prompts": args.prompt, "decode_tokens": args.decode,
           "act_precision": args.act_precision, "file_bytes": file_bytes,
           "decode_bytes_per_token": per_token, "decode_read_fraction": reads["decode_read_fraction"],
           "read_bandwidth_gbs": bandwidth, "roofline_decode_tok_s": roofline,
           "runtimes": {name: {"prefill_tok_s": {str(p): p / prefill[name][p] for p in args.prompt},
                               "decode_tok_s": args.decode / decode[name]} for name in runtimes},
           "load_avg_before": load_before, "load_avg_after": os.getloadavg()}
    print(f"qwen3moe (Qwen3-30B-A3B layers) x {args.layers}, {args.type}, {args.threads} threads; file "
          f"{file_bytes / 2**20:.0f} MiB, a decode step reads {per_token / 2**20:.1f} MiB "
          f"({100 * reads['decode_read_fraction']:.1f}%); read bandwidth {bandwidth:.1f} GB/s -> roofline "
          f"{roofline:.1f} tok/s; load {load_before[0]:.1f} -> {res['load_avg_after'][0]:.1f}; lowbit "
          f"act_precision {args.act_precision}; best of {args.repeats}, runtimes alternating")
    print("| runtime | " + " | ".join(f"prefill {p} tok/s" for p in args.prompt) + " | decode tok/s | decode / roofline |")
    print("|---|" + "---:|" * (len(args.prompt) + 2))
    for name in runtimes:
        r = res["runtimes"][name]
        print(f"| {name} | " + " | ".join(f"{r['prefill_tok_s'][str(p)]:.1f}" for p in args.prompt)
              + f" | {r['decode_tok_s']:.2f} | {r['decode_tok_s'] / roofline:.2f} |")
    if "llama.cpp" in runtimes:
        ours, theirs = res["runtimes"]["lowbit"], res["runtimes"]["llama.cpp"]
        res["ratio"] = {"prefill": {str(p): ours["prefill_tok_s"][str(p)] / theirs["prefill_tok_s"][str(p)]
                                    for p in args.prompt},
                        "decode": ours["decode_tok_s"] / theirs["decode_tok_s"]}
        print("lowbit / llama.cpp: " + ", ".join(f"prefill {p} {res['ratio']['prefill'][str(p)]:.2f}x" for p in args.prompt)
              + f", decode {res['ratio']['decode']:.2f}x")
    if args.profile:
        res["lowbit_prefill_profile_ms"] = {}
        for ids in prompts:
            prof = runtimes["lowbit"].profile(ids, args.repeats)
            res["lowbit_prefill_profile_ms"][str(len(ids))] = prof
            print_profile(f"prefill {len(ids)}, ms per pass", prof)
        prof = runtimes["lowbit"].profile(prompts[0], args.repeats, args.decode)
        res["lowbit_decode_profile_ms"] = prof
        print_profile("decode, ms per token", prof)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

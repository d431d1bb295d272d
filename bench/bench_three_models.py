"""`lowbit bench --vs-llama-cpp` on the three models of issue 22, same run: SmolLM2-135M,
gemma3-270m and a 0.5B-shaped model, pp512 / tg128 tok/s of both runtimes, the ratios and the
decode roofline (weight bytes read per token, read bandwidth measured in the run, tg as a
fraction of bandwidth / bytes). One command:

    PYTHONPATH=python LOWBIT_LLAMA_CPP_SITE=/work/oracle-venv/lib/python3.11/site-packages \
        python bench/bench_three_models.py [--threads 2] [-r 3] [--json bench/results/three_models.json]

The third model has Qwen2.5-0.5B's shape (qwen2: n_embd 896, 24 layers, 14 query / 2 KV heads of
64, q/k/v biases, ffn 4864, vocabulary 151,936, tied output head) with random F16 weights (the
test factory's scales: projections N(0, 1/n_in), logits of std 3), quantized with
`lowbit quantize --type Q4_K_M`. Its vocabulary is SmolLM2's byte-level BPE (tokens, types,
merges) padded with control tokens to 151,936, so both runtimes load a valid tokenizer. Both files
are written once to --cache-dir (default ~/.cache/lowbit/bench; never committed) and reused.
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

from lowbit.errors import LowbitError
from lowbit.runtime import registry
from lowbit.runtime.bench import bench_model, format_table, import_llama_cpp
from lowbit.runtime.gguf_file import GGUFFile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import model_factory as mf  # noqa: E402

REAL_MODELS = ["smollm2-135m-instruct", "gemma3-270m"]
QWEN25_05B = dict(n_embd=896, n_layer=24, n_head=14, n_head_kv=2, head_dim=64, n_ff=4864,
                  rope_base=1e6, rms_eps=1e-6, n_ctx=32768)
QWEN25_05B_VOCAB = 151936
CONTROL = 3                    # gguf token type of the padding tokens


def write_tokenizer(w: gguf.GGUFWriter, vocab_source: str, n_vocab: int) -> None:
    """SmolLM2's BPE vocabulary padded to n_vocab with control tokens."""
    with GGUFFile(vocab_source) as g:
        meta = g.metadata
        tokens = list(meta["tokenizer.ggml.tokens"])
        types = list(meta["tokenizer.ggml.token_type"])
        merges = list(meta["tokenizer.ggml.merges"])
        pre = meta["tokenizer.ggml.pre"]
        bos, eos = int(meta["tokenizer.ggml.bos_token_id"]), int(meta["tokenizer.ggml.eos_token_id"])
    pad = n_vocab - len(tokens)
    tokens += [f"<|pad_{i}|>" for i in range(pad)]
    types += [CONTROL] * pad
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)


def write_f16_model(path: str, vocab_source: str, arch: str = "qwen2", shape: dict = QWEN25_05B,
                    n_vocab: int = QWEN25_05B_VOCAB, name: str = "random-qwen2.5-0.5b-shape") -> None:
    """A random F16 model of `arch` with the given hyperparameters (a tied head), SmolLM2's BPE
    vocabulary padded to n_vocab."""
    spec = mf.TinySpec(arch=arch, weight_type="F16", tied=True, **shape)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    mf._write_hparams(w, spec, n_vocab)
    w.add_name(name)
    write_tokenizer(w, vocab_source, n_vocab)
    for name, shape in mf.tensor_shapes(spec).items():
        if name == "token_embd.weight":
            shape = (n_vocab, shape[1])
        if len(shape) == 1:
            w.add_tensor(name, mf.random_vector(name, shape, rng))
        else:
            std = mf.target_std(name, shape, spec)
            w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def third_model(cache_dir: str) -> str:
    """The Q4_K_M 0.5B-shaped file, made (F16 -> lowbit quantize) when missing."""
    os.makedirs(cache_dir, exist_ok=True)
    q4 = os.path.join(cache_dir, "random-qwen2.5-0.5b-shape-q4_k_m.gguf")
    if os.path.isfile(q4):
        return q4
    f16 = os.path.join(cache_dir, "random-qwen2.5-0.5b-shape-f16.gguf")
    if not os.path.isfile(f16):
        print(f"writing {f16}", file=sys.stderr, flush=True)
        write_f16_model(f16 + ".tmp", str(registry.resolve(REAL_MODELS[0])))
        os.replace(f16 + ".tmp", f16)
    print(f"lowbit quantize --type Q4_K_M -> {q4}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "lowbit", "quantize", "--type", "Q4_K_M", "-q", f16, q4], check=True)
    return q4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "lowbit", "bench"))
    ap.add_argument("--json", help="write the reports (and the load average) to this file")
    args = ap.parse_args()
    try:
        import_llama_cpp()
        vs = True
    except LowbitError as e:
        print(f"(llama.cpp not available, lowbit only: {e})", file=sys.stderr)
        vs = False
    paths = [str(registry.resolve(m)) for m in REAL_MODELS] + [third_model(args.cache_dir)]
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    reports = []
    for path in paths:
        say = (lambda msg, n=os.path.basename(path): print(f"  {n}: {msg}", file=sys.stderr, flush=True))
        reports.append(bench_model(path, n_prompt=args.p, n_gen=args.n, reps=args.r, n_threads=args.threads,
                                   vs_llama_cpp=vs, progress=say))
    load_after = os.getloadavg()
    print(f"lowbit bench{' --vs-llama-cpp' if vs else ''} -t {args.threads} -r {args.r} -p {args.p} "
          f"-n {args.n} <three models>; {started}; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(format_table(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": started, "load_avg_before": load_before, "load_avg_after": load_after,
                       "threads": args.threads, "reports": reports}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

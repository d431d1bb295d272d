"""Decode and prefill speed of the CUDA device model (lowbit._core.CudaModel) on llama shapes.

    PYTHONPATH=python python bench/bench_cuda.py [--shapes 1b,8b] [--types Q4_0,Q4_K_M,Q8_0]
        [--decode 64] [--prefill 512] [--dir /tmp/lowbit_bench_cuda] [--models a.gguf ...] [--json out.json]

Synthetic models of Llama-3.2-1B and Llama-3.1-8B shapes (random valid blocks: finite fp16 scales,
random quants; speed does not depend on values), written once into --dir; --models adds files
(the real models, where they are on the machine). Per model: the CPU engine maps the file
(LOWBIT_REPACK=0: no CPU repacking), a CudaModel uploads it, then prefill of --prefill tokens
(tok/s, best of 3) and --decode one-token steps (tok/s, median step). Achieved bandwidth = the
device weights read per token (the plan's weights_bytes: every matrix once, the output head
included) x decode tok/s, against a 1 GiB device-to-device copy measured in the same run
(read + written bytes). Prints a table and, with --json, the figures. Needs a CUDA device.

Targets (issue 19, a benchmark not a test): decode >= 75% of the copy on the 8B shapes; the real
0.1-0.3B models >= 1,500 tok/s; prefill >= 10,000 tok/s on the 1B shape.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

SHAPES = {   # llama.cpp's names: n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab
    "1b": dict(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192, n_vocab=128256),
    "8b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256),
}


def more_bits(il: int, n_layer: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third between."""
    return il < n_layer // 8 or il >= 7 * n_layer // 8 or (il - n_layer // 8) % 3 == 2


def tensor_types(mix: str, n_layer: int) -> dict:
    """GGML type per tensor role and layer: one type for all, or Q4_K_M's mix (Q6_K for attn_v and
    ffn_down where use_more_bits, and for the output head; Q4_K elsewhere)."""
    out = {}
    for il in range(n_layer):
        for role in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            t = mix
            if mix == "Q4_K_M":
                t = "Q6_K" if role in ("attn_v", "ffn_down") and more_bits(il, n_layer) else "Q4_K"
            out[f"blk.{il}.{role}.weight"] = t
    out["output.weight"] = "Q6_K" if mix == "Q4_K_M" else mix
    out["token_embd.weight"] = "Q4_K" if mix == "Q4_K_M" else mix
    return out


def write_model(path: str, shape: str, mix: str) -> str:
    """A llama GGUF of the shape with random valid blocks of each tensor's type (no tokenizer: the
    engine does not need one)."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    from bench_decode_shapes import BLOCK, SCALE_OFFSETS

    if os.path.isfile(path):
        return path
    s = SHAPES[shape]
    E, L, H, Hkv, F, V = (s[k] for k in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_vocab"))
    D = E // H
    rng = np.random.default_rng(0)
    pool = {}

    def blocks(t: str, rows: int, cols: int) -> np.ndarray:
        """rows x cols weights of type t as raw bytes (rows, row_bytes): views of one random pool per type."""
        bs, bb = BLOCK[t]
        row_bytes = cols // bs * bb
        if t not in pool:
            nb = (64 << 20) // bb
            raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
            for off in SCALE_OFFSETS[t]:
                raw[:, off:off + 2] = rng.uniform(1e-3, 1e-2, size=nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
            pool[t] = raw.reshape(-1)
        need = rows * row_bytes
        src = pool[t]
        reps = -(-need // src.size)
        flat = np.tile(src, reps)[:need] if reps > 1 else src[:need]
        return flat.reshape(rows, row_bytes)

    types = tensor_types(mix, L)
    w = gguf.GGUFWriter(path + ".tmp", "llama")
    w.add_name(f"random-llama-{shape}-{mix.lower()}")
    w.add_context_length(8192)
    w.add_embedding_length(E)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_dimension_count(D)
    w.add_rope_freq_base(5e5)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.GUESSED.value)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    ones = np.ones(E, np.float32)

    def matrix(name: str, rows: int, cols: int) -> None:
        t = types[name]
        w.add_tensor(name, blocks(t, rows, cols), raw_dtype=QT[t])   # byte shape -> (rows, cols) by gguf

    matrix("token_embd.weight", V, E)
    for il in range(L):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", ones)
        matrix(p + "attn_q.weight", H * D, E)
        matrix(p + "attn_k.weight", Hkv * D, E)
        matrix(p + "attn_v.weight", Hkv * D, E)
        matrix(p + "attn_output.weight", E, H * D)
        w.add_tensor(p + "ffn_norm.weight", ones)
        matrix(p + "ffn_gate.weight", F, E)
        matrix(p + "ffn_up.weight", F, E)
        matrix(p + "ffn_down.weight", E, F)
    w.add_tensor("output_norm.weight", ones)
    matrix("output.weight", V, E)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".tmp", path)
    return path


def measure(path: str, n_prefill: int, n_decode: int, copy_gbs: float) -> dict:
    from lowbit import _core

    t0 = time.perf_counter()
    engine = _core.Engine(path, n_prefill + n_decode + 8, 2, n_prefill, "f16", "q8")
    gpu = _core.CudaModel(engine, n_prefill + n_decode + 8, n_prefill)
    load_s = time.perf_counter() - t0
    n_vocab = engine.n_vocab
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, n_vocab, n_prefill)
    gpu.eval(prompt[:16])                                   # warm-up: cuBLAS handle, first launches
    prefill = []
    for _ in range(3):
        gpu.truncate(0)
        t = time.perf_counter()
        logits = gpu.eval(prompt)
        prefill.append(time.perf_counter() - t)
    steps = []
    tok = int(np.argmax(logits))
    for _ in range(n_decode):
        t = time.perf_counter()
        tok = int(np.argmax(gpu.eval([tok])))
        steps.append(time.perf_counter() - t)
    mem = gpu.memory()
    decode_tps = 1.0 / statistics.median(steps)
    achieved = mem["weights_bytes"] * decode_tps / 1e9
    out = dict(model=os.path.basename(path), device=gpu.device, load_s=round(load_s, 1),
               weights_bytes=mem["weights_bytes"], prefill_tokens=n_prefill,
               prefill_tps=n_prefill / min(prefill), decode_tps=decode_tps, decode_gbs=achieved,
               decode_pct_copy=100.0 * achieved / copy_gbs if copy_gbs else 0.0,
               peak_used_bytes=mem["peak_used_bytes"], decode_graph=mem.get("decode_graph", ""))
    del gpu, engine
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--types", default="Q4_0,Q4_K_M,Q8_0")
    ap.add_argument("--models", nargs="*", default=[])
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--dir", default="/tmp/lowbit_bench_cuda")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.environ["LOWBIT_REPACK"] = "0"          # the CPU side only maps the file for the upload
    from lowbit import _core

    status = _core.cuda_status()
    if not status["device_count"]:
        print(f"bench_cuda: {status['message']}", file=sys.stderr)
        return 2
    os.makedirs(a.dir, exist_ok=True)
    paths = list(a.models)
    for shape in [s for s in a.shapes.split(",") if s]:
        for mix in [t for t in a.types.split(",") if t]:
            t = time.perf_counter()
            paths.append(write_model(os.path.join(a.dir, f"random-llama-{shape}-{mix.lower()}.gguf"), shape, mix))
            print(f"[{os.path.basename(paths[-1])}: {time.perf_counter() - t:.0f} s to write]", flush=True)
    copy = _core.cuda_copy_gbs(1 << 30)
    print(f"device-to-device copy: {copy:.0f} GB/s (read + written)", flush=True)
    rows = []
    for path in paths:
        r = measure(path, a.prefill, a.decode, copy)
        rows.append(r)
        print(f"{r['model']:<36} load {r['load_s']:5.1f} s  weights {r['weights_bytes'] / 2**30:6.2f} GiB  "
              f"prefill {r['prefill_tps']:9.0f} tok/s  decode {r['decode_tps']:7.1f} tok/s  "
              f"{r['decode_gbs']:6.0f} GB/s = {r['decode_pct_copy']:5.1f}% of copy  graph: {r['decode_graph']}",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(copy_gbs=copy, device=rows[0]["device"] if rows else "", results=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

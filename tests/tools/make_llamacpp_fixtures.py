"""Regenerate tests/data/llamacpp_f32_*: what llama.cpp computes in f32 on the weights
the reference reads, so `test_reference_forward.py` can hold the reference to llama.cpp
without llama.cpp installed.

Needs llama-cpp-python (the oracle build, e.g. /work/oracle-venv) next to gguf and numpy:
    /work/oracle-venv/bin/python tests/tools/make_llamacpp_fixtures.py [models_dir]

real.json: for each real model, every prompt of the shared oracle (same prompt_ids):
  the file dequantized to F32 (gguf.quants.dequantize) is run by llama.cpp with an f32
  KV cache; stored are 16 greedy ids and the top-10 natural-log-probs after the prompt.
tiny.npz + tiny.json: full logits of llama.cpp (f32 KV cache) on factory models, with the
  spec and the sha256 of the file it wrote (the test regenerates and checks the hash).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import asdict

import numpy as np
import gguf
from gguf.quants import dequantize
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from model_factory import default_spec, write_tiny_model  # noqa: E402

DATA = os.path.join(os.path.dirname(HERE), "data")
ORACLES = os.environ.get("LOWBIT_ORACLES", "/work/shared/oracles")
REAL_MODELS = ("smollm2-135m-instruct", "gemma3-270m")
N_GREEDY, N_TOP = 16, 10

# (arch, weight_type, overrides): every architecture and the features llama.cpp accepts
TINY_CONFIGS = [
    ("llama", "F32", {}), ("llama", "F32", {"tied": False, "tokenizer": "llama"}),
    ("llama", "F32", {"rope_freq_factors": True}), ("llama", "F32", {"rope_scale": 4.0}),
    ("llama", "F16", {}),
    ("qwen2", "F32", {}), ("qwen2", "F32", {"tied": False}),
    ("qwen3", "F32", {}), ("qwen3", "F32", {"n_head_kv": 1}),
    ("gemma3", "F32", {}), ("gemma3", "F32", {"tied": True}),
    ("gemma3", "F32", {"rope_scale": 8.0, "final_logit_softcap": 5.0}),
    ("phi3", "F32", {}), ("phi3", "F32", {"rope_dim": 8}),
    ("llama", "Q4_K", {}), ("qwen3", "Q6_K", {}), ("gemma3", "Q8_0", {}),
]
TINY_TOKENS = 8


def f32_copy(src: str, dst: str) -> None:
    """Rewrite a GGUF with every tensor dequantized to F32, metadata unchanged."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))
        writer.add_tensor(t.name, dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load(path: str, n_ctx: int) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=2,
                           logits_all=True, verbose=False, type_k=0, type_v=0,
                           flash_attn=False)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def real_fixture(models_dir: str) -> dict:
    out = {}
    for name in REAL_MODELS:
        oracle = json.load(open(os.path.join(ORACLES, f"{name}.json")))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "f32.gguf")
            f32_copy(os.path.join(models_dir, f"{name}.gguf"), path)
            llm = load(path, 256)
            prompts = []
            for entry in oracle["top5"]:
                ids = list(entry["prompt_ids"])
                llm.reset()
                llm.eval(ids)
                lp = log_softmax(np.array(llm.scores[len(ids) - 1], dtype=np.float64))
                top = np.argsort(-lp)[:N_TOP]
                greedy = []
                for _ in range(N_GREEDY):           # greedy continuation, one token a step
                    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
                    greedy.append(nxt)
                    llm.eval([nxt])
                prompts.append({"prompt": entry["prompt"], "prompt_ids": ids,
                                "top_ids": [int(i) for i in top],
                                "top_logprobs": [round(float(lp[i]), 5) for i in top],
                                "greedy": greedy})
            del llm
        out[name] = {"source": oracle["model"], "prompts": prompts}
    return out


def tiny_fixture() -> tuple:
    rng = np.random.default_rng(1234)
    configs, logits = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (arch, wtype, overrides) in enumerate(TINY_CONFIGS):
            spec = default_spec(arch, wtype, **overrides)
            path = write_tiny_model(os.path.join(tmp, f"{i}.gguf"), spec)
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            n_vocab = len(gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].data)
            ids = [int(t) for t in rng.integers(3, n_vocab, TINY_TOKENS)]
            llm = load(path, 64)
            llm.eval(ids)
            logits[f"c{i}"] = np.array(llm.scores[:len(ids)], dtype=np.float32)
            del llm
            configs.append({"key": f"c{i}", "spec": asdict(spec), "sha256": digest,
                            "token_ids": ids})
    return configs, logits


def main() -> None:
    models_dir = sys.argv[1] if len(sys.argv) > 1 else "/tmp/models"
    os.makedirs(DATA, exist_ok=True)
    meta = {"llama_cpp_python": llama_cpp.__version__, "kv_cache": "f32",
            "flash_attn": False}
    real = real_fixture(models_dir)
    with open(os.path.join(DATA, "llamacpp_f32_real.json"), "w") as f:
        json.dump({"meta": meta, "models": real}, f, indent=1)
    configs, logits = tiny_fixture()
    np.savez_compressed(os.path.join(DATA, "llamacpp_f32_tiny.npz"), **logits)
    with open(os.path.join(DATA, "llamacpp_f32_tiny.json"), "w") as f:
        json.dump({"meta": meta, "configs": configs}, f, indent=1)


if __name__ == "__main__":
    main()

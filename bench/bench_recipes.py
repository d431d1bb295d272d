"""The low-bit recipes (Q2_K, Q3_K_M, IQ4_XS, Q4_K_M) side by side with llama.cpp on a random
llama-shaped model whose widths are multiples of 256 (1024 wide, FFN 2816, 16 layers, SmolLM2's
vocabulary, tied head), so each recipe keeps its own block types (on the real small models and the
0.5B shape, 576 / 640 / 896 columns send most tensors to the legacy fallbacks). The files are
made once (F16 written here, then `lowbit quantize`) and cached.

    PYTHONPATH=python LOWBIT_LLAMA_CPP_SITE=... python bench/bench_recipes.py [--recipes Q2_K IQ4_XS]
        [-r 3] [--threads 2] [--json out.json] [--files-only]

Prints `lowbit bench --vs-llama-cpp`'s table, ratios and roofline per file.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_three_models as b3  # noqa: E402

ALIGNED = dict(n_embd=1024, n_layer=16, n_head=16, n_head_kv=4, head_dim=64, n_ff=2816,
               rope_base=1e4, rms_eps=1e-5, n_ctx=4096)
VOCAB = 49152
RECIPES = ["Q2_K", "Q3_K_M", "IQ4_XS", "Q4_K_M"]


def recipe_file(cache_dir: str, recipe: str) -> str:
    """The aligned model in `recipe`, made (F16 -> lowbit quantize) when missing."""
    os.makedirs(cache_dir, exist_ok=True)
    out = os.path.join(cache_dir, f"random-llama-aligned-{recipe}.gguf")
    if os.path.isfile(out):
        return out
    f16 = os.path.join(cache_dir, "random-llama-aligned-f16.gguf")
    if not os.path.isfile(f16):
        print(f"writing {f16}", file=sys.stderr, flush=True)
        b3.write_f16_model(f16 + ".tmp", str(b3.registry.resolve(b3.REAL_MODELS[0])), "llama", ALIGNED, VOCAB,
                           "random-llama-aligned")
        os.replace(f16 + ".tmp", f16)
    subprocess.run([sys.executable, "-m", "lowbit", "quantize", "--type", recipe, "-q", f16, out], check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--files-only", action="store_true", help="make the files and print their paths")
    a = ap.parse_args()
    files = [recipe_file(os.path.expanduser("~/.cache/lowbit/bench"), r) for r in a.recipes]
    if a.files_only:
        print("\n".join(files))
        return 0
    cmd = [sys.executable, "-m", "lowbit", "bench", *files, "-t", str(a.threads), "-r", str(a.r), "--vs-llama-cpp"]
    if a.json:
        with open(a.json, "w") as out:
            return subprocess.run(cmd + ["--json"], stdout=out).returncode
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())

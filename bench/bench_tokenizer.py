"""Tokenizer speed on the pydoc text (CPython's pydoc_data topics, about 465k characters) with
both real vocabularies: build from the metadata, first encode (empty merge caches), a repeated
encode, decode.

    python bench/bench_tokenizer.py [-r 3] [--json out.json]
    python bench/bench_tokenizer.py --tokenizer-dir old_tok   # time another version

--tokenizer-dir: a folder holding a lowbit/runtime/tokenizer package of another commit, e.g.
`mkdir old_tok && git archive 07123d7 python/lowbit/runtime/tokenizer | tar -x --strip-components=4 -C old_tok`,
imported in place of lowbit's (the rest of lowbit stays this checkout's)."""
import argparse
import importlib
import json
import sys
import time
import types

from lowbit.runtime import registry

MODELS = ["smollm2-135m-instruct", "gemma3-270m"]


def tokenizer_class(folder):
    if folder is None:
        from lowbit.runtime.tokenizer import Tokenizer
        return Tokenizer
    pkg = types.ModuleType("tokenizer_under_test")
    pkg.__path__ = [folder]
    sys.modules[pkg.__name__] = pkg
    return importlib.import_module(pkg.__name__ + ".core").Tokenizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-r", type=int, default=3, help="repetitions (the best is kept)")
    ap.add_argument("--tokenizer-dir")
    ap.add_argument("--json")
    args = ap.parse_args()
    import lowbit
    import pydoc_data.topics
    topics = pydoc_data.topics.topics
    corpus = "\n\n".join(topics[k] for k in sorted(topics))
    Tokenizer = tokenizer_class(args.tokenizer_dir)
    rows = []
    for name in MODELS:
        meta = lowbit.GGUFFile(str(registry.resolve(name))).metadata
        load, first, again, decode = [], [], [], []
        for _ in range(args.r):
            t0 = time.perf_counter()
            tok = Tokenizer.from_metadata(meta)
            t1 = time.perf_counter()
            ids = tok.encode(corpus, add_special=False)
            t2 = time.perf_counter()
            tok.encode(corpus, add_special=False)
            t3 = time.perf_counter()
            tok.decode(ids)
            t4 = time.perf_counter()
            load.append(t1 - t0), first.append(t2 - t1), again.append(t3 - t2), decode.append(t4 - t3)
        rows.append({"model": name, "chars": len(corpus), "ids": len(ids), "load_s": min(load),
                     "encode_first_s": min(first), "encode_again_s": min(again), "decode_s": min(decode)})
    print(f"pydoc text, {len(corpus)} characters ({args.tokenizer_dir or 'lowbit.runtime.tokenizer'})")
    print(f"{'model':<24} {'ids':>7} {'load s':>7} {'encode s':>9} {'again s':>8} {'decode s':>9}")
    for r in rows:
        print(f"{r['model']:<24} {r['ids']:>7} {r['load_s']:7.3f} {r['encode_first_s']:9.3f} "
              f"{r['encode_again_s']:8.3f} {r['decode_s']:9.3f}")
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

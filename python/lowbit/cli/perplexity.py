"""``lowbit perplexity MODEL --text FILE``: PPL, and KL divergence against a base."""
from __future__ import annotations

import json
import sys

from lowbit.cli.common import positive_int, read_text_arg, resolve_model


def run(args) -> int:
    from lowbit.quant.evaluate import format_perplexity, perplexity
    text = read_text_arg("--text", args.text)
    say = None if args.json else (lambda done, total: print(f"  chunk {done}/{total}", file=sys.stderr, flush=True))
    kl_base = str(resolve_model(args.kl_base, args.json, "--kl-base")) if args.kl_base else None
    r = perplexity(str(resolve_model(args.model, quiet=args.json)), text, n_ctx=args.ctx, n_chunks=args.chunks,
                   kl_base=kl_base,
                   n_threads=args.threads, progress=say)
    if args.json:
        print(json.dumps(dict(r.to_dict(), model=args.model, kl_base=args.kl_base), indent=2))
    else:
        print(format_perplexity(r, args.model))
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("perplexity", help="llama-perplexity's PPL on a text, optionally KL divergence vs a base")
    sp.add_argument("model", metavar="MODEL", help="a GGUF path or registry name")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to score")
    sp.add_argument("--ctx", type=int, default=512, help="chunk length in tokens (second half scored)")
    sp.add_argument("--chunks", type=positive_int, default=None, help="score at most N chunks (default: all)")
    sp.add_argument("--kl-base", default=None, metavar="BASE", help="base model for KL divergence statistics")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=run)


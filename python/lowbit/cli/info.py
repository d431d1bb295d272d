"""``lowbit info [MODEL]``: architecture, tensors and the memory estimate."""
from __future__ import annotations

import json

from lowbit.cli.common import DEFAULT_MODEL, resolve_model


def run(args) -> int:
    from lowbit.runtime.info import describe_file, format_info
    path = resolve_model(args.model, quiet=args.json)
    d = describe_file(path, n_ctx=args.ctx, kv_type=args.kv_type)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_info(d, name=args.model))
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("info", help="describe a model: architecture, tensors, memory estimate")
    sp.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                    help=f"a GGUF path or registry name (default {DEFAULT_MODEL}); pulled on first use")
    sp.add_argument("--ctx", type=int, default=None, help="context length for the memory estimate "
                    "(default: the model's training context)")
    sp.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"], help="KV cache type")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=run)


"""The ``lowbit`` command line: ``lowbit pull | list | info``.

Errors a person can act on are one line on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Dict, List, Optional

from . import registry
from .errors import LowbitError
from .progress import human_bytes

DEFAULT_MODEL = "smollm2-135m-instruct"
EXIT_USAGE = 2


def cmd_pull(args: argparse.Namespace) -> int:
    for name in args.models:
        path = registry.pull(name, force=args.force, quiet=args.quiet)
        print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = registry.list_models()
    if args.json:
        print(json.dumps({"cache": str(registry.models_dir()), "models": rows}, indent=2))
        return 0
    print(f"models cache: {registry.models_dir()}")
    print("| name | size | cached | source | description |")
    print("|------|-----:|:------:|--------|-------------|")
    for r in rows:
        print(f"| {r['name']} | {human_bytes(r['size'])} | {'yes' if r['cached'] else 'no'} "
              f"| {r['source']} | {r['description']} |")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe_file, format_info
    path = registry.resolve(args.model, quiet=args.json)
    d = describe_file(path, n_ctx=args.ctx, kv_type=args.kv_type)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_info(d, name=args.model))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="Run and quantize GGUF models locally.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("pull", help="download a named model into the cache (checksummed)")
    sp.add_argument("models", nargs="+", metavar="MODEL", help="registry name(s); see `lowbit list`")
    sp.add_argument("--force", action="store_true", help="download again even when cached")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=cmd_pull)

    sp = sub.add_parser("list", help="known models and which are cached")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("info", help="describe a model: architecture, tensors, memory estimate")
    sp.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                    help=f"a GGUF path or registry name (default {DEFAULT_MODEL}); pulled on first use")
    sp.add_argument("--ctx", type=int, default=None, help="context length for the memory estimate "
                    "(default: the model's training context)")
    sp.add_argument("--kv-type", default="f16", choices=["f16", "q8_0", "f32"], help="KV cache type")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("lowbit: interrupted", file=sys.stderr)
        return 130
    except (LowbitError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as e:
        if args.debug:
            raise
        print(f"lowbit: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

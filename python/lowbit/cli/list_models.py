"""``lowbit list``: the registry's models and which are cached."""
from __future__ import annotations

import json

from lowbit.runtime import registry
from lowbit.runtime.progress import human_bytes


def run(args) -> int:
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


def add_parser(sub) -> None:
    sp = sub.add_parser("list", help="known models and which are cached")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=run)


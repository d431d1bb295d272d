"""``lowbit pull MODEL...``: download registry models into the cache."""
from __future__ import annotations

from lowbit.runtime import registry


def run(args) -> int:
    for name in args.models:
        path = registry.pull(name, force=args.force, quiet=args.quiet)
        print(path)
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("pull", help="download a named model into the cache (checksummed)")
    sp.add_argument("models", nargs="+", metavar="MODEL", help="registry name(s); see `lowbit list`")
    sp.add_argument("--force", action="store_true", help="download again even when cached")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=run)


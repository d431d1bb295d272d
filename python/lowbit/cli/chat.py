"""``lowbit chat [MODEL]``: the terminal chat (the REPL is ``cli.repl``)."""
from __future__ import annotations

import argparse
import sys

from lowbit.cli.common import (DEFAULT_MODEL, add_load_flags, add_sampling_flags, check_sampling,
                               load_for_cli, model_summary)


def run(args) -> int:
    from lowbit.cli.repl import run_repl
    check_sampling(args)
    m = load_for_cli(args.model, args)
    with m:
        print(model_summary(m), file=sys.stderr)
        params = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                      repetition_penalty=args.repetition_penalty, repeat_last_n=args.repeat_last_n,
                      seed=args.seed, max_tokens=args.max_tokens)
        reload = lambda n_ctx: load_for_cli(args.model, argparse.Namespace(**dict(vars(args), ctx=n_ctx)))
        return run_repl(m, params, system=args.system, context_shift=args.context_shift, reload=reload)


def add_parser(sub) -> None:
    sp = sub.add_parser("chat", help="interactive chat in the terminal")
    sp.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                    help=f"a GGUF path or registry name (default {DEFAULT_MODEL})")
    sp.add_argument("--system", default=None, help="system prompt")
    sp.add_argument("--context-shift", action="store_true",
                    help="when the conversation outgrows the context, forget the oldest turns")
    add_sampling_flags(sp)
    add_load_flags(sp)
    sp.set_defaults(func=run)


"""``lowbit quantize IN OUT --type T``: write a GGUF in another type or recipe."""
from __future__ import annotations

import sys

from lowbit.cli.common import check_file_arg, positive_int, read_text_arg, resolve_model
from lowbit.quant import METHODS


def run(args) -> int:
    from lowbit.runtime.progress import ProgressBar
    from lowbit.quant.quantize import format_result, quantize
    bars = []      # made on the first progress call, so argument errors print one line only

    def progress(frac):
        if not args.quiet:
            if not bars:
                bars.append(ProgressBar(100, f"quantizing to {args.type.upper()}", unit="percent"))
            bars[0].set(100 * frac)
        return True

    say = None if args.quiet else (lambda msg: print(f"note: {msg}", file=sys.stderr))
    check_file_arg("--imatrix", args.imatrix)
    calibration = read_text_arg("--text", args.text) if args.text else None
    src = resolve_model(args.input, quiet=args.quiet, what="IN")
    try:
        r = quantize(src, args.output, args.type, imatrix=args.imatrix, method=args.method,
                     n_threads=args.threads, progress=progress, pure=args.pure, log=say,
                     calibration=calibration, calib_ctx=args.ctx, calib_chunks=args.chunks)
    finally:
        for bar in bars:
            bar.close("stopped" if sys.exc_info()[0] else "done")
    print(format_result(r))
    return 0


def add_parser(sub) -> None:
    from lowbit.quant.recipes import known_types
    sp = sub.add_parser("quantize", help="write a GGUF in another type or llama.cpp recipe (Q4_K_M ...)")
    sp.add_argument("input", metavar="IN", help="input GGUF path or registry name (any type lowbit reads)")
    sp.add_argument("output", metavar="OUT", help="output GGUF (written to a temp file, renamed at the end)")
    sp.add_argument("--type", required=True, metavar="T",
                    help="a llama.cpp file type (recipe) or single block type: " + " ".join(known_types()))
    sp.add_argument("--imatrix", default=None, metavar="FILE", help="importance matrix (GGUF or legacy .dat)")
    sp.add_argument("--method", default="rtn", choices=list(METHODS),
                    help="rtn: round each block (imatrix-weighted with --imatrix); gptq: error feedback "
                         "from calibration activations; awq: activation-aware scales folded into the norm "
                         "weights (a standard GGUF); awq+gptq: both (the last three need --text)")
    sp.add_argument("--text", default=None, metavar="FILE", help="calibration text for gptq / awq methods")
    sp.add_argument("--ctx", type=int, default=512, help="calibration chunk length (gptq, awq)")
    sp.add_argument("--chunks", type=positive_int, default=8, help="calibration chunks (gptq, awq)")
    sp.add_argument("--pure", action="store_true", help="every quantizable tensor gets the one type")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all CPUs)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=run)


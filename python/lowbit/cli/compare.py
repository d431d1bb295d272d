"""``lowbit compare MODEL --types ...``: quantize several ways, measure side by side."""
from __future__ import annotations

import json
import sys

from lowbit.cli.common import check_file_arg, positive_int, read_text_arg, resolve_model


def run(args) -> int:
    from lowbit.quant.compare import check_plotting, compare, format_markdown, plot
    if args.plot:
        check_plotting()             # before the long work
    text = read_text_arg("--text", args.text)
    say = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    types = [t for t in args.types.split(",") if t.strip()]
    calib = read_text_arg("--calib-text", args.calib_text) if args.calib_text else None
    check_file_arg("--imatrix", args.imatrix)
    rep = compare(str(resolve_model(args.model, quiet=args.json)), types, text, imatrix=args.imatrix,
                  calib_text=calib,
                  out_dir=args.out_dir, n_ctx=args.ctx, n_chunks=args.chunks, n_threads=args.threads,
                  measure_speed=not args.no_speed, progress=say)
    rep.text = args.text
    if args.plot:
        plot(rep, args.plot)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print(format_markdown(rep))
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("compare", help="quantize several ways; size, memory, speed, PPL and KLD side by side")
    sp.add_argument("model", metavar="MODEL", help="baseline GGUF path or registry name")
    sp.add_argument("--types", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K",
                    help="comma-separated candidates; TYPE:rtn, TYPE:imatrix, TYPE:gptq, TYPE:awq or TYPE:awq+gptq "
                         "picks the variant")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 evaluation text")
    sp.add_argument("--imatrix", default=None, metavar="FILE", help="importance matrix for the imatrix variants")
    sp.add_argument("--calib-text", default=None, metavar="FILE", help="calibration text for the gptq / awq candidates")
    sp.add_argument("--out-dir", default=None, metavar="DIR", help="keep the quantized files here (default: a temp dir)")
    sp.add_argument("--plot", default=None, metavar="FILE.png", help="chart of quality loss against size and speed")
    sp.add_argument("--ctx", type=int, default=512, help="perplexity chunk length")
    sp.add_argument("--chunks", type=positive_int, default=8, help="perplexity chunks")
    sp.add_argument("--no-speed", action="store_true", help="quality figures only: skip the speed and memory probes")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=run)


"""``lowbit imatrix MODEL --text FILE -o OUT``: the importance matrix, through the engine."""
from __future__ import annotations

import os
import sys
from typing import Optional

from lowbit.cli.common import positive_int, read_text_arg, resolve_model


IMATRIX_SUFFIXES = {".gguf": "gguf", ".dat": "dat"}


def imatrix_output_format(path: str, explicit: Optional[str]) -> str:
    """gguf or dat, from --output-format or the suffix of -o; checked before any work."""
    suffix = os.path.splitext(path)[1].lower()
    if explicit is None and suffix not in IMATRIX_SUFFIXES:
        raise ValueError(f"-o {path}: the file name must end in .gguf or .dat (legacy format), "
                         f"or pass --output-format gguf|dat")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"-o {path}: no such folder: {folder}")
    return explicit or IMATRIX_SUFFIXES[suffix]


def run(args) -> int:
    from lowbit.quant.calibrate import compute_imatrix
    fmt = imatrix_output_format(args.output, args.output_format)
    text = read_text_arg("--text", args.text)
    say = None if args.quiet else (lambda done, total: print(f"  chunk {done}/{total}", file=sys.stderr, flush=True))
    im = compute_imatrix(str(resolve_model(args.model, quiet=args.quiet)), text, n_ctx=args.ctx,
                         n_chunks=args.chunks, progress=say)
    im.datasets = [args.text]
    im.save(args.output, fmt=fmt)
    print(f"{args.output}: {len(im.entries)} weight matrices, {im.chunk_count} chunks of {args.ctx} tokens")
    return 0


def add_parser(sub) -> None:
    sp = sub.add_parser("imatrix", help="importance matrix from calibration text (llama.cpp's imatrix format)")
    sp.add_argument("model", metavar="MODEL", help="a GGUF path or registry name")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 calibration text")
    sp.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.gguf, or .dat for the legacy format)")
    sp.add_argument("--output-format", choices=["gguf", "dat"], default=None, help="default: from OUT's suffix")
    sp.add_argument("--ctx", type=int, default=512, help="chunk length in tokens")
    sp.add_argument("--chunks", type=positive_int, default=None, help="use at most N chunks (default: all)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=run)


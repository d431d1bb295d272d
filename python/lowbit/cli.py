"""The ``lowbit`` command line: ``lowbit run | pull | list | info``.

Errors a person can act on are one line on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
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


def add_sampling_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("sampling")
    g.add_argument("--temperature", "--temp", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=40, help="0 disables")
    g.add_argument("--top-p", type=float, default=0.95, help="1.0 disables")
    g.add_argument("--min-p", type=float, default=0.05, help="0 disables")
    g.add_argument("--repetition-penalty", "--repeat-penalty", type=float, default=1.0)
    g.add_argument("--repeat-last-n", type=int, default=64)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("-n", "--max-tokens", type=int, default=256, help="most tokens to generate")


def add_load_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("model")
    g.add_argument("--ctx", type=int, default=None, help="context length (default: the model's, "
                   "capped to available memory)")
    g.add_argument("--threads", "-t", type=int, default=None, help="CPU threads (default: physical cores)")
    g.add_argument("--batch", type=int, default=512, help="prefill batch size")
    g.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"], help="KV cache type")


def load_for_cli(model: str, args: argparse.Namespace, quiet: bool = False):
    from .model import load
    from .progress import ProgressBar
    path = registry.resolve(model, quiet=quiet)
    bar = None if quiet else ProgressBar(100, f"loading {model}", unit="count")

    def progress(frac):
        if bar:
            bar.set(100 * frac)
        return True

    m = load(str(path), n_ctx=args.ctx, n_threads=args.threads, n_batch=args.batch,
             kv_type=args.kv_type, progress=progress)
    if bar:
        bar.close("ready")
    return m


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                repeat_last_n=args.repeat_last_n, seed=args.seed)


def cmd_run(args: argparse.Namespace) -> int:
    if len(args.words) == 1:
        model, prompt = DEFAULT_MODEL, args.words[0]
    elif len(args.words) == 2:
        model, prompt = args.words
    else:
        raise ValueError(f"expected [MODEL] PROMPT, got {len(args.words)} arguments (quote the prompt)")
    if prompt == "-":
        prompt = sys.stdin.read()
    m = load_for_cli(model, args, quiet=args.json or args.quiet)
    with m:
        kw = sampling_kwargs(args)
        kw["stop"] = args.stop or ()
        use_chat = not args.raw and m.tokenizer.chat_template is not None
        if use_chat:
            stream = m.chat([{"role": "user", "content": prompt}], stream=True, **kw)
        else:
            stream = m.generate(prompt, stream=True, **kw)
        try:
            for piece in stream:
                if not args.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            m.cancel()
            stream.close()
        g = stream.result
        if args.json:
            out = g.to_dict()
            out.update(model=model, path=m.path, chat_template=use_chat)
            print(json.dumps(out, indent=2))
        else:
            sys.stdout.write("\n")
            if args.verbose:
                print(f"[{g.prompt_tokens} prompt tokens at {g.prefill_tok_s:.1f} tok/s, "
                      f"{g.generated_tokens} generated at {g.decode_tok_s:.1f} tok/s, "
                      f"finish: {g.finish_reason}, peak RSS {human_bytes(g.peak_memory_bytes)}]",
                      file=sys.stderr)
    return 0


def model_summary(m) -> str:
    """One line: model, backend and kernels, weights and KV memory."""
    mem = m.memory()
    return (f"{os.path.basename(m.path)} | {m.architecture} | {m.device} "
            f"({mem.get('kernels', '?')} kernels, {mem.get('n_threads', '?')} threads) | "
            f"weights {human_bytes(mem.get('weights_bytes', 0))} | KV cache "
            f"{human_bytes(mem.get('kv_cache_bytes', 0))} {mem.get('kv_type', '')} for {m.n_ctx} tokens")


def cmd_chat(args: argparse.Namespace) -> int:
    from .repl import run_repl
    m = load_for_cli(args.model, args)
    with m:
        print(model_summary(m), file=sys.stderr)
        params = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                      repetition_penalty=args.repetition_penalty, seed=args.seed, max_tokens=args.max_tokens)
        return run_repl(m, params, system=args.system, context_shift=args.context_shift)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_model, format_table, import_llama_cpp
    if args.vs_llama_cpp:
        import_llama_cpp()          # fail early with the install hint
    reports = []
    for name in args.models or [DEFAULT_MODEL]:
        path = str(registry.resolve(name, quiet=args.json))
        say = None if args.json else (lambda msg, n=name: print(f"  {n}: {msg}", file=sys.stderr, flush=True))
        reports.append(bench_model(path, n_prompt=args.p, n_gen=args.n, reps=args.r, n_threads=args.threads,
                                   n_batch=args.batch, vs_llama_cpp=args.vs_llama_cpp,
                                   act_precision=args.act_precision, progress=say))
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(format_table(reports))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .progress import ProgressBar
    from .quantize import format_result, quantize
    bars = []      # made on the first progress call, so argument errors print one line only

    def progress(frac):
        if not args.quiet:
            if not bars:
                bars.append(ProgressBar(100, f"quantizing to {args.type.upper()}", unit="count"))
            bars[0].set(100 * frac)
        return True

    say = None if args.quiet else (lambda msg: print(f"note: {msg}", file=sys.stderr))
    calibration = None
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            calibration = f.read()
    import warnings
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = quantize(args.input, args.output, args.type, imatrix=args.imatrix, method=args.method,
                         n_threads=args.threads, progress=progress, pure=args.pure, log=say,
                         calibration=calibration, calib_ctx=args.ctx, calib_chunks=args.chunks)
    finally:
        for bar in bars:
            bar.close("stopped" if sys.exc_info()[0] else "done")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(format_result(r))
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from .evaluate import format_perplexity, perplexity
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    say = None if args.json else (lambda done, total: print(f"  chunk {done}/{total}", file=sys.stderr, flush=True))
    r = perplexity(str(registry.resolve(args.model, quiet=args.json)), text, n_ctx=args.ctx, n_chunks=args.chunks,
                   kl_base=str(registry.resolve(args.kl_base, quiet=args.json)) if args.kl_base else None,
                   n_threads=args.threads, progress=say)
    if args.json:
        print(json.dumps(dict(r.to_dict(), model=args.model, kl_base=args.kl_base), indent=2))
    else:
        print(format_perplexity(r, args.model))
    return 0


def cmd_imatrix(args: argparse.Namespace) -> int:
    from .calibrate import compute_imatrix
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    say = None if args.quiet else (lambda done, total: print(f"  chunk {done}/{total}", file=sys.stderr, flush=True))
    im = compute_imatrix(str(registry.resolve(args.model, quiet=args.quiet)), text, n_ctx=args.ctx,
                         n_chunks=args.chunks, progress=say)
    im.datasets = [args.text]
    im.save(args.output, fmt=args.output_format)
    print(f"{args.output}: {len(im.entries)} weight matrices, {im.chunk_count} chunks of {args.ctx} tokens")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import check_plotting, compare, format_markdown, plot
    if args.plot:
        check_plotting()             # before the long work
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    say = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    types = [t for t in args.types.split(",") if t.strip()]
    calib = None
    if args.calib_text:
        with open(args.calib_text, encoding="utf-8") as f:
            calib = f.read()
    rep = compare(str(registry.resolve(args.model, quiet=args.json)), types, text, imatrix=args.imatrix,
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="Run and quantize GGUF models locally.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("run", help="generate text from a prompt (streams to stdout)",
                        usage="lowbit run [options] [MODEL] PROMPT")
    sp.add_argument("words", nargs="+", metavar="[MODEL] PROMPT",
                    help=f"optional model (path or registry name, default {DEFAULT_MODEL}) and the "
                         f"prompt; '-' reads the prompt from stdin")
    sp.add_argument("--raw", action="store_true", help="continue the prompt as is, without the chat template")
    sp.add_argument("--stop", action="append", help="stop string (repeatable)")
    sp.add_argument("--json", action="store_true", help="print the full Generation record as JSON")
    sp.add_argument("-v", "--verbose", action="store_true", help="print speed and memory after the reply")
    sp.add_argument("-q", "--quiet", action="store_true", help="no load progress")
    add_sampling_flags(sp)
    add_load_flags(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("chat", help="interactive chat in the terminal")
    sp.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                    help=f"a GGUF path or registry name (default {DEFAULT_MODEL})")
    sp.add_argument("--system", default=None, help="system prompt")
    sp.add_argument("--context-shift", action="store_true",
                    help="when the conversation outgrows the context, forget the oldest turns")
    add_sampling_flags(sp)
    add_load_flags(sp)
    sp.set_defaults(func=cmd_chat)

    sp = sub.add_parser("bench", help="llama-bench style speed test (pp/tg tok/s, load time, memory)")
    sp.add_argument("models", nargs="*", metavar="MODEL", help=f"paths or registry names (default {DEFAULT_MODEL})")
    sp.add_argument("-p", type=int, default=512, help="prompt tokens for the pp test (0 skips it)")
    sp.add_argument("-n", type=int, default=128, help="generated tokens for the tg test (0 skips it)")
    sp.add_argument("-r", type=int, default=5, help="repetitions")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    sp.add_argument("--batch", type=int, default=512, help="prefill batch size")
    sp.add_argument("--act-precision", default="auto", choices=["auto", "high", "q8"],
                    help="activation precision of the quantized matmuls (see lowbit.load)")
    sp.add_argument("--vs-llama-cpp", action="store_true",
                    help="also run llama.cpp (llama-cpp-python) on the same file, alternating, and print ratios")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_bench)

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

    sp = sub.add_parser("quantize", help="write a GGUF in another type or llama.cpp recipe (Q4_K_M ...)")
    sp.add_argument("input", metavar="IN", help="input GGUF (any type lowbit reads)")
    sp.add_argument("output", metavar="OUT", help="output GGUF (written to a temp file, renamed at the end)")
    sp.add_argument("--type", required=True, metavar="T",
                    help="recipe (Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K) or single type "
                         "(F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q3_K Q4_K Q5_K IQ4_NL IQ4_XS)")
    sp.add_argument("--imatrix", default=None, metavar="FILE", help="importance matrix (GGUF or legacy .dat)")
    sp.add_argument("--method", default="rtn", choices=["rtn", "gptq"],
                    help="rtn: round each block (imatrix-weighted with --imatrix); gptq: error feedback "
                         "from calibration activations (needs --text)")
    sp.add_argument("--text", default=None, metavar="FILE", help="calibration text for --method gptq")
    sp.add_argument("--ctx", type=int, default=512, help="calibration chunk length (gptq)")
    sp.add_argument("--chunks", type=int, default=8, help="calibration chunks (gptq)")
    sp.add_argument("--pure", action="store_true", help="every quantizable tensor gets the one type")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all CPUs)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=cmd_quantize)
    sp = sub.add_parser("perplexity", help="llama-perplexity's PPL on a text, optionally KL divergence vs a base")
    sp.add_argument("model", metavar="MODEL", help="a GGUF path or registry name")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to score")
    sp.add_argument("--ctx", type=int, default=512, help="chunk length in tokens (second half scored)")
    sp.add_argument("--chunks", type=int, default=None, help="score at most N chunks (default: all)")
    sp.add_argument("--kl-base", default=None, metavar="BASE", help="base model for KL divergence statistics")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_perplexity)
    sp = sub.add_parser("imatrix", help="importance matrix from calibration text (llama.cpp's imatrix format)")
    sp.add_argument("model", metavar="MODEL", help="a GGUF path or registry name")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 calibration text")
    sp.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.gguf, or .dat for the legacy format)")
    sp.add_argument("--output-format", choices=["gguf", "dat"], default=None, help="default: from OUT's suffix")
    sp.add_argument("--ctx", type=int, default=512, help="chunk length in tokens")
    sp.add_argument("--chunks", type=int, default=None, help="use at most N chunks (default: all)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=cmd_imatrix)
    sp = sub.add_parser("compare", help="quantize several ways; size, memory, speed, PPL and KLD side by side")
    sp.add_argument("model", metavar="MODEL", help="baseline GGUF path or registry name")
    sp.add_argument("--types", default="Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K",
                    help="comma-separated candidates; TYPE:rtn, TYPE:imatrix or TYPE:gptq picks the variant")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 evaluation text")
    sp.add_argument("--imatrix", default=None, metavar="FILE", help="importance matrix for the imatrix variants")
    sp.add_argument("--calib-text", default=None, metavar="FILE", help="calibration text for TYPE:gptq candidates")
    sp.add_argument("--out-dir", default=None, metavar="DIR", help="keep the quantized files here (default: a temp dir)")
    sp.add_argument("--plot", default=None, metavar="FILE.png", help="chart of quality loss against size and speed")
    sp.add_argument("--ctx", type=int, default=512, help="perplexity chunk length")
    sp.add_argument("--chunks", type=int, default=8, help="perplexity chunks (0: all)")
    sp.add_argument("--no-speed", action="store_true", help="quality figures only: skip the speed and memory probes")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_compare)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv            # accepted anywhere on the line, not only before COMMAND
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = args.debug or debug
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

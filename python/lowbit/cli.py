"""The ``lowbit`` command line: ``lowbit run | chat | pull | list | info | bench | quantize ...``.

Exit status, the same for every command: 0 on success (also when stdout is a pipe that the
reader closed early, as in ``lowbit list | head -1``: lowbit stops at once, quietly); 2 for usage
and input errors (bad flags, unknown model, missing file, bad value), one line on stderr; 130
after Ctrl+C (SIGINT); 1 for anything unexpected, one line and a hint to rerun with ``--debug``,
which shows the traceback instead. Python warnings are one line each: ``lowbit: warning: ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from typing import Callable, Dict, List, Optional

from . import registry
from .errors import LowbitError, RegistryError
from .progress import human_bytes

DEFAULT_MODEL = "smollm2-135m-instruct"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# chat-friendly defaults for `run` and `chat` (ollama's are 1.1 over the last 64 tokens): with
# 1.0 small models fall into loops within a few turns; see the REPL notes in the README
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_REPEAT_LAST_N = 64


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
    path = resolve_model(args.model, quiet=args.json)
    d = describe_file(path, n_ctx=args.ctx, kv_type=args.kv_type)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(format_info(d, name=args.model))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_sampling_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("sampling")
    g.add_argument("--temperature", "--temp", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=40, help="0 disables")
    g.add_argument("--top-p", type=float, default=0.95, help="1.0 disables")
    g.add_argument("--min-p", type=float, default=0.05, help="0 disables")
    g.add_argument("--repetition-penalty", "--repeat-penalty", type=float, default=DEFAULT_REPEAT_PENALTY,
                   help=f"1.0 disables (default {DEFAULT_REPEAT_PENALTY}, as ollama)")
    g.add_argument("--repeat-last-n", type=int, default=DEFAULT_REPEAT_LAST_N,
                   help="recent tokens the penalty looks at (-1: all)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("-n", "--max-tokens", type=positive_int, default=256, help="most tokens to generate")


def add_load_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("model")
    g.add_argument("--ctx", type=positive_int, default=None, help="context length (default: the model's, "
                   "capped to available memory)")
    g.add_argument("--threads", "-t", type=positive_int, default=None,
                   help="CPU threads (default: physical cores)")
    g.add_argument("--batch", type=positive_int, default=512, help="prefill batch size")
    g.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"], help="KV cache type")


SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                  "repetition_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n", "seed": "--seed"}


def check_sampling(args: argparse.Namespace):
    """SamplingParams from the flags, validated before any model is loaded; the error names the
    one flag that is wrong (each field is checked alone, the others at their defaults)."""
    from .sampling import SamplingParams
    for field, flag in SAMPLING_FLAGS.items():
        value = getattr(args, field)
        try:
            SamplingParams(**{field: value}).validate()
        except ValueError as e:
            reason = str(e).split(", got SamplingParams(")[0]
            shown = f"{value:g}" if isinstance(value, float) else value
            raise ValueError(f"{flag} {shown}: {reason}") from None
    return SamplingParams(**{field: getattr(args, field) for field in SAMPLING_FLAGS}).validate()


def resolve_model(model: str, quiet: bool, what: str = "MODEL"):
    """registry.resolve, with a missing path named as the argument it came from."""
    try:
        return registry.resolve(model, quiet=quiet)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: no such file: {model}") from None


def read_text_arg(flag: str, path: str) -> str:
    """The UTF-8 text of a file argument; errors name the flag and the path."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ValueError(f"{flag}: no such file: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{flag}: {path} is a directory, not a file") from None
    except PermissionError:
        raise ValueError(f"{flag}: permission denied: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag}: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def check_file_arg(flag: str, path: Optional[str]) -> None:
    if path is not None and os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a directory, not a file")
    if path is not None and not os.path.isfile(path):
        raise ValueError(f"{flag}: no such file: {path}")


def load_for_cli(model: str, args: argparse.Namespace, quiet: bool = False):
    from .model import load
    from .progress import ProgressBar
    path = resolve_model(model, quiet)
    bar = None if quiet else ProgressBar(100, f"loading {model}", unit="percent")

    def progress(frac):
        if bar:
            bar.set(100 * frac)
        return True

    try:
        m = load(str(path), n_ctx=args.ctx, n_threads=args.threads, n_batch=args.batch,
                 kv_type=args.kv_type, progress=progress)
    finally:
        if bar:
            bar.close("loaded" if sys.exc_info()[0] is None else "stopped")
    return m


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                repeat_last_n=args.repeat_last_n, seed=args.seed)


RUN_ARGS_HELP = (f"MODEL is a registry name (see `lowbit list`) or a GGUF path; it may be left out "
                 f"(default {DEFAULT_MODEL}). With one argument: it is the model when it names a known "
                 f"model, is a path ending in .gguf or an existing file; it is an error when it is a single "
                 f"word that looks like a model name (letters and digits joined by - . _ or :, like "
                 f"llama3-8b); otherwise it is the prompt. With no prompt, or PROMPT '-', the prompt is "
                 f"read from stdin when stdin is not a terminal.")
_MODEL_LIKE = re.compile(r"(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9]+(?:[-_.:][A-Za-z0-9]+)+")


def _is_model_arg(word: str) -> bool:
    if word in registry.Registry.load().entries or os.path.isfile(word):
        return True
    return word.endswith(".gguf") and not any(c.isspace() for c in word)


def split_run_words(words: List[str]):
    """(model, prompt or None) by the rule of RUN_ARGS_HELP."""
    if len(words) > 2:
        raise ValueError(f"expected [MODEL] PROMPT, got {len(words)} arguments (quote the prompt)")
    if len(words) == 2:
        return words[0], words[1]
    if not words:
        return DEFAULT_MODEL, None
    word = words[0]
    if word != "-" and _is_model_arg(word):
        return word, None
    if _MODEL_LIKE.fullmatch(word):                 # a model name that is not known
        try:
            registry.Registry.load().get(word)
        except RegistryError as e:
            raise RegistryError(f"{e}; to send {word!r} as the prompt to the default model, write: "
                                f"lowbit run {DEFAULT_MODEL} {word!r}") from None
    return DEFAULT_MODEL, word


def read_prompt(model: str, prompt: Optional[str]) -> str:
    if prompt is not None and prompt != "-":
        return prompt
    if prompt is None and sys.stdin.isatty():
        raise ValueError(f"no prompt: give one after the model (lowbit run {model} \"PROMPT\"), pipe it on "
                         f"stdin, or talk with `lowbit chat {model}`")
    text = sys.stdin.read()
    if not text.strip():
        raise ValueError("the prompt read from stdin is empty")
    return text


def stream_reply(m, stream, out) -> None:
    """Writes the pieces as they come. If the loop ends early for any reason (Ctrl+C, a closed
    stdout), the generation is cancelled and the stream closed before the exception goes on, so
    the model's lock is free and the process can exit at once."""
    done = False
    try:
        for piece in stream:
            if out is not None:
                out.write(piece)
                out.flush()
        done = True
    finally:
        if not done:
            m.cancel()
            stream.close()


def cmd_run(args: argparse.Namespace) -> int:
    model, prompt = split_run_words(args.words)
    check_sampling(args)
    prompt = read_prompt(model, prompt)
    m = load_for_cli(model, args, quiet=args.json or args.quiet)
    with m:
        kw = sampling_kwargs(args)
        kw["stop"] = args.stop or ()
        use_chat = not args.raw and m.tokenizer.chat_template is not None
        if use_chat:
            stream = m.chat([{"role": "user", "content": prompt}], stream=True, **kw)
        else:
            stream = m.generate(prompt, stream=True, **kw)
        stream_reply(m, stream, None if args.json else sys.stdout)
        g = stream.result
        if args.json:
            out = g.to_dict()
            out.update(model=model, path=m.path, chat_template=use_chat)
            print(json.dumps(out, indent=2))
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
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
    check_sampling(args)
    m = load_for_cli(args.model, args)
    with m:
        print(model_summary(m), file=sys.stderr)
        params = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                      repetition_penalty=args.repetition_penalty, repeat_last_n=args.repeat_last_n,
                      seed=args.seed, max_tokens=args.max_tokens)
        reload = lambda n_ctx: load_for_cli(args.model, argparse.Namespace(**dict(vars(args), ctx=n_ctx)))
        return run_repl(m, params, system=args.system, context_shift=args.context_shift, reload=reload)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_model, format_table, import_llama_cpp
    from .bench import busy_warning
    if args.vs_llama_cpp:
        import_llama_cpp()          # fail early with the install hint
    paths = [str(resolve_model(name, quiet=args.json)) for name in args.models or [DEFAULT_MODEL]]
    busy = busy_warning(args.threads)
    if busy:
        warnings.warn(busy)
    reports = []
    for name, path in zip(args.models or [DEFAULT_MODEL], paths):
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


def cmd_perplexity(args: argparse.Namespace) -> int:
    from .evaluate import format_perplexity, perplexity
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


def cmd_imatrix(args: argparse.Namespace) -> int:
    from .calibrate import compute_imatrix
    fmt = imatrix_output_format(args.output, args.output_format)
    text = read_text_arg("--text", args.text)
    say = None if args.quiet else (lambda done, total: print(f"  chunk {done}/{total}", file=sys.stderr, flush=True))
    im = compute_imatrix(str(resolve_model(args.model, quiet=args.quiet)), text, n_ctx=args.ctx,
                         n_chunks=args.chunks, progress=say)
    im.datasets = [args.text]
    im.save(args.output, fmt=fmt)
    print(f"{args.output}: {len(im.entries)} weight matrices, {im.chunk_count} chunks of {args.ctx} tokens")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import check_plotting, compare, format_markdown, plot
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit", description="Run and quantize GGUF models locally.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = sub.add_parser("run", help="generate text from a prompt (streams to stdout)",
                        usage="lowbit run [options] [MODEL] [PROMPT]",
                        description=RUN_ARGS_HELP)
    sp.add_argument("words", nargs="*", metavar="[MODEL] [PROMPT]",
                    help="optional model and prompt, by the rule above")
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
    sp.add_argument("input", metavar="IN", help="input GGUF path or registry name (any type lowbit reads)")
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
    sp.add_argument("--chunks", type=positive_int, default=8, help="calibration chunks (gptq)")
    sp.add_argument("--pure", action="store_true", help="every quantizable tensor gets the one type")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all CPUs)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=cmd_quantize)
    sp = sub.add_parser("perplexity", help="llama-perplexity's PPL on a text, optionally KL divergence vs a base")
    sp.add_argument("model", metavar="MODEL", help="a GGUF path or registry name")
    sp.add_argument("--text", required=True, metavar="FILE", help="UTF-8 text to score")
    sp.add_argument("--ctx", type=int, default=512, help="chunk length in tokens (second half scored)")
    sp.add_argument("--chunks", type=positive_int, default=None, help="score at most N chunks (default: all)")
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
    sp.add_argument("--chunks", type=positive_int, default=None, help="use at most N chunks (default: all)")
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
    sp.add_argument("--chunks", type=positive_int, default=8, help="perplexity chunks")
    sp.add_argument("--no-speed", action="store_true", help="quality figures only: skip the speed and memory probes")
    sp.add_argument("-t", "--threads", type=int, default=None, help="threads")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_compare)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lowbit: warning: {message}", file=sys.stderr, flush=True)


def _quiet_closed_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's
    final flush cannot raise again (no 'Exception ignored ... BrokenPipeError' noise)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _is_closed_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == 32)


def run_command(args: argparse.Namespace) -> int:
    """Runs ``args.func`` and maps what escapes it to the exit status rule (module docstring)."""
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()               # a closed pipe shows here, not in the interpreter's exit
        return status
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\nlowbit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if _is_closed_pipe(e):
            _quiet_closed_stdout()
            return EXIT_OK
        if args.debug:
            raise
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            where = f": {e.filename}" if e.filename and str(e.filename) not in str(e.strerror or "") else ""
            print(f"lowbit: error: {e.strerror or e}{where}", file=sys.stderr)
            return EXIT_USAGE
        print(f"lowbit: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except (LowbitError, ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"lowbit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:            # a bug or an environment problem: short, with a way to see more
        if args.debug:
            raise
        print(f"lowbit: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv            # accepted anywhere on the line, not only before COMMAND
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
    except BrokenPipeError:              # `lowbit --help | head -1`
        _quiet_closed_stdout()
        return EXIT_OK
    args.debug = args.debug or debug
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _one_line_warning
        return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

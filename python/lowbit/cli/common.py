"""What the command modules share: default model and sampling, flag groups, argument checks,
loading with a progress bar."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from lowbit.runtime import registry
from lowbit.runtime.progress import human_bytes

DEFAULT_MODEL = "smollm2-135m-instruct"


# chat-friendly defaults for `run` and `chat` (ollama's are 1.1 over the last 64 tokens): with
# 1.0 small models fall into loops within a few turns; see the REPL notes in the README
DEFAULT_REPEAT_PENALTY = 1.1


DEFAULT_REPEAT_LAST_N = 64


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


def add_constraint_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("structured output (one of)")
    g.add_argument("--json-schema", metavar="FILE", help="reply with JSON valid against this JSON Schema file")
    g.add_argument("--grammar", metavar="FILE", help="reply in this grammar (Lark or GBNF file)")
    g.add_argument("--regex", metavar="RE", help="reply matching this regular expression")
    g.add_argument("--format", choices=["json"], help="json: reply with a JSON object (ollama's --format json)")


def constraint_kwargs(args: argparse.Namespace) -> dict:
    """generate/chat keywords for the structured-output flags; files are read and the schema
    parsed here, before any model is loaded (errors name the flag and the file)."""
    import json
    given = [f for f, v in (("--json-schema", args.json_schema), ("--grammar", args.grammar),
                            ("--regex", args.regex), ("--format", args.format)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)}: give at most one structured-output flag")
    if args.json_schema is not None:
        text = read_text_arg("--json-schema", args.json_schema)
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--json-schema: {args.json_schema} is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ValueError(f"--json-schema: {args.json_schema} holds a JSON {type(schema).__name__}, "
                             f"not a schema object")
        return {"json_schema": schema}
    if args.grammar is not None:
        return {"grammar": read_text_arg("--grammar", args.grammar)}
    if args.regex is not None:
        return {"regex": args.regex}
    return {"json": True} if args.format == "json" else {}


def add_load_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("model")
    g.add_argument("--ctx", type=positive_int, default=None, help="context length (default: the model's, "
                   "capped to available memory)")
    g.add_argument("--threads", "-t", type=positive_int, default=None,
                   help="CPU threads (default: physical cores)")
    g.add_argument("--batch", type=positive_int, default=512, help="prefill batch size")
    g.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"], help="KV cache type")
    add_act_precision_flag(g, "auto")
    add_device_flags(g)


def add_device_flags(g) -> None:
    g.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="cpu (default), cuda (the first CUDA device) or auto (CUDA when usable)")
    g.add_argument("--n-gpu-layers", "-ngl", type=int, default=-1, metavar="N",
                   help="layers on the GPU with --device cuda/auto: -1 (default) every layer, 0 none, N the "
                        "last N layers and the output head (the layers below run on the CPU)")


def add_act_precision_flag(g, default: str) -> None:
    from lowbit.runtime.model import ACT_PRECISIONS
    g.add_argument("--act-precision", default=default, choices=list(ACT_PRECISIONS),
                   help="activations of the quantized matmuls: auto (two-pass ~16-bit where it costs no "
                        "speed), high (two-pass everywhere) or q8 (llama.cpp's 8-bit arithmetic, fastest "
                        f"when compute-bound); default {default}")


SAMPLING_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                  "repetition_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n", "seed": "--seed"}


def check_sampling(args: argparse.Namespace):
    """SamplingParams from the flags, validated before any model is loaded; the error names the
    one flag that is wrong (each field is checked alone, the others at their defaults)."""
    from lowbit.runtime.sampling import SamplingParams
    for field, flag in SAMPLING_FLAGS.items():
        value = getattr(args, field)
        try:
            SamplingParams(**{field: value}).validate()
        except ValueError as e:
            shown = f"{value:g}" if isinstance(value, float) else value
            raise ValueError(f"{flag} {shown}: {e}") from None
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
    from lowbit.runtime.model import load
    from lowbit.runtime.progress import ProgressBar
    path = resolve_model(model, quiet)
    bar = None if quiet else ProgressBar(100, f"loading {model}", unit="percent")

    def progress(frac):
        if bar:
            bar.set(100 * frac)
        return True

    try:
        m = load(str(path), n_ctx=args.ctx, n_threads=args.threads, n_batch=args.batch,
                 kv_type=args.kv_type, act_precision=args.act_precision, progress=progress,
                 device=getattr(args, "device", "cpu"), n_gpu_layers=getattr(args, "n_gpu_layers", -1))
    finally:
        if bar:
            bar.close("loaded" if sys.exc_info()[0] is None else "stopped")
    return m


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                repeat_last_n=args.repeat_last_n, seed=args.seed)


def model_summary(m) -> str:
    """One line: model, backend and kernels, weights and KV memory."""
    mem = m.memory()
    return (f"{os.path.basename(m.path)} | {m.architecture} | {m.device} "
            f"({mem.get('kernels', '?')} kernels, {mem.get('n_threads', '?')} threads) | "
            f"weights {human_bytes(mem.get('weights_bytes', 0))} | KV cache "
            f"{human_bytes(mem.get('kv_cache_bytes', 0))} {mem.get('kv_type', '')} for {m.n_ctx} tokens")


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

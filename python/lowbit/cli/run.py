"""``lowbit run [MODEL] [PROMPT]``: one reply streamed to stdout (or the Generation record as JSON)."""
from __future__ import annotations

import json
import os
import re
import sys
from typing import List, Optional

from lowbit.errors import RegistryError
from lowbit.runtime import registry
from lowbit.runtime.progress import human_bytes
from lowbit.cli.common import (DEFAULT_MODEL, add_constraint_flags, add_load_flags, add_sampling_flags,
                               check_sampling, constraint_kwargs, load_for_cli, sampling_kwargs, stream_reply)


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


def run(args) -> int:
    model, prompt = split_run_words(args.words)
    check_sampling(args)
    constrained = constraint_kwargs(args)
    prompt = read_prompt(model, prompt)
    m = load_for_cli(model, args, quiet=args.json or args.quiet)
    with m:
        kw = sampling_kwargs(args)
        kw["stop"] = args.stop or ()
        kw.update(constrained)
        use_chat = not args.raw and m.tokenizer.chat_template is not None
        if use_chat:
            stream = m.chat([{"role": "user", "content": prompt}], stream=True, **kw)
        else:
            stream = m.generate(prompt, stream=True, **kw)
        stream_reply(m, stream, None if args.json else sys.stdout)
        g = stream.result
        if args.json:
            out = g.to_dict()
            out.update(model=model, path=m.path, chat_template=use_chat, act_precision=m._engine.act_precision)
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


def add_parser(sub) -> None:
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
    add_constraint_flags(sp)
    add_load_flags(sp)
    sp.set_defaults(func=run)


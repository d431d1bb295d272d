"""Chat templates: GGUF ``tokenizer.chat_template`` rendered in a sandboxed jinja2 environment.

A template is data from a file, so it is treated as hostile: ImmutableSandboxedEnvironment
(no attribute tricks, no mutation), string/list repetition and powers capped, a wall-clock
budget enforced with a trace hook, and an output cap. Anything that goes wrong raises
``lowbit.TemplateError``; a template never runs arbitrary code.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import TemplateError

RENDER_TIMEOUT_S = 1.0
MAX_OUTPUT_CHARS = 1 << 20
MAX_REPEAT = 1 << 16          # largest result of str/list * int
MAX_POW_EXPONENT = 64

# Used when a GGUF has no chat template: the format of the architecture's family.
BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "gemma": (
        "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
        "{% set sys = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
        "{% else %}{% set sys = '' %}{% set turns = messages %}{% endif %}"
        "{% for m in turns %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + (sys if loop.first else '') + m['content'] + '<end_of_turn>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
        " + m['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    "phi3": (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
}
ARCH_DEFAULT_TEMPLATE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3"}


def default_template(arch: str, vocab_has: Optional[callable] = None) -> str:
    """The built-in template for a model without one: by architecture, or by the special
    tokens its vocabulary has, else ChatML."""
    if arch in ARCH_DEFAULT_TEMPLATE:
        return BUILTIN_TEMPLATES[ARCH_DEFAULT_TEMPLATE[arch]]
    if vocab_has is not None and vocab_has("<|start_header_id|>"):
        return BUILTIN_TEMPLATES["llama3"]
    return BUILTIN_TEMPLATES["chatml"]


class _Env(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > MAX_REPEAT:
                        raise TemplateError(f"template repeats a sequence of {len(seq)} items {n} times "
                                            f"(limit {MAX_REPEAT} items)")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_POW_EXPONENT:
            raise TemplateError(f"template raises to the power {right} (limit {MAX_POW_EXPONENT})")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str):
    raise TemplateError(f"chat template raised: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_env() -> _Env:
    env = _Env(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined,
               autoescape=False, keep_trailing_newline=True)
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    env.filters["tojson"] = _tojson
    return env


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}] needs a non-empty string 'role'")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}] ('{role}') needs a string 'content'")
        out.append(dict(m))
    return out


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *,
                add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
                timeout_s: float = RENDER_TIMEOUT_S, max_chars: int = MAX_OUTPUT_CHARS,
                **extra: Any) -> str:
    """Render ``messages`` with ``template``; raises TemplateError on any failure."""
    msgs = validate_messages(messages)
    try:
        tmpl = _make_env().from_string(template)
    except jinja2.TemplateError as e:
        raise TemplateError(f"chat template does not compile: {e}") from None
    context = dict(extra, messages=msgs, add_generation_prompt=add_generation_prompt,
                   bos_token=bos_token, eos_token=eos_token)
    deadline = time.monotonic() + timeout_s

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateError(f"chat template took longer than {timeout_s:.1f} s to render")
        return tracer

    pieces: List[str] = []
    size = 0
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        for chunk in tmpl.generate(**context):
            size += len(chunk)
            if size > max_chars:
                raise TemplateError(f"chat template output exceeds {max_chars} characters")
            pieces.append(chunk)
    except TemplateError:
        raise
    except jinja2.exceptions.SecurityError as e:
        raise TemplateError(f"chat template tried something the sandbox forbids: {e}") from None
    except RecursionError:
        raise TemplateError("chat template recursed too deeply") from None
    except Exception as e:  # any other failure inside the template is the template's fault
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
    finally:
        sys.settrace(old)
    return "".join(pieces)

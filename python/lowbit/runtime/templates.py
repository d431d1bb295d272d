"""Chat templates: GGUF ``tokenizer.chat_template`` rendered in a sandboxed jinja2 environment.

A template is data from a file, so it is treated as hostile: ImmutableSandboxedEnvironment
(no attribute tricks, no mutation), string/list repetition and powers capped, a wall-clock
budget enforced with a trace hook, and an output cap. Anything that goes wrong raises
``lowbit.TemplateError``; a template never runs arbitrary code.
"""
from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace
from markupsafe import Markup

from lowbit.errors import TemplateError

RENDER_TIMEOUT_S = 1.0
MAX_OUTPUT_CHARS = 1 << 20
MAX_REPEAT = 1 << 16          # largest result of str/list * int
MAX_POW_EXPONENT = 64
MAX_INT_BITS = 1 << 14        # largest integer a template may build by * or **
WORK_BUDGET_FACTOR = 32       # all strings built in one render: at most this x max_chars

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
    # gpt-oss's harmony turns (its files carry the full template; this is the fallback): a system
    # message becomes the developer instructions, the reply opens on the final channel
    "harmony": (
        "{% for m in messages %}{% set role = 'developer' if m['role'] == 'system' else m['role'] %}"
        "{% if role == 'assistant' %}{{ '<|start|>assistant<|channel|>final<|message|>' + m['content'] + '<|end|>' }}"
        "{% else %}{{ '<|start|>' + role + '<|message|>' + m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"),
}
ARCH_DEFAULT_TEMPLATE = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3", "gpt-oss": "harmony"}


def default_template(arch: str, vocab_has: Optional[callable] = None) -> str:
    """The built-in template for a model without one: by architecture, or by the special
    tokens its vocabulary has, else ChatML."""
    if arch in ARCH_DEFAULT_TEMPLATE:
        return BUILTIN_TEMPLATES[ARCH_DEFAULT_TEMPLATE[arch]]
    if vocab_has is not None and vocab_has("<|start_header_id|>"):
        return BUILTIN_TEMPLATES["llama3"]
    return BUILTIN_TEMPLATES["chatml"]


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.S)
_DIGITS = re.compile(r"\d+")
_BOUNDED_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})


def _text_size(value: Any, limit: int) -> int:
    """An estimate of len(str(value)) that stops counting past ``limit`` (so a huge nested list
    is rejected without being stringified)."""
    todo, total = [value], 0
    while todo and total <= limit:
        v = todo.pop()
        if isinstance(v, (str, bytes)):
            total += len(v) + 2
        elif isinstance(v, bool) or v is None:
            total += 5
        elif isinstance(v, int):
            total += v.bit_length() * 10 // 33 + 2
        elif isinstance(v, float):
            total += 24
        elif isinstance(v, Mapping):
            total += 2 * len(v) + 2
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset, range, type({}.items()), type({}.keys()),
                            type({}.values()))):
            total += 2 * len(v) + 2
            todo.extend(v)
        elif isinstance(v, Namespace):
            todo.append(dict(v._Namespace__attrs))  # type: ignore[attr-defined]
        else:
            total += 64
    return total


def _percent_bound(fmt: str, args: Any, limit: int) -> int:
    """Upper bound of len(fmt % args): rejects widths/precisions past ``limit`` and '*'."""
    extra = 0
    for m in _PERCENT_SPEC.finditer(fmt):
        for num in m.group(1, 2):
            if num == "*":
                raise TemplateError("chat template uses a '*' width in %-formatting (not allowed)")
            if num is not None:
                if len(num) > 9 or int(num) > limit:
                    raise TemplateError(f"chat template formats with width/precision {num} "
                                        f"(limit {limit} characters)")
                extra += int(num)
    return len(fmt) + extra + _text_size(args, limit)


class _BoundedFormatting:
    """str.format / format_map with each field's width and precision bounded."""

    def format_field(self, value, format_spec):
        for num in _DIGITS.findall(format_spec):
            if len(num) > 9 or int(num) > self._env.max_chars:
                raise TemplateError(f"chat template formats with width/precision {num} "
                                    f"(limit {self._env.max_chars} characters)")
        out = super().format_field(value, format_spec)
        self._env.charge(len(out), "str.format")
        return out


class _Formatter(_BoundedFormatting, SandboxedFormatter):
    pass


class _EscapeFormatter(_BoundedFormatting, SandboxedEscapeFormatter):
    pass


def _method_bound(obj, name: str, args: tuple, kwargs: dict) -> int:
    """Upper bound of the length of str/bytes method ``name``'s result, from its arguments."""
    n = len(obj)
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        return max(n, width) if isinstance(width, int) else n
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        tab = "\t" if isinstance(obj, str) else b"\t"
        return n + obj.count(tab) * max(size, 0) if isinstance(size, int) else n
    if name == "replace":
        old, new = (list(args) + [None, None])[:2]
        if not isinstance(old, type(obj)) or not isinstance(new, type(obj)):
            return n
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        hits = obj.count(old) if old else n + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        return n + hits * max(0, len(new) - len(old))
    return n   # join: handled by the caller, which sees the items


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox with every string-, list- and number-growing operation bounded *before* it
    runs (per operation: max_chars characters or MAX_REPEAT items; per render: a total budget
    of WORK_BUDGET_FACTOR x max_chars), so one call cannot allocate gigabytes or run for
    seconds between the trace hook's checks."""
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args, max_chars: int = MAX_OUTPUT_CHARS, **kwargs):
        self.max_chars = max_chars
        self.budget = max_chars * WORK_BUDGET_FACTOR
        super().__init__(*args, **kwargs)

    def charge(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise TemplateError(f"chat template {what} would make {size} characters "
                                f"(limit {self.max_chars})")
        self.budget -= size
        if self.budget < 0:
            raise TemplateError(f"chat template builds more than {self.max_chars * WORK_BUDGET_FACTOR} "
                                f"characters in all (limit)")

    def check_int(self, value: int, what: str) -> int:
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise TemplateError(f"chat template {what} makes an integer of {value.bit_length()} bits "
                                f"(limit {MAX_INT_BITS})")
        return value

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int):
                    if len(seq) * max(n, 0) > MAX_REPEAT:
                        raise TemplateError(f"template repeats a sequence of {len(seq)} items {n} times "
                                            f"(limit {MAX_REPEAT} items)")
                    self.charge(len(seq) * max(n, 0), "'*'")
            if isinstance(left, int) and isinstance(right, int):
                self.check_int(1 << (left.bit_length() + right.bit_length()), "'*'")
        elif operator == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_POW_EXPONENT:
                raise TemplateError(f"template raises to the power {right} (limit {MAX_POW_EXPONENT})")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                self.check_int(1 << (left.bit_length() * right), "'**'")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                self.charge(len(left) + len(right), "'+'")
        elif operator == "%" and isinstance(left, str):
            self.charge(_percent_bound(left, right, self.max_chars), "'%'")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value):
        """Bounded versions of the str/bytes methods whose result size comes from arguments."""
        owner, name = getattr(value, "__self__", None), getattr(value, "__name__", None)
        if isinstance(owner, str) and name in ("format", "format_map"):
            return self._bounded_format(owner, name == "format_map")
        if isinstance(owner, (str, bytes)) and name in _BOUNDED_STR_METHODS:
            def bounded(*args, **kwargs):
                if name == "join":
                    items = list(args[0]) if args else []
                    size = sum(len(x) for x in items if isinstance(x, (str, bytes)))
                    self.charge(size + len(owner) * max(len(items) - 1, 0), f"'.{name}'")
                    return value(items)
                self.charge(_method_bound(owner, name, args, kwargs), f"'.{name}'")
                return value(*args, **kwargs)
            return bounded
        if isinstance(owner, int) and name == "to_bytes":
            def to_bytes(length=1, *args, **kwargs):
                self.charge(length if isinstance(length, int) else 0, "'.to_bytes'")
                return value(length, *args, **kwargs)
            return to_bytes
        return super().wrap_str_format(value)

    def _bounded_format(self, owner: str, is_format_map: bool):
        formatter = (_EscapeFormatter(self, escape=owner.escape) if isinstance(owner, Markup)
                     else _Formatter(self))

        def wrapper(*args, **kwargs):
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one positional argument")
                args, kwargs = (), args[0]
            out = type(owner)(formatter.vformat(owner, args, kwargs))
            self.charge(len(out), "str.format")
            return out
        return wrapper

    def bounded_concat(self, items) -> str:
        """The '~' operator: each operand's text size checked before it is made."""
        items = tuple(items)
        self.charge(sum(_text_size(x, self.max_chars) for x in items), "'~'")
        return "".join(str(x) for x in items)

    def bounded_output(self, value):
        """finalize: what {{ ... }} prints is checked before it is turned into text."""
        if not isinstance(value, str):
            self.charge(_text_size(value, self.max_chars), "output")
        return value


class _CodeGenerator(CodeGenerator):
    """Compiles '~' to the environment's bounded_concat instead of an unchecked str join."""

    def visit_Concat(self, node, frame):
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_Env.code_generator_class = _CodeGenerator


def _first_args(fn):
    """fn's (value, *args) with the context argument of pass_* filters dropped."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0
    return lambda args: args[skip:]


def _bounded_filters(env: _Env) -> Dict[str, Any]:
    """Filters whose output size depends on arguments, each checked before it runs."""
    limit = env.max_chars

    def size_of(v):
        return _text_size(v, limit)

    def count(v):
        return v if isinstance(v, int) else 0

    def indent_bound(s, width=4, *a, **k):
        w = len(width) if isinstance(width, str) else count(width)
        return len(str(s)) + (str(s).count("\n") + 1) * w

    def wordwrap_bound(s, width=79, break_long_words=True, wrapstring=None, *a, **k):
        return (len(str(s)) + 1) * (1 + len(wrapstring or "\n"))

    def join_bound(v, d="", attribute=None):
        items = list(v) if isinstance(v, (list, tuple, str, range)) else []
        return size_of(items) + len(str(d)) * len(items)

    def replace_bound(s, old, new, count=None):
        return _method_bound(str(s), "replace", (str(old), str(new), count if count is not None else -1), {})

    def groups_bound(v, n, fill_with=None, *a):
        if not isinstance(n, int) or n > MAX_REPEAT:
            raise TemplateError(f"chat template splits into {n} groups (limit {MAX_REPEAT})")
        return 0

    def sum_bound(v, attribute=None, start=0):
        return size_of(v) + size_of(start) if not isinstance(start, (int, float)) else 0

    def tojson_bound(v, indent=None, *a, **k):
        if indent is not None and (not isinstance(indent, int) or indent > 16):
            raise TemplateError(f"chat template's tojson indent {indent!r} is too large (limit 16)")
        return 6 * size_of(v) * (1 + (indent or 0))

    bounds = {
        "center": lambda s, width=80: max(len(str(s)), count(width)),
        "indent": indent_bound, "wordwrap": wordwrap_bound,
        "format": lambda s, *args, **kwargs: _percent_bound(str(s), kwargs or args, limit),
        "join": join_bound, "replace": replace_bound, "batch": groups_bound, "slice": groups_bound,
        "sum": sum_bound, "string": lambda v: size_of(v), "pprint": lambda v: 2 * size_of(v),
        "tojson": tojson_bound, "list": lambda v: size_of(v),
    }
    out = {}
    for name, bound in bounds.items():
        original = _tojson if name == "tojson" else env.filters[name]
        out[name] = _bounded_filter(env, name, original, bound)
    return out


def _bounded_filter(env: _Env, name: str, original, bound):
    value_args = _first_args(original)

    @functools.wraps(original)
    def bounded(*args, **kwargs):
        env.charge(bound(*value_args(args), **kwargs), f"filter '{name}'")
        return original(*args, **kwargs)
    return bounded


def _raise_exception(message: str):
    raise TemplateError(f"chat template raised: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_env(max_chars: int = MAX_OUTPUT_CHARS) -> _Env:
    env = _Env(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined,
               autoescape=False, keep_trailing_newline=True, max_chars=max_chars)
    env.finalize = env.bounded_output
    env.globals.pop("lipsum", None)        # lipsum(n=10**9) would build text for ever
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    env.filters.update(_bounded_filters(env))
    return env


# Compiled templates, per thread (an _Env holds the running render's budget, so two threads never
# share one) and per (template, max_chars): compiling a chat template costs ~2.5 ms, which a server
# would otherwise pay twice per chat request (render_chat_spans renders twice).
_COMPILED = threading.local()
_COMPILED_PER_THREAD = 8


def _compiled(template: str, max_chars: int) -> jinja2.Template:
    cache = getattr(_COMPILED, "templates", None)
    if cache is None:
        cache = _COMPILED.templates = {}
    key = (template, max_chars)
    tmpl = cache.pop(key, None)
    if tmpl is None:
        try:
            tmpl = _make_env(max_chars).from_string(template)
        except jinja2.TemplateError as e:
            raise TemplateError(f"chat template does not compile: {e}") from None
        if len(cache) >= _COMPILED_PER_THREAD:
            del cache[next(iter(cache))]   # the least recently used
    cache[key] = tmpl   # (re)inserted last: most recently used
    tmpl.environment.budget = max_chars * WORK_BUDGET_FACTOR   # the budget is per render
    return tmpl


def validate_messages(messages: Sequence[Mapping[str, Any]],
                      roles: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Copies of the message dicts; TypeError/ValueError naming the index and role of a message
    that is not a dict, has a role that is not a non-empty string (or not one of ``roles`` when
    given) or content that is not a string."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                        f"got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if roles is not None and role not in roles:
            raise ValueError(f"messages[{i}] has role {role!r}; roles are {', '.join(roles)}")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}] has role {role!r}; a role is a non-empty string")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}] (role {role!r}) needs str content, got {type(content).__name__}")
        out.append(dict(m))
    return out


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *,
                add_generation_prompt: bool = True, bos_token: str = "", eos_token: str = "",
                timeout_s: float = RENDER_TIMEOUT_S, max_chars: int = MAX_OUTPUT_CHARS,
                **extra: Any) -> str:
    """Render ``messages`` with ``template``; raises TemplateError on any failure."""
    msgs = validate_messages(messages)
    tmpl = _compiled(template, max_chars)
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


_SENTINEL = re.compile("\U000F0000([0-9a-f]+)\U000F0001")


def render_chat_spans(template: str, messages: Sequence[Mapping[str, Any]],
                      **kwargs: Any) -> Tuple[str, List[Tuple[int, int]]]:
    """``render_chat`` plus the (start, end) character spans of the text that came from message
    contents, so a tokenizer can parse special tokens only in the template's own text (a user
    typing '<|im_end|>' must not end the turn).

    The template is rendered a second time with each content replaced by a private-use sentinel;
    putting the contents back where the sentinels landed must give the real rendering exactly.
    When it does not (a template that transforms or branches on content), each content is
    looked up in order in the real rendering instead."""
    text = render_chat(template, messages, **kwargs)
    contents = [m["content"] for m in validate_messages(messages)]
    if not any(contents):
        return text, []
    if not any("\U000F0000" in c for c in contents):
        marked = [dict(m, content=f"\U000F0000{i:x}\U000F0001") for i, m in enumerate(messages)]
        try:
            spans = _spans_from_sentinels(render_chat(template, marked, **kwargs), contents, text)
        except TemplateError:
            spans = None
        if spans is not None:
            return text, spans
    return text, _spans_by_search(text, contents)


def _spans_from_sentinels(marked: str, contents: List[str], text: str) -> Optional[List[Tuple[int, int]]]:
    pieces, spans, pos, out_len = [], [], 0, 0
    for m in _SENTINEL.finditer(marked):
        index = int(m.group(1), 16)
        if index >= len(contents):
            return None
        literal = marked[pos:m.start()]
        pieces.append(literal)
        out_len += len(literal)
        content = contents[index]
        pieces.append(content)
        if content:
            spans.append((out_len, out_len + len(content)))
        out_len += len(content)
        pos = m.end()
    pieces.append(marked[pos:])
    return spans if "".join(pieces) == text else None


def _spans_by_search(text: str, contents: List[str]) -> List[Tuple[int, int]]:
    spans, cursor = [], 0
    for content in contents:
        for needle in (content, content.strip()):
            at = text.find(needle, cursor) if needle else -1
            if at >= 0:
                spans.append((at, at + len(needle)))
                cursor = at + len(needle)
                break
    return spans

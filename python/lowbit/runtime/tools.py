"""Tool (function) calling for ``Model.chat(messages, tools=[...], tool_choice=...)``.

Tools arrive in OpenAI's shape, ``{"type": "function", "function": {"name", "description",
"parameters": <JSON schema>}}``. A chat template that uses the ``tools`` variable renders them
itself; for one that does not (SmolLM2's ChatML, gemma's), FALLBACK_SYSTEM_PROMPT describes
them in the system message, as llama.cpp and ollama do for such models. Either way the model
writes calls in the Hermes syntax

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and the grammar built here (runtime/constraints.py) holds it to a valid call: a name from
the list and arguments valid against that tool's ``parameters``. With tool_choice "auto" the
model may answer in plain text instead; once it writes ``<tool_call>`` it is held to a call.
"required" (one call or more) and a named function constrain from the first token; "none"
leaves the tools out of the prompt and generates plain text.

Results go back as ``{"role": "tool", "tool_call_id": ..., "content": ...}`` messages. For a
template without tool support, assistant tool calls become their Hermes text and consecutive
tool results one user turn of ``<tool_response>`` blocks (templates such as gemma's accept
only alternating user/assistant turns).
"""
from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lowbit.runtime.constraints import JSON_LAYOUT, Constraint

TOOL_CHOICES = ("auto", "none", "required")
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

FALLBACK_SYSTEM_PROMPT = (
    "You can call functions to help with the user's request. The functions are described with "
    "JSON Schema within <tools></tools> tags:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one JSON object per call, each within "
    "<tool_call></tool_call> tags:\n<tool_call>\n"
    "{{\"name\": <function-name>, \"arguments\": <arguments-object>}}\n</tool_call>\n"
    "A function's result comes back within <tool_response></tool_response> tags.")


def check_tools(tools: Any) -> List[Dict[str, Any]]:
    """Deep copies of ``tools`` in OpenAI's shape; TypeError/ValueError naming the bad entry."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of {{'type': 'function', 'function': {{...}}}} dicts, "
                        f"got {type(tools).__name__}")
    if not tools:
        raise ValueError("tools is empty; pass at least one tool or leave tools out")
    out, names = [], set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise TypeError(f"tools[{i}] must be a dict, got {type(tool).__name__}")
        if tool.get("type", "function") != "function" or not isinstance(tool.get("function"), Mapping):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                             f"'parameters': ...}}}}")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
        if name in names:
            raise ValueError(f"tools[{i}].function.name {name!r} is used by an earlier tool")
        names.add(name)
        params = fn.get("parameters", {"type": "object"})
        if not isinstance(params, Mapping):
            raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object, "
                             f"got {type(params).__name__}")
        if "description" in fn and not isinstance(fn["description"], str):
            raise ValueError(f"tools[{i}].function.description must be a str")
        out.append({"type": "function", "function": dict(copy.deepcopy(dict(fn)), parameters=dict(params))})
    return out


def check_tool_choice(tool_choice: Any, tools: List[Dict[str, Any]]) -> str:
    """"auto", "none", "required", or the name of the one function to call."""
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise ValueError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or "
                             f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}")
        return tool_choice
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, Mapping) else None
    if not isinstance(name, str):
        raise ValueError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or "
                         f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}")
    if name not in {t["function"]["name"] for t in tools}:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    return name


def template_uses_tools(template: str) -> bool:
    """Whether a chat template reads the ``tools`` variable (parsed, never run)."""
    import jinja2
    from jinja2 import meta
    try:
        return "tools" in meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateError:
        return False        # rendering will report the template's error


def fallback_system_prompt(tools: List[Dict[str, Any]]) -> str:
    return FALLBACK_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def _call_parts(call: Mapping, where: str) -> Tuple[str, Dict[str, Any]]:
    """(name, arguments as a dict) of an OpenAI-shaped tool call; ValueError naming ``where``."""
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise ValueError(f"{where} must be {{'type': 'function', 'function': {{'name': ..., 'arguments': ...}}}}")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as e:
            raise ValueError(f"{where}.function.arguments is not valid JSON: {e}") from None
    if not isinstance(args, Mapping):
        raise ValueError(f"{where}.function.arguments must be a JSON object")
    return fn["name"], dict(args)


def prepare_messages(messages: Sequence[Mapping[str, Any]], native: bool) -> List[Dict[str, Any]]:
    """Messages the template can render: assistant ``tool_calls`` and ``tool`` results kept
    for a template that handles tools (arguments as dicts, as HF templates expect), else
    turned into Hermes text. Messages without either pass through unchanged."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        return messages        # validate_messages names the problem
    out: List[Dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            out.append(m)
            continue
        m = dict(m)
        calls = m.get("tool_calls")
        if calls and m.get("role") == "assistant":
            if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
                raise ValueError(f"messages[{i}].tool_calls must be a list")
            parsed = [_call_parts(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(calls)]
            content = m.get("content") or ""
            if native:
                m["content"] = content
                m["tool_calls"] = [dict(c, function=dict(c["function"], arguments=args))
                                   for c, (_, args) in zip(calls, parsed)]
            else:
                text = "\n".join(f"{CALL_OPEN}\n{json.dumps({'name': n, 'arguments': a}, ensure_ascii=False)}"
                                 f"\n{CALL_CLOSE}" for n, a in parsed)
                m.pop("tool_calls")
                m["content"] = f"{content}\n{text}" if content else text
        elif m.get("role") == "assistant" and m.get("content") is None and "tool_calls" in m:
            m.pop("tool_calls")
            m["content"] = ""
        if m.get("role") == "tool" and not native:
            block = f"<tool_response>\n{m.get('content')}\n</tool_response>"
            if out and out[-1].get("_tool_turn"):
                out[-1]["content"] += "\n" + block
                continue
            m = {"role": "user", "content": block, "_tool_turn": True}
        out.append(m)
    for m in out:
        if isinstance(m, dict):
            m.pop("_tool_turn", None)
    return out


def _with_system(messages: List[Dict[str, Any]], prompt: str) -> List[Dict[str, Any]]:
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system" \
            and isinstance(messages[0].get("content"), str):
        return [dict(messages[0], content=messages[0]["content"] + "\n\n" + prompt)] + messages[1:]
    return [{"role": "system", "content": prompt}] + messages


# ---- the grammar of a call ---------------------------------------------------------------------
def call_schema(tools: List[Dict[str, Any]], only: Optional[str] = None) -> Dict[str, Any]:
    """The JSON schema of one call's body: {"name": <a tool>, "arguments": <its parameters>}."""
    options = [{"type": "object",
                "properties": {"name": {"const": t["function"]["name"]},
                               "arguments": t["function"]["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False}
               for t in tools if only is None or t["function"]["name"] == only]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return dict(schema, **{"x-guidance": JSON_LAYOUT})


def call_grammar(tools: List[Dict[str, Any]], choice: str) -> str:
    """Lark (llguidance dialect) for the reply. "auto": text without a call, or text up to the
    first <tool_call> (a lazy lexeme: it ends at the first occurrence) then calls; "required":
    calls from the first token; a name: exactly one call of that function."""
    body = "%json " + json.dumps(call_schema(tools, None if choice in TOOL_CHOICES else choice))
    call = f'"{CALL_OPEN}\\n" body "\\n{CALL_CLOSE}"'
    lines = ["%llguidance {}", f"body: {body}"]
    if choice == "auto":
        lines += ["start: REPLY | lead_call more_calls",
                  r"REPLY: /(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/",
                  r"lead[lazy]: /(?s:.*)<tool_call>/",
                  r'lead_call: lead "\n" body "\n</tool_call>"',
                  f'more_calls: ("\\n" {call})*']
    elif choice == "required":
        lines += [f'start: {call} ("\\n" {call})*']
    else:
        lines += [f"start: {call}"]
    return "\n".join(lines)


class ToolCallConstraint(Constraint):
    """The call grammar; once the generation ends, parses its calls into ``record.tool_calls``
    (finish_reason "tool_calls" when the reply ended with complete calls)."""

    def finish(self, record) -> None:
        content, calls = split_tool_calls(record.text)
        record.tool_calls = calls
        if calls and record.finish_reason in ("stop", "eos"):
            record.finish_reason = "tool_calls"


def split_tool_calls(text: str) -> Tuple[str, List[Dict[str, Any]]]:
    """(the text before the first call, stripped; the complete calls in OpenAI's shape:
    {"id", "type": "function", "function": {"name", "arguments": JSON string}})."""
    calls = []
    for m in _CALL.finditer(text):
        try:
            body = json.loads(m.group(1))
        except ValueError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            continue
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": body["name"],
                                   "arguments": json.dumps(body.get("arguments", {}), ensure_ascii=False)}})
    cut = text.find(CALL_OPEN)
    return (text[:cut] if cut >= 0 else text).strip(), calls


def prepare_chat(model, messages: Sequence[Mapping[str, Any]], tools: Any,
                 tool_choice: Any) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Optional[Constraint]]:
    """(messages to render, extra template variables, the call constraint or None)."""
    native = template_uses_tools(model.chat_template())
    if tools is None:
        if tool_choice not in ("auto", "none"):
            raise ValueError(f"tool_choice {tool_choice!r} needs tools=")
        return prepare_messages(messages, native), {}, None
    tools = check_tools(tools)
    choice = check_tool_choice(tool_choice, tools)
    messages = prepare_messages(messages, native)
    if choice == "none":
        return messages, {}, None
    extra = {"tools": tools} if native else {}
    if not native:
        messages = _with_system(messages, fallback_system_prompt(tools))
    constraint = ToolCallConstraint(call_grammar(tools, choice), model.tokenizer, model.n_vocab, kind="tools")
    return messages, extra, constraint

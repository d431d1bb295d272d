"""Tool calls (runtime/tools.py): tool and tool_choice checks, rendering through the template
(native `tools` or the Hermes fallback prompt), the call grammar, and round trips on the real
models (SmolLM2: ChatML without tool support; gemma3: the built-in gemma template)."""
import json

import pytest

import lowbit
from lowbit.runtime import tools as T
from lowbit.runtime.templates import render_chat
from _models import real_model_or_skip

jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 30},
                                  "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object",
                   "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                  "b": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]
# a template that renders tools itself (the Hermes layout of Qwen2.5-style templates, shortened)
NATIVE = ("{% if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}<|im_end|>\n"
          "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
          "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} {{ c.function.arguments | tojson }}"
          "</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def smol():
    with lowbit.load(real_model_or_skip("smollm2-135m-instruct"), n_ctx=2048) as m:
        yield m


@pytest.fixture(scope="module")
def gemma():
    with lowbit.load(real_model_or_skip("gemma3-270m"), n_ctx=2048) as m:
        yield m


def _valid_calls(g, names=None):
    assert g.finish_reason == "tool_calls" and g.tool_calls, (g.finish_reason, g.text)
    for call in g.tool_calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        assert name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    return g.tool_calls


# ---- checks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tools,error,match", [
    ({"type": "function"}, TypeError, "list"),
    ([], ValueError, "empty"),
    ([42], TypeError, r"tools\[0\] must be a dict"),
    ([{"type": "retrieval"}], ValueError, r"tools\[0\] must be"),
    ([{"type": "function", "function": {"name": "has space"}}], ValueError, "name"),
    ([WEATHER, WEATHER], ValueError, "earlier tool"),
    ([{"type": "function", "function": {"name": "f", "parameters": "object"}}], ValueError, "parameters"),
])
def test_bad_tools_are_named(tools, error, match):
    with pytest.raises(error, match=match):
        T.check_tools(tools)


def test_tool_choice_checks():
    tools = T.check_tools(TOOLS)
    assert T.check_tool_choice("required", tools) == "required"
    assert T.check_tool_choice({"type": "function", "function": {"name": "add"}}, tools) == "add"
    with pytest.raises(ValueError, match="not among"):
        T.check_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)
    with pytest.raises(ValueError, match="tool_choice must be"):
        T.check_tool_choice("sometimes", tools)


def test_bad_tool_parameters_schema_raises_before_any_token(smol):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 3, "maximum": 1}}, "required": ["n"]}}}
    with pytest.raises(lowbit.ConstraintError, match="Unsatisfiable"):
        smol.chat(ASK, tools=[bad], tool_choice="required", stream=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        smol.chat(ASK, tools=TOOLS, json=True)
    with pytest.raises(ValueError, match="needs tools"):
        smol.chat(ASK, tool_choice="required")


# ---- rendering --------------------------------------------------------------------------------------
def test_template_tool_support_is_detected_from_the_source(smol):
    assert T.template_uses_tools(NATIVE)
    assert not T.template_uses_tools(smol.chat_template())          # SmolLM2's ChatML


def test_native_template_gets_tools_and_calls_as_dicts():
    calls = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
    msgs = T.prepare_messages(ASK + [{"role": "assistant", "content": None, "tool_calls": calls},
                                     {"role": "tool", "tool_call_id": "call_1", "content": "5"}], native=True)
    out = render_chat(NATIVE, msgs, tools=T.check_tools(TOOLS))
    assert '"name": "get_weather"' in out and '<tool_call>add {"a": 2, "b": 3}</tool_call>' in out
    assert "<|im_start|>tool\n5<|im_end|>" in out


def test_fallback_prompt_and_history_for_a_template_without_tools(smol):
    calls = [{"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                            "arguments": '{"city": "Paris", "unit": "celsius"}'}},
             {"id": "c2", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": calls},
                     {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 18}'},
                     {"role": "tool", "tool_call_id": "c2", "content": "5"}]
    msgs, extra, constraint = T.prepare_chat(smol, history, TOOLS, "auto")
    assert extra == {} and isinstance(constraint, T.ToolCallConstraint)
    assert msgs[0]["role"] == "system" and '"name": "add"' in msgs[0]["content"] and "<tool_call>" in msgs[0]["content"]
    assert msgs[2] == {"role": "assistant", "content":
                       '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
                       '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'}
    # consecutive results become one user turn (templates like gemma's need alternating turns)
    assert msgs[3] == {"role": "user", "content": '<tool_response>\n{"temp": 18}\n</tool_response>\n'
                                                  '<tool_response>\n5\n</tool_response>'}
    assert len(msgs) == 4
    smol.chat_ids(msgs)                                             # renders through the real template
    with pytest.raises(ValueError, match=r"messages\[1\].tool_calls\[0\].function.arguments is not valid JSON"):
        T.prepare_messages([ASK[0], {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "add", "arguments": "{oops"}}]}], native=False)
    with pytest.raises(ValueError, match=r"messages\[1\].tool_calls\[0\] must be"):
        T.prepare_messages([ASK[0], {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}],
                           native=True)


def test_split_tool_calls():
    text = ('Let me check.<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
            '<tool_call>\n{"name": "add", "arguments": {"a": 3\n')         # the second one was cut
    content, calls = T.split_tool_calls(text)
    assert content == "Let me check." and len(calls) == 1
    assert calls[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}


# ---- the grammar ------------------------------------------------------------------------------------
def test_auto_is_free_text_until_a_call_starts_then_only_a_call(smol):
    constraint = T.prepare_chat(smol, ASK, TOOLS, "auto")[2]
    guide = constraint.start()
    eos = set(smol.tokenizer.eot_ids)
    first = set(guide.allowed().tolist())
    assert len(first) > smol.n_vocab // 2 and eos <= first          # any text, or an end
    for tid in smol.tokenize("Sure, I will check.<tool_call>\n", add_special=False):
        guide.allowed()
        assert not guide.accept(tid)
    allowed = guide.allowed().tolist()
    assert allowed and not eos & set(allowed)
    for tid in allowed:                 # inside a call: only the start of {"name": ...
        piece = smol.tokenizer.token_to_bytes(tid)
        assert piece and (b'{"name": "'.startswith(piece) or piece.startswith(b'{"name": "')), piece
    guide.close()


def test_two_tool_round_trip_smollm2(smol):
    g = smol.chat(ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=7, max_new_tokens=200)
    calls = _valid_calls(g)
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": calls}]
    for call in calls:
        args = json.loads(call["function"]["arguments"])
        result = {"temp_c": 18} if call["function"]["name"] == "get_weather" else {"sum": args["a"] + args["b"]}
        history.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
    reply = smol.chat(history, tools=TOOLS, tool_choice="none", temperature=0.0, max_new_tokens=40)
    assert reply.finish_reason in ("eos", "length") and reply.text and not reply.tool_calls


def test_named_tool_choice_gives_exactly_that_call(smol):
    for seed in range(5):
        g = smol.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}},
                      temperature=1.0, seed=seed, max_new_tokens=80)
        assert len(_valid_calls(g, names={"add"})) == 1


def test_required_calls_on_many_seeds_are_all_valid(smol):
    for seed in range(10):
        _valid_calls(smol.chat(ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed,
                               max_new_tokens=200))


def test_auto_reply_in_text_has_no_tool_calls(smol):
    g = smol.chat([{"role": "user", "content": "Say hello."}], tools=TOOLS, temperature=0.0, max_new_tokens=40)
    if "<tool_call>" not in g.text:
        assert g.tool_calls == [] and g.finish_reason in ("stop", "length")
    else:
        _valid_calls(g)


def test_gemma3_tool_calls_through_the_builtin_template(gemma):
    """gemma3-270m is a base model: with "required" it keeps adding calls until max_new_tokens
    (each one valid), so each tool is asked for by name (exactly one call, then the grammar ends)."""
    for seed, name in enumerate(["get_weather", "add", "get_weather"]):
        g = gemma.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}},
                       temperature=1.0, seed=seed, max_new_tokens=120)
        assert len(_valid_calls(g, names={name})) == 1

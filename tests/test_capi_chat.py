"""Chat templates in the C API: every template it recognises renders exactly what lowbit's jinja2
renderer (lowbit.runtime.templates.render_chat) gives for the same messages, including the
templates' own errors (raise_exception); any other template is LOWBIT_ERR_TEMPLATE with the text
that points to Python; lowbit_chat_tokenize equals Model.chat_ids on the real models. The
installed liblowbit.so is called through ctypes."""
import ctypes
import warnings

import pytest

import lowbit
from lowbit.errors import TemplateError
from lowbit.runtime.templates import BUILTIN_TEMPLATES, render_chat

from _models import real_model_or_skip

LOWBIT_OK, LOWBIT_ERR_BUFFER, LOWBIT_ERR_TEMPLATE = 0, 4, 8
NOT_RECOGNISED = "template not recognised: use Python's jinja2 renderer"

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>'"
           " + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN2 = SMOLLM2.replace("You are a helpful AI assistant named SmolLM, trained by Hugging Face", "You are a helpful assistant.")
HF_CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
             " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_INSTRUCT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA2_IT = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
GEMMA3_IT = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
PHI3_INSTRUCT = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

RECOGNISED = {
    "builtin_chatml": BUILTIN_TEMPLATES["chatml"], "builtin_gemma": BUILTIN_TEMPLATES["gemma"],
    "builtin_llama3": BUILTIN_TEMPLATES["llama3"], "builtin_phi3": BUILTIN_TEMPLATES["phi3"],
    "smollm2": SMOLLM2, "qwen2": QWEN2, "hf_chatml": HF_CHATML, "llama3_instruct": LLAMA3_INSTRUCT,
    "gemma2_it": GEMMA2_IT, "gemma3_it": GEMMA3_IT, "phi3_instruct": PHI3_INSTRUCT,
    # the same text with jinja's '\n' escape spelled out instead of a newline character
    "smollm2_escaped": SMOLLM2.replace("\n", "\\n"), "llama3_escaped": LLAMA3_INSTRUCT.replace("\n", "\\n"),
}

CONVERSATIONS = {
    "user": [("user", "Hi there")],
    "system_user": [("system", "Be brief."), ("user", "Why is the sky blue?")],
    "turns": [("user", "  2+2?\n"), ("assistant", " 4 "), ("user", "\tand 3+3?\u3000")],
    "system_turns": [("system", " Answer in French. "), ("user", "héllo 🙂"), ("assistant", "Bonjour !"), ("user", "ça va ?")],
    "not_alternating": [("user", "a"), ("user", "b")],
    "tool": [("user", "weather?"), ("tool", '{"temp": 21}')],
    "empty_content": [("user", "")],
    "specials_in_content": [("user", "<|im_end|> <end_of_turn> <|eot_id|> <|end|>")],
    "system_only": [("system", "You are a cat.")],
    "none": [],
}


class Message(ctypes.Structure):
    _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]


@pytest.fixture(scope="module")
def lib():
    lib = ctypes.CDLL(lowbit.get_library())
    lib.lowbit_last_error.restype = ctypes.c_char_p
    lib.lowbit_chat_render_template.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Message),
                                                ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                                                ctypes.POINTER(ctypes.c_size_t)]
    lib.lowbit_model_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
    lib.lowbit_model_free.argtypes = [ctypes.c_void_p]
    lib.lowbit_chat_tokenize.argtypes = [ctypes.c_void_p, ctypes.POINTER(Message), ctypes.c_size_t,
                                         ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    lib.lowbit_chat_render.argtypes = [ctypes.c_void_p, ctypes.POINTER(Message), ctypes.c_size_t, ctypes.c_int,
                                       ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    return lib


def c_messages(conversation):
    arr = (Message * max(len(conversation), 1))()
    for i, (role, content) in enumerate(conversation):
        arr[i] = Message(role.encode(), content.encode())
    return arr


def c_render(lib, template, conversation, add_generation_prompt, bos="<bos>", eos="<eos>"):
    """(status, text or error message)."""
    msgs, n = c_messages(conversation), ctypes.c_size_t()
    status = lib.lowbit_chat_render_template(template.encode(), bos.encode(), eos.encode(), msgs, len(conversation),
                                             int(add_generation_prompt), None, 0, ctypes.byref(n))
    if status == LOWBIT_ERR_BUFFER:
        buf = ctypes.create_string_buffer(n.value)
        status = lib.lowbit_chat_render_template(template.encode(), bos.encode(), eos.encode(), msgs,
                                                 len(conversation), int(add_generation_prompt), buf, n.value,
                                                 ctypes.byref(n))
        assert status == LOWBIT_OK, lib.lowbit_last_error()
        return status, buf.raw[:n.value].decode()
    return status, lib.lowbit_last_error().decode()


@pytest.mark.parametrize("conversation", list(CONVERSATIONS), ids=list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(RECOGNISED))
def test_recognised_templates_render_as_jinja2(lib, name, conversation):
    template = RECOGNISED[name]
    messages = [{"role": r, "content": c} for r, c in CONVERSATIONS[conversation]]
    for add_generation_prompt in (True, False):
        status, got = c_render(lib, template, CONVERSATIONS[conversation], add_generation_prompt)
        try:
            expect = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                                 bos_token="<bos>", eos_token="<eos>")
        except TemplateError as e:       # the template's own error (raise_exception, messages[0] of none)
            assert status == LOWBIT_ERR_TEMPLATE, (got, str(e))
            if "raised" in str(e):
                assert got == str(e)
            continue
        assert status == LOWBIT_OK, got
        assert got == expect


@pytest.mark.parametrize("template", [
    SMOLLM2.replace("+ '\n'}}", "+ '\n\n'}}"),                    # one character more
    HF_CHATML + " ",                                               # trailing text
    LLAMA3_INSTRUCT.replace("| trim", ""),
    GEMMA3_IT.replace("Conversation roles", "Roles"),
    QWEN2.replace("You are a helpful assistant.", "It's {{ strftime_now('%Y') }}"),   # code in the system text
    "{{ messages }}",
    "",
    "{% for m in messages %}{{ m.content }}{% endfor %}",
])
def test_other_templates_are_refused_pointing_to_python(lib, template):
    status, got = c_render(lib, template, CONVERSATIONS["user"], True)
    assert (status, got) == (LOWBIT_ERR_TEMPLATE, NOT_RECOGNISED)


def test_bad_messages_are_argument_errors(lib):
    status, got = c_render(lib, HF_CHATML, [("", "hi")], True)
    assert status == 1 and "messages[0] has no role" in got
    msgs = (Message * 1)(Message(b"user", b"\xff\xfe"))
    n = ctypes.c_size_t()
    assert lib.lowbit_chat_render_template(HF_CHATML.encode(), None, None, msgs, 1, 1, None, 0, ctypes.byref(n)) == 1
    assert b"not valid UTF-8" in lib.lowbit_last_error()


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_chat_tokenize_equals_model_chat_ids(lib, name):
    """The real models: SmolLM2 with its own (ChatML) template, gemma3 without one (the built-in
    Gemma template, as Python picks it). Special-token text inside a message stays text."""
    path = real_model_or_skip(name)
    model = ctypes.c_void_p()
    assert lib.lowbit_model_load(path.encode(), None, ctypes.byref(model)) == LOWBIT_OK, lib.lowbit_last_error()
    try:
        with lowbit.load(path, n_ctx=256) as m:
            for conversation in ("user", "system_turns", "specials_in_content", "turns"):
                convo = CONVERSATIONS[conversation]
                messages = [{"role": r, "content": c} for r, c in convo]
                with warnings.catch_warnings():       # gemma3: "no chat template, using the built-in one"
                    warnings.simplefilter("ignore")
                    expect = m.chat_ids(messages)
                ids, n = (ctypes.c_int32 * 4096)(), ctypes.c_size_t()
                status = lib.lowbit_chat_tokenize(model, c_messages(convo), len(convo), ids, 4096, ctypes.byref(n))
                assert status == LOWBIT_OK, lib.lowbit_last_error()
                assert list(ids[:n.value]) == expect, conversation
                buf = ctypes.create_string_buffer(1 << 16)
                assert lib.lowbit_chat_render(model, c_messages(convo), len(convo), 1, buf, 1 << 16,
                                              ctypes.byref(n)) == LOWBIT_OK
                assert buf.raw[:n.value].decode() == m.render_chat(messages)
    finally:
        lib.lowbit_model_free(model)

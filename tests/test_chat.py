"""Chat templates: real-style templates render; hostile ones raise TemplateError quickly."""
import time

import pytest

from lowbit import TemplateError
from lowbit.runtime.templates import BUILTIN_TEMPLATES, default_template, render_chat

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Why is the sky blue?"}]

# the SmolLM2-Instruct template (HF ChatML with a default system prompt)
SMOLLM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_chatml_style_template():
    out = render_chat(SMOLLM_TEMPLATE, MSGS[1:2])
    assert out == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                   "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert not render_chat(SMOLLM_TEMPLATE, MSGS, add_generation_prompt=False).endswith("assistant\n")


def test_builtin_gemma_template_folds_system_into_first_user_turn():
    out = render_chat(BUILTIN_TEMPLATES["gemma"], MSGS, bos_token="<bos>")
    assert out == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                   "<start_of_turn>model\nHello!<end_of_turn>\n"
                   "<start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n<start_of_turn>model\n")
    assert default_template("gemma3") == BUILTIN_TEMPLATES["gemma"]
    assert default_template("llama", lambda piece: piece == "<|start_header_id|>") == BUILTIN_TEMPLATES["llama3"]
    assert default_template("llama") == BUILTIN_TEMPLATES["chatml"]


def test_raise_exception_helper():
    t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    assert render_chat(t, MSGS[1:2]) == "ok"
    with pytest.raises(TemplateError, match="first must be user"):
        render_chat(t, MSGS)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "{{ messages.append({'role': 'x', 'content': 'y'}) }}",
    "{{ self.__init__.__globals__ }}",
    "{% for x in messages %}{{ x.update({'a': 1}) }}{% endfor %}",
])
def test_hostile_templates_never_run_code(template, tmp_path):
    try:
        out = render_chat(template, MSGS)
    except TemplateError:
        return
    assert "pwned" not in out and "subprocess" not in out.lower()


@pytest.mark.parametrize("template,what", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than"),
    ("{{ 'a' * 100000000 }}", "repeats"),
    ("{{ 10 ** 100000000 }}", "power"),
    ("{% for i in range(100000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}", "exceeds"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurs|failed"),
    ("{% for %}", "does not compile"),
])
def test_resource_abuse_is_bounded(template, what):
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match=what):
        render_chat(template, MSGS, timeout_s=0.5)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("messages,err", [
    ("hello", TypeError), ([{"role": "user"}], ValueError), ([{"content": "x"}], ValueError),
    (["x"], TypeError), ([{"role": "user", "content": 3}], ValueError),
])
def test_bad_messages(messages, err):
    with pytest.raises(err):
        render_chat(SMOLLM_TEMPLATE, messages)

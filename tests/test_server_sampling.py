"""OpenAI's presence_penalty, frequency_penalty and logit_bias through the real server (a
subprocess on 127.0.0.1 with the real SmolLM2, the official `openai` client): at temperature 0
each reply equals Model.chat / Model.generate with the same fields in-process; bias +-100
forces / bans a token; each bad value is a 400 whose error object names the field, and the
server keeps serving."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import lowbit  # noqa: E402
from test_server import ALIAS, API_KEY, MODEL, N_CTX, Server, ask  # noqa: E402
from lowbit.server import DEFAULT_ACT_PRECISION  # noqa: E402
from _models import real_model_or_skip  # noqa: E402


@pytest.fixture(scope="module")
def model_path():
    return real_model_or_skip(MODEL)


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--parallel", "2", "--api-key", API_KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def local(model_path):
    m = lowbit.load(model_path, n_ctx=N_CTX, n_threads=2, act_precision=DEFAULT_ACT_PRECISION)
    yield m
    m.close()


def test_chat_with_penalties_and_bias_equals_model_chat(server, local):
    messages = ask("Write a list of fruits, one per line.")
    plain = local.chat(messages, temperature=0, max_new_tokens=24, repetition_penalty=1.0)
    bias = {str(local.tokenize("\n", add_special=False)[0]): -5}
    kw = dict(presence_penalty=1.5, frequency_penalty=0.8, logit_bias=bias)
    want = local.chat(messages, temperature=0, max_new_tokens=24, repetition_penalty=1.0, **kw)
    assert want.tokens != plain.tokens                 # the fields change the greedy reply
    r = server.client().chat.completions.create(model=ALIAS, messages=messages, temperature=0, max_tokens=24, **kw)
    assert r.choices[0].message.content == want.text
    assert r.usage.completion_tokens == want.generated_tokens
    chunks = server.client().chat.completions.create(model=ALIAS, messages=messages, temperature=0, max_tokens=24,
                                                     stream=True, **kw)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want.text


def test_completion_bias_forces_and_bans_tokens(server, local):
    c = server.client()
    prompt = "The capital of France is"
    greedy = local.generate(prompt, temperature=0, max_new_tokens=4)
    first = greedy.tokens[0]
    banned = c.completions.create(model=ALIAS, prompt=prompt, temperature=0, max_tokens=4,
                                  logit_bias={str(first): -100})
    want = local.generate(prompt, temperature=0, max_new_tokens=4, logit_bias={first: -100})
    assert banned.choices[0].text == want.text and want.tokens[0] != first
    forced_id = local.tokenize(" banana", add_special=False)[0]
    forced = c.completions.create(model=ALIAS, prompt=prompt, temperature=0.9, seed=5, max_tokens=3,
                                  logit_bias={str(forced_id): 100})
    assert forced.choices[0].text == local.detokenize([forced_id] * 3)
    # frequency_penalty alone, sampled with a seed: the server's tokens are the in-process ones
    kw = dict(temperature=1.0, seed=42, frequency_penalty=1.3, presence_penalty=-0.4)
    r = c.completions.create(model=ALIAS, prompt=prompt, max_tokens=12, extra_body=dict(top_k=0, min_p=0.0), **kw)
    want = local.generate(prompt, max_new_tokens=12, top_k=0, min_p=0.0, **kw)
    assert r.choices[0].text == want.text


BAD = [
    ({"presence_penalty": 2.01}, "presence_penalty", "[-2, 2]"),
    ({"frequency_penalty": -7}, "frequency_penalty", "[-2, 2]"),
    ({"frequency_penalty": "high"}, "frequency_penalty", "number"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "[-100, 100]"),
    ({"logit_bias": {"5": "up"}}, "logit_bias", "number"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias", "out of range"),
    ({"logit_bias": [5, 1]}, "logit_bias", "object"),
]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("fields,param,needle", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_penalty_or_bias_is_400_naming_the_field(server, path, fields, param, needle):
    body = dict({"messages": ask("Hi")} if "chat" in path else {"prompt": "Hi"}, max_tokens=2, **fields)
    status, text = server.post(path, body)
    assert status == 400, text
    err = json.loads(text)["error"]
    assert err["param"] == param and needle in err["message"] and err["type"] == "invalid_request_error", err
    assert server.post(path, dict(body, **{param: None}))[0] == 200       # and the server goes on


def test_openai_client_gets_the_field_in_its_error(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model=ALIAS, messages=ask("Hi"), presence_penalty=3)
    assert e.value.param == "presence_penalty" and e.value.status_code == 400

"""`lowbit serve` end to end: the real server as a subprocess on 127.0.0.1 (a free port) with the
real SmolLM2, driven by the official `openai` client and raw HTTP. Replies at temperature 0 are
checked against the same request run in-process with `Model.chat` / `Model.generate`, and under
16 concurrent clients against the same request run alone. Timeouts are hang guards only."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import lowbit  # noqa: E402
from lowbit.server import DEFAULT_ACT_PRECISION  # noqa: E402
from _models import real_model_or_skip  # noqa: E402

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__)))
MODEL = "smollm2-135m-instruct"
ALIAS = "smollm2"
API_KEY = "test-key-7d1f"
N_CTX = 512
PARALLEL = 4
START_S = 180          # hang guards
REQUEST_S = 300


class Server:
    """`python -m lowbit serve` in a subprocess; ready when /health answers 200."""

    def __init__(self, path, *extra):
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lowbit", "serve", path, "--port", "0", "-q", "--alias", ALIAS,
             "--n-ctx", str(N_CTX), "--threads", "2", *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []                  # its output, read as it comes (a full pipe would block it)
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(10)
                raise AssertionError(f"the server exited with {self.proc.returncode}: {self.output()}")
            banner = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", self.output())
            if banner:
                self.port = int(banner.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                if self.get("/health")[0] == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server did not answer /health within {START_S} s: {self.output()}")

    def output(self):
        return "".join(self.lines)

    def request(self, method, path, body=None, headers=None, timeout=REQUEST_S):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, key=API_KEY):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.request("POST", path, body=data, headers=headers)

    def client(self, key=API_KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=REQUEST_S)

    def health(self):
        status, text = self.get("/health", timeout=30)
        return status, json.loads(text)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(30)


@pytest.fixture(scope="module")
def model_path():
    return real_model_or_skip(MODEL)


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path, "--parallel", str(PARALLEL), "--api-key", API_KEY)
    yield s
    s.stop()
    out = s.output()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (the conventional exit)
    assert s.proc.returncode in (0, -signal.SIGTERM) and "lowbit: stopped serving" in out, out


@pytest.fixture(scope="module")
def local(model_path):
    """The same model in this process, at the server's default activation precision (q8): what each
    request gives when run alone."""
    m = lowbit.load(model_path, n_ctx=N_CTX, n_threads=2, act_precision=DEFAULT_ACT_PRECISION)
    yield m
    m.close()


def ask(text):
    return [{"role": "user", "content": text}]


GREEDY = dict(temperature=0, max_tokens=16)


def test_chat_equals_model_chat(server, local):
    c = server.client()
    r = c.chat.completions.create(model=ALIAS, messages=ask("What is the capital of France?"), **GREEDY)
    want = local.chat(ask("What is the capital of France?"), temperature=0, max_new_tokens=16,
                      repetition_penalty=1.0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.text and want.text
    assert choice.finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == want.prompt_tokens
    assert r.usage.completion_tokens == want.generated_tokens
    assert r.usage.total_tokens == want.prompt_tokens + want.generated_tokens
    assert r.model == ALIAS and r.object == "chat.completion"


def test_chat_stream_matches_non_stream(server):
    c = server.client()
    messages = ask("Name three colours.")
    whole = c.chat.completions.create(model=ALIAS, messages=messages, **GREEDY)
    chunks = list(c.chat.completions.create(model=ALIAS, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({ch.id for ch in chunks}) == 1


def lone_stream(model_path, local, *server_args):
    """One greedy 24-token completion streamed alone from a server started with server_args:
    (Model.generate's Generation, the chunks, their non-empty texts, the server's /metrics after)."""
    prompt = "The three primary colours are"
    want = local.generate(prompt, temperature=0, max_new_tokens=24)
    s = Server(model_path, *server_args)
    try:
        chunks = list(s.client().completions.create(model=ALIAS, prompt=prompt, stream=True, temperature=0,
                                                    max_tokens=24))
        metrics = s.get("/metrics")
    finally:
        s.stop()
    return want, chunks, [ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].text], metrics


def test_stream_interval_joins_tokens_into_fewer_chunks(model_path, local):
    """--stream-interval-ms: the first token's text goes at once; text of the tokens drawn within
    the interval after it waits and goes as one chunk (here: the rest of the reply, sent before
    the finish). The text is Model.generate's either way."""
    want, chunks, texts, _ = lone_stream(model_path, local, "--stream-interval-ms", "10000")
    assert "".join(texts) == want.text and want.generated_tokens == 24
    assert len(texts) == 2 and texts[0] == local.detokenize(want.tokens[:1])
    assert chunks[-1].choices[0].finish_reason == "length"


def test_lone_stream_in_solo_runs_sends_a_chunk_per_token(model_path, local):
    """--solo-run-ms 1000: a lone request's tokens are drawn many steps per call of the core and
    reach the event loop together, yet each token's text is still its own chunk (OpenAI's
    semantics); the reply is Model.generate's."""
    want, chunks, texts, (status, metrics) = lone_stream(model_path, local, "--solo-run-ms", "1000")
    assert texts == [local.detokenize([t]) for t in want.tokens] and want.generated_tokens == 24
    assert chunks[-1].choices[0].finish_reason == "length"
    # /metrics counts the forward steps of a run, not the run: the prompt's step and 23 decode steps
    steps = [line for line in metrics.splitlines() if line.startswith("lowbit_steps_total")]
    assert status == 200 and len(steps) == 1 and float(steps[0].split()[-1]) == 24, steps


def test_stream_is_sse_ending_with_done(server):
    status, text = server.post("/v1/chat/completions", {"messages": ask("Hi"), "stream": True, "max_tokens": 4})
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_events_are_the_dumped_chunks_in_order(server, local):
    """Each SSE event of a stream is exactly json.dumps(ensure_ascii=False) of its chunk (text
    chunks are built from a template: server/app.py TextChunks), events of n choices name their
    index, and the text of each choice is the whole completion; the usage chunk and [DONE] end it."""
    prompt = 'She said: "Stop!"\n\tThen, in C: printf("%s\\n", s);'
    body = {"prompt": prompt, "stream": True, "max_tokens": 12, "temperature": 0.8, "seed": 5, "n": 2,
            "stream_options": {"include_usage": True}}
    status, text = server.post("/v1/completions", body)
    assert status == 200
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    for e, chunk in zip(events, chunks):
        assert e[6:] == json.dumps(chunk, ensure_ascii=False)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 24
    for i in range(2):
        want = local.generate(prompt, max_new_tokens=12, temperature=0.8, seed=5 + i)
        got = "".join(c["choices"][0]["text"] for c in chunks[:-1] if c["choices"][0]["index"] == i)
        assert got == want.text


def test_completion_equals_model_generate(server, local):
    c = server.client()
    prompt = "The three primary colours are"
    r = c.completions.create(model=ALIAS, prompt=prompt, **GREEDY)
    want = local.generate(prompt, temperature=0, max_new_tokens=16)
    assert r.choices[0].text == want.text and want.text
    assert r.usage.completion_tokens == want.generated_tokens
    echoed = c.completions.create(model=ALIAS, prompt=prompt, echo=True, **GREEDY)
    assert echoed.choices[0].text == prompt + want.text
    ids = local.tokenize(prompt)
    by_ids = c.completions.create(model=ALIAS, prompt=ids, **GREEDY)
    assert by_ids.choices[0].text == want.text


def test_stop_string_and_max_completion_tokens(server, local):
    c = server.client()
    prompt = "Count: 1, 2, 3, 4, 5,"
    full = local.generate(prompt, temperature=0, max_new_tokens=12).text
    words = full.split()
    assert len(words) >= 2, full
    stop = words[1]
    r = c.completions.create(model=ALIAS, prompt=prompt, temperature=0, max_tokens=12, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[:full.index(stop)]
    r = c.chat.completions.create(model=ALIAS, messages=ask("Tell me a story."), temperature=0,
                                  max_completion_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_logprobs(server):
    c = server.client()
    r = c.chat.completions.create(model=ALIAS, messages=ask("Say yes."), temperature=0, max_tokens=5,
                                  logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in content) == r.choices[0].message.content
    r = c.completions.create(model=ALIAS, prompt="One, two,", temperature=0, max_tokens=4, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(v) for top, v in
               zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset[0] == 0 and "".join(lp.tokens) == r.choices[0].text


def test_seeded_sampling_is_reproducible(server):
    c = server.client()
    kw = dict(model=ALIAS, prompt="Once upon a time", max_tokens=12, temperature=1.0, top_p=0.9, seed=1234,
              extra_body=dict(top_k=50, min_p=0.02, repetition_penalty=1.1))     # lowbit's own fields
    a = c.completions.create(**kw).choices[0].text
    b = c.completions.create(**kw).choices[0].text
    assert a == b


def test_n_choices_are_the_seeded_requests_side_by_side(server):
    """n=3 with a seed: choice i is what the same request alone gives with seed + i (so the choices
    differ), each complete, usage counts the prompt once and every completion; streamed, each
    chunk names its choice and every choice ends with its own finish_reason."""
    c = server.client()
    kw = dict(model=ALIAS, max_tokens=10, temperature=1.0, extra_body=dict(top_k=0, min_p=0.0))
    r = c.chat.completions.create(messages=ask("Name a fruit."), n=3, seed=77, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    alone = [c.chat.completions.create(messages=ask("Name a fruit."), seed=77 + i, **kw) for i in range(3)]
    assert [ch.message.content for ch in r.choices] == [a.choices[0].message.content for a in alone]
    assert len({ch.message.content for ch in r.choices}) > 1
    assert r.usage.prompt_tokens == alone[0].usage.prompt_tokens
    assert r.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    chunks = list(c.completions.create(prompt="Once upon a time", n=2, seed=5, stream=True,
                                       stream_options={"include_usage": True}, **kw))
    texts, finishes = ["", ""], [[], []]
    for ch in chunks[:-1]:
        (choice,) = ch.choices
        texts[choice.index] += choice.text
        if choice.finish_reason:
            finishes[choice.index].append(choice.finish_reason)
    assert all(len(f) == 1 for f in finishes), finishes
    want = [c.completions.create(prompt="Once upon a time", seed=5 + i, **kw) for i in range(2)]
    assert texts == [w.choices[0].text for w in want]
    assert chunks[-1].usage.completion_tokens == sum(w.usage.completion_tokens for w in want)


def test_act_precision_option_reaches_the_engine(server, model_path):
    """The default server computes on q8 activations (its banner says so); `--act-precision high`
    gives Model.chat's reply at high, and log-probs of high differ from q8's (the flag is not
    ignored), by no more than the activations' rounding. (high, not auto: on a CPU without AVX-512
    auto is q8 itself, cpu/matmul.h.)"""
    assert f"{DEFAULT_ACT_PRECISION} activations) at" in server.output() and DEFAULT_ACT_PRECISION == "q8"
    question = ask("Name a large animal.")
    kw = dict(model=ALIAS, messages=question, temperature=0, max_tokens=8, logprobs=True)
    q8 = server.client().chat.completions.create(**kw)
    s = Server(model_path, "--act-precision", "high")
    try:
        assert "high activations) at" in s.output()
        high = s.client().chat.completions.create(**kw)
    finally:
        s.stop()
    with lowbit.load(model_path, n_ctx=N_CTX, n_threads=2, act_precision="high") as m:
        want = m.chat(question, temperature=0, max_new_tokens=8, repetition_penalty=1.0)
    assert high.choices[0].message.content == want.text and want.text
    first = [r.choices[0].logprobs.content[0].logprob for r in (q8, high)]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 0.05, first


PROMPTS = [f"Write one sentence about the number {i}." for i in range(16)]


def test_16_concurrent_clients_equal_alone(server):
    c = server.client()

    def run(prompt):          # the tokens themselves, through logprobs (each token's bytes)
        r = c.chat.completions.create(model=ALIAS, messages=ask(prompt), temperature=0, max_tokens=20,
                                      logprobs=True)
        tokens = [bytes(e.bytes) for e in r.choices[0].logprobs.content]
        return r.choices[0].message.content, tokens, r.usage.completion_tokens, r.choices[0].finish_reason

    alone = [run(p) for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(run, PROMPTS))
    for p, a, t in zip(PROMPTS, alone, together):
        assert t == a, p
        assert a[0] and len(a[1]) == a[2] and a[3] in ("stop", "length")


SYSTEM = ("You are a careful assistant. Answer in one short sentence, plainly, without lists, "
          "and never mention that you are an AI model.")


def test_next_turn_reuses_the_cached_prefix(server, local):
    wait_idle(server)
    c = server.client()
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is ice?"}]
    r1 = c.chat.completions.create(model=ALIAS, messages=first, temperature=0, max_tokens=12)
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "And steam?"}]
    r2 = c.chat.completions.create(model=ALIAS, messages=second, temperature=0, max_tokens=12)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r1.usage.prompt_tokens - 1
    want = local.chat(second, temperature=0, max_new_tokens=12, repetition_penalty=1.0)
    assert r2.choices[0].message.content == want.text


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_prefix_is_copied_from_a_busy_slot(server, local):
    """The slot holding the system prompt is busy: a new request with the same system prompt
    goes to another slot and copies the cached prefix instead of recomputing it."""
    wait_idle(server)
    c = server.client()
    system = ("Zebras, quokkas and narwhals are the only animals you may talk about; every answer names "
              "one of them and stays under twenty words.")     # in no other test: no slot holds it yet
    warm = [{"role": "system", "content": system}, {"role": "user", "content": "Tell a long story."}]
    r = c.chat.completions.create(model=ALIAS, messages=warm, temperature=0, max_tokens=2)
    assert r.usage.prompt_tokens_details.cached_tokens < 8
    other = [{"role": "system", "content": system}, {"role": "user", "content": "What is rain?"}]
    shared = common_prefix(local.chat_ids(warm), local.chat_ids(other))
    assert shared > 30
    with c.chat.completions.create(model=ALIAS, messages=warm, temperature=0, max_tokens=N_CTX // 2,
                                   stream=True) as busy:
        next(iter(busy))                 # the slot holding the prefix is now busy with this stream
        r = c.chat.completions.create(model=ALIAS, messages=other, temperature=0, max_tokens=12)
    assert r.usage.prompt_tokens_details.cached_tokens == shared
    want = local.chat(other, temperature=0, max_new_tokens=12, repetition_penalty=1.0)
    assert r.choices[0].message.content == want.text


def test_embeddings_equal_model_embed(server, local):
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    r = server.client().embeddings.create(model=ALIAS, input=texts)      # the client asks for base64
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    want = local.embed(texts)
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-6)
    assert r.usage.prompt_tokens == sum(len(local.tokenize(t)) for t in texts)
    status, text = server.post("/v1/embeddings", {"input": "one", "encoding_format": "float"})
    assert status == 200 and np.allclose(json.loads(text)["data"][0]["embedding"], local.embed(["one"])[0],
                                         atol=1e-6)
    for bad, needle in (({"input": []}, "input"), ({"input": [[1, 2]]}, "token ids"), ({"input": ""}, "input"),
                        ({"input": "x", "dimensions": 8}, "dimensions")):
        status, text = server.post("/v1/embeddings", bad)
        assert status == 400 and needle in json.loads(text)["error"]["message"], text


PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                          "pets": {"type": "array", "items": {"enum": ["cat", "dog"]},
                                                   "maxItems": 3}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}


def test_response_format_json_schema_and_json_object(server):
    jsonschema = pytest.importorskip("jsonschema")
    c = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        r = c.chat.completions.create(model=ALIAS, messages=ask("Describe a person."), temperature=1.0,
                                      seed=seed, max_tokens=80, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    city = ask("Give the name and country of one city as JSON.")
    chunks = list(c.chat.completions.create(model=ALIAS, messages=city, temperature=0, max_tokens=60,
                                            response_format={"type": "json_object"}, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert isinstance(json.loads(text), dict) and chunks[-1].choices[0].finish_reason == "stop"
    for bad in ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                {"type": "yaml"}):
        status, body = server.post("/v1/chat/completions", {"messages": ask("Hi"), "response_format": bad})
        assert status == 400 and "response_format" in json.loads(body)["error"]["message"], body


def test_tool_call_round_trip(server):
    c = server.client()
    question = [{"role": "user", "content": "What is 2 + 3? Use the add tool."}]
    add = {"type": "function", "function": {"name": "add"}}      # exactly one call, then the grammar ends
    r = c.chat.completions.create(model=ALIAS, messages=question, tools=[ADD, WEATHER], tool_choice=add,
                                  temperature=0, max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.type == "function" and call.function.name == "add" and set(args) == {"a", "b"}
    assert all(isinstance(v, int) for v in args.values())
    history = question + [choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sum": 5})}]
    reply = c.chat.completions.create(model=ALIAS, messages=history, tools=[ADD, WEATHER], tool_choice="none",
                                      temperature=0, max_tokens=30)
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    named = {"type": "function", "function": {"name": "get_weather"}}
    chunks = list(c.chat.completions.create(model=ALIAS, messages=ask("Weather in Oslo?"), tools=[ADD, WEATHER],
                                            tool_choice=named, temperature=0, max_tokens=60, stream=True))
    deltas = [d for ch in chunks if ch.choices for d in (ch.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].function.name == "get_weather"
    assert "city" in json.loads(deltas[0].function.arguments)
    assert not "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip()
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    status, body = server.post("/v1/chat/completions", {"messages": ask("Hi"), "tools": [{"type": "function"}]})
    assert status == 400 and "tools" in json.loads(body)["error"]["message"], body


def wait_idle(server, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, h = server.health()
        if status == 200 and h["slots_busy"] == 0 and h["queue_length"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"slots still busy after {timeout} s: {h}")


def test_disconnect_mid_stream_frees_the_slot(server):
    wait_idle(server)
    conns = []
    for i in range(PARALLEL):       # occupy every slot with a long stream, read a little, hang up
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_S)
        body = {"messages": ask(f"Write a very long essay about rivers, part {i}."), "stream": True,
                "max_tokens": N_CTX - 64, "temperature": 0}
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body),
                     headers={"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        assert resp.status == 200
        for line in resp:          # until the first generated token: the request holds a slot
            if line.startswith(b"data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
        conns.append(conn)
    assert server.health()[1]["slots_busy"] == PARALLEL
    for conn in conns:
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    t0 = time.monotonic()
    wait_idle(server, timeout=30)
    freed_s = time.monotonic() - t0
    r = server.client().chat.completions.create(model=ALIAS, messages=ask("Hi"), max_tokens=4)
    assert r.choices[0].message.content is not None
    assert freed_s < 30


def test_disconnect_while_waiting_for_a_whole_reply(server):
    """A non-streaming request whose client hangs up is cancelled too (no orphan generation)."""
    wait_idle(server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    body = json.dumps({"messages": ask("Write a very long essay about lakes."), "max_tokens": N_CTX - 64,
                       "temperature": 0}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: " +
                 str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + 60
    while server.health()[1]["slots_busy"] == 0:      # generating
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sock.close()
    wait_idle(server, timeout=30)


BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON"),
    ({"model": "gpt-9", "messages": ask("Hi")}, 404, "gpt-9"),
    ({"messages": ask("Hi"), "max_tokens": -5}, 400, "max_tokens"),
    ({"messages": ask("Hi"), "max_tokens": "ten"}, 400, "max_tokens"),
    ({"messages": ask("Hi"), "n": 17}, 400, "n"),
    ({"messages": ask("Hi"), "n": 0}, 400, "n"),
    ({"messages": ask("Hi"), "temperature": -1}, 400, "temperature"),
    ({"messages": ask("Hi"), "top_p": 7}, 400, "top_p"),
    ({"messages": ask("Hi"), "stop": 5}, 400, "stop"),
    ({"messages": ask("Hi"), "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "wizard"),
    ({"messages": ask("word " * (N_CTX + 10))}, 400, "context length"),
    ({"messages": ask("Hi"), "max_tokens": N_CTX}, 400, "context length"),
    ([1, 2], 400, "JSON object"),
]


@pytest.mark.parametrize("body,status,needle", BAD_REQUESTS, ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_request_is_4xx_and_server_keeps_serving(server, body, status, needle):
    got, text = server.post("/v1/chat/completions", body)
    assert got == status, text
    err = json.loads(text)["error"]
    assert needle in err["message"] and err["type"]
    r = server.client().chat.completions.create(model=ALIAS, messages=ask("Hi"), max_tokens=2)
    assert r.usage.completion_tokens >= 1 or r.choices[0].finish_reason == "stop"


BAD_COMPLETIONS = [
    ({}, 400, "prompt"),
    ({"prompt": ["one", "two"]}, 400, "one prompt"),
    ({"prompt": [1, 10**9]}, 400, "outside the vocabulary"),
    ({"prompt": "Hi", "logprobs": 9}, 400, "logprobs"),
    ({"prompt": "Hi", "echo": True, "logprobs": 1}, 400, "echo"),
    ({"prompt": "Hi", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"prompt": "Hi", "logit_bias": {"1": 300}}, 400, "logit_bias"),
    ({"prompt": "Hi", "stream": "yes"}, 400, "stream"),
    ({"prompt": "Hi", "n": 2, "best_of": 3}, 400, "best_of"),
]


@pytest.mark.parametrize("body,status,needle", BAD_COMPLETIONS, ids=[str(i) for i in range(len(BAD_COMPLETIONS))])
def test_bad_completion_request_is_4xx(server, body, status, needle):
    got, text = server.post("/v1/completions", body)
    assert got == status and needle in json.loads(text)["error"]["message"], text


def test_openai_client_sees_typed_errors(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=ALIAS, messages=ask("Hi"), max_tokens=-1)
    assert "max_tokens" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-model", messages=ask("Hi"))
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=ALIAS, prompt="word " * (N_CTX + 10))
    assert e.value.code == "context_length_exceeded"


def test_api_key(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").chat.completions.create(model=ALIAS, messages=ask("Hi"), max_tokens=2)
    assert server.post("/v1/chat/completions", {"messages": ask("Hi")}, key=None)[0] == 401
    assert server.get("/v1/models")[0] == 401
    assert server.health()[0] == 200          # /health and /metrics stay open for probes
    models = server.client().models.list()
    assert [m.id for m in models.data] == [ALIAS]


def test_metrics_parse(server):
    from prometheus_client.parser import text_string_to_metric_families
    server.client().completions.create(model=ALIAS, prompt="Hello", max_tokens=3)
    status, text = server.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("lowbit_requests", "lowbit_generated_tokens", "lowbit_prompt_tokens", "lowbit_queue_length",
                 "lowbit_generated_tokens_per_second", "lowbit_resident_memory_bytes", "lowbit_model_memory_bytes"):
        assert name in families, name
    generated = families["lowbit_generated_tokens"].samples[0].value
    assert generated >= 3
    ok = [s for s in families["lowbit_requests"].samples
          if s.labels.get("endpoint") == "completions" and s.labels.get("status") == "200"]
    assert ok and ok[0].value >= 1
    weights = [s.value for s in families["lowbit_model_memory_bytes"].samples if s.labels["part"] == "weights"]
    assert weights and weights[0] > 50e6


def test_health_and_unknown_route(server):
    status, h = server.health()
    assert status == 200 and h["status"] == "ok" and h["slots"] == PARALLEL
    status, text = server.get("/v1/nothing-here")
    assert status == 404 and "error" in json.loads(text)


def test_full_queue_is_429_not_a_hang(model_path):
    s = Server(model_path, "--parallel", "1", "--queue-size", "0")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=REQUEST_S)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "A long story:", "max_tokens": N_CTX - 32, "stream": True, "temperature": 0}))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        status, text = s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=None)
        assert status == 429, text
        assert json.loads(text)["error"]["code"] == "rate_limit_exceeded"
        conn.close()
        wait_idle(s, timeout=30)
        assert s.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=None)[0] == 200
    finally:
        s.stop()


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    return subprocess.run([sys.executable, "-m", "lowbit", "serve", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("args,needle", [(["--port", "70000"], "--port"), (["--parallel", "0"], "--parallel"),
                                         (["--queue-size", "-1"], "--queue-size"),
                                         (["--stream-interval-ms", "-1"], "--stream-interval-ms"),
                                         (["--solo-run-ms", "-1"], "--solo-run-ms")])
def test_cli_usage_errors_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr


class RecordingBackend:
    """The real SessionBackend, with a log of each step's items: (slot, tokens fed)."""

    def __init__(self, model, parallel):
        from lowbit.server.scheduler import SessionBackend
        self.inner = SessionBackend(model, parallel)
        self.slots, self.n_ctx, self.n_batch = self.inner.slots, self.inner.n_ctx, self.inner.n_batch
        self.log = []

    def step(self, items, samplers=None, before_compute=None):
        self.log.append([(slot.index, len(ids)) for slot, ids in items])
        return self.inner.step(items, samplers, before_compute)


def test_long_prompt_is_prefilled_in_chunks_beside_running_decodes(model_path):
    """Continuous batching: while a long prompt is read in chunks of at most prefill_chunk
    tokens, the running request gets a token in every step; both replies equal Model.chat's."""
    from lowbit.runtime.sampling import SamplingParams
    from lowbit.server.scheduler import Done, GenRequest, Job, Scheduler
    chunk = 64
    short_msgs = ask("Count from one to fifty in words.")
    long_msgs = ask("Summarize: " + "The river runs past the old mill and the town. " * 30)
    with lowbit.load(model_path, n_ctx=N_CTX, n_threads=2) as m:
        backend = RecordingBackend(m, 2)
        sched = Scheduler(backend, max_queue=4, prefill_chunk=chunk).start()
        done = {}

        def job(name, messages, n):
            return Job(GenRequest(m.chat_ids(messages), SamplingParams(temperature=0), n), m.tokenizer,
                       sorted(m.tokenizer.eot_ids), lambda ev: isinstance(ev, Done) and done.setdefault(name, ev.record))

        deadline = time.monotonic() + REQUEST_S
        try:
            short = job("short", short_msgs, 60)
            sched.submit(short)
            while short.record.generated_tokens < 3:          # decoding before the long prompt comes
                assert time.monotonic() < deadline
                time.sleep(0.005)
            long_job = job("long", long_msgs, 8)
            n_long = len(long_job.request.prompt_ids)
            assert n_long > 5 * chunk
            sched.submit(long_job)
            while len(done) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            sched.stop()
        # steps that carried a prompt chunk of the long request: each also carried one token of
        # the short one (unless it had finished), and no chunk exceeded prefill_chunk
        chunk_steps = [step for step in backend.log if any(n > 1 for _, n in step)][1:]   # [0]: short's prompt
        assert sum(max(n for _, n in step) for step in chunk_steps) >= n_long - 1 - chunk
        assert all(max(n for _, n in step) <= chunk for step in chunk_steps)
        with_decode = [step for step in chunk_steps if sorted(n for _, n in step)[0] == 1]
        assert len(with_decode) >= min(len(chunk_steps), 60 - 3) - 1
        assert len(chunk_steps) >= 4
        for name, messages, n in (("short", short_msgs, 60), ("long", long_msgs, 8)):
            ref = m.chat(messages, temperature=0, max_new_tokens=n, repetition_penalty=1.0)
            assert done[name].tokens == ref.tokens and ref.tokens, name


def test_events_are_handed_over_before_each_forward_and_when_idle(model_path):
    """Scheduler.hand_over (EventPost.flush in the server) runs inside every forward step right
    before the core computes, so a step's events are written while the next step runs without
    the GIL, and once the last job is done, before the scheduler waits: no event is held back
    while it idles."""
    from lowbit.runtime.sampling import SamplingParams
    from lowbit.server.scheduler import Done, GenRequest, Job, Scheduler
    order = []

    class Ordered(RecordingBackend):
        def step(self, items, samplers=None, before_compute=None):
            order.append("step")
            out = super().step(items, samplers, before_compute)
            order.append("computed")
            return out

    with lowbit.load(model_path, n_ctx=N_CTX, n_threads=2) as m:
        sched = Scheduler(Ordered(m, 2), max_queue=4, prefill_chunk=64)
        sched.hand_over.append(lambda: order.append("hand_over"))
        sched.start()
        try:
            for n in (5, 9):
                job = Job(GenRequest(m.tokenize("Once upon a time"), SamplingParams(temperature=0), n), m.tokenizer,
                          [], lambda ev: order.append("done") if isinstance(ev, Done) else None)
                sched.submit(job)
            deadline = time.monotonic() + REQUEST_S
            while order.count("done") < 2 or order[-1] != "hand_over":
                assert time.monotonic() < deadline, order
                time.sleep(0.01)
        finally:
            sched.stop()
    steps = [i for i, what in enumerate(order) if what == "step"]
    assert len(steps) >= 9 and all(order[i + 1:i + 3] == ["hand_over", "computed"] for i in steps), order
    last_done = max(i for i, what in enumerate(order) if what == "done")
    assert "hand_over" in order[last_done:] and "step" not in order[last_done:]


def test_port_in_use_is_a_one_line_error_before_loading():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = run_cli("--port", str(taken.getsockname()[1]), "no-such-model-3b")
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

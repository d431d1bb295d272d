"""OpenAI's request and response shapes: validation of request bodies (each bad field a 4xx
naming it) and the JSON of completions, chat completions, their stream chunks and errors.

Sampling fields the request leaves out take lowbit's defaults (those of ``SamplingParams``,
which are llama.cpp server's: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05); lowbit's own
fields ``top_k``, ``min_p``, ``repetition_penalty`` and ``repeat_last_n`` are accepted beside
OpenAI's (``presence_penalty``, ``frequency_penalty``: -2..2 over the generated tokens;
``logit_bias``: {"token id": -100..100}; the order they apply in: runtime/sampling.py)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional

from lowbit.runtime.llama import OPENAI_FINISH
from lowbit.runtime.sampling import SamplingParams, check_bias_ids
from lowbit.runtime.tools import split_tool_calls
from lowbit.server.scheduler import Done, TokenLogprob

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 512
MAX_TOP_LOGPROBS_CHAT = 20           # OpenAI's limits
MAX_LOGPROBS_COMPLETION = 5
MAX_CHOICES = 16                     # n: choices of one request at most
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repeat_last_n", "seed",
                   "presence_penalty", "frequency_penalty")


class ApiError(Exception):
    """An HTTP error with OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> Dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _bad(param: str, message: str, code: Optional[str] = None) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def _kind(value) -> str:
    return "null" if value is None else {bool: "boolean", int: "integer", float: "number", str: "string",
                                         list: "array", dict: "object"}.get(type(value), type(value).__name__)


def get_int(body: Mapping, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be an integer, got {_kind(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise _bad(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _bad(name, f"must be <= {maximum}, got {value}")
    return value


def get_number(body: Mapping, name: str):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, f"must be a number, got {_kind(value)} {value!r}")
    return float(value)


def get_bool(body: Mapping, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, f"must be true or false, got {_kind(value)} {value!r}")
    return value


def check_model(body: Mapping, served: str, aliases) -> None:
    """404 model_not_found unless ``model`` is absent or names the served model."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise _bad("model", f"must be a string, got {_kind(model)}")
    if model != served and model not in aliases:
        raise ApiError(404, f"The model '{model}' does not exist; this server serves '{served}' (see /v1/models)",
                       param="model", code="model_not_found")


def sampling_params(body: Mapping, n_vocab: int) -> SamplingParams:
    """SamplingParams from the request; a bad value is a 400 naming its field."""
    changes: Dict[str, Any] = {}
    for name in SAMPLING_FIELDS:
        if body.get(name) is None:
            continue
        value = get_int(body, name) if name in ("top_k", "repeat_last_n", "seed") else get_number(body, name)
        changes[name] = value
    if changes.get("temperature", 0.0) < 0:
        raise _bad("temperature", f"must be >= 0, got {changes['temperature']:g}")
    if changes.get("seed", 0) < 0:
        raise _bad("seed", f"must be >= 0, got {changes['seed']}")
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise _bad("logit_bias", f"must be an object mapping token ids to numbers, got {_kind(bias)}")
        changes["logit_bias"] = bias
    try:
        params = SamplingParams(**changes).validate()
        check_bias_ids(params, n_vocab)
        return params
    except (TypeError, ValueError) as e:
        param = next((n for n in SAMPLING_FIELDS + ("logit_bias",) if str(e).startswith(n)), None)
        raise ApiError(400, str(e), param=param) from None


def max_new_tokens(body: Mapping, n_prompt: int, n_ctx: int) -> int:
    """``max_completion_tokens`` (else the older ``max_tokens``), at least 1; left out: until
    the context is full. A prompt that with it cannot fit the context is a 400."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = get_int(body, name, minimum=1)
    if n_prompt >= n_ctx:
        raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens, but the prompt has "
                            f"{n_prompt} tokens; shorten the prompt", param="messages",
                       code="context_length_exceeded")
    if asked is None:
        return n_ctx - n_prompt
    if n_prompt + asked > n_ctx:
        raise ApiError(400, f"This model's maximum context length is {n_ctx} tokens. However, you requested "
                            f"{n_prompt + asked} tokens ({n_prompt} in the prompt, {asked} in the completion); "
                            f"reduce the prompt or {name}", param=name, code="context_length_exceeded")
    return asked


def stop_strings(body: Mapping) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", f"must be a string or an array of strings, got {_kind(stop)}")
    if len(stops) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad("stop", f"at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} characters")
    return [s for s in stops if s]


def choice_count(body: Mapping) -> int:
    """``n``: how many choices to generate for the prompt (1..MAX_CHOICES). ``best_of`` (legacy
    completions) may only repeat n: lowbit does not rank hidden candidates."""
    n = get_int(body, "n", minimum=1, maximum=MAX_CHOICES)
    n = 1 if n is None else n
    best_of = get_int(body, "best_of", minimum=1)
    if best_of is not None and best_of != n:
        raise _bad("best_of", f"best_of={best_of} differs from n={n}: lowbit returns every candidate "
                              f"it generates (best_of = n)")
    return n


def choice_params(params: SamplingParams, n: int) -> List[SamplingParams]:
    """The sampling of each of n choices: with a seed, choice i draws with seed + i (reproducible,
    and the choices differ); without one each draws its own random seed."""
    if n == 1 or params.seed is None:
        return [params] * n
    return [params.with_(seed=params.seed + i) for i in range(n)]


def include_usage(body: Mapping) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _bad("stream_options", f"must be an object, got {_kind(options)}")
    return get_bool(options, "include_usage")


@dataclass
class Reply:
    """What one request gets back: shared by the chat and completion shapes."""
    kind: str                                  # "chat" | "completion"
    model: str
    id: str = ""
    created: int = 0
    logprobs: Optional[int] = None             # the request's setting (None: off)
    echo: str = ""                             # completions: prompt text to put first
    usage_in_stream: bool = False
    tools: bool = False                        # the reply may be tool calls (chat with tools)
    tokenizer: Any = None
    text_offset: int = 0                       # completions logprobs: where the next token starts
    index: int = 0                             # the choice this Reply writes (n > 1: one Reply each)
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex}"
        self.created = self.created or int(time.time())

    def _head(self, chunk: bool) -> Dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "lowbit"}

    # ---- log-probs --------------------------------------------------------------------------
    def _token_text(self, token: int) -> str:
        return self.tokenizer.token_to_bytes(token).decode("utf-8", errors="replace")

    def _chat_logprob(self, lp: TokenLogprob) -> Dict[str, Any]:
        def one(token: int, logprob: float) -> Dict[str, Any]:
            return {"token": self._token_text(token), "logprob": logprob,
                    "bytes": list(self.tokenizer.token_to_bytes(token))}
        return dict(one(lp.token, lp.logprob), top_logprobs=[one(t, v) for t, v in lp.top])

    def logprobs_json(self, lps: List[TokenLogprob]) -> Optional[Dict[str, Any]]:
        if self.logprobs is None:
            return None
        if self.kind == "chat":
            return {"content": [self._chat_logprob(lp) for lp in lps]}
        tokens = [self._token_text(lp.token) for lp in lps]
        offsets = []
        for text in tokens:
            offsets.append(self.text_offset)
            self.text_offset += len(text)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
                "top_logprobs": [{self._token_text(t): v for t, v in lp.top} for lp in lps],
                "text_offset": offsets}

    # ---- shapes -----------------------------------------------------------------------------
    @staticmethod
    def usage(done: Done) -> Dict[str, Any]:
        r = done.record
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.generated_tokens,
                "total_tokens": r.prompt_tokens + r.generated_tokens,
                "prompt_tokens_details": {"cached_tokens": r.cached_prompt_tokens}}

    @staticmethod
    def usage_of(dones: List[Done]) -> Dict[str, Any]:
        """Usage of n choices of one prompt: the prompt counted once, the completions summed."""
        out = Reply.usage(dones[0])
        out["completion_tokens"] = sum(d.record.generated_tokens for d in dones)
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
        return out

    def choice(self, text: str, lps: List[TokenLogprob], done: Done) -> Dict[str, Any]:
        finish = OPENAI_FINISH.get(done.record.finish_reason, done.record.finish_reason)
        if self.kind == "chat":
            message: Dict[str, Any] = {"role": "assistant", "content": text}
            if done.record.tool_calls:
                message = {"role": "assistant", "content": split_tool_calls(text)[0] or None,
                           "tool_calls": done.record.tool_calls}
            return {"index": self.index, "message": message, "logprobs": self.logprobs_json(lps),
                    "finish_reason": finish}
        return {"index": self.index, "text": self.echo + text, "logprobs": self.logprobs_json(lps),
                "finish_reason": finish}

    def response(self, text: str, lps: List[TokenLogprob], done: Done) -> Dict[str, Any]:
        return dict(self._head(False), choices=[self.choice(text, lps, done)], usage=self.usage(done))

    def for_choice(self, index: int) -> "Reply":
        """The Reply of choice ``index`` of the same response (same id and time)."""
        return replace(self, index=index, text_offset=0, extra=dict(self.extra))

    def chunk(self, text: Optional[str], lps: List[TokenLogprob], finish: Optional[str] = None,
              role: bool = False) -> Dict[str, Any]:
        if self.kind == "chat":
            delta: Dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None and not role:
                delta["content"] = text
            choice = {"index": self.index, "delta": delta, "logprobs": self.logprobs_json(lps) if lps else None,
                      "finish_reason": finish}
        else:
            choice = {"index": self.index, "text": text or "", "logprobs": self.logprobs_json(lps) if lps else None,
                      "finish_reason": finish}
        out = dict(self._head(True), choices=[choice])
        if self.usage_in_stream:
            out["usage"] = None
        return out

    def tool_calls_chunk(self, calls: List[Dict[str, Any]]) -> Dict[str, Any]:
        delta = {"tool_calls": [dict(call, index=i) for i, call in enumerate(calls)]}
        out = dict(self._head(True), choices=[{"index": self.index, "delta": delta, "logprobs": None,
                                                "finish_reason": None}])
        if self.usage_in_stream:
            out["usage"] = None
        return out

    def final_chunk(self, done: Done) -> Dict[str, Any]:
        """The chunk with the finish_reason (and the log-probs not sent yet)."""
        finish = OPENAI_FINISH.get(done.record.finish_reason, done.record.finish_reason)
        return self.chunk(None if self.kind == "chat" else "", done.logprobs, finish)

    def usage_chunk(self, dones: List[Done]) -> Dict[str, Any]:
        """The last chunk when the request asked for usage (stream_options.include_usage)."""
        return dict(self._head(True), choices=[], usage=self.usage_of(dones))


def chat_messages(body: Mapping) -> List[Dict[str, Any]]:
    """``messages`` with str content: text content parts are joined, null content is "", the
    "developer" role is the system role."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", f"must be a non-empty array of message objects, got {_kind(messages)}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", f"must be an object, got {_kind(m)}")
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    what = part.get("type") if isinstance(part, dict) else _kind(part)
                    raise _bad(f"messages[{i}].content[{j}]", f"content part {what!r} is not supported "
                                                               f"(text parts only)")
                texts.append(part["text"])
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise _bad(f"messages[{i}].content", f"must be a string or an array of text parts, got {_kind(content)}")
        # other keys (tool_calls of an assistant turn, tool_call_id of a tool result) stay
        out.append(dict(m, role="system" if role == "developer" else role, content=content))
    return out


def chat_logprobs(body: Mapping) -> Optional[int]:
    """None (off), or how many alternatives per token (``top_logprobs``, 0..20)."""
    top = get_int(body, "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS_CHAT)
    if not get_bool(body, "logprobs"):
        if top:
            raise _bad("top_logprobs", "needs logprobs: true")
        return None
    return top or 0


def completion_logprobs(body: Mapping) -> Optional[int]:
    return get_int(body, "logprobs", minimum=0, maximum=MAX_LOGPROBS_COMPLETION)


def completion_prompt(body: Mapping):
    """The prompt: a string or token ids (one prompt; an array of several is a 400)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
        raise _bad("prompt", f"got {len(prompt)} prompts; lowbit takes one prompt per request")
    raise _bad("prompt", f"must be a string or a non-empty array of token ids, got {_kind(prompt)}")


MAX_EMBEDDING_INPUTS = 2048          # OpenAI's limit per request


def embedding_inputs(body: Mapping) -> List[str]:
    """``input``: a non-empty string or an array of them."""
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise _bad("input", f"must be a string or a non-empty array of strings, got {_kind(value)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            what = "token ids are not supported, send text" if isinstance(text, (int, list)) else _kind(text)
            raise _bad(f"input[{i}]", f"must be a string ({what})")
        if not text:
            raise _bad(f"input[{i}]", "is empty")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise _bad("input", f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(texts)}")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _bad("encoding_format", f"must be 'float' or 'base64', got {fmt!r}")
    if body.get("dimensions") is not None:
        raise _bad("dimensions", "is not supported: lowbit returns the model's full embedding size")
    return texts


def embeddings_response(vectors, n_tokens: int, model: str, encoding: str) -> Dict[str, Any]:
    import base64

    import numpy as np
    data = []
    for i, vec in enumerate(vectors):
        vec = np.asarray(vec, dtype="<f4")
        value = base64.b64encode(vec.tobytes()).decode() if encoding == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def check_unsupported(body: Mapping, chat: bool) -> None:
    """Fields whose meaning lowbit would silently change: each a 400 naming it."""
    names = ["functions", "function_call", "suffix"] + ([] if chat else ["response_format", "tools"])
    for name in names:
        if body.get(name):
            raise _bad(name, "is not supported by lowbit" + (" on /v1/completions (use /v1/chat/completions)"
                                                            if name in ("response_format", "tools") else ""))


def response_format(body: Mapping) -> Dict[str, Any]:
    """The constraint arguments ``response_format`` asks for (constraints.response_format_args);
    a bad one is a 400 naming the field."""
    from lowbit.runtime.constraints import response_format_args
    fmt = body.get("response_format")
    if fmt is None:
        return {}
    try:
        return response_format_args(fmt)
    except ValueError as e:
        raise _bad("response_format", str(e)) from None

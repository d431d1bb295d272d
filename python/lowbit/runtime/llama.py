"""``lowbit.Llama``: a drop-in for the common part of llama-cpp-python's ``llama_cpp.Llama``.

Same constructor arguments and defaults (n_ctx=512, n_batch=512, seed=LLAMA_DEFAULT_SEED), the
same ``__call__`` / ``create_completion`` / ``create_chat_completion`` sampling defaults
(completion temperature 0.8, chat 0.2; top_p 0.95, top_k 40, min_p 0.05, repeat_penalty 1.0)
and the same OpenAI-shaped dicts and stream chunks. Generation runs on lowbit's Model (one
generation at a time; a new call on the same thread closes a suspended stream).

finish_reason follows OpenAI: "stop" (an end-of-generation token or a stop string), "length"
(max_tokens, or the context filled up), "cancelled" only when the Model was closed or
cancelled from another thread mid-generation.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from lowbit.runtime.generate import StopMatcher
from lowbit.runtime.model import Model, load
from lowbit.runtime.sampling import RANDOM_SEED, SamplingParams, check_bias_ids, check_int
from lowbit.runtime.tools import CALL_OPEN

LLAMA_DEFAULT_SEED = 0xFFFFFFFF      # llama.cpp's "random seed"
OPENAI_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length",
                 "cancelled": "cancelled", "tool_calls": "tool_calls"}


def _openai_finish(reason: str) -> str:
    return OPENAI_FINISH.get(reason, reason)


def _response_format(fmt: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if fmt is None:
        return {}
    from lowbit.runtime.constraints import response_format_args
    try:
        return response_format_args(fmt)
    except ValueError as e:
        raise ValueError(f"response_format: {e}") from None


class Llama:
    """A model loaded from a GGUF path, used like ``llama_cpp.Llama``."""

    def __init__(self, model_path: str, *, n_gpu_layers: int = 0, seed: int = LLAMA_DEFAULT_SEED,
                 n_ctx: int = 512, n_batch: int = 512, n_threads: Optional[int] = None,
                 verbose: bool = True):
        check_int("n_gpu_layers", n_gpu_layers, minimum=-1)
        check_int("n_ctx", n_ctx, minimum=0)
        check_int("seed", seed, minimum=RANDOM_SEED)
        self.model_path = os.fspath(model_path)
        self.verbose = verbose
        # n_ctx=0 means the model's training context, as in llama-cpp-python
        # n_gpu_layers != 0: the GPU where lowbit can use one (that many of the last layers, -1
        # every one; load(device="auto") says why not when it cannot), the CPU otherwise, as a
        # CPU build of llama-cpp-python
        self.lowbit_model: Model = load(self.model_path, n_ctx=n_ctx or None, n_threads=n_threads,
                                        n_batch=n_batch, device="auto" if n_gpu_layers else "cpu",
                                        n_gpu_layers=n_gpu_layers)
        from lowbit import cuda_status
        if n_gpu_layers != 0 and self.lowbit_model.device != "cuda" and not cuda_status()["device_count"]:
            warnings.warn(f"n_gpu_layers={n_gpu_layers}: no usable CUDA device ({cuda_status()['message']}); "
                          f"all layers run on the CPU", UserWarning, stacklevel=2)
        random_seed = seed in (RANDOM_SEED, LLAMA_DEFAULT_SEED)
        # calls without a seed draw theirs from this generator: reproducible per instance
        self._seeds = np.random.default_rng(None if random_seed else seed)
        if verbose:
            m = self.lowbit_model
            print(f"lowbit: loaded {self.model_path} ({m.architecture}, n_ctx={m.n_ctx}, "
                  f"kernels {m.memory()['kernels']})", file=sys.stderr)

    # ---- tokens ---------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> List[int]:
        """Token ids of UTF-8 ``text``; BOS added when ``add_bos`` and the model uses one."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        elif not isinstance(text, str):
            raise TypeError(f"text must be bytes (UTF-8), got {type(text).__name__}")
        return self.lowbit_model.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        """The bytes of ``tokens``; control tokens render only when ``special``."""
        ids = [check_int(f"tokens[{i}]", t) for i, t in enumerate(tokens)]
        return self.lowbit_model.tokenizer._detokenize_bytes(ids, special)

    def n_ctx(self) -> int:
        return self.lowbit_model.n_ctx

    # ---- completion -----------------------------------------------------------------------
    def _params(self, temperature, top_p, top_k, min_p, repeat_penalty, seed, presence_penalty,
                frequency_penalty, logit_bias) -> SamplingParams:
        if seed is None or seed == LLAMA_DEFAULT_SEED:
            seed = int(self._seeds.integers(0, 2**63)) if seed is None else RANDOM_SEED
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repeat_penalty, seed=seed, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty, logit_bias=logit_bias).validate()
        check_bias_ids(params, self.lowbit_model.n_vocab)
        return params

    def _max_new(self, max_tokens: Optional[int], n_prompt: int) -> int:
        """llama-cpp-python's rule: None or <= 0 = until the context is full; capped to it."""
        room = max(self.n_ctx() - n_prompt, 0)
        if max_tokens is None:
            return room
        max_tokens = check_int("max_tokens", max_tokens)
        return room if max_tokens <= 0 else min(max_tokens, room)

    @staticmethod
    def _stops(stop: Union[None, str, Sequence[str]]) -> List[str]:
        if stop is None:
            return []
        return [stop] if isinstance(stop, str) else list(stop)

    def _run(self, prompt_ids: List[int], *, max_tokens, stop, params: SamplingParams, stream: bool):
        m = self.lowbit_model
        return m._generate_ids(prompt_ids, stream=stream, max_new_tokens=self._max_new(max_tokens, len(prompt_ids)),
                               stop=self._stops(stop), params=params, context_shift=False, n_keep=None)

    def create_completion(self, prompt: Union[str, List[int]], max_tokens: Optional[int] = 16,
                          temperature: float = 0.8, top_p: float = 0.95, min_p: float = 0.05,
                          echo: bool = False, stop: Union[None, str, List[str]] = None,
                          repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                          seed: Optional[int] = None, model: Optional[str] = None,
                          presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                          logit_bias: Optional[Dict[int, float]] = None):
        """A "text_completion" dict, or with ``stream=True`` an iterator of chunk dicts (the
        last one has text "" and the finish_reason). ``presence_penalty``, ``frequency_penalty``
        and ``logit_bias`` as OpenAI's (see lowbit.runtime.sampling)."""
        params = self._params(temperature, top_p, top_k, min_p, repeat_penalty, seed, presence_penalty,
                              frequency_penalty, logit_bias)
        if isinstance(prompt, str):
            prompt_text = prompt
            prompt_ids = self.lowbit_model.tokenize(prompt, add_special=True, parse_special=True)
        else:
            prompt_ids = [check_int(f"prompt[{i}]", t) for i, t in enumerate(prompt)]
            prompt_text = self.detokenize(prompt_ids).decode("utf-8", errors="replace")
        head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        result = self._run(prompt_ids, max_tokens=max_tokens, stop=stop, params=params, stream=stream)
        if stream:
            return self._completion_chunks(head, result, prompt_text if echo else "")
        text = (prompt_text if echo else "") + result.text
        return dict(head, choices=[{"text": text, "index": 0, "logprobs": None,
                                    "finish_reason": _openai_finish(result.finish_reason)}],
                    usage=self._usage(result))

    __call__ = create_completion

    @staticmethod
    def _usage(g) -> Dict[str, int]:
        return {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.generated_tokens,
                "total_tokens": g.prompt_tokens + g.generated_tokens}

    @staticmethod
    def _completion_chunks(head: Mapping[str, Any], stream, echo_text: str) -> Iterator[Dict[str, Any]]:
        def chunk(text: str, finish: Optional[str]):
            return dict(head, choices=[{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}])
        with stream:                 # closing this iterator closes the generation
            if echo_text:
                yield chunk(echo_text, None)
            for piece in stream:
                yield chunk(piece, None)
            yield chunk("", _openai_finish(stream.result.finish_reason))

    # ---- chat -----------------------------------------------------------------------------
    def create_chat_completion(self, messages: List[Mapping[str, Any]], temperature: float = 0.2,
                               top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                               stream: bool = False, stop: Union[None, str, List[str]] = None,
                               seed: Optional[int] = None, max_tokens: Optional[int] = None,
                               repeat_penalty: float = 1.0, model: Optional[str] = None,
                               response_format: Optional[Mapping[str, Any]] = None,
                               tools: Optional[List[Mapping[str, Any]]] = None, tool_choice: Any = None,
                               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                               logit_bias: Optional[Dict[int, float]] = None):
        """A "chat.completion" dict, or with ``stream=True`` "chat.completion.chunk" dicts: the
        first with delta {"role": "assistant"}, then {"content": ...}, the last {} with the
        finish_reason. The prompt is the model's chat template (Model.chat).

        ``response_format``: {"type": "json_object"} (any JSON object; with "schema": that JSON
        schema, llama-cpp-python's form) or OpenAI's {"type": "json_schema", "json_schema":
        {"schema": ...}}; ``tools`` / ``tool_choice`` as OpenAI's: the calls come back as
        ``message.tool_calls`` (content None) with finish_reason "tool_calls" (runtime/tools.py).
        Both are enforced while sampling."""
        m = self.lowbit_model
        params = self._params(temperature, top_p, top_k, min_p, repeat_penalty, seed, presence_penalty,
                              frequency_penalty, logit_bias)
        head = {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion", "created": int(time.time()),
                "model": model if model is not None else self.model_path}
        if response_format is None and not tools:
            prompt_ids = m.chat_ids(messages)
            result = self._run(prompt_ids, max_tokens=max_tokens, stop=stop, params=params, stream=stream)
        else:
            max_new = m.n_ctx if max_tokens is None or check_int("max_tokens", max_tokens) <= 0 else max_tokens
            result = m.chat(messages, max_new_tokens=max_new, temperature=params.temperature, top_k=params.top_k,
                            top_p=params.top_p, min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                            stop=self._stops(stop), seed=params.seed, stream=stream, tools=tools,
                            presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
                            logit_bias=params.logit_bias,
                            tool_choice="auto" if tool_choice is None else tool_choice,
                            **_response_format(response_format))
        if stream:
            return self._chat_chunks(dict(head, object="chat.completion.chunk"), result, bool(tools))
        message: Dict[str, Any] = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": result.tool_calls}
        return dict(head, choices=[{"index": 0, "message": message, "logprobs": None,
                                    "finish_reason": _openai_finish(result.finish_reason)}],
                    usage=self._usage(result))

    @staticmethod
    def _chat_chunks(head: Mapping[str, Any], stream, tools: bool = False) -> Iterator[Dict[str, Any]]:
        """Content deltas as they come. With tools, text from ``<tool_call>`` on is held back: it
        becomes one tool_calls delta, or content after all when no complete call came."""
        def chunk(delta: Dict[str, Any], finish: Optional[str]):
            return dict(head, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        gate = StopMatcher([CALL_OPEN]) if tools else None
        calling, sent = False, 0
        with stream:
            yield chunk({"role": "assistant"}, None)
            for piece in stream:
                if gate is not None:
                    piece, hit = ("", True) if calling else gate.push(piece)
                    calling = calling or hit
                if piece:
                    sent += len(piece)
                    yield chunk({"content": piece}, None)
            record = stream.result
            if record.tool_calls:
                yield chunk({"tool_calls": [dict(call, index=i) for i, call in enumerate(record.tool_calls)]}, None)
            elif gate is not None and len(record.text) > sent:
                yield chunk({"content": record.text[sent:]}, None)
            yield chunk({}, _openai_finish(record.finish_reason))

    # ---- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model; a running generation is cancelled. Idempotent."""
        self.lowbit_model.close()

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lowbit.Llama {self.model_path}>"

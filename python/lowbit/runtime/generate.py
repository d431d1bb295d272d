"""Generation by phase: prefill -> decode_step -> stream -> generate.

Works on any engine with ``eval(ids) -> logits``, ``n_past``, ``n_ctx``, ``truncate(n)``,
``shift(n_keep, n_discard)`` and ``cancel()``, and any tokenizer with ``token_to_bytes(id)``. An
engine that also has ``eval_sample(token, sampler, history) -> id`` (lowbit._core.Engine) samples
the decode steps itself, so no logits row per token crosses into Python.
Text reaches the caller only as whole UTF-8 characters and never includes (a prefix of) a
stop string that may still complete.
"""
from __future__ import annotations

import codecs
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from lowbit.errors import Cancelled, LowbitError
from lowbit.runtime.sampling import Sampler, SamplingParams, check_int

# "stop": a stop string; "length": max_new_tokens; "eos": an end-of-generation token;
# "cancelled": cancel(), close(), Ctrl+C or an abandoned stream; "context": the KV context
# filled up (no context_shift); "tool_calls": the reply is tool calls (chat with tools=).
# Under a constraint (json_schema=, regex=, grammar=), "stop" also means the grammar is complete.
FINISH_REASONS = ("stop", "length", "eos", "cancelled", "context", "tool_calls")
# Evals of at least this many tokens on the main thread run in a worker thread, so that
# Ctrl+C (SIGINT) reaches them at once: the main thread waits interruptibly and cancels the
# engine (checked between layers) instead of seeing the signal only when the eval returns.
INTERRUPTIBLE_MIN_TOKENS = 2
_JOIN_POLL_S = 0.1


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far.

    Linux: VmHWM of /proc/self/status (this address space only; ru_maxrss would also carry the
    peak of the parent that exec'd us). Elsewhere: ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


@dataclass
class Generation:
    """One response record, shared by the API, the REPL, `lowbit run --json` and bench."""
    text: str = ""
    tokens: List[int] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cached_prompt_tokens: int = 0   # prompt tokens reused from the KV cache (not evaluated again)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    peak_memory_bytes: int = 0
    context_shifts: int = 0
    # [{"id", "type": "function", "function": {"name", "arguments": JSON str}}] (chat with tools=)
    tool_calls: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Utf8Stream:
    """Token bytes in, complete UTF-8 text out; an incomplete tail is held back."""

    def __init__(self, token_to_bytes: Callable[[int], bytes]):
        self.token_to_bytes = token_to_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> str:
        return self.decoder.decode(self.token_to_bytes(token))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings across piece boundaries and holds back text that might start one."""

    def __init__(self, stops: Sequence[str]):
        if isinstance(stops, str):
            stops = [stops]
        self.stops = [s for s in stops if s]
        for s in stops:
            if not isinstance(s, str):
                raise TypeError(f"stop strings must be str, got {type(s).__name__}")
        self.pending = ""

    def push(self, text: str):
        """Returns (text safe to emit now, True if a stop string was hit)."""
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            cut = min(i for i, _ in hits)
            out, self.pending = self.pending[:cut], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class GenerationStream:
    """Iterates text pieces; ``.result`` holds the final Generation once exhausted.

    ``close()`` (also ``with stream:``, or dropping the last reference) stops the generation
    at once, from any thread; ``result.finish_reason`` is then "cancelled"."""

    def __init__(self, pieces: Iterator[str], record: Generation,
                 on_close: Optional[Callable[[], None]] = None):
        self._pieces = pieces
        self._on_close = on_close
        self.result = record
        self.done = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            self.done = True
            raise

    def close(self) -> None:
        """Cancel the generation; returns without waiting for a step running in another thread
        (that step stops within one layer and ends the stream)."""
        if self._on_close is not None:
            self._on_close()
        try:
            self._pieces.close()
        except ValueError:          # "generator already executing": running in another thread
            pass
        if not self.result.finish_reason:
            self.result.finish_reason = "cancelled"

    def __enter__(self) -> "GenerationStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def eval_interruptibly(engine, ids: np.ndarray, **kwargs):
    """``engine.eval(ids)``; on the main thread, multi-token evals run in a worker thread so
    that Ctrl+C cancels them within one layer (then KeyboardInterrupt is re-raised here)."""
    if len(ids) < INTERRUPTIBLE_MIN_TOKENS or threading.current_thread() is not threading.main_thread():
        return engine.eval(ids, **kwargs)
    box: dict = {}
    finished = threading.Event()     # not Thread.join: on 3.11 a Ctrl+C inside join() can mark
                                     # a still-running thread as stopped (bpo-45274's fix)

    def work():
        try:
            box["out"] = engine.eval(ids, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["err"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, name="lowbit-eval", daemon=True).start()
    try:
        while not finished.wait(_JOIN_POLL_S):
            pass
    except BaseException:            # KeyboardInterrupt, or an exception from a signal handler
        engine.cancel()
        while not finished.is_set():  # a second Ctrl+C must not leave the eval running unseen
            try:
                finished.wait()
            except KeyboardInterrupt:
                pass
        raise
    if "err" in box:
        raise box["err"]
    return box["out"]


def check_prompt(prompt_ids: List[int], n_ctx: int, context_shift: bool) -> None:
    if not prompt_ids:
        raise ValueError("the prompt is empty (no tokens); pass some text or enable BOS")
    if len(prompt_ids) >= n_ctx and not context_shift:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens but the context holds {n_ctx}; "
                         f"use a larger n_ctx or a shorter prompt")
    if len(prompt_ids) >= n_ctx:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens, more than the context "
                         f"({n_ctx}) can hold even with context shifting")


def prefill(engine, prompt_ids: List[int], cached_ids: List[int], record: Generation,
            cancelled: Callable[[], bool] = lambda: False) -> Optional[np.ndarray]:
    """Phase 1: evaluate the prompt past the prefix the KV cache already holds (``cached_ids``,
    updated in place); returns the logits of its last token, or None when cancelled (then
    ``record.finish_reason`` is "cancelled")."""
    # keep at least one token to evaluate for fresh logits
    keep = min(common_prefix_len(cached_ids, prompt_ids), len(prompt_ids) - 1)
    # the engine may keep fewer (a sliding-window ring that already overwrote needed keys)
    kept = engine.truncate(keep)
    keep = keep if kept is None else min(keep, int(kept))
    del cached_ids[keep:]
    record.prompt_tokens = len(prompt_ids)
    record.cached_prompt_tokens = keep
    t0 = time.perf_counter()
    try:
        logits = eval_interruptibly(engine, np.asarray(prompt_ids[keep:], dtype=np.int32))
    except BaseException as e:
        del cached_ids[:]                    # what the cache holds is unknown: reuse nothing
        stopped = isinstance(e, Cancelled) or (cancelled() and isinstance(e, (ValueError, LowbitError)))
        if stopped or isinstance(e, (KeyboardInterrupt, GeneratorExit)):
            record.finish_reason = "cancelled"
            record.peak_memory_bytes = peak_rss_bytes()
        if stopped:                          # cancelled, or the engine closed under a cancel
            return None
        raise
    cached_ids.extend(prompt_ids[keep:])
    record.prefill_seconds = time.perf_counter() - t0
    n_eval = len(prompt_ids) - keep
    record.prefill_tok_s = n_eval / record.prefill_seconds if record.prefill_seconds > 0 else 0.0
    return logits


def make_room(engine, cached_ids: List[int], record: Generation, *, context_shift: bool, n_keep: int) -> bool:
    """Before a decode step: True when the cache has room for one more token (shifting the
    context when it is full and ``context_shift`` allows); False when it is full for good."""
    if engine.n_past >= engine.n_ctx:
        n_discard = (engine.n_past - n_keep) // 2
        if not context_shift or n_discard <= 0:
            return False
        engine.shift(n_keep, n_discard)
        del cached_ids[n_keep:n_keep + n_discard]
        record.context_shifts += 1
    return True


def decode_step(engine, token: int, cached_ids: List[int], record: Generation, *, context_shift: bool,
                n_keep: int) -> Optional[np.ndarray]:
    """Phase 2, one step: append ``token`` and return its logits; None when the context is full
    and cannot shift (no ``context_shift``, or nothing past ``n_keep`` to drop)."""
    if not make_room(engine, cached_ids, record, context_shift=context_shift, n_keep=n_keep):
        return None
    logits = engine.eval(np.asarray([token], dtype=np.int32))
    cached_ids.append(token)
    return logits


def decode_sample_step(engine, token: int, sampler: Sampler, history: Sequence[int], cached_ids: List[int],
                       record: Generation, *, context_shift: bool, n_keep: int) -> Optional[int]:
    """Phase 2, one step sampled in the engine: append ``token`` and return the next token,
    drawn by ``sampler`` from logits that stay in the core (``Engine.eval_sample``); None as
    decode_step. The same token as ``sampler.sample(decode_step(...), history)``."""
    if not make_room(engine, cached_ids, record, context_shift=context_shift, n_keep=n_keep):
        return None
    drawn = engine.eval_sample(token, sampler.core, sampler.window(history))
    cached_ids.append(token)
    return drawn


def stream_generate(engine, tokenizer, prompt_ids: List[int], params: SamplingParams, *, max_new_tokens: int,
                    stop: Sequence[str], stop_ids: Sequence[int], cached_ids: List[int], record: Generation,
                    context_shift: bool = False, n_keep: int = 0,
                    cancelled: Callable[[], bool] = lambda: False, constraint=None,
                    sample_in_engine: bool = True) -> Iterator[str]:
    """Phase 3: prefill, then sample / decode_step until a finish reason, as a generator of text
    pieces (whole UTF-8 characters, stop strings held back); fills ``record`` as it goes. The
    full generation (Model.generate without stream) is this generator run to its end.

    ``cached_ids`` is the token sequence currently in the engine's KV cache; it is updated in
    place so the caller can reuse the common prefix next time.

    ``constraint`` (runtime/constraints.py): each token is sampled among those its grammar
    allows; the generation ends ("stop") when the grammar is complete.

    ``sample_in_engine``: without a constraint, each decode step samples inside the engine
    (decode_sample_step: no vocabulary-sized logits row per token reaches Python, the per-token
    cost Model.generate has over the engine's own loop); False hands every step's logits to the
    Python-side sampler, as a constraint needs. The same seed gives the same tokens either way."""
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    check_prompt(prompt_ids, engine.n_ctx, context_shift)
    sampler = Sampler(params)
    stops = StopMatcher(stop)
    utf8 = Utf8Stream(tokenizer.token_to_bytes)
    stop_set = set(int(t) for t in stop_ids)
    logits = prefill(engine, prompt_ids, cached_ids, record, cancelled)
    if logits is None:
        return
    guide = constraint.start() if constraint is not None else None
    in_engine = sample_in_engine and guide is None and hasattr(engine, "eval_sample")
    complete = hit = False                    # the constraint's grammar is complete; a stop string
    history = list(prompt_ids)
    drawn: Optional[int] = None               # the next token when the engine sampled it
    t1 = time.perf_counter()
    finish = "length"                         # max_new_tokens reached
    try:
        while record.generated_tokens < max_new_tokens:
            if cancelled():
                finish = "cancelled"
                break
            if drawn is not None:
                token = drawn
            elif guide is None:
                token = sampler.sample(logits, history)
            else:                             # the one place a constraint touches sampling
                token = guide.sample(sampler, logits, history)
            complete = guide is not None and guide.accept(token)
            if token in stop_set:
                finish = "stop" if complete else "eos"
                break
            record.tokens.append(token)
            record.generated_tokens += 1
            history.append(token)
            text, hit = stops.push(utf8.feed(token))
            if text:
                record.text += text
                yield text
            if hit or complete:
                finish = "stop"
                break
            if record.generated_tokens >= max_new_tokens:
                break
            step = dict(context_shift=context_shift, n_keep=n_keep)
            if in_engine:
                drawn = decode_sample_step(engine, token, sampler, history, cached_ids, record, **step)
                full = drawn is None
            else:
                logits = decode_step(engine, token, cached_ids, record, **step)
                full = logits is None
            if full:
                finish = "context"            # the KV context is full
                break
    except (GeneratorExit, KeyboardInterrupt):   # abandoned by the consumer, or Ctrl+C
        finish = "cancelled"
        raise
    except (ValueError, LowbitError) as e:
        if not (isinstance(e, Cancelled) or cancelled()):
            raise
        finish = "cancelled"                  # cancelled, or the engine closed under a cancel
    finally:
        flush = finish != "stop" or (complete and not hit)
        if flush:
            tail = stops.push(utf8.flush())[0] + stops.flush()
            if tail:
                record.text += tail
        record.finish_reason = finish
        record.decode_seconds = time.perf_counter() - t1
        steps = max(record.generated_tokens - 1, 0)   # the first token came from prefill's logits
        record.decode_tok_s = steps / record.decode_seconds if steps and record.decode_seconds > 0 else 0.0
        record.peak_memory_bytes = peak_rss_bytes()
        if guide is not None:
            guide.close(record)
    if flush and tail:
        yield tail

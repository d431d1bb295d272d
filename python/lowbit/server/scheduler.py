"""The engine side of ``lowbit serve``: a bounded queue of requests, N slots on one model, and
one thread that advances every busy slot by one forward step at a time.

    HTTP handlers ──submit(job)──> pending (bounded: QueueFull when full)
                                      │ admitted into the free slot whose cached tokens
                                      v share the longest prefix with the prompt
    scheduler thread:  slots[0..N-1] ── each step: one token of every decoding slot
                                        + a chunk of each prefilling slot's prompt
                                        (at most prefill_chunk prompt tokens per step,
                                        so a long prompt does not stall the others)
                       backend.step(items, samplers) -> per item the token the core drew
                       with the job's own sampler (job.on_token), or for a job that needs
                       the row (grammar, log-probs) its last-token logits (job.on_logits
                       samples them); emit text to the handler (thread-safe callback)
                       one busy slot, decoding, nobody waiting: backend.run(...) draws its
                       tokens several steps per call of the core (a solo run, <= solo_run_s)

A job that is cancelled (client gone) leaves its slot at the next step boundary; its cached
tokens stay for the prefix reuse of later requests.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Sequence, Tuple

import numpy as np

from lowbit.errors import LowbitError
from lowbit.runtime.batch import decode_run, eval_batch
from lowbit.runtime.generate import Generation, StopMatcher, Utf8Stream, common_prefix_len
from lowbit.runtime.sampling import Sampler, SamplingParams
from lowbit.server import DEFAULT_SOLO_RUN_MS, check_in_range


# copy a prefix from another slot only when it saves at least this many tokens of prefill
MIN_PREFIX_COPY = 16
DEFAULT_SOLO_RUN_S = DEFAULT_SOLO_RUN_MS / 1000.0


class QueueFull(LowbitError):
    """The server's request queue is full (HTTP 429)."""


@dataclass
class GenRequest:
    """A validated generation request, in tokens."""
    prompt_ids: List[int]
    params: SamplingParams
    max_new_tokens: int
    stop: Sequence[str] = ()
    logprobs: Optional[int] = None      # None: off; k >= 0: the sampled token's + k alternatives
    constraint: Optional[object] = None  # a runtime.constraints.Constraint (response_format, tools)


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: List[Tuple[int, float]] = field(default_factory=list)   # (token, logprob), best first


@dataclass
class Piece:
    """Text ready for the client and the log-probs of the tokens that produced it."""
    text: str
    logprobs: List[TokenLogprob]


@dataclass
class Done:
    record: Generation
    logprobs: List[TokenLogprob]        # of tokens whose text was not in a Piece


@dataclass
class Failed:
    status: int
    message: str


def token_logprob(logits: np.ndarray, token: int, k: int) -> TokenLogprob:
    """log softmax of the model's raw logits at ``token``, and the ``k`` most likely tokens."""
    x = np.asarray(logits, dtype=np.float64)
    m = float(np.max(x))
    lse = m + float(np.log(np.sum(np.exp(x - m))))
    top: List[Tuple[int, float]] = []
    if k > 0:
        k = min(k, x.size)
        cand = np.argpartition(-x, k - 1)[:k]
        cand = cand[np.argsort(-x[cand], kind="stable")]
        top = [(int(t), float(x[t]) - lse) for t in cand]
    return TokenLogprob(int(token), float(x[token]) - lse, top)


class Job:
    """One request's generation. The scheduler feeds it tokens (or logits, which it samples with
    its own sampler), holds back stop-string prefixes and incomplete UTF-8, and emits Piece /
    Done / Failed events through ``emit`` (called on the scheduler thread).

    ``piece_interval`` (seconds): text ready within that long of the last Piece joins the next
    one (the first Piece and the text before Done go at once). Each Piece costs the server's
    event loop an SSE chunk and the client a read, on the cores the forward runs on; 0 sends
    every token's text as its own Piece (vLLM's stream_interval, counted in time)."""

    def __init__(self, request: GenRequest, tokenizer, stop_ids, emit: Callable[[object], None],
                 piece_interval: float = 0.0):
        self.request = request
        self.sampler = Sampler(request.params)
        self.stops = StopMatcher(request.stop)
        self.utf8 = Utf8Stream(tokenizer.token_to_bytes)
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.guide = None              # the constraint's matcher, from admission on (begin)
        self.record = Generation(prompt_tokens=len(request.prompt_ids))
        self.history = list(request.prompt_ids)
        self.fed = 0                   # prompt tokens already in the slot's cache
        self.next_token: Optional[int] = None
        self.cancelled = False         # set from the HTTP side: the client went away
        self.finished = False
        self.submitted_at = time.perf_counter()
        self.first_token_at: Optional[float] = None
        self._pending_logprobs: List[TokenLogprob] = []
        self._emit = emit
        self.piece_interval = piece_interval
        self._unsent = ""                  # text ready, held for the next Piece
        self._piece_at: Optional[float] = None   # when the last Piece went

    def begin(self) -> None:
        """Admitted to a slot: the constraint's first mask is computed while the prompt is read."""
        if self.request.constraint is not None:
            self.guide = self.request.constraint.start()

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.request.prompt_ids)

    def next_ids(self, budget: int) -> List[int]:
        """The tokens this job feeds in the next step: up to ``budget`` prompt tokens while
        prefilling, else the last sampled token."""
        if self.prefilling:
            return self.request.prompt_ids[self.fed:self.fed + budget]
        return [self.next_token]

    @property
    def samples_in_core(self) -> bool:
        """True when the core may draw this job's tokens right after the step (no grammar mask,
        no log-probs: nothing needs the logits row in Python)."""
        return self.guide is None and self.request.logprobs is None

    def on_logits(self, logits: np.ndarray) -> None:
        """Logits after the prompt or the last fed token: sample, emit, maybe finish."""
        if self.guide is None:
            token = self.sampler.sample(logits, self.history)
        else:                                        # the sampler on the tokens the grammar allows
            token = self.guide.sample(self.sampler, logits, self.history)
        logprob = None
        if self.request.logprobs is not None and token not in self.stop_ids:
            logprob = token_logprob(logits, token, self.request.logprobs)
        self.on_token(token, logprob)

    def on_token(self, token: int, logprob: Optional[TokenLogprob] = None) -> None:
        """The token drawn after the prompt or the last fed token (by on_logits, or by the core
        with this job's sampler): emit, maybe finish."""
        complete = self.guide is not None and self.guide.accept(token)
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self.record.prefill_seconds = self.first_token_at - self.submitted_at
        if logprob is not None:
            self._pending_logprobs.append(logprob)
        if token in self.stop_ids:
            return self.finish("stop" if complete else "eos")
        self.record.tokens.append(token)
        self.record.generated_tokens += 1
        self.history.append(token)
        text, hit = self.stops.push(self.utf8.feed(token))
        if text:
            self._send_piece(text)
        if hit or complete:
            return self.finish("stop", flush=complete and not hit)
        if self.record.generated_tokens >= self.request.max_new_tokens:
            return self.finish("length")
        self.next_token = token

    def _send_piece(self, text: str) -> None:
        self.record.text += text
        self._unsent += text
        now = time.perf_counter()
        if self._piece_at is None or now - self._piece_at >= self.piece_interval:
            self._flush_piece(now)

    def _flush_piece(self, now: float) -> None:
        if self._unsent:
            self._emit(Piece(self._unsent, self._pending_logprobs))
            self._unsent, self._pending_logprobs, self._piece_at = "", [], now

    def finish(self, reason: str, flush: Optional[bool] = None) -> None:
        """End the generation with a Generation finish reason (eos, stop, length, context,
        cancelled) and send Done. Held-back text is sent unless a stop string ended it."""
        if self.finished:
            return
        self.finished = True
        if reason != "stop" if flush is None else flush:
            tail = self.stops.push(self.utf8.flush())[0] + self.stops.flush()
            if tail:
                self._send_piece(tail)
        self._flush_piece(time.perf_counter())
        rec = self.record
        rec.finish_reason = reason
        if self.first_token_at is not None:
            rec.decode_seconds = time.perf_counter() - self.first_token_at
            steps = max(rec.generated_tokens - 1, 0)
            rec.decode_tok_s = steps / rec.decode_seconds if steps and rec.decode_seconds > 0 else 0.0
        self._close_guide(rec)               # tool calls: parsed into rec.tool_calls here
        self._emit(Done(rec, self._pending_logprobs))

    def _close_guide(self, record=None) -> None:
        guide, self.guide = self.guide, None
        if guide is not None:
            guide.close(record)

    def fail(self, status: int, message: str) -> None:
        if not self.finished:
            self.finished = True
            self._close_guide()
            self._emit(Failed(status, message))


class ExclusiveJob:
    """Work that needs the model between steps (embeddings): ``fn()`` runs on the scheduler
    thread; its result or exception goes to ``emit``."""

    def __init__(self, fn: Callable[[], object], emit: Callable[[object], None]):
        self.fn = fn
        self._emit = emit
        self.cancelled = False
        self.finished = False

    def run(self) -> None:
        try:
            result = self.fn()
        except (ValueError, TypeError) as e:
            self.finished = True
            self._emit(Failed(400, str(e)))
            return
        except Exception as e:          # noqa: BLE001 - reported to the client as a 500
            self.finished = True
            self._emit(Failed(500, f"{type(e).__name__}: {e}"))
            return
        self.finished = True
        self._emit(result)

    def fail(self, status: int, message: str) -> None:
        if not self.finished:
            self.finished = True
            self._emit(Failed(status, message))


class Slot:
    """One conversation's KV cache (a lowbit Session) and the job using it."""

    def __init__(self, index: int, session):
        self.index = index
        self.session = session
        self.job: Optional[Job] = None
        self.last_used = 0.0

    def cached(self) -> List[int]:
        return self.session.cached_tokens

    def take(self, job: Job, keep: int, donor: Optional["Slot"] = None) -> None:
        """Start ``job`` here with the first ``keep`` prompt tokens already cached: this slot's
        own, or copied from ``donor``'s cache (keys and values copied, not recomputed)."""
        if donor is not None:
            try:
                self.session.copy_prefix_from(donor.session, keep)
            except ValueError:          # a sliding-window ring lost what the copy needs
                keep = 0
        keep = self.session.truncate(keep)          # a sliding-window ring may keep fewer
        job.fed = keep
        job.record.cached_prompt_tokens = keep
        self.job = job

    def release(self) -> None:
        self.job = None
        self.last_used = time.monotonic()


class Scheduler:
    """Runs jobs on ``backend.slots`` from a bounded queue, on one thread of its own.

    ``backend``: ``slots`` (list of Slot), ``n_ctx`` (tokens per slot) and
    ``step([(slot, ids), ...], samplers, before_compute) -> [result, ...]``, one forward for all
    items: per item the last token's logits, or where ``samplers`` has (sampler, history) the
    token id the core drew with that sampler (or the ValueError of a failed draw); it calls
    ``before_compute()`` right before the core computes (see runtime/batch.py).

    Solo runs: when one job is busy, decoding, sampled in the core, and nobody waits, and the
    backend has ``run(slot, token, sampler, history, max_steps, stop_ids, seconds, signal,
    before_compute) -> DecodeRun`` (runtime/batch.py: decode_run), its steps run in the core for
    up to ``solo_run_s`` seconds per call and the tokens come back together: the per-step Python
    (here, in eval_batch, the event loop's wake-up and SSE write) then runs once per run, not once
    per token; each token is still its own Piece (its own SSE chunk). A submit or a cancel sets
    the run's signal, which ends it after the running step, so a new request waits no longer for
    its slot than in step-by-step mode. 0 turns solo runs off."""

    def __init__(self, backend, *, max_queue: int, prefill_chunk: int, metrics=None,
                 solo_run_s: float = DEFAULT_SOLO_RUN_S):
        if max_queue < 0 or prefill_chunk < 1:
            raise ValueError(f"max_queue must be >= 0 and prefill_chunk >= 1, got {max_queue}, {prefill_chunk}")
        self.solo_run_s = check_in_range("solo_run_s", solo_run_s, 60.0)   # seconds
        from lowbit import _core
        self._run_signal = _core.RunSignal()    # ends a solo run: set by submit and cancel
        self.backend = backend
        self.slots: List[Slot] = list(backend.slots)
        self.n_ctx = int(backend.n_ctx)
        self.max_queue = max_queue
        # one pass of eval_batch holds n_batch rows: the decode rows plus the prompt chunk
        self.prefill_chunk = max(1, min(prefill_chunk, int(getattr(backend, "n_batch", prefill_chunk))
                                        - len(self.slots)))
        self.metrics = metrics
        self._pending: Deque = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.error: Optional[BaseException] = None     # what ended the loop, if it crashed
        # called on the scheduler thread right before it computes or waits (inside a forward
        # step's eval_batch, after its checks, right before the core releases the GIL; before an
        # exclusive job; before going idle) and when the loop ends: the HTTP side hands the
        # events posted since over here, so the event loop writes them while this thread holds
        # no GIL (woken at the end of an iteration instead, the loop took the GIL from the
        # scheduler's Python between two steps, while the engine's threads waited)
        self.hand_over: List[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._loop, name="lowbit-scheduler", daemon=True)

    # ---- the HTTP side ----------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ends the loop after the running step; queued and running jobs fail with 503."""
        with self._cond:
            self._stopping = True
            self._run_signal.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def on_thread(self) -> bool:
        """True when called on the scheduler thread."""
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def submit(self, *jobs) -> None:
        """Queue the jobs (all or none: the n choices of one request); QueueFull when that would
        leave more than ``max_queue`` jobs waiting for a slot."""
        with self._cond:
            if self._stopping or self.error is not None:
                raise LowbitError("the server is shutting down")
            free = sum(1 for s in self.slots if s.job is None)   # queued jobs that will not wait
            if len(self._pending) + len(jobs) - 1 - free >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._pending)} requests are waiting "
                                f"(queue size {self.max_queue}, {len(self.slots)} parallel slots); retry later")
            self._pending.extend(jobs)
            self._run_signal.set()
            self._cond.notify_all()

    def cancel(self, job) -> None:
        """The client went away: the job leaves the queue, or its slot at the next step."""
        job.cancelled = True
        self._run_signal.set()
        with self._cond:
            self._cond.notify_all()

    def queue_length(self) -> int:
        return len(self._pending)

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    # ---- the scheduler thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                if not self._pending and not self.busy_slots():
                    self._run_hooks()               # going idle: the last step's events go now
                with self._cond:
                    while not self._stopping and not self._pending and not self.busy_slots():
                        self._cond.wait()
                    if self._stopping:
                        break
                    batch = self._pop_admissible()
                for job in batch:
                    if isinstance(job, ExclusiveJob):
                        self._run_hooks()
                        job.run()
                    else:
                        self._admit(job)
                self._step()
        except BaseException as e:      # noqa: BLE001 - a bug: health reports it, clients get 500
            self.error = e
            raise
        finally:
            self._fail_all(503 if self.error is None else 500,
                           "the server is shutting down" if self.error is None else
                           f"the scheduler stopped: {type(self.error).__name__}: {self.error}")
            self._run_hooks()

    def _run_hooks(self) -> None:
        for hook in self.hand_over:
            hook()

    def _pop_admissible(self) -> list:
        """Queued jobs that can start now (called with the lock): exclusive jobs, and as many
        generation jobs as there are free slots, in arrival order; cancelled ones are dropped."""
        free = sum(1 for s in self.slots if s.job is None)
        out, keep = [], collections.deque()
        for job in self._pending:
            if job.cancelled:
                if isinstance(job, Job):
                    job.finish("cancelled")     # releases its constraint's worker
                continue
            if isinstance(job, ExclusiveJob) or free > 0:
                free -= 0 if isinstance(job, ExclusiveJob) else 1
                out.append(job)
            else:
                keep.append(job)
        self._pending = keep
        return out

    def _admit(self, job: Job) -> None:
        """Put ``job`` in the free slot whose cache shares the longest prefix with its prompt
        (ties: the least recently used). When another slot, busy or not, holds a longer prefix
        (the same system prompt, the previous turn of a chat), its cells are copied over."""
        prompt = job.request.prompt_ids
        if len(prompt) >= self.n_ctx:
            job.fail(400, f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx}")
            return
        limit = len(prompt) - 1            # at least one token is evaluated, for fresh logits
        shared = {s.index: min(common_prefix_len(s.cached(), prompt), limit) for s in self.slots}
        free = [s for s in self.slots if s.job is None]
        slot = max(free, key=lambda s: (shared[s.index], -s.last_used))
        donor = max(self.slots, key=lambda s: shared[s.index])
        keep, source = shared[slot.index], None
        if donor is not slot and shared[donor.index] >= keep + MIN_PREFIX_COPY:
            keep, source = shared[donor.index], donor
        try:
            slot.take(job, keep, source)
            job.begin()
        except (ValueError, LowbitError) as e:
            if slot.job is job:
                slot.release()
            job.fail(500, f"could not start the request: {e}")
            return
        if self.metrics is not None:
            self.metrics.on_admit(job)

    def _step_items(self) -> List[Tuple[Slot, List[int]]]:
        """This step's work: the next token of every decoding slot, then prompt chunks of the
        prefilling slots (oldest first) up to ``prefill_chunk`` tokens in all."""
        items: List[Tuple[Slot, List[int]]] = []
        prefilling = []
        for slot in self.slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled:
                job.finish("cancelled")
                slot.release()
            elif job.prefilling:
                prefilling.append(slot)
            elif len(job.history) - 1 >= self.n_ctx:   # the cache's n_past: the last drawn token is not in it
                job.finish("context")          # the slot's context is full
                slot.release()
            else:
                items.append((slot, job.next_ids(1)))
        budget = self.prefill_chunk
        for slot in sorted(prefilling, key=lambda s: s.job.submitted_at):
            if budget <= 0:
                break
            ids = slot.job.next_ids(budget)
            budget -= len(ids)
            items.append((slot, ids))
        return items

    def _step(self) -> None:
        items = self._step_items()
        if not items:
            self._run_hooks()
            return
        if len(items) == 1 and self._solo_run(*items[0]):
            return
        t0 = time.perf_counter()
        # a job that draws its next token after this step (decoding, or its prompt's last chunk)
        # and needs no logits row in Python is sampled in the core, right after the forward
        samplers = [(slot.job.sampler, slot.job.history)
                    if slot.job.samples_in_core and slot.job.fed + len(ids) >= len(slot.job.request.prompt_ids)
                    else None for slot, ids in items]
        batch = [(slot, np.asarray(ids, dtype=np.int32)) for slot, ids in items]
        try:            # the last step's events go right before this one computes (hand_over)
            results = self.backend.step(batch, samplers, before_compute=self._run_hooks)
        except Exception as e:          # noqa: BLE001 - the requests of this step fail, the server goes on
            self._fail_step([slot for slot, _ in items], e)
            return
        generated = 0
        for (slot, ids), result in zip(items, results):
            job = slot.job
            if job.prefilling:
                job.fed += len(ids)
                if job.prefilling:
                    continue
            first = job.first_token_at is None
            try:
                if isinstance(result, Exception):       # the core's draw failed (NaN logits)
                    raise result
                if isinstance(result, int):
                    job.on_token(result)
                else:
                    job.on_logits(result)
                generated += 1
                if first and self.metrics is not None and job.first_token_at is not None:
                    self.metrics.on_first_token(job.first_token_at - job.submitted_at)
            except Exception as e:      # noqa: BLE001
                job.fail(500, f"sampling failed: {type(e).__name__}: {e}")
            if job.finished:
                slot.release()
        if self.metrics is not None:
            self.metrics.on_step(generated, time.perf_counter() - t0)

    def _fail_step(self, slots: List[Slot], e: Exception) -> None:
        """A forward step (or solo run) raised: its requests fail with 500 and leave their slots
        (each session's cache still matches its token list); the server goes on. The hooks run,
        as the step may have failed before its hand-over."""
        for slot in slots:
            slot.job.fail(500, f"the forward step failed: {type(e).__name__}: {e}")
            slot.release()
        self._run_hooks()

    def _solo_run(self, slot: Slot, ids: List[int]) -> bool:
        """The step of a lone decoding job as a solo run (see the class); False when it is not
        one (prefilling, logits needed in Python, someone waiting, off)."""
        job = slot.job
        run = getattr(self.backend, "run", None)
        if (run is None or self.solo_run_s <= 0 or job.prefilling or not job.samples_in_core
                or job.request.max_new_tokens - job.record.generated_tokens < 2):
            return False
        self._run_signal.clear()
        if self._pending or job.cancelled or self._stopping:   # what set the signal before the clear
            return False
        n_past = len(job.history) - 1       # the cache holds all but the last drawn token
        max_steps = min(job.request.max_new_tokens - job.record.generated_tokens, self.n_ctx - n_past)
        t0 = time.perf_counter()
        try:
            got = run(slot, job.next_token, job.sampler, job.history, max_steps=max_steps,
                      stop_ids=sorted(job.stop_ids), seconds=self.solo_run_s, signal=self._run_signal,
                      before_compute=self._run_hooks)
        except Exception as e:          # noqa: BLE001 - as a failed step: this request fails
            self._fail_step([slot], e)
            return True
        used = 0
        try:
            for token in got.tokens:
                used += 1
                job.on_token(token)
                if job.finished:
                    break
            if got.error is not None and not job.finished:
                raise got.error
        except Exception as e:          # noqa: BLE001
            job.fail(500, f"sampling failed: {type(e).__name__}: {e}")
        if job.finished:
            # the steps past the finishing token are dropped: the cache holds what step by
            # step would have left (the prompt and every generated token but the last)
            if slot.session.n_past > n_past + used:
                slot.session.truncate(n_past + used)
            slot.release()
        if self.metrics is not None:
            self.metrics.on_step(used, time.perf_counter() - t0, steps=len(got.tokens) + (got.error is not None))
        return True

    def _fail_all(self, status: int, message: str) -> None:
        with self._cond:
            pending, self._pending = list(self._pending), collections.deque()
            self._stopping = True
        for job in pending:
            job.fail(status, message)
        for slot in self.slots:
            if slot.job is not None:
                slot.job.fail(status, message)
                slot.release()


class SessionBackend:
    """``parallel`` slots on one model: the Model's own session and ``parallel - 1`` more, each
    with its own KV cache of the model's n_ctx; a step is one ``eval_batch`` over them."""

    def __init__(self, model, parallel: int):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.model = model
        sessions = [model] + [model.session() for _ in range(parallel - 1)]
        self.slots = [Slot(i, s) for i, s in enumerate(sessions)]
        self.n_ctx = model.n_ctx
        self.n_batch = model._engine.n_batch

    def step(self, items, samplers=None, before_compute=None):
        return eval_batch([(slot.session, ids) for slot, ids in items], samplers=samplers,
                          before_compute=before_compute)

    def run(self, slot, token, sampler, history, *, max_steps, stop_ids, seconds, signal, before_compute=None):
        return decode_run(slot.session, token, sampler, history, max_steps=max_steps, stop_ids=stop_ids,
                          seconds=seconds, signal=signal, before_compute=before_compute)

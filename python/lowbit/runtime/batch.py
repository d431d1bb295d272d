"""``eval_batch``: one forward step over several sessions of one model (continuous batching);
``decode_run``: several decode steps of one session in one call (a server's lone stream).

Each item is (session, token ids): the tokens are appended at that session's own position in
its own KV cache, and the weight matmuls run once over the rows of all items, so decode tokens
of many conversations and prefill chunks of new ones share one read of the weights. A server's
scheduler calls this once per step with one token per decoding session and a chunk of each new
prompt (keep the rows of a step within the sessions' n_batch: then a step is one pass).

Errors name the item (``eval_batch item 2: ...``): ValueError for a bad token id, a context
overflow, an empty item, sessions of different models or the same session twice;
LowbitError for a closed session or one busy with a generation; ``Cancelled`` when a session
was cancelled (its cancel flag is cleared by reporting it). Nothing is evaluated when the
check before the work fails; a cancel during the step drops that step (``session.n_past``
and ``session.cached_tokens`` always agree with what was evaluated).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from lowbit.errors import LowbitError

if TYPE_CHECKING:
    from lowbit.runtime.model import Session
    from lowbit.runtime.sampling import Sampler


def _ids(tokens, index: int) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"eval_batch item {index}: token ids must be a 1-D sequence of ints")
    if arr.size == 0:
        raise ValueError(f"eval_batch item {index}: no tokens")
    return arr.astype(np.int64, copy=False)


def _core_items(pairs, samplers) -> list:
    """(engine, ids) per item, or (engine, ids, core sampler, penalty window) for a sampled one."""
    if samplers is None:
        return [(s._engine, ids) for s, ids in pairs]
    out = []
    for i, ((session, ids), entry) in enumerate(zip(pairs, samplers)):
        if entry is None:
            out.append((session._engine, ids))
            continue
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and hasattr(entry[0], "window")):
            raise TypeError(f"eval_batch item {i}: a sampler entry must be (Sampler, history) or None")
        sampler, history = entry
        out.append((session._engine, ids, sampler.core, sampler.window(history)))
    return out


def _check_free(session: "Session", where: str) -> None:
    """LowbitError naming ``where`` unless ``session`` (its lock held) is open and idle."""
    if session._closed:
        raise LowbitError(f"{where}: this {type(session).__name__} is closed")
    if session._active is not None:
        raise LowbitError(f"{where}: the session is busy with a generation or an open stream")


def _realign(session: "Session", n_past: int) -> None:
    """After a failed prefill the token list was dropped: cut the cache back to it (``n_past``:
    the engine's, read by the caller)."""
    if n_past != len(session._cached_ids):
        session._engine.truncate(len(session._cached_ids))
        del session._cached_ids[session._engine.n_past:]


def eval_batch(items: Sequence[Tuple["Session", Sequence[int]]], *, hidden: bool = False,
               samplers: Optional[Sequence[Optional[Tuple["Sampler", Sequence[int]]]]] = None,
               before_compute: Optional[Callable[[], None]] = None) -> list:
    """Evaluate every item's tokens in one batched step. Returns per item the last token's logits
    (n_vocab,) float32, or with ``hidden=True`` the output-normed hidden states of all its tokens
    (n, n_embd) (what embeddings pool). The GIL is released while the core computes.

    ``samplers`` (one entry per item, or None): an item whose entry is ``(sampler, history)``
    (a lowbit.runtime.sampling.Sampler and the tokens so far) is sampled in the core right after
    the step, and its result is the token id (an int; the same id as ``sampler.sample(logits,
    history)`` on its logits) instead of a vocabulary-sized row; when that draw fails (NaN
    logits) its result is the ValueError, returned rather than raised so that the other items'
    results stand.

    ``before_compute``: called on this thread after the Python-side checks, right before the
    core's call, which releases the GIL at once (nothing in between lets another thread take
    it; the core's own checks, e.g. token ids, come after): a server hands its events over
    there, so that its event loop writes them while the step runs."""
    from lowbit import _core
    from lowbit.runtime.model import Session

    items = list(items)
    if not items:
        raise ValueError("eval_batch needs at least one item")
    if samplers is not None:
        samplers = list(samplers)
        if len(samplers) != len(items):
            raise ValueError(f"eval_batch: {len(samplers)} samplers for {len(items)} items (one each, or None)")
        if hidden and any(s is not None for s in samplers):
            raise ValueError("eval_batch: samplers and hidden=True do not go together (hidden states are not sampled)")
    pairs = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"eval_batch item {i} must be a pair (session, token ids)")
        session, tokens = item
        if not isinstance(session, Session):
            raise TypeError(f"eval_batch item {i}: expected a lowbit Session or Model, got {type(session).__name__}")
        pairs.append((session, _ids(tokens, i)))
    core_items = _core_items(pairs, samplers)
    order = sorted(range(len(pairs)), key=lambda i: id(pairs[i][0]))   # one lock order for every caller
    held = []
    try:
        for i in order:
            session = pairs[i][0]
            session._cond.acquire()
            held.append(session)
            _check_free(session, f"eval_batch item {i}")
        # the n_past of all sessions in one call: each read releases the GIL, which a server's
        # event loop then takes
        for (session, _), n_past in zip(pairs, _core.n_past_of([s._engine for s, _ in pairs])):
            _realign(session, n_past)
        before = [len(s._cached_ids) for s, _ in pairs]
        completed = False
        try:
            if before_compute is not None:
                before_compute()
            results = _core.eval_batch(core_items, hidden=hidden)
            completed = True
            return results
        finally:   # each session's token list follows what its cache now holds: all its tokens
            after = None if completed else _core.n_past_of([s._engine for s, _ in pairs])   # after a cancel
            for i, ((session, ids), n0) in enumerate(zip(pairs, before)):
                done = len(ids) if after is None else after[i] - n0
                session._cached_ids.extend(ids[:max(done, 0)].tolist())
    finally:
        for session in reversed(held):
            session._cond.release()


class DecodeRun(NamedTuple):
    """What ``decode_run`` drew: ``tokens`` in order (every one but the last is now in the
    session's cache) and ``error``, the ValueError of a draw that failed after them, or None."""
    tokens: List[int]
    error: Optional[ValueError]


def decode_run(session: "Session", token: int, sampler: "Sampler", history: Sequence[int], *,
               max_steps: int, stop_ids: Sequence[int] = (), seconds: float = 0.0, signal=None,
               before_compute: Optional[Callable[[], None]] = None) -> DecodeRun:
    """Decode steps of one session in one call of the core: feed ``token``, draw the next with
    ``sampler`` (history: the tokens so far, ``token`` last), feed that, ... The run ends after
    a draw when ``max_steps`` tokens are drawn, a token of ``stop_ids`` is drawn, ``seconds``
    have passed since it began, ``signal`` (a ``lowbit._core.RunSignal``) is set from another
    thread, or a draw fails (NaN logits: the ``error``). Each draw is the one ``eval_batch`` with
    that sampler would give for the same step (the same forward of one row, the same sampler).

    A server whose one busy sequence is decoding calls this instead of ``eval_batch`` per token:
    its Python per step (locks, bookkeeping, a wake-up of the event loop) then runs once per run.
    ``before_compute`` as in ``eval_batch``. Errors as ``eval_batch``'s for one item; on any of
    them ``session.cached_tokens`` still follows the cache (the steps that completed)."""
    from lowbit import _core
    from lowbit.runtime.model import Session

    if not isinstance(session, Session):
        raise TypeError(f"decode_run: expected a lowbit Session or Model, got {type(session).__name__}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"decode_run: max_steps must be an int >= 1, got {max_steps!r}")
    with session._cond:
        _check_free(session, "decode_run")
        engine, cached = session._engine, session._cached_ids
        _realign(session, engine.n_past)
        before = len(cached)
        window = sampler.window(history)
        drawn: List[int] = []
        try:
            if before_compute is not None:
                before_compute()
            drawn, error = _core.decode_run(engine, int(token), sampler.core, window, max_steps,
                                            list(stop_ids), float(seconds), signal)
        finally:   # the token list follows the cache: the fed tokens are token, then the draws
            fed, known = engine.n_past - before, [int(token)] + drawn
            if fed <= len(known):
                cached.extend(known[:fed])
            else:                            # an error lost the draws: drop the run's steps
                del cached[engine.truncate(before):]
        return DecodeRun(drawn, None if error is None else ValueError(error))

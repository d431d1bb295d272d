"""The HTTP side of ``lowbit serve``: a Starlette app with OpenAI's endpoints on a Scheduler.

Handlers validate and tokenize (in a worker thread: templates and long prompts take time; a
short completion prompt on the loop), hand a Job to the scheduler and relay its events: one
JSON response, or server-sent events ending with ``data: [DONE]``. A client that goes away
cancels its job at once (its slot is free at the next step)."""
from __future__ import annotations

import asyncio
import collections
import hmac
import json
import os
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from lowbit.errors import LowbitError
from lowbit.runtime.generate import StopMatcher
from lowbit.runtime.tools import CALL_OPEN
from lowbit.server import openai_api as api
from lowbit.server.metrics import CONTENT_TYPE, Metrics
from lowbit.server.openai_api import ApiError, Reply
from lowbit.server.scheduler import Done, ExclusiveJob, Failed, GenRequest, Job, Piece, QueueFull, Scheduler

MAX_BODY_BYTES = 16 << 20
# prompts up to this many characters are tokenized on the event loop (~70 us at 2,000 characters;
# the thread-pool hop of longer ones costs more than the tokenizing of short ones)
INLINE_TOKENIZE_CHARS = 2048


@dataclass
class ServerState:
    model: object                 # lowbit.Model
    model_name: str
    scheduler: Scheduler
    metrics: Metrics
    api_key: Optional[str] = None
    started: int = 0
    memory: Optional[dict] = None       # bytes by part, see slots_memory
    post: Optional["EventPost"] = None  # made by the lifespan, on the serving loop
    piece_interval: float = 0.0         # seconds: text of tokens this close together shares a Piece (Job)

    @property
    def aliases(self):
        base = os.path.basename(self.model.path)
        return {base, base[:-5] if base.endswith(".gguf") else base, self.model.path}


# ---- plumbing ---------------------------------------------------------------------------------
def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def read_json(request: Request) -> dict:
    """The request body as a JSON object; 413 past MAX_BODY_BYTES, 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body has {declared} bytes; the limit is {MAX_BODY_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {api._kind(value)}")
    return value


def check_auth(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise ApiError(401, "Invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key")


def endpoint(name: str, handler: Callable[[Request, ServerState], Awaitable[Response]], auth: bool = True):
    """Wraps ``handler``: API key check, errors as OpenAI error objects, request counting."""
    async def wrapped(request: Request) -> Response:
        state: ServerState = request.app.state.lowbit
        try:
            if auth:
                check_auth(state, request)
            response = await handler(request, state)
        except ApiError as e:
            response = error_response(e)
        except QueueFull as e:
            response = error_response(ApiError(429, str(e), code="rate_limit_exceeded", kind="rate_limit_error"))
        except LowbitError as e:        # shutting down
            response = error_response(ApiError(503, str(e), kind="server_error"))
        except Exception as e:          # noqa: BLE001 - a bug: the client still gets an error object
            traceback.print_exc()
            response = error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))
        state.metrics.on_request(name, response.status_code)
        return response
    return wrapped


class EventPost:
    """Job events from the scheduler thread into the event loop. What the scheduler thread posts
    (a step's tokens, admissions' failures) is handed to the loop by a small relay thread when
    the scheduler is about to compute or wait (Scheduler.hand_over: right before the next
    forward, an exclusive job, going idle): the relay's wake-up of the loop and the loop's SSE
    writes run while the scheduler computes with the GIL released. Waking the loop from the
    scheduler thread itself (a socket write, which releases the GIL) let the loop thread take the
    GIL and write its SSE chunks while the scheduler waited: 5 ms a token (bench/RESULTS.md,
    "Serving: scheduler profile"); waking it at the end of an iteration let it take the GIL from
    the scheduler's Python between two steps. Events from other threads go at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scheduler: Scheduler):
        self.loop, self.scheduler = loop, scheduler
        self._held: list = []          # (target, event) of this iteration; scheduler thread only
        # batches for the relay, None when closed: a C queue, whose put is one lock release (a
        # Condition's notify ran ~10 us of Python on the scheduler thread before each forward)
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._relay = threading.Thread(target=self._run_relay, name="lowbit-events", daemon=True)
        self._relay.start()
        scheduler.hand_over.append(self.flush)

    def post(self, target, event) -> None:
        """``target.put_nowait(event)`` on the loop (a JobEvents or an asyncio.Queue)."""
        if self.scheduler.on_thread():
            self._held.append((target, event))
        else:
            self._send([(target, event)])

    def flush(self) -> None:
        batch, self._held = self._held, []
        if batch:
            self._ready.put(batch)

    def close(self) -> None:
        self._ready.put(None)
        self._relay.join(10)

    def _run_relay(self) -> None:
        while True:
            batch = self._ready.get()
            closed = batch is None
            batch = batch or []
            while not closed:           # what else is ready goes with it: one wake-up of the loop
                try:
                    more = self._ready.get_nowait()
                except queue.Empty:
                    break
                closed = more is None
                batch += more or []
            if batch:
                self._send(batch)
            if closed:
                return

    def _send(self, batch: list) -> None:
        try:
            self.loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:            # the loop is closed: the server is going down
            pass


def _deliver(batch: list) -> None:
    for target, event in batch:
        target.put_nowait(event)


class JobEvents:
    """A request's job events, moved from the scheduler thread into the event loop. The handler
    takes all that has arrived at once (``drain``): a step's tokens cost the loop one future and
    one wake-up of the handler, where asyncio.Queue made a future and a task step per event."""

    def __init__(self, post: EventPost):
        self.post = post
        self._events: collections.deque = collections.deque()
        self._waiter: Optional[asyncio.Future] = None

    def emit(self, event) -> None:      # called on the scheduler thread
        self.post.post(self, event)

    def put_nowait(self, event) -> None:        # on the loop (EventPost)
        self._events.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def get(self):
        """The next event (waits for one)."""
        await self._wait()
        return self._events.popleft()

    async def drain(self) -> list:
        """Every event that has arrived, in order (waits for at least one)."""
        await self._wait()
        out = list(self._events)
        self._events.clear()
        return out


async def wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ---- generation endpoints ---------------------------------------------------------------------
async def run_job(request: Request, state: ServerState, gens: List[GenRequest], reply: Reply,
                  stream: bool) -> Response:
    """Runs the request's choices (one GenRequest each, n > 1 for ``n``) as jobs side by side in
    the scheduler; their events arrive on one queue as (choice index, event)."""
    events = JobEvents(state.post)
    eot = sorted(state.model.tokenizer.eot_ids)
    jobs = [Job(gen, state.model.tokenizer, eot, lambda event, i=i: events.emit((i, event)), state.piece_interval)
            for i, gen in enumerate(gens)]
    state.scheduler.submit(*jobs)
    replies = [reply.for_choice(i) for i in range(len(jobs))]
    if stream:
        return StreamingResponse(stream_events(state, jobs, events, replies), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    gone = asyncio.ensure_future(wait_disconnect(request))
    texts, logprobs = [[] for _ in jobs], [[] for _ in jobs]
    dones: List[Optional[Done]] = [None] * len(jobs)
    try:
        while any(d is None for d in dones):
            got = await next_event(events, gone)
            if got is None:
                return Response(status_code=499)      # nobody reads it: the client is gone
            i, event = got
            if isinstance(event, Piece):
                texts[i].append(event.text)
                logprobs[i] += event.logprobs
            elif isinstance(event, Done):
                dones[i] = event
            elif isinstance(event, Failed):
                raise failed_error(event)
        choices = [r.choice("".join(t), lp + d.logprobs, d) for r, t, lp, d in zip(replies, texts, logprobs, dones)]
        return JSONResponse(dict(reply._head(False), choices=choices, usage=Reply.usage_of(dones)))
    finally:
        gone.cancel()
        cancel_unfinished(state, jobs)


def cancel_unfinished(state: ServerState, jobs: List[Job]) -> None:
    for job in jobs:
        if not job.finished:
            state.scheduler.cancel(job)


async def next_event(events: JobEvents, gone: asyncio.Future):
    """The next event on the queue, or None when the client went away first."""
    get = asyncio.ensure_future(events.get())
    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not get.done():
        get.cancel()
        return None
    return get.result()


def failed_error(event: Failed) -> ApiError:
    return ApiError(event.status, event.message,
                    kind="server_error" if event.status >= 500 else "invalid_request_error")


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


DONE_EVENT = "data: [DONE]\n\n"
_TEXT_MARK = "\x00lowbit-text\x00"       # stands for a chunk's text while its template is made


class TextChunks:
    """The SSE event of a text-only chunk of one choice (no log-probs, no finish reason) from a
    template: everything but the text is the same in every such chunk of a response, so the
    chunk is the template's two halves around the text's JSON string, which is what
    ``sse(reply.chunk(text, []))`` gives (one dumps of the text instead of the whole dict)."""

    def __init__(self, reply: Reply):
        self.reply = reply
        whole, mark = sse(reply.chunk(_TEXT_MARK, [])), json.dumps(_TEXT_MARK, ensure_ascii=False)
        parts = whole.split(mark)
        self.halves = (parts[0], parts[1]) if len(parts) == 2 else None   # the mark elsewhere too: no template

    def __call__(self, text: str) -> str:
        if self.halves is None:
            return sse(self.reply.chunk(text, []))
        return f"{self.halves[0]}{json.dumps(text, ensure_ascii=False)}{self.halves[1]}"


class ChoiceStream:
    """One choice's part of a stream, as SSE events. With tools, text from ``<tool_call>`` on is
    held back: it becomes a tool_calls delta, or content after all when the reply ends without a
    complete call."""

    def __init__(self, reply: Reply):
        self.reply = reply
        self.text_chunk = TextChunks(reply)
        self.gate = StopMatcher([CALL_OPEN]) if reply.tools else None
        self.calling, self.sent = False, 0       # a call has started; characters sent as content

    def piece(self, event: Piece, out: List[str]) -> None:
        text = event.text
        if self.gate is not None:
            text, hit = ("", True) if self.calling else self.gate.push(text)
            self.calling = self.calling or hit
        if not (text or event.logprobs):
            return
        self.sent += len(text)
        out.append(sse(self.reply.chunk(text, event.logprobs)) if event.logprobs else self.text_chunk(text))

    def done(self, event: Done, out: List[str]) -> None:
        calls = event.record.tool_calls
        if self.gate is not None and not calls and len(event.record.text) > self.sent:
            out.append(self.text_chunk(event.record.text[self.sent:]))
        if calls:
            out.append(sse(self.reply.tool_calls_chunk(calls)))
        out.append(sse(self.reply.final_chunk(event)))


async def stream_events(state: ServerState, jobs: List[Job], events: JobEvents, replies: List[Reply]):
    """Server-sent events of every choice as they come (each chunk names its choice index), the
    usage chunk when asked for, then [DONE]; closing this generator (the client went away)
    cancels the jobs. The events that arrived together (a step's tokens, the last token and the
    end) go out as one write: one send through the HTTP stack and one socket write, not one each."""
    streams = [ChoiceStream(r) for r in replies]
    dones: List[Optional[Done]] = [None] * len(jobs)
    left = len(jobs)
    try:
        head = [sse(r.chunk(None, [], role=True)) if r.kind == "chat" else sse(r.chunk(r.echo, []))
                for r in replies if r.kind == "chat" or r.echo]
        if head:
            yield "".join(head)
        while left > 0:
            out: List[str] = []
            for i, event in await events.drain():
                if isinstance(event, Piece):
                    streams[i].piece(event, out)
                elif isinstance(event, Done):
                    left -= dones[i] is None
                    dones[i] = event
                    streams[i].done(event, out)
                else:                               # Failed: the error object ends the stream
                    out.append(sse(failed_error(event).body()))
                    left = -1
                    break
            if left == 0 and replies[0].usage_in_stream:
                out.append(sse(replies[0].usage_chunk(dones)))
            if left <= 0:
                out.append(DONE_EVENT)
            if out:
                yield "".join(out)
    finally:
        cancel_unfinished(state, jobs)


def chat_prompt(model, messages, body):
    """(prompt ids, constraint or None) for a chat request: tools through the model's template
    (runtime/tools.py), response_format as a JSON constraint; each bad field a 400 naming it."""
    from lowbit.runtime import constraints, tools as tool_calls
    fmt = api.response_format(body)
    tools, choice = body.get("tools"), body.get("tool_choice")
    choice = ("auto" if tools else "none") if choice is None else choice
    if fmt and tools and choice != "none":
        raise ApiError(400, "response_format cannot be combined with tools (unless tool_choice is 'none')",
                       param="response_format")
    try:
        messages, template_vars, guide = tool_calls.prepare_chat(model, messages, tools, choice)
    except (ValueError, TypeError) as e:
        param = "tool_choice" if "tool_choice" in str(e) else "messages" if "messages" in str(e) else "tools"
        raise ApiError(400, f"{param}: {e}", param=param) from None
    if fmt:
        try:
            guide = constraints.resolve(model, **fmt)
        except (ValueError, TypeError) as e:
            raise ApiError(400, f"response_format: {e}", param="response_format") from None
    try:
        ids = model.chat_ids(messages, **template_vars)
    except (ValueError, TypeError) as e:
        raise ApiError(400, f"messages: {e}", param="messages") from None
    return ids, guide


async def chat_completions(request: Request, state: ServerState) -> Response:
    body = await read_json(request)
    api.check_model(body, state.model_name, state.aliases)
    n = api.choice_count(body)
    api.check_unsupported(body, chat=True)
    messages = api.chat_messages(body)
    params, stops, logprobs = api.sampling_params(body, state.model.n_vocab), api.stop_strings(body), api.chat_logprobs(body)
    stream, usage = api.get_bool(body, "stream"), api.include_usage(body)
    ids, constraint = await run_in_threadpool(chat_prompt, state.model, messages, body)
    budget = api.max_new_tokens(body, len(ids), state.scheduler.n_ctx)
    gens = [GenRequest(ids, p, budget, stops, logprobs, constraint) for p in api.choice_params(params, n)]
    reply = Reply("chat", state.model_name, logprobs=logprobs, usage_in_stream=stream and usage,
                  tools=constraint is not None and constraint.kind == "tools", tokenizer=state.model.tokenizer)
    return await run_job(request, state, gens, reply, stream)


async def completions(request: Request, state: ServerState) -> Response:
    body = await read_json(request)
    api.check_model(body, state.model_name, state.aliases)
    n = api.choice_count(body)
    api.check_unsupported(body, chat=False)
    prompt = api.completion_prompt(body)
    params, stops, logprobs = api.sampling_params(body, state.model.n_vocab), api.stop_strings(body), api.completion_logprobs(body)
    stream, usage, echo = api.get_bool(body, "stream"), api.include_usage(body), api.get_bool(body, "echo")
    if echo and logprobs is not None:
        raise ApiError(400, "echo with logprobs is not supported (no prompt log-probs)", param="echo")
    model = state.model
    if isinstance(prompt, str):
        if len(prompt) <= INLINE_TOKENIZE_CHARS:     # microseconds: a worker thread's hop costs more
            ids = model.tokenize(prompt, True, True)
        else:
            ids = await run_in_threadpool(model.tokenize, prompt, True, True)
        text = prompt
    else:
        bad = next((t for t in prompt if not 0 <= t < model.tokenizer.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary (0..{model.tokenizer.vocab_size - 1})",
                           param="prompt")
        ids, text = list(prompt), (model.detokenize(prompt) if echo else "")
    if not ids:
        raise ApiError(400, "prompt: the prompt is empty (no tokens)", param="prompt")
    budget = api.max_new_tokens(body, len(ids), state.scheduler.n_ctx)
    gens = [GenRequest(ids, p, budget, stops, logprobs) for p in api.choice_params(params, n)]
    reply = Reply("completion", state.model_name, logprobs=logprobs, echo=text if echo else "",
                  usage_in_stream=stream and usage, tokenizer=model.tokenizer)
    return await run_job(request, state, gens, reply, stream)


async def embeddings(request: Request, state: ServerState) -> Response:
    body = await read_json(request)
    api.check_model(body, state.model_name, state.aliases)
    texts = api.embedding_inputs(body)
    model = state.model

    def embed():                        # on the scheduler thread, between steps
        return model.embed(texts), sum(len(model.tokenize(t)) for t in texts)

    events = JobEvents(state.post)
    job = ExclusiveJob(embed, events.emit)
    state.scheduler.submit(job)
    gone = asyncio.ensure_future(wait_disconnect(request))
    try:
        event = await next_event(events, gone)
    finally:
        gone.cancel()
    if event is None:
        state.scheduler.cancel(job)
        return Response(status_code=499)
    if isinstance(event, Failed):
        raise failed_error(event)
    vectors, n_tokens = event
    return JSONResponse(api.embeddings_response(vectors, n_tokens, state.model_name,
                                                body.get("encoding_format", "float")))


# ---- the rest ---------------------------------------------------------------------------------
def model_card(state: ServerState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.started, "owned_by": "lowbit",
            "meta": {"path": state.model.path, "architecture": state.model.architecture,
                     "n_ctx": state.scheduler.n_ctx, "parallel": len(state.scheduler.slots)}}


async def list_models(request: Request, state: ServerState) -> Response:
    return JSONResponse({"object": "list", "data": [model_card(state)]})


async def get_model(request: Request, state: ServerState) -> Response:
    name = request.path_params["model"]
    if name != state.model_name and name not in state.aliases:
        raise ApiError(404, f"The model '{name}' does not exist; this server serves '{state.model_name}'",
                       param="model", code="model_not_found")
    return JSONResponse(model_card(state))


async def health(request: Request, state: ServerState) -> Response:
    s = state.scheduler
    if not s.alive:
        reason = f"scheduler stopped: {s.error!r}" if s.error is not None else "shutting down"
        return JSONResponse({"status": "error", "message": reason}, status_code=503)
    return JSONResponse({"status": "ok", "slots_busy": s.busy_slots(), "slots": len(s.slots),
                         "queue_length": s.queue_length()})


async def metrics(request: Request, state: ServerState) -> Response:
    s = state.scheduler
    text = state.metrics.render(s.queue_length(), s.busy_slots(), len(s.slots), state.memory, state.model_name)
    return Response(text, media_type=CONTENT_TYPE)


def slots_memory(sessions) -> dict:
    """Weights once, KV caches and scratch of every slot's session. Measured at start: they are
    allocated up front and do not grow (and the engine's report waits for a running step)."""
    reports = [s.memory() for s in sessions]
    return {"weights": int(reports[0].get("weights_bytes", 0)),
            "weights_copied": int(reports[0].get("weights_copied_bytes", 0)),    # fused / repacked copies
            "kv_cache": sum(int(r.get("kv_cache_bytes", 0)) for r in reports),
            "scratch": sum(int(r.get("scratch_bytes", 0)) for r in reports)}


async def not_found(request: Request, exc: HTTPException) -> Response:
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))


def create_app(model, model_name: str, scheduler: Scheduler, metrics_: Metrics,
               api_key: Optional[str] = None, piece_interval: float = 0.0) -> Starlette:
    """The ASGI app; its lifespan starts the scheduler and stops it (then closes the model).
    ``piece_interval``: see Job (seconds; 0: one SSE chunk per token)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        app.state.lowbit.post = EventPost(asyncio.get_running_loop(), scheduler)
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)
            app.state.lowbit.post.close()
            model.close()
            print(f"lowbit: stopped serving {model_name}", file=sys.stderr, flush=True)

    routes = [
        Route("/v1/chat/completions", endpoint("chat", chat_completions), methods=["POST"]),
        Route("/v1/completions", endpoint("completions", completions), methods=["POST"]),
        Route("/v1/embeddings", endpoint("embeddings", embeddings), methods=["POST"]),
        Route("/v1/models", endpoint("models", list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", endpoint("models", get_model), methods=["GET"]),
        Route("/health", endpoint("health", health, auth=False), methods=["GET"]),
        Route("/metrics", endpoint("metrics", metrics, auth=False), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.lowbit = ServerState(model, model_name, scheduler, metrics_, api_key, int(time.time()),
                                   slots_memory([slot.session for slot in scheduler.slots]),
                                   piece_interval=piece_interval)
    return app

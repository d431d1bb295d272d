"""EventPost (server/app.py), the hand-over of job events from the scheduler thread to the
event loop: what the scheduler thread posts reaches the loop in order, all of it when the
scheduler hands over (Scheduler.hand_over: before its next forward or wait), and the loop is
woken from the relay thread, never from the scheduler thread (waking it there made the
scheduler wait for the GIL while the loop wrote its SSE chunks: 5 ms a token under load).
Events from other threads arrive at once."""
from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("starlette")

from lowbit.server.app import EventPost  # noqa: E402

WAIT_S = 30      # hang guard


class SchedulerThread:
    """What EventPost uses of a Scheduler (on_thread, hand_over), on a real thread that runs the
    given work and then its hand-over hooks, as Scheduler._loop does before its next forward."""

    def __init__(self):
        self.hand_over = []
        self.thread = None

    def on_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def run(self, iteration):
        def body():
            iteration()
            for hook in self.hand_over:
                hook()
        self.thread = threading.Thread(target=body, name="lowbit-scheduler")
        self.thread.start()
        return self.thread


def test_an_iterations_events_arrive_together_woken_by_the_relay():
    loop = asyncio.new_event_loop()
    wakers = []
    call_soon_threadsafe = loop.call_soon_threadsafe

    def recording(callback, *args, **kw):      # the wake-ups that deliver events (not asyncio's own)
        if getattr(callback, "__name__", "") == "_deliver":
            wakers.append(threading.current_thread().name)
        return call_soon_threadsafe(callback, *args, **kw)
    loop.call_soon_threadsafe = recording
    scheduler = SchedulerThread()

    async def main():
        post = EventPost(asyncio.get_running_loop(), scheduler)
        queues = [asyncio.Queue(), asyncio.Queue()]
        posted = threading.Event()
        release = threading.Event()

        def iteration():
            for i in range(3):
                post.post(queues[i % 2], ("token", i))
            posted.set()
            release.wait(WAIT_S)        # the step's sampling is still going on: nothing is sent yet

        scheduler.run(iteration)
        assert await asyncio.to_thread(posted.wait, WAIT_S)
        await asyncio.sleep(0.2)
        assert queues[0].empty() and queues[1].empty() and wakers == []
        release.set()
        got0 = [await asyncio.wait_for(queues[0].get(), WAIT_S) for _ in range(2)]
        got1 = await asyncio.wait_for(queues[1].get(), WAIT_S)
        assert got0 == [("token", 0), ("token", 2)] and got1 == ("token", 1)
        assert wakers == ["lowbit-events"]          # one wake-up for the iteration, from the relay
        post.post(queues[1], "from the loop thread")    # not the scheduler thread: sent at once
        assert await asyncio.wait_for(queues[1].get(), WAIT_S) == "from the loop thread"
        assert wakers[-1] == "MainThread"
        await asyncio.to_thread(scheduler.thread.join, WAIT_S)
        await asyncio.to_thread(post.close)
        assert not post._relay.is_alive()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_text_chunk_templates_equal_the_dumped_chunk():
    """TextChunks (server/app.py) builds a text-only SSE chunk from a template around the text's
    JSON string: byte for byte what sse(reply.chunk(text, [])) gives, for chat and completion
    replies, with and without usage in the stream, any choice index, and texts that JSON must
    escape (quotes, backslashes, control characters, U+2028, non-BMP, the template's own mark)."""
    import json
    import random

    from lowbit.server.app import _TEXT_MARK, TextChunks, sse
    from lowbit.server.openai_api import Reply

    rng = random.Random(20)
    alphabet = ['"', "\\", "\n", "\t", "\x00", "\x1f", "\u2028", "é", "日本", "\U0001F600", "a", " ", "/", "</",
                _TEXT_MARK, "{", "}"]
    texts = ["", "hello", _TEXT_MARK] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                                          for _ in range(200)]
    for kind in ("chat", "completion"):
        for usage in (False, True):
            for model in ("m", 'a "quoted" model', _TEXT_MARK):
                reply = Reply(kind, model, usage_in_stream=usage).for_choice(rng.randint(0, 3))
                chunks = TextChunks(reply)
                assert (chunks.halves is None) == (model == _TEXT_MARK)   # the mark twice: no template
                for text in texts:
                    got = chunks(text)
                    assert got == sse(reply.chunk(text, [])), (kind, usage, model, text)
                    assert json.loads(got[len("data: "):])["choices"][0]["delta" if kind == "chat" else "text"] == \
                        ({"content": text} if kind == "chat" else text)


def test_close_delivers_what_was_handed_over_in_order_then_ends_the_relay():
    """Batches handed over right before close() (the scheduler's last iterations as the server
    stops) all reach the loop, in order, and the relay thread ends."""
    loop = asyncio.new_event_loop()
    scheduler = SchedulerThread()

    async def main():
        post = EventPost(asyncio.get_running_loop(), scheduler)
        target = asyncio.Queue()

        def iterations():
            for step in range(5):
                for i in range(3):
                    post.post(target, (step, i))
                post.flush()                    # as Scheduler.hand_over does before each forward
            post.close()                        # the server stops right after

        scheduler.thread = threading.Thread(target=iterations, name="lowbit-scheduler")
        scheduler.thread.start()
        got = [await asyncio.wait_for(target.get(), WAIT_S) for _ in range(15)]
        assert got == [(step, i) for step in range(5) for i in range(3)]
        await asyncio.to_thread(scheduler.thread.join, WAIT_S)
        assert not post._relay.is_alive()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()

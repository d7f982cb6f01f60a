"""From a decode thread to the event loop, and back when the client goes away.

A job's events are put on a thread-safe queue by the thread that draws (the run's batcher);
``waker`` makes that thread also set an ``asyncio.Event`` on the server's loop, so a handler
awaits its job instead of parking a worker thread per request, and a streamed answer costs no
thread hop per token (Starlette iterates a sync generator in a worker thread per item). Every
event waiting when the handler wakes goes out in one write: with 32 streams the decode thread
emits 32 events a step, and one write per wake keeps the socket calls per token low.

``until_done_or_gone`` watches the ASGI ``receive`` channel for ``http.disconnect`` while a
non-streamed request waits, so a client that closes its connection cancels its job (Starlette
notices this for streamed answers only).
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Callable

from genforge.serve.batching import END


def waker(loop: asyncio.AbstractEventLoop, event: asyncio.Event, last_only: bool = False) -> Callable[[bool], None]:
    """A job's ``notify``: sets ``event`` on ``loop`` from any thread (after the last event only,
    with ``last_only``). A loop that has closed meanwhile (server stopping) is ignored: the
    decode thread must never fail because a listener left."""

    def notify(last: bool) -> None:
        if last or not last_only:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed
                pass

    return notify


async def until_done_or_gone(done: asyncio.Event, receive) -> bool:
    """Wait for ``done``; False if the client disconnected first (ASGI ``http.disconnect``)."""

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    waiter, watcher = asyncio.ensure_future(done.wait()), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, watcher):
            task.cancel()
    return done.is_set()


async def sse(job, wake: asyncio.Event, make_event, closing: list[str]) -> AsyncIterator[str]:
    """Server-sent events of a text job's pieces as they come, then ``closing``; a failed decode
    ends the stream with an error event (the headers are already sent)."""
    while True:
        wake.clear()
        out, end = [], False
        while True:
            try:
                event = job.events.get_nowait()
            except queue.Empty:
                break
            if event is END:
                end = True
                break
            if isinstance(event, BaseException):
                error = {"error": {"message": str(event), "type": "server_error", "param": None}}
                out.append(f"data: {json.dumps(error)}\n\n")
                yield "".join(out)
                return
            index, piece = event
            out.append(f"data: {json.dumps(make_event(index, piece))}\n\n")
        if end:
            out += [f"data: {line}\n\n" for line in closing]
        if out:
            yield "".join(out)
        if end:
            return
        await wake.wait()

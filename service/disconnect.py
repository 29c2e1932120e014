"""Work that stops when its client leaves: a gone client's sequences leave the queue.

An HTTP request's ``receive`` says ``http.disconnect`` once the client has closed its
connection; until then, after the body, it waits. :func:`unless_client_leaves` awaits the work in
the handler's own task while one small task waits on ``receive``; a disconnect cancels the
handler's task, which the batcher turns into dropping the request's sequences, and the handler
gets :class:`~service.errors.ClientGone` instead of a cancellation.

One task per request, and no ``asyncio.wait`` (which wraps both sides in futures and callbacks
every time): on the hot path of a one-sentence request that difference is measurable (see
docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from service.errors import ClientGone

if TYPE_CHECKING:  # the ASGI type only; the core loads without an HTTP stack
    from starlette.types import Receive

T = TypeVar("T")


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:  # the handler itself was cancelled (shutdown, a timeout around it)
            raise
        task.uncancel()
        raise ClientGone("the client disconnected before its answer was ready") from None
    finally:
        watcher.cancel()

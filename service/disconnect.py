"""Work that stops when its client leaves: a gone client's sequences leave the queue.

:func:`unless_client_leaves` awaits the work in the handler's own task; when the client closes
its connection first, the handler's task is cancelled, which the batcher turns into dropping
the request's sequences, and the handler gets :class:`~service.errors.ClientGone` instead of
a cancellation. It learns of the disconnect in one of two ways:

- from a :class:`ClientWatch`, which service/server.py puts in each request's
  ``scope["extensions"]`` and fires when the connection is lost: no task and no wait per
  request;
- else (another ASGI server, an in-process test client) from ``receive``, which says
  ``http.disconnect`` once the client has gone: one small task per request waits on it. No
  ``asyncio.wait``, which wraps both sides in futures and callbacks every time.

On the one-sentence hot path both choices are measurable (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from service.errors import ClientGone

if TYPE_CHECKING:  # the ASGI types only; the core loads without an HTTP stack
    from starlette.types import Receive, Scope

T = TypeVar("T")

# The key of ``scope["extensions"]`` under which the server gives a request its ClientWatch.
EXTENSION = "electric.client_watch"
_GONE = "the client disconnected before its answer was ready"


class ClientWatch:
    """One request's connection, as its server sees it: :meth:`lost` runs ``on_leave``
    (once) when the connection is lost before the answer is complete."""

    __slots__ = ("left", "on_leave")

    def __init__(self) -> None:
        self.left = False
        self.on_leave: Callable[[], None] | None = None

    def lost(self) -> None:
        self.left = True
        callback, self.on_leave = self.on_leave, None
        if callback is not None:
            callback()


def watch_of(scope: Scope) -> ClientWatch | None:
    """The request's ClientWatch, when its server gives one."""
    extensions = scope.get("extensions")
    return extensions.get(EXTENSION) if extensions else None


@dataclass(frozen=True, slots=True)
class Client:
    """What tells a handler that its client left: the request's ``receive``, and the
    server's ClientWatch where it gives one (then ``receive`` is not asked)."""

    receive: Receive
    watch: ClientWatch | None = None


def client_of(scope: Scope, receive: Receive) -> Client:
    """The request's :class:`Client`, from its scope and ``receive``."""
    return Client(receive, watch_of(scope))


async def unless_client_leaves(client: Client, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGone."""
    receive, watch = client.receive, client.watch
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def leave() -> None:
        nonlocal gone
        gone = True
        task.cancel()

    async def wait_for_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        leave()

    watcher = None
    if watch is None:
        watcher = asyncio.ensure_future(wait_for_disconnect())
    elif watch.left:
        if asyncio.iscoroutine(work):
            work.close()
        raise ClientGone(_GONE)
    else:
        watch.on_leave = leave
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:  # the handler itself was cancelled (shutdown, a timeout around it)
            raise
        task.uncancel()
        raise ClientGone(_GONE) from None
    finally:
        if watcher is not None:
            watcher.cancel()
        elif watch is not None:
            watch.on_leave = None

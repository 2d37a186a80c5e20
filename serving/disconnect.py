"""Work that stops when its client goes away: the native API's and the OIP routes' shared guard.

A request whose client disconnects while its windows wait in the batcher would otherwise still be
decoded and computed, and under load the abandoned work of impatient clients crowds out the live
ones. :func:`unless_disconnected` races the work against ASGI's ``http.disconnect`` message and
cancels the loser: cancelling a producer withdraws its queued windows (``serving.batcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from litestar import Request
from litestar.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away while its request was queued; its windows have been dropped."""


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it (and so dropping its queued windows) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is cancelled (e.g. shutdown timeout)
        task.cancel()  # so the work leaves the batcher before use() lets it go
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected
    return task.result()

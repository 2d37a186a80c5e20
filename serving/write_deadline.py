"""Slow readers: a connection whose client stops reading the response is dropped after ``--write-timeout``.

Uvicorn stops a response at its transport's high-water mark and waits, untimed, until the client
reads (``FlowControl.drain``). A client that sends a whole request and then never reads (a tiny TCP
receive window, no ``recv``) therefore held, for as long as it kept the socket open:

- a ``-stream`` request: its ``--max-concurrent-requests`` slot and its model reference, blocked in
  ``send`` (measured: 64 such connections and the server answers 503 to everyone, forever);
- any big answer: its bytes in the transport's buffer, after the handler returned and the slot was
  freed (measured: 8 MiB of RSS per connection for a 90-byte predict-directory request with
  ``timeline``; the keep-alive close waits for the buffer to flush, which never happens).

:func:`http_protocol` is uvicorn's own HTTP protocol with one timer: when the transport pauses
writing, the clock starts; when the client has read enough for it to resume, the clock stops. If it
stays paused for ``timeout_s`` the transport is aborted: the buffer is freed, the request sees
``http.disconnect`` (a stream is cancelled, its queued windows withdrawn) and its slot is released.
A reader that keeps reading, however slowly, resets the clock every time writing resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def http_protocol(
    timeout_s: float,
    on_drop: Callable[[], None] | None = None,
    base: type[asyncio.Protocol] = AutoHTTPProtocol,
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools or h11 protocol) with a deadline on paused writing."""

    class WriteDeadlineProtocol(base):  # type: ignore[valid-type, misc]
        _stalled: asyncio.TimerHandle | None = None

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stalled is None:
                self._stalled = asyncio.get_running_loop().call_later(timeout_s, self._drop_stalled)

        def resume_writing(self) -> None:
            self._stop_clock()
            super().resume_writing()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_clock()
            super().connection_lost(exc)

        def _stop_clock(self) -> None:
            if self._stalled is not None:
                self._stalled.cancel()
                self._stalled = None

        def _drop_stalled(self) -> None:
            self._stalled = None
            transport: Any = getattr(self, "transport", None)
            if transport is None:
                return
            if on_drop is not None:  # counted, not logged: a client could fill the log one socket at a time
                on_drop()
            transport.abort()  # close() would wait for the buffer to flush, i.e. forever

    WriteDeadlineProtocol.__name__ = WriteDeadlineProtocol.__qualname__ = f"WriteDeadline{base.__name__}"
    return WriteDeadlineProtocol

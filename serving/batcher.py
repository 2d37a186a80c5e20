"""The dynamic batcher: windows from every request of one model coalesced into shared batches.

One :class:`Batcher` per loaded model. Requests submit ``[n, window]`` arrays; a single scheduler
task cuts the queue into batches of at most ``max_batch_size`` windows (a request may span
batches, a batch may span requests) and runs each batch in a worker thread, so the event loop
never blocks on ONNX Runtime (which releases the GIL). A batch starts when

- it is full, or
- the oldest queued window has waited ``max_delay_s``, or
- nobody can add to it: every request registered as a :meth:`Batcher.producer` is already waiting
  for its results. Waiting longer could only add latency (at concurrency 1 the delay would be
  pure overhead), so this rule keeps the single-request path as fast as calling the model directly.

Up to ``instances`` batches of one model are in flight at once (Triton's model instances): each
instance is a callable the scheduler never runs twice at the same time (its own ORT session with its
own device buffers, or one thread-safe session shared by every instance), so host->device copy,
compute and device->host copy of one batch overlap with the others. While every instance computes,
the next batch fills, which is where the batching comes from under load. A batch is assembled
(``np.concatenate``) and run in its worker thread, never on the event loop; results are routed by
row ranges, so batches may finish in any order. The queue is bounded in windows; a full queue raises
A request is admitted as a whole before it decodes anything: :meth:`Batcher.reserve` books all of
its windows or none, so a multi-file upload never half-runs and then fails, and a full queue costs
the client a header read, not a decode. An upload that could never fit (more windows than
``max_queue``) is :class:`RequestTooLarge` (413); one that does not fit now is :class:`QueueFull`
(503 + Retry-After). Background work (directory jobs) waits for room instead, and only while the
queue is less than half full, so a long directory job can never keep uploads at 503.
A cancelled submit (client gone) removes its windows that have not started computing.

The scheduler task is supervised: an unexpected error in it fails the requests of the batch it was
forming or running, is counted (``scheduler_restart``), and the loop starts again, so one bug can
never leave every later submit waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], np.ndarray]


def _assemble_and_run(run: RunFn, pieces: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """In the worker thread: one ``[B, window]`` batch from the requests' rows, its probabilities and
    the seconds the model alone took (assembly excluded, so the metric is compute only)."""
    batch = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    started = time.perf_counter()
    probs = run(batch)
    return probs, time.perf_counter() - started


class QueueFull(RuntimeError):
    """The model's queue has no room; ``retry_after_s`` is a whole-second estimate for the client."""

    def __init__(self, name: str, queued: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"model {name!r} is busy: {queued} windows queued (limit {limit}); retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class RequestTooLarge(ValueError):
    """A request with more windows than the whole queue holds: it can never be admitted (413)."""

    def __init__(self, name: str, windows: int, limit: int) -> None:
        super().__init__(
            f"the request needs {windows} windows but model {name!r} queues at most {limit}; "
            "send fewer or shorter files per request"
        )


class BatcherClosed(RuntimeError):
    """Submit after :meth:`Batcher.close` finished."""


class BatchObserver(Protocol):
    """Metrics hooks; the app implements them with Prometheus (see :mod:`serving.metrics`)."""

    def queue_depth(self, model: str, depth: int) -> None: ...

    def batch_done(self, model: str, size: int, seconds: float) -> None: ...

    def batch_failed(self, model: str, size: int) -> None: ...

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def scheduler_restart(self, model: str) -> None: ...


class _NullObserver:
    def queue_depth(self, model: str, depth: int) -> None:
        pass

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        pass

    def batch_failed(self, model: str, size: int) -> None:
        pass

    def queue_wait(self, model: str, seconds: float) -> None:
        pass

    def scheduler_restart(self, model: str) -> None:
        pass


class Reservation:
    """Queue room booked by :meth:`Batcher.reserve` for one request; submits draw on it.

    Leaving the ``with`` block returns what was not drawn (files that failed to decode, a request
    that was cancelled), so booked room never leaks.
    """

    def __init__(self, batcher: Batcher, windows: int) -> None:
        self._batcher = batcher
        self.left = windows
        batcher._reserved += windows

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def draw(self, windows: int) -> None:
        taken = min(windows, self.left)
        self.left -= taken
        self._batcher._reserved -= taken

    def give_back(self, windows: int) -> None:
        """Return room booked for a file that will never submit (it failed to decode)."""
        self.draw(windows)
        self._batcher._room.set()

    def release(self) -> None:
        if self.left:
            self._batcher._reserved -= self.left
            self.left = 0
            self._batcher._room.set()


class _Request:
    """One submit: its windows, the rows handed to batches so far, and where results go."""

    __slots__ = ("windows", "out", "taken", "remaining", "future", "enqueued_at", "owner")

    def __init__(self, windows: np.ndarray, future: asyncio.Future[np.ndarray], owner: object = None) -> None:
        self.windows = windows
        self.owner = owner  # the HTTP request (its Reservation), for fairness; None: this submit alone
        self.out: np.ndarray | None = None
        self.taken = 0
        self.remaining = windows.shape[0]
        self.future = future
        self.enqueued_at = time.monotonic()

    @property
    def untaken(self) -> int:
        return self.windows.shape[0] - self.taken


class Producer:
    """A file that will submit windows soon (e.g. still decoding); see the module docstring.

    Registered on creation; :meth:`close` (idempotent, also on ``with`` exit) withdraws it, e.g. as
    soon as its file turned out undecodable, so the others stop waiting for it.
    """

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._open = True
        batcher._producers += 1
        batcher._idle.clear()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._batcher._producers -= 1
            self._batcher._wake.set()
            self._batcher._update_idle()

    async def submit(
        self, windows: np.ndarray, *, wait_for_room: bool = False, reservation: Reservation | None = None
    ) -> np.ndarray:
        batcher = self._batcher
        batcher._waiting_producers += 1
        batcher._wake.set()
        try:
            return await batcher.submit(windows, wait_for_room=wait_for_room, reservation=reservation)
        finally:
            batcher._waiting_producers -= 1


class Batcher:
    def __init__(
        self,
        run: RunFn | Sequence[RunFn],
        *,
        name: str,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        instances: int | None = None,
    ) -> None:
        """``run`` is one thread-safe callable (run by ``instances`` threads, default 1) or a sequence
        of callables, one per instance (``instances`` defaults to its length)."""
        runs = [run] if callable(run) else list(run)
        if instances is None:
            instances = len(runs)
        if len(runs) == 1:
            runs = runs * instances
        if max_batch_size < 1 or max_queue < max_batch_size or max_delay_s < 0:
            raise ValueError(
                f"need max_batch_size >= 1, max_queue >= max_batch_size, max_delay_s >= 0; got "
                f"{max_batch_size}, {max_queue}, {max_delay_s}"
            )
        if instances < 1 or len(runs) != instances:
            raise ValueError(f"need instances >= 1 and one run callable or one per instance; got {instances}")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.instances = instances
        self._free: deque[RunFn] = deque(runs)  # instances not computing a batch right now
        self._flights: set[asyncio.Task[None]] = set()
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: deque[_Request] = deque()
        self._queued = 0  # windows not yet handed to a batch
        self._reserved = 0  # windows admitted by reserve() but not submitted yet
        self._current: list[tuple[_Request, int, int]] = []  # the batch being formed or run
        self._producers = 0
        self._waiting_producers = 0
        self._users = 0  # requests holding this batcher (see use()); close() waits for them
        self._in_flight = 0  # batches computing
        self._batch_seconds = 0.0  # moving average, for Retry-After
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"infer-{name}")
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"batcher-{name}")

    @property
    def queued(self) -> int:
        """Windows waiting for a batch (not counting those computing)."""
        return self._queued

    @contextlib.contextmanager
    def use(self) -> Iterator[Batcher]:
        """Hold the batcher for a whole request: :meth:`close` (e.g. a hot reload) waits until released.

        A request resolves its model, then reads uploads or lists folders before it submits; without
        this hold, a reload in that gap would close the batcher under it.
        """
        self._users += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self._users -= 1
            self._update_idle()

    @property
    def occupancy(self) -> int:
        """Windows queued plus windows booked by admitted requests that have not submitted yet."""
        return self._queued + self._reserved

    async def reserve(self, windows: int, *, background: bool = False) -> Reservation:
        """Book queue room for a whole request before it decodes (see the module docstring).

        Foreground: :class:`RequestTooLarge` when ``windows`` exceeds ``max_queue``, :class:`QueueFull`
        when it does not fit now. Background: waits until the queue is less than half full (or
        empty, for a request larger than that), never failing for room.
        """
        if self._closed or self._closing:
            raise BatcherClosed(f"model {self.name!r} was unloaded; retry the request")
        if background:
            limit = self.max_queue // 2
            while self.occupancy and self.occupancy + windows > limit:
                self._room.clear()
                await self._room.wait()
            return Reservation(self, windows)
        if windows > self.max_queue:
            raise RequestTooLarge(self.name, windows, self.max_queue)
        if self.occupancy + windows > self.max_queue:
            raise QueueFull(self.name, self.occupancy, self.max_queue, self._retry_after())
        return Reservation(self, windows)

    def producer(self) -> Producer:
        """Register a file before its windows exist, so the scheduler knows more are coming."""
        return Producer(self)

    async def submit(
        self, windows: np.ndarray, *, wait_for_room: bool = False, reservation: Reservation | None = None
    ) -> np.ndarray:
        """Probabilities ``[n, labels]`` for ``windows`` ``[n, window]``, computed in shared batches.

        With a ``reservation`` the room was booked already (:meth:`reserve`). Without one, a full
        queue raises :class:`QueueFull`, or with ``wait_for_room`` waits until there is room; a
        submit larger than the whole queue is admitted into an empty queue, so it can always run.
        """
        if self._closed:
            raise BatcherClosed(f"model {self.name!r} was unloaded; retry the request")
        n = int(windows.shape[0])
        if windows.ndim != 2 or n == 0:
            raise ValueError(f"expected [n >= 1, window] windows, got shape {windows.shape}")
        if reservation is not None:
            reservation.draw(n)
        else:
            while self.occupancy and self.occupancy + n > self.max_queue:
                if not wait_for_room:
                    raise QueueFull(self.name, self.occupancy, self.max_queue, self._retry_after())
                self._room.clear()
                await self._room.wait()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        request = _Request(windows, future, reservation)
        self._queue.append(request)
        self._queued += n
        self._idle.clear()
        self._observer.queue_depth(self.name, self._queued)
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:
            self._drop(request)
            raise

    def _drop(self, request: _Request) -> None:
        """Forget the windows of a cancelled request that no batch has taken yet."""
        if request in self._queue:
            self._queue.remove(request)
            self._queued -= request.untaken
            request.taken = request.windows.shape[0]
            self._observer.queue_depth(self.name, self._queued)
            self._room.set()
        self._update_idle()

    def _retry_after(self) -> int:
        rounds_ahead = math.ceil(self.occupancy / (self.max_batch_size * self.instances))
        return max(1, math.ceil(rounds_ahead * self._batch_seconds))

    def _ready_to_run(self, now: float) -> bool:
        if self._queued >= self.max_batch_size or self._closing:
            return True
        if now - self._queue[0].enqueued_at >= self.max_delay_s:
            return True
        return self._producers > 0 and self._waiting_producers >= self._producers

    async def _supervise(self) -> None:
        """Run the scheduling loop; an unexpected error fails the current batch and restarts it."""
        while True:
            try:
                await self._schedule()
                return
            except Exception as exc:
                log.exception("model %r: batch scheduler failed; restarting it", self.name)
                self._observer.scheduler_restart(self.name)
                self._fail(self._current, RuntimeError(f"inference failed: scheduler error ({exc})"))
                self._current = []
                self._update_idle()

    def _fail(self, parts: list[tuple[_Request, int, int]], error: Exception) -> None:
        for request, _, _ in parts:
            if not request.future.done():
                request.future.set_exception(error)
            self._drop(request)

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._queue or not self._free:  # nothing to run, or every instance is computing
                self._update_idle()
                await self._wake.wait()
                continue
            now = time.monotonic()
            if not self._ready_to_run(now):
                timeout = self._queue[0].enqueued_at + self.max_delay_s - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            parts = self._current = self._take_batch()
            run = self._free.popleft()
            self._in_flight += 1
            self._current = []  # from here on the flight owns these parts
            flight = loop.create_task(self._run_batch(run, parts), name=f"batch-{self.name}")
            self._flights.add(flight)
            flight.add_done_callback(self._flights.discard)

    async def _run_batch(self, run: RunFn, parts: list[tuple[_Request, int, int]]) -> None:
        """One batch on one instance: assembly and inference in a worker thread, delivery on the loop.

        Whatever goes wrong, every request of the batch gets an answer: an inference error fails
        them (counted as ``batch_failed``), an unexpected error here too (``scheduler_restart``).
        """
        pieces = [request.windows[lo:hi] for request, lo, hi in parts]  # views: no copy on the loop
        size = sum(len(piece) for piece in pieces)
        try:
            try:
                probs, elapsed = await asyncio.get_running_loop().run_in_executor(
                    self._executor, _assemble_and_run, run, pieces
                )
            finally:
                self._in_flight -= 1
                self._free.append(run)
                self._wake.set()
        except Exception as exc:  # a failing model fails the requests in this batch, not the server
            log.error(
                "model %r: inference failed for a batch of %d windows",
                self.name,
                size,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            self._observer.batch_failed(self.name, size)
            self._fail(parts, RuntimeError(f"inference failed: {exc}"))
            return
        try:
            self._batch_seconds = (
                elapsed if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * elapsed
            )
            self._observer.batch_done(self.name, size, elapsed)
            self._deliver(parts, probs)
        except Exception as exc:  # a bug after inference: still answer every request of the batch
            log.exception("model %r: delivering a batch failed", self.name)
            self._observer.scheduler_restart(self.name)
            self._fail(parts, RuntimeError(f"inference failed: scheduler error ({exc})"))
        finally:
            self._update_idle()

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """Up to ``max_batch_size`` rows, shared out evenly between the requests (owners) queued.

        Each owner (one HTTP request: its :class:`Reservation`; else the submit itself) gets an equal
        share of the batch, oldest owner first, its files oldest first; room an owner cannot use goes
        to the others. Oldest-first over windows made a one-file request wait behind every window
        a 64-file upload had queued before it (measured: 3.4 s instead of 0.04 s).
        """
        parts: list[tuple[_Request, int, int]] = []
        room = self.max_batch_size
        now = time.monotonic()
        owners: dict[int, list[_Request]] = {}
        for request in self._queue:
            owners.setdefault(id(request if request.owner is None else request.owner), []).append(request)
        lines = list(owners.values())
        while room and lines:
            share = max(1, room // len(lines))
            for line in lines:
                want = min(share, room)
                while want and line:
                    request = line[0]
                    lo = request.taken
                    if lo == 0:
                        self._observer.queue_wait(self.name, now - request.enqueued_at)
                    hi = min(request.windows.shape[0], lo + want)
                    parts.append((request, lo, hi))
                    request.taken = hi
                    want -= hi - lo
                    room -= hi - lo
                    if request.untaken == 0:
                        line.pop(0)
                if not room:
                    break
            lines = [line for line in lines if line]
        if any(request.untaken == 0 for request, _, _ in parts):
            self._queue = deque(request for request in self._queue if request.untaken)
        taken = self.max_batch_size - room
        self._queued -= taken
        self._observer.queue_depth(self.name, self._queued)
        self._room.set()
        return parts

    def _deliver(self, parts: list[tuple[_Request, int, int]], probs: np.ndarray) -> None:
        row = 0
        for request, lo, hi in parts:
            chunk = probs[row : row + hi - lo]
            row += hi - lo
            if request.future.done():  # cancelled or failed earlier
                continue
            if request.out is None:
                request.out = np.empty((request.windows.shape[0], probs.shape[1]), dtype=np.float32)
            request.out[lo:hi] = chunk
            request.remaining -= hi - lo
            if request.remaining == 0:
                request.future.set_result(request.out)
        self._update_idle()

    def _update_idle(self) -> None:
        if not self._queue and not self._in_flight and self._producers == 0 and self._users == 0:
            self._idle.set()

    async def close(self) -> None:
        """Finish every queued window, producer and user (:meth:`use`), then stop (graceful drain)."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        await self._idle.wait()
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._executor.shutdown(wait=True)

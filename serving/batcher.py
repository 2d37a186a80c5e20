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
:class:`QueueFull` (the app answers 503 + Retry-After) unless the caller chose to wait for room.
A cancelled submit (client gone) removes its windows that have not started computing.
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


class BatcherClosed(RuntimeError):
    """Submit after :meth:`Batcher.close` finished."""


class BatchObserver(Protocol):
    """Metrics hooks; the app implements them with Prometheus (see :mod:`serving.metrics`)."""

    def queue_depth(self, model: str, depth: int) -> None: ...

    def batch_done(self, model: str, size: int, seconds: float) -> None: ...


class _NullObserver:
    def queue_depth(self, model: str, depth: int) -> None:
        pass

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        pass


class _Request:
    """One submit: its windows, the rows handed to batches so far, and where results go."""

    __slots__ = ("windows", "out", "taken", "remaining", "future", "enqueued_at")

    def __init__(self, windows: np.ndarray, future: asyncio.Future[np.ndarray]) -> None:
        self.windows = windows
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

    async def submit(self, windows: np.ndarray, *, wait_for_room: bool = False) -> np.ndarray:
        batcher = self._batcher
        batcher._waiting_producers += 1
        batcher._wake.set()
        try:
            return await batcher.submit(windows, wait_for_room=wait_for_room)
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
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name=f"batcher-{name}")

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

    def producer(self) -> Producer:
        """Register a file before its windows exist, so the scheduler knows more are coming."""
        return Producer(self)

    async def submit(self, windows: np.ndarray, *, wait_for_room: bool = False) -> np.ndarray:
        """Probabilities ``[n, labels]`` for ``windows`` ``[n, window]``, computed in shared batches.

        A full queue raises :class:`QueueFull`, or with ``wait_for_room`` waits until there is room
        (for long directory jobs that feed chunks and should slow down rather than fail). A request
        larger than the whole queue is admitted into an empty queue, so it can always run.
        """
        if self._closed:
            raise BatcherClosed(f"model {self.name!r} was unloaded; retry the request")
        n = int(windows.shape[0])
        if windows.ndim != 2 or n == 0:
            raise ValueError(f"expected [n >= 1, window] windows, got shape {windows.shape}")
        while self._queued and self._queued + n > self.max_queue:
            if not wait_for_room:
                raise QueueFull(self.name, self._queued, self.max_queue, self._retry_after())
            self._room.clear()
            await self._room.wait()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        request = _Request(windows, future)
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
        rounds_ahead = math.ceil(self._queued / (self.max_batch_size * self.instances))
        return max(1, math.ceil(rounds_ahead * self._batch_seconds))

    def _ready_to_run(self, now: float) -> bool:
        if self._queued >= self.max_batch_size or self._closing:
            return True
        if now - self._queue[0].enqueued_at >= self.max_delay_s:
            return True
        return self._producers > 0 and self._waiting_producers >= self._producers

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
            parts = self._take_batch()
            run = self._free.popleft()
            self._in_flight += 1
            flight = loop.create_task(self._run_batch(run, parts), name=f"batch-{self.name}")
            self._flights.add(flight)
            flight.add_done_callback(self._flights.discard)

    async def _run_batch(self, run: RunFn, parts: list[tuple[_Request, int, int]]) -> None:
        """One batch on one instance: assembly and inference in a worker thread, delivery on the loop."""
        pieces = [request.windows[lo:hi] for request, lo, hi in parts]  # views: no copy on the loop
        size = sum(len(piece) for piece in pieces)
        failure: Exception | None = None
        try:
            probs, elapsed = await asyncio.get_running_loop().run_in_executor(
                self._executor, _assemble_and_run, run, pieces
            )
        except Exception as exc:  # a failing model fails the requests in this batch, not the server
            failure = exc
        finally:
            self._in_flight -= 1
            self._free.append(run)
            self._wake.set()
        if failure is not None:
            log.error(
                "model %r: inference failed for a batch of %d windows",
                self.name,
                size,
                exc_info=(type(failure), failure, failure.__traceback__),
            )
            for request, _, _ in parts:
                if not request.future.done():
                    request.future.set_exception(RuntimeError(f"inference failed: {failure}"))
                self._drop(request)
            return
        self._batch_seconds = (
            elapsed if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * elapsed
        )
        self._observer.batch_done(self.name, size, elapsed)
        self._deliver(parts, probs)

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        """Up to ``max_batch_size`` rows from the front of the queue, oldest first."""
        parts: list[tuple[_Request, int, int]] = []
        room = self.max_batch_size
        while room and self._queue:
            request = self._queue[0]
            lo = request.taken
            hi = min(request.windows.shape[0], lo + room)
            parts.append((request, lo, hi))
            request.taken = hi
            room -= hi - lo
            if request.untaken == 0:
                self._queue.popleft()
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

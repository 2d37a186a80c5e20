"""The model repository: every ``.onnx`` under ``--model-dir``, loaded on start or on first use.

A model id is the artifact's path relative to the model directory (``demo/tiny.onnx``); ids are
looked up in the scanned table only, so a request can never name a file outside the directory.
A broken artifact is an entry with an ``error`` (shown by ``GET /models``), never an exception that
stops the server: *every* exception at load or warm-up (ORT's ``Fail``/``InvalidArgument``, a CUDA
out-of-memory) is caught per model, so the good models beside a bad one still load. Failures are
classified: a permanent one (the file is not a valid artifact) answers :class:`ModelBroken` (424, do
not retry) until the file changes; a transient one (out of memory, a device error) answers
:class:`ModelUnavailable` (503 + Retry-After) and is retried with exponential backoff. With hot reload the directory is polled by mtime: a new or replaced file is loaded
beside the old one, swapped in once warm, and the old batcher drains its in-flight requests before
it stops, so a reload drops nothing. A file still being copied (size or mtime changed since the last
poll) is left alone until it is stable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from serving.batcher import Batcher, BatchObserver, RunFn
from serving.runtime import OnnxModel, fp16_sibling
from serving.settings import Settings

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    def __init__(self, model_id: str, known: list[str]) -> None:
        super().__init__(
            f"unknown model {model_id!r}; GET /models lists the available ids: {', '.join(known) or 'none'}"
        )


class ModelUnavailable(RuntimeError):
    """The model cannot serve now but may soon (loading, or a transient load failure): 503."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelBroken(RuntimeError):
    """The artifact failed to load for a reason retrying cannot fix (until the file changes): 424."""


# Load failures that a retry may cure: memory and device trouble, not a malformed file.
_TRANSIENT = re.compile(
    r"out of memory|\boom\b|cuda|cudnn|cublas|resource exhausted|temporarily unavailable|"
    r"too many open files|no space left",
    re.IGNORECASE,
)
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 300.0


def is_transient(exc: BaseException) -> bool:
    """True for load failures worth retrying (memory, device, OS resource limits)."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | IsADirectoryError):
        return True
    return bool(_TRANSIENT.search(str(exc)))


@dataclass(frozen=True)
class LoadedModel:
    id: str
    model: OnnxModel
    batcher: Batcher


@dataclass
class ModelEntry:
    id: str
    path: Path
    stamp: tuple[int, ...]
    loaded: LoadedModel | None = None
    error: str | None = None
    transient: bool = False
    failures: int = 0
    retry_at: float = 0.0
    """Monotonic time before which a failed load is not retried."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fail(self, exc: BaseException, stamp: tuple[int, ...]) -> None:
        self.error = str(exc) or type(exc).__name__
        self.transient = is_transient(exc)
        self.failures += 1
        self.stamp = stamp
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay

    def may_retry(self) -> bool:
        """A failed load is retried after its backoff (transient) or once the file changed (permanent)."""
        if self.error is None:
            return True
        if self.transient:
            return time.monotonic() >= self.retry_at
        try:
            return _stamp(self.path) != self.stamp
        except OSError:
            return False


def _stamp(path: Path) -> tuple[int, ...]:
    """mtime and size of the artifact and of its fp16 sibling (replacing either one reloads the model)."""
    stat = path.stat()
    stamp: tuple[int, ...] = (stat.st_mtime_ns, stat.st_size)
    sibling = fp16_sibling(path)
    if sibling is not None:
        try:
            half = sibling.stat()
        except OSError:
            return stamp
        stamp += (half.st_mtime_ns, half.st_size)
    return stamp


def scan_model_dir(model_dir: Path) -> dict[str, Path]:
    """``{id: path}`` of every ``.onnx`` file below ``model_dir``, sorted, symlink escapes skipped.

    ``x.fp16.onnx`` beside ``x.onnx`` is not a model of its own: it is the half-precision variant
    that ``x.onnx``'s entry serves on CUDA (see :mod:`serving.runtime`). An fp16 file with no fp32
    file beside it is listed as a model.
    """
    root = model_dir.resolve()
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        onnx = [Path(dirpath) / name for name in sorted(filenames) if name.lower().endswith(".onnx")]
        variants = {fp16_sibling(path) for path in onnx}
        for path in onnx:
            if path in variants:
                continue
            if not path.resolve().is_relative_to(root):
                log.warning("skipping %s: it resolves outside the model directory %s", path, root)
                continue
            found[path.relative_to(root).as_posix()] = path
    return found


@runtime_checkable
class PhaseObserver(Protocol):
    """An observer that also records each batch's h2d / compute / d2h split (ServerMetrics does)."""

    def batch_phases(self, model: str, phases: dict[str, float]) -> None: ...


def _reporting_phases(
    run: RunFn, model: OnnxModel, instance: int, name: str, observer: PhaseObserver
) -> RunFn:
    """``run`` that hands the instance's h2d / compute / d2h split to ``observer`` after each batch
    (in the same worker thread, so the split read is this batch's; nothing where ORT reports none)."""

    def run_and_report(windows: np.ndarray) -> np.ndarray:
        probs = run(windows)
        phases = model.last_phases(instance)
        if phases:
            observer.batch_phases(name, phases)
        return probs

    return run_and_report


class ModelRegistry:
    def __init__(self, settings: Settings, observer: BatchObserver | None = None) -> None:
        self.settings = settings
        self.observer = observer
        self.model_dir = settings.model_dir.resolve()
        self.entries: dict[str, ModelEntry] = {}
        self.requested: tuple[str, ...] = ()
        self._startup: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    # ---- start / stop -------------------------------------------------------------------------------

    def start(self) -> None:
        """Scan, then load the start-up models in the background (``/ready`` turns 200 when done)."""
        for model_id, path in scan_model_dir(self.model_dir).items():
            self.entries[model_id] = ModelEntry(model_id, path, _stamp(path))
        if self.settings.lazy:
            self.requested = ()
        else:
            self.requested = self.settings.models or tuple(self.entries)
        for model_id in self.requested:
            if model_id not in self.entries:
                log.error("--model %s: no such artifact under %s; /ready stays 503", model_id, self.model_dir)
        self._startup = asyncio.get_running_loop().create_task(self._load_requested(), name="load-models")
        if self.settings.hot_reload:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="hot-reload")

    async def _load_requested(self) -> None:
        for model_id in self.requested:
            entry = self.entries.get(model_id)
            if entry is not None:
                await self._ensure_loaded(entry)

    async def close(self) -> None:
        """Stop watching and drain every batcher (in-flight requests finish first)."""
        for task in (self._watcher, self._startup):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        batchers = [e.loaded.batcher for e in self.entries.values() if e.loaded is not None]
        await asyncio.gather(*(b.close() for b in batchers), *self._retiring)

    # ---- lookups --------------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, str]]:
        """``(ready, status per start-up model)``.

        Ready means serving: models named with ``--model`` must all be loaded; with none named, at
        least one model is loaded and no start-up load failed (a load balancer should not send
        traffic to a replica whose model directory holds a broken artifact). Lazy servers are ready
        at once: nothing is loaded before the first request.
        """
        status: dict[str, str] = {}
        for model_id in self.requested:
            entry = self.entries.get(model_id)
            if entry is None:
                status[model_id] = f"not found under {self.model_dir}"
            elif entry.loaded is not None:
                status[model_id] = "ready"
            elif entry.error is not None:
                status[model_id] = entry.error
            else:
                status[model_id] = "loading"
        if self.settings.lazy:
            return True, status
        all_ready = all(s == "ready" for s in status.values())
        if self.settings.models:
            return all_ready, status
        return bool(status) and all_ready, status

    async def get(self, model_id: str) -> LoadedModel:
        """The loaded model for ``model_id``, loading it now if it is lazy."""
        entry = self.entries.get(model_id)
        if entry is None:
            raise ModelNotFound(model_id, sorted(self.entries))
        loaded = await self._ensure_loaded(entry)
        if loaded is not None:
            return loaded
        if entry.transient:
            wait = max(1, math.ceil(entry.retry_at - time.monotonic()))
            raise ModelUnavailable(f"model {model_id!r} failed to load: {entry.error}", retry_after_s=wait)
        raise ModelBroken(f"model {model_id!r} cannot be loaded: {entry.error}")

    @contextlib.asynccontextmanager
    async def use(self, model_id: str) -> AsyncIterator[LoadedModel]:
        """The loaded model, held for the whole request so a hot reload drains instead of dropping it."""
        loaded = await self.get(model_id)
        with loaded.batcher.use():
            yield loaded

    # ---- loading ----------------------------------------------------------------------------------------

    def _warmup_sizes(self) -> list[int]:
        sizes = {self.settings.max_batch_size}
        size = 1
        while size < self.settings.max_batch_size:
            sizes.add(size)
            size *= 2
        return sorted(sizes)

    def _load_blocking(self, path: Path) -> OnnxModel:
        budget = self.settings.budget
        model = OnnxModel(
            path,
            self.settings.device,
            budget.intra_op_threads,
            instances=budget.instances,
            max_batch_size=self.settings.max_batch_size,
            cuda_graph=self.settings.cuda_graph,
        )
        model.warmup(self._warmup_sizes())
        return model

    async def _load(self, entry: ModelEntry) -> LoadedModel:
        model = await asyncio.to_thread(self._load_blocking, entry.path)
        runners = model.runners
        if isinstance(self.observer, PhaseObserver):
            runners = [
                _reporting_phases(run, model, i, entry.id, self.observer) for i, run in enumerate(runners)
            ]
        batcher = Batcher(
            runners,
            name=entry.id,
            max_batch_size=self.settings.max_batch_size,
            max_delay_s=self.settings.max_batch_delay_s,
            max_queue=self.settings.max_queue,
            observer=self.observer,
        )
        return LoadedModel(entry.id, model, batcher)

    async def _ensure_loaded(self, entry: ModelEntry) -> LoadedModel | None:
        if entry.loaded is not None or not entry.may_retry():
            return entry.loaded
        async with entry.lock:
            if entry.loaded is None and entry.may_retry():
                stamp = entry.stamp
                with contextlib.suppress(OSError):
                    stamp = _stamp(entry.path)
                try:
                    entry.loaded = await self._load(entry)
                    entry.error, entry.failures, entry.stamp = None, 0, stamp
                except Exception as exc:  # ORT raises its own types (Fail, InvalidArgument, ...)
                    entry.fail(exc, stamp)
                    log.error(
                        "model %s not loaded (%s, %s): %s",
                        entry.id,
                        "transient" if entry.transient else "permanent",
                        f"retry in {entry.retry_at - time.monotonic():.0f} s"
                        if entry.transient
                        else "retried when the file changes",
                        entry.error,
                    )
        return entry.loaded

    # ---- hot reload -------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        previous = {model_id: e.stamp for model_id, e in self.entries.items()}
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                previous = await self.poll(previous)
            except OSError as exc:  # the directory itself vanished or is unreadable: keep serving
                log.error("hot reload: cannot scan %s: %s", self.model_dir, exc)
            except Exception:  # a bug must not stop the watcher silently: log it, poll again
                log.exception("hot reload: poll of %s failed; watching on", self.model_dir)

    async def poll(self, previous: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """One hot-reload pass; ``previous`` is the last pass's stamps, returns this pass's.

        A file is (re)loaded only when its stamp equals the previous pass's, i.e. it stopped changing.
        """
        current: dict[str, tuple[int, ...]] = {}
        found = scan_model_dir(self.model_dir)
        for model_id, path in found.items():
            with contextlib.suppress(FileNotFoundError):
                current[model_id] = _stamp(path)
        for model_id in sorted(set(self.entries) - set(found)):
            log.info("hot reload: %s removed", model_id)
            self._retire(self.entries.pop(model_id))
        for model_id, stamp in current.items():
            entry = self.entries.get(model_id)
            if stamp != previous.get(model_id) or (entry is not None and entry.stamp == stamp):
                continue
            if entry is None:
                log.info("hot reload: new model %s", model_id)
                entry = self.entries[model_id] = ModelEntry(model_id, found[model_id], stamp)
                if not self.settings.lazy and not self.settings.models:
                    await self._ensure_loaded(entry)
            else:
                await self._replace(entry, stamp)
        return current

    async def _replace(self, entry: ModelEntry, stamp: tuple[int, ...]) -> None:
        if entry.loaded is None:  # lazy or failed before: forget the old error, load like at start
            entry.stamp, entry.error, entry.failures = stamp, None, 0
            if entry.id in self.requested:
                await self._ensure_loaded(entry)
            return
        async with entry.lock:
            entry.stamp = stamp
            try:
                fresh = await self._load(entry)
            except Exception as exc:  # ORT raises its own types (Fail, InvalidArgument, ...)
                entry.error = f"reload failed, still serving the previous version: {exc}"
                log.error("hot reload: %s: %s", entry.id, exc)
                return
            old, entry.loaded, entry.error = entry.loaded, fresh, None
            log.info("hot reload: %s replaced", entry.id)
            self._retire_batcher(old.batcher)

    def _retire(self, entry: ModelEntry) -> None:
        if entry.loaded is not None:
            self._retire_batcher(entry.loaded.batcher)

    def _retire_batcher(self, batcher: Batcher) -> None:
        task = asyncio.get_running_loop().create_task(batcher.close(), name=f"retire-{batcher.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

"""The model repository: every ``.onnx`` under ``--model-dir``, loaded on start or on first use.

A model id is the artifact's path relative to the model directory (``demo/tiny.onnx``); ids are
looked up in the scanned table only, so a request can never name a file outside the directory.
A broken artifact is an entry with an ``error`` (shown by ``GET /models``), never an exception that
stops the server. With hot reload the directory is polled by mtime: a new or replaced file is loaded
beside the old one, swapped in once warm, and the old batcher drains its in-flight requests before
it stops, so a reload drops nothing. A file still being copied (size or mtime changed since the last
poll) is left alone until it is stable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from common.artifact import ArtifactError
from serving.batcher import Batcher, BatchObserver
from serving.runtime import OnnxModel
from serving.settings import Settings

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    def __init__(self, model_id: str, known: list[str]) -> None:
        super().__init__(
            f"unknown model {model_id!r}; GET /models lists the available ids: {', '.join(known) or 'none'}"
        )


class ModelUnavailable(RuntimeError):
    """The artifact exists but failed to load; the message carries the load error."""


@dataclass(frozen=True)
class LoadedModel:
    id: str
    model: OnnxModel
    batcher: Batcher


@dataclass
class ModelEntry:
    id: str
    path: Path
    stamp: tuple[int, int]
    loaded: LoadedModel | None = None
    error: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def scan_model_dir(model_dir: Path) -> dict[str, Path]:
    """``{id: path}`` of every ``.onnx`` file below ``model_dir``, sorted, symlink escapes skipped."""
    root = model_dir.resolve()
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            if not filename.lower().endswith(".onnx"):
                continue
            path = Path(dirpath) / filename
            if not path.resolve().is_relative_to(root):
                log.warning("skipping %s: it resolves outside the model directory %s", path, root)
                continue
            found[path.relative_to(root).as_posix()] = path
    return found


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

        Models named with ``--model`` must all be loaded. When every artifact is loaded (no
        ``--model``), a broken one does not hold the others back: the server is ready once every
        load has been attempted, and the failures stay visible here and in ``GET /models``.
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
        if self.settings.models:
            return all(s == "ready" for s in status.values()), status
        return self._startup is not None and self._startup.done(), status

    async def get(self, model_id: str) -> LoadedModel:
        """The loaded model for ``model_id``, loading it now if it is lazy."""
        entry = self.entries.get(model_id)
        if entry is None:
            raise ModelNotFound(model_id, sorted(self.entries))
        loaded = await self._ensure_loaded(entry)
        if loaded is None:
            raise ModelUnavailable(f"model {model_id!r} failed to load: {entry.error}")
        return loaded

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
        batcher = Batcher(
            model.runners,
            name=entry.id,
            max_batch_size=self.settings.max_batch_size,
            max_delay_s=self.settings.max_batch_delay_s,
            max_queue=self.settings.max_queue,
            observer=self.observer,
        )
        return LoadedModel(entry.id, model, batcher)

    async def _ensure_loaded(self, entry: ModelEntry) -> LoadedModel | None:
        if entry.loaded is not None or entry.error is not None:
            return entry.loaded
        async with entry.lock:
            if entry.loaded is None and entry.error is None:
                try:
                    entry.loaded = await self._load(entry)
                except (ArtifactError, OSError) as exc:
                    entry.error = str(exc)
                    log.error("model %s not loaded: %s", entry.id, exc)
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

    async def poll(self, previous: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """One hot-reload pass; ``previous`` is the last pass's stamps, returns this pass's.

        A file is (re)loaded only when its stamp equals the previous pass's, i.e. it stopped changing.
        """
        current: dict[str, tuple[int, int]] = {}
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

    async def _replace(self, entry: ModelEntry, stamp: tuple[int, int]) -> None:
        if entry.loaded is None:  # lazy or failed before: forget the old error, load like at start
            entry.stamp, entry.error = stamp, None
            if entry.id in self.requested:
                await self._ensure_loaded(entry)
            return
        async with entry.lock:
            entry.stamp = stamp
            try:
                fresh = await self._load(entry)
            except (ArtifactError, OSError) as exc:
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

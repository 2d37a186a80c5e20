"""File -> windows -> batcher -> per-file aggregation -> thresholds: the one path every endpoint uses.

Decoding and resampling run in a thread pool (libsndfile and soxr release the GIL), never on the
event loop. Each file registers as a batcher producer *before* it decodes, so the batcher knows more
windows are on the way (see :mod:`serving.batcher`). Per-file problems (corrupt, empty, too long,
outside the data root) become error entries; only a full queue fails a whole upload request.
Directory jobs run in bounded chunks of files, so a 100k-file directory never sits in memory.
For test-directory, :class:`Evaluation` keeps only file-level labels and probabilities (11 floats
each) for :func:`common.metrics.compute_metrics`, the same metrics ``lumen-test`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from common.artifact import ArtifactMetadata
from common.audio import AudioError, Windows, aggregate, is_audio_path, load_audio, split_windows
from common.datasets import DatasetError, DatasetSpec, scan_dataset
from common.labels import index_of
from common.metrics import compute_metrics
from serving.batcher import BatcherClosed, Producer, QueueFull
from serving.evaluation import normalize_audio
from serving.metrics import ServerMetrics
from serving.registry import LoadedModel
from serving.schemas import DatasetRef, FileMetrics, InstrumentMetrics, TimelineWindow

PROB_DECIMALS = 6

AudioInput = bytes | Path


class PathForbidden(Exception):
    """A requested path that resolves outside every ``--data-root``."""


class InvalidPath(ValueError):
    """A requested path the file system cannot even look up (NUL byte, name too long, symlink loop)."""


@dataclass(frozen=True)
class Job:
    """One file to predict: its response key, its bytes or server path, or an error found earlier."""

    key: str
    source: AudioInput | None = None
    error: str | None = None
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class FileResult:
    key: str
    probs: np.ndarray | None = None
    error: str | None = None
    windows: Windows | None = None
    window_probs: np.ndarray | None = None
    labels: np.ndarray | None = None


def decode_windows(source: AudioInput, key: str, meta: ArtifactMetadata, max_seconds: float) -> Windows:
    """Exactly what ``lumen-test`` does to a file (same rate, normalisation, windows), so answers agree."""
    audio = load_audio(
        source, meta.sample_rate, name=key, normalize=normalize_audio(meta), max_seconds=max_seconds
    )
    return split_windows(audio, meta.window_samples, meta.hop_samples)


class Pipeline:
    def __init__(self, decode_pool: Executor, metrics: ServerMetrics, max_audio_seconds: float) -> None:
        self.decode_pool = decode_pool
        self.metrics = metrics
        self.max_audio_seconds = max_audio_seconds

    async def _predict_file(
        self, loaded: LoadedModel, job: Job, producer: Producer, *, wait_for_room: bool, keep_windows: bool
    ) -> FileResult:
        with producer:  # withdrawn as soon as this file is done, whatever the outcome
            return await self._predict_registered(loaded, job, producer, wait_for_room, keep_windows)

    async def _predict_registered(
        self, loaded: LoadedModel, job: Job, producer: Producer, wait_for_room: bool, keep_windows: bool
    ) -> FileResult:
        if job.error is not None or job.source is None:
            return FileResult(job.key, error=job.error or "no input", labels=job.labels)
        meta = loaded.model.metadata
        loop = asyncio.get_running_loop()
        try:
            windows = await loop.run_in_executor(
                self.decode_pool, decode_windows, job.source, job.key, meta, self.max_audio_seconds
            )
        except (AudioError, OSError) as exc:
            self.metrics.decode_errors.labels(loaded.id).inc()
            reason = (
                exc.reason if isinstance(exc, AudioError) else f"cannot read file ({exc.strerror or exc})"
            )
            return FileResult(job.key, error=reason, labels=job.labels)
        try:
            window_probs = await producer.submit(windows.audio, wait_for_room=wait_for_room)
        except QueueFull:
            raise
        except (RuntimeError, BatcherClosed) as exc:  # inference failed, or the model was removed
            return FileResult(job.key, error=str(exc), labels=job.labels)
        probs = aggregate(window_probs, meta.aggregation, valid=windows.valid)
        return FileResult(
            job.key,
            probs=probs,
            windows=windows if keep_windows else None,
            window_probs=window_probs if keep_windows else None,
            labels=job.labels,
        )

    async def predict(
        self,
        loaded: LoadedModel,
        jobs: Sequence[Job],
        *,
        wait_for_room: bool = False,
        keep_windows: bool = False,
    ) -> list[FileResult]:
        """Results in job order. :class:`QueueFull` cancels the other files and propagates."""
        with (
            contextlib.ExitStack() as stack
        ):  # all files registered before any decodes; closing is idempotent
            producers = [stack.enter_context(loaded.batcher.producer()) for _ in jobs]
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(
                            self._predict_file(
                                loaded, job, producer, wait_for_room=wait_for_room, keep_windows=keep_windows
                            )
                        )
                        for job, producer in zip(jobs, producers, strict=True)
                    ]
            except* QueueFull as group_error:
                raise group_error.exceptions[0] from None
        return [task.result() for task in tasks]

    async def predict_chunks(
        self, loaded: LoadedModel, jobs: Iterable[Job], chunk_files: int, *, keep_windows: bool = False
    ) -> AsyncIterator[list[FileResult]]:
        """Directory jobs: ``chunk_files`` files at a time; waits for queue room instead of failing.

        ``jobs`` may walk folders or read CSVs as it goes, so it is advanced in a worker thread.
        """
        source = iter(jobs)
        while chunk := await asyncio.to_thread(lambda: list(itertools.islice(source, chunk_files))):
            yield await self.predict(loaded, chunk, wait_for_room=True, keep_windows=keep_windows)


# ---- results -> response maps ------------------------------------------------------------------------


def thresholds_for(meta: ArtifactMetadata, override: float | None) -> np.ndarray:
    values = [override] * len(meta.labels) if override is not None else meta.thresholds
    return np.asarray(values, dtype=np.float32)


@dataclass
class ResponseMaps:
    """The dictionaries every predict/test response is made of, filled result by result."""

    labels: list[str]
    thresholds: np.ndarray
    sample_rate: int
    timeline_on: bool = False

    def __post_init__(self) -> None:
        self.predictions: dict[str, dict[str, int]] = {}
        self.probabilities: dict[str, dict[str, float]] = {}
        self.errors: dict[str, str] = {}
        self.timeline: dict[str, list[TimelineWindow]] = {}

    def add(self, result: FileResult) -> None:
        if result.probs is None:
            error = result.error or "unknown error"
            earlier = self.errors.get(result.key)  # e.g. several bad rows of one CSV
            self.errors[result.key] = f"{earlier}; {error}" if earlier else error
            return
        self.probabilities[result.key] = self._probs(result.probs)
        self.predictions[result.key] = {
            code: int(p >= t) for code, p, t in zip(self.labels, result.probs, self.thresholds, strict=True)
        }
        if self.timeline_on and result.windows is not None and result.window_probs is not None:
            sr = self.sample_rate
            self.timeline[result.key] = [
                TimelineWindow(
                    start=round(int(s) / sr, 4), end=round(int(s + v) / sr, 4), probabilities=self._probs(p)
                )
                for s, v, p in zip(
                    result.windows.starts, result.windows.valid, result.window_probs, strict=True
                )
            ]

    def _probs(self, values: np.ndarray) -> dict[str, float]:
        return {code: round(float(p), PROB_DECIMALS) for code, p in zip(self.labels, values, strict=True)}


# ---- server paths --------------------------------------------------------------------------------------


class DataRoots:
    """The directories directory endpoints may read; every path is checked after resolving symlinks."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]

    def _root_of(self, resolved: Path) -> Path | None:
        return next((root for root in self.roots if resolved.is_relative_to(root)), None)

    def resolve(self, raw: str) -> Path:
        """A client path (relative to a data root, or absolute) -> resolved path, or PathForbidden."""
        if "\x00" in raw:
            raise InvalidPath(f"path {raw!r} contains a NUL byte")
        candidate = Path(raw)
        options = [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]
        try:
            for option in options:
                resolved = option.resolve()
                if self._root_of(resolved) is None:
                    raise PathForbidden(
                        f"path {raw!r} is outside the data root ({', '.join(map(str, self.roots))}); "
                        "only files below --data-root can be read"
                    )
                if resolved.exists():
                    return resolved
            return options[0].resolve()
        except (OSError, RuntimeError) as exc:  # ENAMETOOLONG, ELOOP (RuntimeError on Python 3.11)
            raise InvalidPath(f"path {raw!r} cannot be looked up: {exc}") from None

    def key(self, path: Path) -> str:
        """Response key: the path relative to the data root it lies in (posix), else the path itself."""
        path = Path(os.path.normpath(path))
        root = self._root_of(path)
        return path.relative_to(root).as_posix() if root is not None else str(path)

    def check(self, path: Path) -> tuple[str, str | None]:
        """``(key, error)`` for a file met while walking or listed in a CSV: it must stay in the roots."""
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # symlink loop (RuntimeError on Python 3.11)
            return self.key(path), f"cannot be looked up: {exc}"
        if self._root_of(resolved) is None:
            return self.key(path), "resolves outside --data-root; skipped"
        return self.key(path), None


def _walk(root: Path) -> Iterator[Path]:
    """Audio files below ``root``, lazily, sorted per folder; hidden names (``._x.wav``) skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith(".") and is_audio_path(filename):
                yield Path(dirpath) / filename


def iter_audio_jobs(roots: DataRoots, resolved: list[Path]) -> Iterator[Job]:
    """Jobs for resolved request paths: folders (walked lazily), audio files, or CSVs with a ``file`` column."""
    for path in resolved:
        if path.is_dir():
            files: Iterable[Path] = _walk(path)
        elif not path.exists():
            yield Job(roots.key(path), error="not found")
            continue
        elif path.suffix.lower() == ".csv":
            try:
                items, issues = scan_dataset(DatasetSpec("inference", path))
            except DatasetError as exc:
                yield Job(roots.key(path), error=str(exc))
                continue
            yield from (Job(roots.key(Path(issue.path).resolve()), error=issue.error) for issue in issues)
            files = (item.path for item in items)
        elif is_audio_path(path):
            files = [path]
        else:
            yield Job(roots.key(path), error="not an audio file, CSV or folder (audio: .wav .flac .ogg .mp3)")
            continue
        for file in files:
            key, error = roots.check(file)
            yield Job(key, error=error) if error else Job(key, source=file)


# ---- evaluation (test-directory) -------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Accumulates file-level ground truth and probabilities for :func:`common.metrics.compute_metrics`."""

    labels: list[str]
    thresholds: np.ndarray
    with_instruments: bool

    def __post_init__(self) -> None:
        self.columns = [index_of(code) for code in self.labels]
        self.y_true: list[np.ndarray] = []
        self.y_prob: list[np.ndarray] = []

    def add(self, result: FileResult) -> None:
        if result.probs is not None and result.labels is not None:
            self.y_true.append(result.labels[self.columns])
            self.y_prob.append(result.probs)

    def metrics(self) -> tuple[FileMetrics | None, dict[str, InstrumentMetrics] | None]:
        if not self.y_true:
            return None, None
        values = compute_metrics(
            np.stack(self.y_true), np.stack(self.y_prob), thresholds=self.thresholds, labels=self.labels
        )
        per_instrument = values.pop("per_instrument")
        file_metrics = msgspec.convert({k: values[k] for k in FileMetrics.__struct_fields__}, FileMetrics)
        if not self.with_instruments:
            return file_metrics, None
        return file_metrics, {
            code: msgspec.convert(per_instrument[code], InstrumentMetrics) for code in self.labels
        }


def dataset_jobs(roots: DataRoots, refs: list[DatasetRef]) -> list[Job]:
    """Labelled jobs of every dataset (blocking: scans folders); problems become error jobs.

    A dataset outside the roots is refused as a whole (PathForbidden); files a CSV lists outside
    them are refused one by one.
    """
    jobs: list[Job] = []
    for ref in refs:
        root = roots.resolve(ref.dataset_path)
        if not root.exists():
            jobs.append(Job(roots.key(root), error="dataset path not found"))
            continue
        try:
            items, issues = scan_dataset(DatasetSpec(ref.dataset_type, root))
        except DatasetError as exc:
            jobs.append(Job(roots.key(root), error=str(exc)))
            continue
        jobs.extend(Job(roots.key(Path(issue.path)), error=issue.error) for issue in issues)
        for item in items:
            key, error = roots.check(item.path)
            jobs.append(Job(key, source=None if error else item.path, error=error, labels=item.labels))
    return jobs

"""File -> windows -> batcher -> per-file aggregation -> thresholds: the one path every endpoint uses.

Admission runs cheapest first (see DESIGN.md): the app has already checked body size and counts;
here every file's header is probed (``soundfile`` reads a few bytes, in the decode pool) against
the format allow-list and :class:`common.audio.DecodeLimits`; each file is priced in bytes (its
decode, resample and windows, see :func:`file_cost`) against the per-request budget
(``--max-request-mb``), and the whole request books its windows in the batcher at once
(:meth:`serving.batcher.Batcher.reserve`). Only then does anything decode, block-wise, at most
``decode_workers`` files of one request at a time so a 64-file upload cannot queue 64 decodes ahead
of everyone else.

Decoding and resampling run in a thread pool (libsndfile and soxr release the GIL), never on the
event loop. Each file registers as a batcher producer *before* it decodes, so the batcher knows more
windows are on the way (see :mod:`serving.batcher`). Per-file problems (corrupt, empty, too long,
outside the data root) become error entries. Directory jobs run in bounded chunks of files, split
further so that each chunk fits the budget, so a 100k-file directory never sits in memory.
For test-directory, :class:`Evaluation` keeps only file-level labels and probabilities (11 floats
each) for :func:`common.metrics.compute_metrics`, the same metrics ``lumen-test`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from common.artifact import ArtifactMetadata
from common.audio import (
    MIB,
    AudioError,
    AudioInfo,
    DecodeLimits,
    Windows,
    aggregate,
    is_audio_path,
    load_audio,
    probe,
    split_windows,
    window_count,
)
from common.datasets import DatasetError, DatasetSpec, scan_dataset
from common.labels import index_of
from common.metrics import compute_metrics
from serving.batcher import BatcherClosed, Producer, Reservation
from serving.evaluation import normalize_audio
from serving.metrics import ServerMetrics
from serving.registry import LoadedModel
from serving.schemas import DatasetRef, FileMetrics, InstrumentMetrics, TimelineWindow

PROB_DECIMALS = 6
INLINE_PROBE_MAGIC = (b"RIFF", b"RF64")  # WAV headers: parsed in microseconds, no pool hop

AudioInput = bytes | Path


class PathForbidden(Exception):
    """A requested path that resolves outside every ``--data-root``."""


class InvalidPath(ValueError):
    """A requested path the file system cannot even look up (NUL byte, name too long, symlink loop)."""


class OverBudget(ValueError):
    """An upload whose files together need more memory to decode than one request may use (413)."""


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
    inference_failed: bool = False


@dataclass(frozen=True)
class _Admitted:
    """A job whose header passed: its price in bytes and windows."""

    job: Job
    cost: int
    windows: int


def file_cost(info: AudioInfo, meta: ArtifactMetadata) -> tuple[int, int]:
    """``(bytes, windows)`` one file needs: mono decode at its rate, resampled copy + normalised
    copy at the model's rate, and the window matrix (float32 each)."""
    out_frames = math.ceil(info.frames * meta.sample_rate / info.sample_rate)
    windows = window_count(out_frames, meta.window_samples, meta.hop_samples)
    return 4 * (info.frames + 2 * out_frames + windows * meta.window_samples), windows


def decode_windows(source: AudioInput, key: str, meta: ArtifactMetadata, limits: DecodeLimits) -> Windows:
    """Exactly what ``lumen-test`` does to a file (same rate, normalisation, windows), so answers agree."""
    audio = load_audio(source, meta.sample_rate, name=key, normalize=normalize_audio(meta), limits=limits)
    return split_windows(audio, meta.window_samples, meta.hop_samples)


def timed_decode_windows(
    source: AudioInput, key: str, meta: ArtifactMetadata, limits: DecodeLimits
) -> tuple[Windows, float, float]:
    """:func:`decode_windows`, when the worker started it (``time.perf_counter``) and the seconds it
    took there: the wait for a worker and the decode itself are reported apart."""
    started = time.perf_counter()
    windows = decode_windows(source, key, meta, limits)
    return windows, started, time.perf_counter() - started


class Pipeline:
    def __init__(
        self,
        decode_pool: Executor,
        metrics: ServerMetrics,
        limits: DecodeLimits,
        *,
        request_budget_bytes: int | None = None,
        decode_concurrency: int = 4,
    ) -> None:
        self.decode_pool = decode_pool
        self.metrics = metrics
        self.limits = limits
        self.budget = request_budget_bytes
        self.decode_concurrency = max(1, decode_concurrency)

    # ---- admission -----------------------------------------------------------------------------------

    def _file_error(self, loaded: LoadedModel, job: Job, exc: Exception) -> FileResult:
        if isinstance(exc, AudioError):
            kind, reason = exc.kind, exc.reason
        else:
            kind, reason = "invalid", f"cannot read file ({getattr(exc, 'strerror', None) or exc})"
        self.metrics.decode_errors.labels(loaded.id).inc()
        self.metrics.rejected_files.labels(kind).inc()
        return FileResult(job.key, error=reason, labels=job.labels)

    async def _price(self, loaded: LoadedModel, job: Job, gate: asyncio.Semaphore) -> _Admitted | FileResult:
        """The job's header, probed and priced; a per-file error if it fails.

        An uploaded WAV's header is read right here (~40 us, less than a hop to the pool and back);
        other containers and server files are probed in the decode pool (an Ogg probe seeks to the
        last page, an MP3 one may scan frames, a path touches the disk).
        """
        if job.error is not None or job.source is None:
            return FileResult(job.key, error=job.error or "no input", labels=job.labels)
        source = job.source
        try:
            if isinstance(source, bytes) and source[:4] in INLINE_PROBE_MAGIC:
                info = probe(source, name=job.key, limits=self.limits)
            else:
                async with gate:
                    info = await asyncio.get_running_loop().run_in_executor(
                        self.decode_pool, lambda: probe(source, name=job.key, limits=self.limits)
                    )
        except (AudioError, OSError) as exc:
            return self._file_error(loaded, job, exc)
        cost, windows = file_cost(info, loaded.model.metadata)
        if self.budget is not None and cost > self.budget:
            self.metrics.rejected_files.labels("budget").inc()
            return FileResult(
                job.key,
                error=f"needs {cost / MIB:.0f} MiB to decode; one request may use "
                f"{self.budget / MIB:.0f} MiB (--max-request-mb)",
                labels=job.labels,
            )
        return _Admitted(job, cost, windows)

    # ---- running admitted files ----------------------------------------------------------------------

    async def _predict_file(
        self,
        loaded: LoadedModel,
        item: _Admitted,
        producer: Producer,
        reservation: Reservation,
        gate: asyncio.Semaphore,
        keep_windows: bool,
    ) -> FileResult:
        with producer:  # withdrawn as soon as this file is done, whatever the outcome
            job = item.job
            meta = loaded.model.metadata
            asked = time.perf_counter()
            async with gate:
                try:
                    windows, started, seconds = await asyncio.get_running_loop().run_in_executor(
                        self.decode_pool, timed_decode_windows, job.source, job.key, meta, self.limits
                    )
                    self.metrics.file_decoded(loaded.id, waited=started - asked, seconds=seconds)
                except (AudioError, OSError) as exc:
                    reservation.give_back(item.windows)
                    return self._file_error(loaded, job, exc)
            try:
                window_probs = await producer.submit(windows.audio, reservation=reservation)
            except BatcherClosed as exc:  # the model was removed while this request ran
                return FileResult(job.key, error=str(exc), labels=job.labels)
            except RuntimeError as exc:  # inference failed (logged and counted by the batcher)
                return FileResult(job.key, error=str(exc), labels=job.labels, inference_failed=True)
            probs = aggregate(window_probs, meta.aggregation, valid=windows.valid)
            return FileResult(
                job.key,
                probs=probs,
                windows=windows if keep_windows else None,
                window_probs=window_probs if keep_windows else None,
                labels=job.labels,
            )

    async def _run(
        self, loaded: LoadedModel, admitted: list[_Admitted], background: bool, keep_windows: bool
    ) -> list[FileResult]:
        """All of ``admitted`` as one admission: reserve every window, then decode and submit."""
        if not admitted:
            return []
        gate = asyncio.Semaphore(self.decode_concurrency)
        reservation = await loaded.batcher.reserve(sum(a.windows for a in admitted), background=background)
        with reservation, contextlib.ExitStack() as stack:  # producers registered before any decode
            producers = [stack.enter_context(loaded.batcher.producer()) for _ in admitted]
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._predict_file(loaded, item, producer, reservation, gate, keep_windows)
                    )
                    for item, producer in zip(admitted, producers, strict=True)
                ]
        return [task.result() for task in tasks]

    async def predict(
        self,
        loaded: LoadedModel,
        jobs: Sequence[Job],
        *,
        background: bool = False,
        keep_windows: bool = False,
    ) -> list[FileResult]:
        """Results in job order.

        Foreground (uploads): the request is admitted whole or not at all: :class:`OverBudget`,
        :class:`serving.batcher.RequestTooLarge` or :class:`serving.batcher.QueueFull` propagate
        before anything decodes. Background (directory chunks): split into groups that each fit the
        budget and wait for queue room instead of failing.
        """
        gate = asyncio.Semaphore(self.decode_concurrency)
        priced = await asyncio.gather(*(self._price(loaded, job, gate) for job in jobs))
        admitted = [p for p in priced if isinstance(p, _Admitted)]
        total = sum(a.cost for a in admitted)
        if not background and self.budget is not None and total > self.budget:
            raise OverBudget(
                f"the {len(admitted)} files of this request need {total / MIB:.0f} MiB to decode; one "
                f"request may use {self.budget / MIB:.0f} MiB (--max-request-mb); send fewer files per request"
            )
        results: dict[int, FileResult] = {}
        for group in _budget_groups(admitted, self.budget if background else None):
            done = await self._run(loaded, group, background, keep_windows)
            results.update((id(item), result) for item, result in zip(group, done, strict=True))
        return [results[id(p)] if isinstance(p, _Admitted) else p for p in priced]

    async def predict_chunks(
        self, loaded: LoadedModel, jobs: Iterable[Job], chunk_files: int, *, keep_windows: bool = False
    ) -> AsyncIterator[list[FileResult]]:
        """Directory jobs: ``chunk_files`` files at a time; waits for queue room instead of failing.

        ``jobs`` may walk folders or read CSVs as it goes, so it is advanced in a worker thread.
        """
        source = iter(jobs)
        while chunk := await asyncio.to_thread(lambda: list(itertools.islice(source, chunk_files))):
            yield await self.predict(loaded, chunk, background=True, keep_windows=keep_windows)


def _budget_groups(admitted: list[_Admitted], budget: int | None) -> Iterator[list[_Admitted]]:
    """Consecutive groups whose summed cost stays within ``budget`` (one group when there is none)."""
    if budget is None:
        if admitted:
            yield admitted
        return
    group: list[_Admitted] = []
    used = 0
    for item in admitted:
        if group and used + item.cost > budget:
            yield group
            group, used = [], 0
        group.append(item)
        used += item.cost
    if group:
        yield group


# ---- results -> response maps ------------------------------------------------------------------------


def thresholds_for(meta: ArtifactMetadata, override: float | None) -> np.ndarray:
    values = [override] * len(meta.labels) if override is not None else meta.thresholds
    return np.asarray(values, dtype=np.float32)


@dataclass
class ResponseMaps:
    """The dictionaries every predict/test response is made of, filled result by result.

    Every file gets its own key: a key already answered gets `` (2)``, `` (3)``, ... (two roots
    holding the same relative path, say). Only errors of one source (several bad rows of one CSV)
    are joined under one key.
    """

    labels: list[str]
    thresholds: np.ndarray
    sample_rate: int
    timeline_on: bool = False

    def __post_init__(self) -> None:
        self.predictions: dict[str, dict[str, int]] = {}
        self.probabilities: dict[str, dict[str, float]] = {}
        self.errors: dict[str, str] = {}
        self.timeline: dict[str, list[TimelineWindow]] = {}
        self.inference_failures = 0

    def _taken(self, key: str) -> bool:
        return key in self.probabilities or key in self.errors

    def _unique(self, key: str) -> str:
        if not self._taken(key):
            return key
        n = 2
        while self._taken(f"{key} ({n})"):
            n += 1
        return f"{key} ({n})"

    def add(self, result: FileResult) -> None:
        if result.probs is None:
            error = result.error or "unknown error"
            self.inference_failures += result.inference_failed
            earlier = self.errors.get(result.key)  # e.g. several bad rows of one CSV
            if earlier is not None and result.key not in self.probabilities:
                self.errors[result.key] = f"{earlier}; {error}"
            else:
                self.errors[self._unique(result.key)] = error
            return
        key = self._unique(result.key)
        self.probabilities[key] = self._probs(result.probs)
        self.predictions[key] = {
            code: int(p >= t) for code, p, t in zip(self.labels, result.probs, self.thresholds, strict=True)
        }
        if self.timeline_on and result.windows is not None and result.window_probs is not None:
            sr = self.sample_rate
            self.timeline[key] = [
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

OUTSIDE_KEY = "<outside the data root>"


def _real(path: Path | str) -> Path:
    """``os.path.realpath`` as a Path: resolves symlinks, never raises (a loop stays unresolved)."""
    return Path(os.path.realpath(path))


class DataRoots:
    """The directories directory endpoints may read; every path is checked after resolving symlinks.

    Nothing about a path outside the roots reaches a client: not its content, not whether it exists,
    not its absolute name. Keys are relative to the root a file lies in (prefixed with the root's
    name when there are several), and :meth:`redact` rewrites absolute root paths in messages.
    """

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = [_real(r) for r in roots]
        names: list[str] = []
        for root in self.roots:
            name = root.name or "root"
            names.append(name if name not in names else f"{name}-{len(names) + 1}")
        self.names = names

    @property
    def described(self) -> str:
        return ", ".join(self.names)

    def _root_index(self, resolved: Path) -> int | None:
        return next((i for i, root in enumerate(self.roots) if resolved.is_relative_to(root)), None)

    def real_inside(self, path: Path) -> str | None:
        """``path`` with every symlink resolved, when that lies in a root; else None (never raises)."""
        try:
            real = _real(path)
            return str(real) if self._root_index(real) is not None else None
        except (OSError, ValueError):
            return None

    def contains(self, path: Path) -> bool:
        """True when ``path``, with every symlink resolved, lies in a root (never raises)."""
        return self.real_inside(path) is not None

    def resolve(self, raw: str) -> Path:
        """A client path (relative to a data root, or absolute) -> resolved path, or PathForbidden."""
        if "\x00" in raw:
            raise InvalidPath(f"path {raw!r} contains a NUL byte")
        candidate = Path(raw)
        options = [candidate] if candidate.is_absolute() else [root / candidate for root in self.roots]
        try:
            for option in options:
                resolved = option.resolve()
                if self._root_index(resolved) is None:
                    raise PathForbidden(
                        f"path {raw!r} is outside the data root ({self.described}); "
                        "only files below --data-root can be read"
                    )
                if resolved.exists():
                    return resolved
            return options[0].resolve()
        except (OSError, RuntimeError) as exc:  # ENAMETOOLONG, ELOOP (RuntimeError on Python 3.11)
            raise InvalidPath(f"path {raw!r} cannot be looked up: {exc.strerror or exc}") from None

    def key(self, path: Path) -> str:
        """Response key: the path relative to the root it lies in (lexically), posix.

        A path outside every root (a CSV row ``../../etc/x.wav``) becomes ``<outside the data
        root>/x.wav``: the client wrote that name itself, the server's layout stays hidden.
        """
        path = Path(os.path.normpath(path))
        index = self._root_index(path)
        if index is None:
            return f"{OUTSIDE_KEY}/{path.name}"
        rel = path.relative_to(self.roots[index]).as_posix()
        return f"{self.names[index]}/{rel}" if len(self.roots) > 1 else rel

    def redact(self, text: str) -> str:
        """``text`` with every absolute root path replaced by the root's name (or removed)."""
        for root, name in zip(self.roots, self.names, strict=True):
            prefix = str(root)
            text = text.replace(prefix + os.sep, f"{name}/" if len(self.roots) > 1 else "")
            text = text.replace(prefix, name)
        return text

    def file_job(self, path: Path, seen: set[str], labels: np.ndarray | None = None) -> Job | None:
        """The job of a file met while walking or listed in a CSV/dataset: it must stay in the roots,
        and one file reached twice in a request (by another name or link) is answered once (None)."""
        real = self.real_inside(path)
        if real is None:
            return Job(self.key(path), error="resolves outside --data-root; skipped", labels=labels)
        if real in seen:
            return None
        seen.add(real)
        return Job(self.key(path), source=path, labels=labels)


def resolve_request_paths(roots: DataRoots, raw_paths: Sequence[str]) -> list[Path]:
    """Resolve and confine every client path (blocking: stats; run it off the event loop).

    The first bad path raises (PathForbidden/InvalidPath); a path named twice counts once.
    """
    seen: set[Path] = set()
    resolved: list[Path] = []
    for raw in raw_paths:
        path = roots.resolve(raw)
        if path not in seen:
            seen.add(path)
            resolved.append(path)
    return resolved


def _walk(root: Path) -> Iterator[Path]:
    """Audio files below ``root``, lazily, sorted per folder; hidden names (``._x.wav``) skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.startswith(".") and is_audio_path(filename):
                yield Path(dirpath) / filename


def iter_audio_jobs(roots: DataRoots, resolved: list[Path]) -> Iterator[Job]:
    """Jobs for resolved request paths: folders (walked lazily), audio files, or CSVs with a ``file`` column.

    A file reached twice (a folder and a file inside it, two CSV rows naming it) is answered once.
    """
    seen: set[str] = set()
    for path in resolved:
        if path.is_dir():
            files: Iterable[Path] = _walk(path)
        elif not path.exists():
            yield Job(roots.key(path), error="not found")
            continue
        elif path.suffix.lower() == ".csv":
            try:
                items, issues = scan_dataset(DatasetSpec("inference", path), confine=roots.contains)
            except (DatasetError, OSError) as exc:  # OSError: e.g. a folder the server may not read
                yield Job(roots.key(path), error=roots.redact(_scan_error(exc)))
                continue
            yield from (Job(roots.key(Path(issue.path)), error=roots.redact(issue.error)) for issue in issues)
            files = (item.path for item in items)
        elif is_audio_path(path):
            files = [path]
        else:
            yield Job(roots.key(path), error="not an audio file, CSV or folder (audio: .wav .flac .ogg .mp3)")
            continue
        for file in files:
            if (job := roots.file_job(file, seen)) is not None:
                yield job


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


def _scan_error(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read the dataset ({exc.strerror or type(exc).__name__})"
    return str(exc)


def dataset_jobs(roots: DataRoots, refs: list[DatasetRef]) -> list[Job]:
    """Labelled jobs of every dataset (blocking: scans folders); problems become error jobs.

    A dataset outside the roots is refused as a whole (PathForbidden); anything a scanner derives
    (class folders, sidecar ``.txt``, CSV rows) is confined before it is touched. A dataset named
    twice (``set``, ``./set``, ``set/../set``) is scanned once and a file reached twice is answered
    once, as in predict-directory: otherwise one request could make the server decode, infer and
    count a whole folder ``--max-datasets`` times.
    """
    jobs: list[Job] = []
    scanned: set[tuple[str, Path]] = set()
    seen: set[str] = set()
    for ref in refs:
        root = roots.resolve(ref.dataset_path)
        if (ref.dataset_type, root) in scanned:
            continue
        scanned.add((ref.dataset_type, root))
        if not root.exists():
            jobs.append(Job(roots.key(root), error="dataset path not found"))
            continue
        try:
            items, issues = scan_dataset(DatasetSpec(ref.dataset_type, root), confine=roots.contains)
        except (DatasetError, OSError) as exc:  # OSError: e.g. a folder the server may not read
            jobs.append(Job(roots.key(root), error=roots.redact(_scan_error(exc))))
            continue
        jobs.extend(Job(roots.key(Path(issue.path)), error=roots.redact(issue.error)) for issue in issues)
        jobs.extend(
            job for item in items if (job := roots.file_job(item.path, seen, item.labels)) is not None
        )
    return jobs

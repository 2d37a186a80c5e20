"""``lumen-test --engine ray``: the same file-level predictions as the local engine, on Ray Data.

The pipeline, one Ray Data operator per step, streaming (no step waits for the previous to finish):

    file references (path + row number; the driver never holds audio)
      -> decode + resample + windowing     map_batches, stateless CPU tasks, as many as there are CPUs
      -> window probabilities + aggregate  map_batches, an actor pool; each actor loads the ONNX artifact
                                           once (CPU, or one GPU per actor with ORT's CUDA EP)
      -> the driver appends each finished block to a JSON Lines journal under --out-dir

Every step reuses the local engine's functions (:func:`common.audio.load_audio`, ``split_windows``,
``aggregate``), so the numbers are the local engine's numbers. A file that cannot be decoded comes back
as a row with its error; nothing a file contains fails the job.

Fault tolerance is Ray's: an actor that dies is restarted (Ray Data's actor pools default to
``max_restarts=-1``) and the call it had in flight is retried (``max_task_retries=-1``); a decode task
whose worker dies is retried (Ray's ``max_retries``).
The driver keeps one row per path, so a retried block that is delivered twice is written once.
A crash of the driver itself loses only the blocks in flight: every delivered block is already in the
journal, and ``--resume`` skips the files it holds.

Ray is imported inside functions only: the module imports in the serving image, which has no Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from common.artifact import ArtifactMetadata
from common.audio import AudioError, aggregate, load_audio, split_windows
from common.datasets import Item
from serving.evaluation import EvaluationError, FilePrediction, Predictions, collect, normalize_audio
from serving.runtime import parse_device

log = logging.getLogger(__name__)

# The unit of work: one block of file references is one decode task, one actor call and one journal
# append. Small enough that a crash or a dead actor costs little and progress moves smoothly; large
# enough that per-task overhead (a few ms) stays far below decoding 16 files.
FILES_PER_BLOCK = 16
ACTOR_CPUS = 1  # each CPU actor runs ONNX Runtime on one intra-op thread: scale out with actors
# What a decode task holds at its peak: 16 files decoded and cut into 50%-overlap windows, ~60 MB for
# 30 s clips and ~1.2 GB for 10-minute tracks at 16 kHz. Reserving it keeps Ray from packing more
# decode tasks onto a node than its memory holds.
DECODE_TASK_MEMORY = 1 << 30
JOURNAL_KIND = "lumen-test results"
JOURNAL_VERSION = 1
TABLE_FILE = "predictions.parquet"

ProgressFn = Callable[[int], None]


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow and pandas come with it)
    except ImportError as exc:
        raise EvaluationError(
            f"--engine ray needs Ray Data ({exc}); install the 'ray' extra: pip install 'lumen-audio[ray]'"
        ) from None
    return ray


# ---- the connection ---------------------------------------------------------------------------------


RAY_CLIENT_PREFIX = "ray://"


def _not_the_bars_off_notice(record: logging.LogRecord) -> bool:
    """Ray Data announces that its bars are off, as a warning; lumen-test's bar is on, so drop it."""
    return not record.getMessage().startswith("Progress bars disabled")


@contextlib.contextmanager
def session(address: str | None) -> Iterator[None]:
    """Connect to Ray for the length of a run: ``None`` starts a local Ray, ``auto`` (or ``HOST:PORT``)
    joins the cluster this machine is a node of, as a Ray Job's driver does. A Ray that is already up
    (a test, a notebook) is used as it is and left running.

    Ray Client (``ray://``) is refused before anything runs: Ray Data's streaming executor needs a
    driver with its own core worker, and under Ray Client (Ray 2.60) it stops at the first block.
    """
    if address is not None and address.startswith(RAY_CLIENT_PREFIX):
        raise EvaluationError(
            f"--ray-address {address}: Ray Data does not run through Ray Client (its streaming executor "
            "needs a driver on the cluster). Submit lumen-test as a Ray Job instead: ray job submit "
            "--address http://HEAD:8265 -- lumen-test ... --engine ray --ray-address auto "
            "(deploy/ray-cluster.yaml does this on Kubernetes)"
        )
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        # The dashboard is what Ray Jobs submit through; a Ray started just for this run has no use for it.
        local = {"include_dashboard": False} if address is None else {}
        try:
            ray.init(address=address, logging_level=logging.WARNING, **local)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EvaluationError(f"--ray-address {address}: cannot connect to Ray ({reason})") from None
    context = ray.data.DataContext.get_current()
    # One set of progress bars: lumen-test's own (files, files/s), not Ray's per-operator ones.
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").addFilter(_not_the_bars_off_notice)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class PoolPlan:
    """The inference actor pool: a fixed ``size``, or ``min_size``..``max_size`` autoscaled by Ray."""

    min_size: int
    max_size: int
    num_gpus: int

    def strategy(self) -> Any:
        ray = _ray()
        if self.min_size == self.max_size:
            return ray.data.ActorPoolStrategy(size=self.min_size)
        return ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size)


def plan_pool(num_workers: int | None, device: str, resources: dict[str, float]) -> PoolPlan:
    """Actors for ``--num-workers`` on a cluster with ``resources`` (``ray.cluster_resources()``).

    GPU actors take one GPU each; CPU actors one CPU each, and at least one CPU is left to decode:
    a pool that takes every CPU would wait forever for audio that no task can decode.
    """
    cpus = int(resources.get("CPU", 0))
    if parse_device(device).kind == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise EvaluationError(
                f"--device {device}: the Ray cluster has no GPU (resources: CPU {cpus}, GPU 0); "
                "add a GPU worker group or use --device cpu"
            )
        if num_workers is not None and num_workers > gpus:
            raise EvaluationError(f"--num-workers {num_workers}: the Ray cluster has only {gpus} GPU(s)")
        size = num_workers or gpus
        return PoolPlan(size if num_workers else 1, size, num_gpus=1)
    spare = cpus - 1
    if spare < 1:
        raise EvaluationError(
            f"the Ray cluster has {cpus} CPU(s); --engine ray needs at least 2 (one to decode, one to infer)"
        )
    if num_workers is not None:
        if num_workers < 1:
            raise EvaluationError("--num-workers must be >= 1 with --engine ray (inference actors)")
        if num_workers > spare:
            raise EvaluationError(
                f"--num-workers {num_workers}: the Ray cluster has {cpus} CPUs and each actor takes one; "
                f"at most {spare} leave a CPU to decode audio"
            )
        return PoolPlan(num_workers, num_workers, num_gpus=0)
    return PoolPlan(1, max(1, cpus // 2), num_gpus=0)


# ---- the two Ray Data steps -------------------------------------------------------------------------


def decode_batch(
    batch: dict[str, np.ndarray], *, sample_rate: int, window: int, hop: int, normalize: bool
) -> dict[str, Any]:
    """File references -> windows ``[n, window]``, valid lengths ``[n]`` and an error per file.

    A file that cannot be used gets zero windows and its reason; any exception counts, not only
    :class:`AudioError`, because an exception here would fail the task and, after its retries, the job.
    """
    windows: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    errors: list[str] = []
    for path in batch["path"]:
        error = ""
        try:
            audio = load_audio(str(path), sample_rate, name=str(path), normalize=normalize)
            cut = split_windows(audio, window, hop)
            windows.append(cut.audio)
            valid.append(cut.valid)
        except Exception as exc:
            if isinstance(exc, AudioError):
                error = exc.reason
            elif isinstance(exc, OSError):
                error = f"cannot read file ({exc.strerror or exc})"
            else:
                error = f"cannot decode ({type(exc).__name__}: {exc})"
            windows.append(np.zeros((0, window), dtype=np.float32))
            valid.append(np.zeros(0, dtype=np.int64))
        errors.append(error)
    return {
        "row": batch["row"],
        "path": batch["path"],
        "windows": windows,
        "valid": valid,
        "error": np.array(errors, dtype=object),
    }


class Scorer:
    """The actor: one ONNX Runtime session, loaded once, scoring the windows of whole files.

    The artifact travels as bytes with the job, so workers need the audio but not the model file.
    Windows of all files in a call are scored together in chunks of ``batch_size`` (``--batch-size``)
    and aggregated back per file with the artifact's aggregation.
    """

    def __init__(self, model: bytes, device: str, batch_size: int) -> None:
        from serving.runtime import OnnxModel

        with tempfile.TemporaryDirectory(prefix="lumen-ray-") as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(model)
            threads = ACTOR_CPUS if device == "cpu" else None
            self.model = OnnxModel(path, device=device, intra_op_threads=threads)
        self.metadata: ArtifactMetadata = self.model.metadata
        self.batch_size = batch_size

    def _window_probs(self, windows: np.ndarray) -> np.ndarray:
        parts = [
            self.model.run(windows[start : start + self.batch_size])
            for start in range(0, windows.shape[0], self.batch_size)
        ]
        return np.concatenate(parts)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n_files = len(batch["path"])
        n_labels = len(self.metadata.labels)
        errors = [str(e) for e in batch["error"]]
        probs = np.full((n_files, n_labels), np.nan, dtype=np.float32)
        counts = np.array([len(w) for w in batch["windows"]], dtype=np.int64)
        ok = [i for i in range(n_files) if not errors[i]]
        if ok:
            window_probs = self._window_probs(np.concatenate([batch["windows"][i] for i in ok]))
            offset = 0
            for i in ok:
                file_probs = window_probs[offset : offset + counts[i]]
                probs[i] = aggregate(file_probs, self.metadata.aggregation, valid=batch["valid"][i])
                offset += counts[i]
        return {
            "row": batch["row"],
            "path": batch["path"],
            "probabilities": probs,
            "n_windows": counts,
            "error": np.array(errors, dtype=object),
        }


def build_dataset(
    paths: Sequence[str],
    metadata: ArtifactMetadata,
    model: bytes,
    *,
    device: str,
    batch_size: int,
    pool: PoolPlan,
    files_per_block: int = FILES_PER_BLOCK,
    scorer: type[Scorer] = Scorer,
) -> Any:
    """The lazy Ray Dataset of per-file results for ``paths``; nothing runs until it is iterated.

    ``scorer`` is the actor class (a test passes one that dies mid-run).
    """
    ray = _ray()
    refs = [{"row": row, "path": path} for row, path in enumerate(paths)]
    blocks = max(1, math.ceil(len(refs) / files_per_block))
    decoded = ray.data.from_items(refs, override_num_blocks=blocks).map_batches(
        decode_batch,
        batch_size=files_per_block,
        fn_kwargs={
            "sample_rate": metadata.sample_rate,
            "window": metadata.window_samples,
            "hop": metadata.hop_samples,
            "normalize": normalize_audio(metadata),
        },
        num_cpus=1,
        memory=DECODE_TASK_MEMORY,
    )
    # The actors reserve no memory, so their resources differ from the decode tasks' and Ray keeps the
    # two steps apart instead of fusing decoding into the actors: decoding scales over every CPU the
    # pool leaves free. Fault tolerance is Ray Data's default for actor pools (max_restarts=-1,
    # max_task_retries=-1); decode tasks get Ray's task retries.
    return decoded.map_batches(
        scorer,
        batch_size=files_per_block,
        compute=pool.strategy(),
        fn_constructor_kwargs={
            "model": model,
            "device": "cuda:0" if pool.num_gpus else "cpu",
            "batch_size": batch_size,
        },
        num_cpus=ACTOR_CPUS,
        num_gpus=pool.num_gpus or None,
    )


# ---- the journal: results as they arrive ------------------------------------------------------------


@dataclass(frozen=True)
class FileRow:
    """One file's result as the journal stores it; ``probabilities`` is ``None`` for an error."""

    path: str
    probabilities: list[float] | None
    error: str | None
    n_windows: int

    def line(self) -> str:
        return json.dumps(
            {
                "path": self.path,
                "probabilities": self.probabilities,
                "error": self.error,
                "n_windows": self.n_windows,
            }
        )


def rows_of(batch: dict[str, Any]) -> list[FileRow]:
    """The :class:`FileRow` s of one result block (float32 probabilities kept exactly, as doubles)."""
    rows = []
    for path, probs, error, n in zip(
        batch["path"], batch["probabilities"], batch["error"], batch["n_windows"], strict=True
    ):
        failed = bool(error)
        rows.append(
            FileRow(
                path=str(path),
                probabilities=None if failed else [float(p) for p in np.asarray(probs, dtype=np.float32)],
                error=str(error) if failed else None,
                n_windows=0 if failed else int(n),
            )
        )
    return rows


class Journal:
    """``<name>.jsonl`` under ``--out-dir``: a header line, then one line per finished file.

    The header names the artifact (its SHA-256) and its labels, so ``--resume`` never mixes the
    results of two models. Lines are flushed block by block; a line torn by a crash is dropped on
    resume and its file scored again.
    """

    def __init__(self, path: Path, model_sha256: str, labels: Sequence[str]) -> None:
        self.path = path
        self.header = {
            "journal": JOURNAL_KIND,
            "version": JOURNAL_VERSION,
            "model_sha256": model_sha256,
            "labels": list(labels),
        }
        self._handle: IO[str] | None = None

    def open(self, resume: bool) -> dict[str, FileRow]:
        """Start a journal (``resume=False``) or continue one; returns the rows already written."""
        if not resume:
            if self.path.exists():
                raise EvaluationError(
                    f"{self.path} holds the results of an earlier run; pass --resume to continue it, "
                    "or choose another --out-dir"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
            self._write([json.dumps(self.header)])
            return {}
        if not self.path.exists():
            return self.open(resume=False)
        done = self._read()
        self._handle = self.path.open("a", encoding="utf-8")
        return done

    def _read(self) -> dict[str, FileRow]:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        complete, torn = lines[:-1], lines[-1]  # a complete journal ends with "\n"
        if not complete:
            raise EvaluationError(f"--resume: {self.path} has no header line; remove it to start afresh")
        try:
            header = json.loads(complete[0])
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("journal") != JOURNAL_KIND:
            raise EvaluationError(f"--resume: {self.path} is not a lumen-test results journal")
        for key in ("version", "model_sha256", "labels"):
            if header.get(key) != self.header[key]:
                raise EvaluationError(
                    f"--resume: {self.path} was written with another {key.replace('_', ' ')} "
                    f"({header.get(key)!r}, now {self.header[key]!r}); choose another --out-dir"
                )
        done: dict[str, FileRow] = {}
        for number, line in enumerate(complete[1:], start=2):
            try:
                row = FileRow(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                raise EvaluationError(
                    f"--resume: {self.path}, line {number} is not a result row ({exc})"
                ) from None
            done.setdefault(row.path, row)
        if torn:
            log.warning(
                "%s: dropping a line torn by an interrupted run; that file is scored again", self.path
            )
            with self.path.open("r+", encoding="utf-8") as handle:
                handle.truncate(len(text.encode("utf-8")) - len(torn.encode("utf-8")))
        return done

    def _write(self, lines: Iterable[str]) -> None:
        assert self._handle is not None
        self._handle.write("".join(f"{line}\n" for line in lines))
        self._handle.flush()

    def append(self, rows: Sequence[FileRow]) -> None:
        self._write(row.line() for row in rows)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# ---- the run ----------------------------------------------------------------------------------------


def score_paths(
    paths: Sequence[str],
    metadata: ArtifactMetadata,
    model: bytes,
    journal: Journal,
    *,
    resume: bool,
    device: str,
    batch_size: int,
    num_workers: int | None,
    on_rows: ProgressFn = lambda n: None,
    files_per_block: int = FILES_PER_BLOCK,
    scorer: type[Scorer] = Scorer,
) -> dict[str, FileRow]:
    """Score every path the journal does not hold yet; returns one row per path, old and new.

    ``on_rows(n)`` is called after each block is journaled (progress; a test interrupts the run there).
    """
    ray = _ray()
    done = journal.open(resume=resume)
    try:
        unique = list(dict.fromkeys(paths))
        todo = [p for p in unique if p not in done]
        if len(todo) < len(unique):
            on_rows(len(unique) - len(todo))
        if not todo:
            return done
        pool = plan_pool(num_workers, device, ray.cluster_resources())
        dataset = build_dataset(
            todo, metadata, model, device=device, batch_size=batch_size, pool=pool,
            files_per_block=files_per_block, scorer=scorer,
        )  # fmt: skip
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            fresh = [row for row in rows_of(batch) if row.path not in done]
            journal.append(fresh)
            done.update((row.path, row) for row in fresh)
            on_rows(len(fresh))
    finally:
        journal.close()
    return done


def predictions_from_rows(
    items: Sequence[Item], rows: dict[str, FileRow], labels: Sequence[str]
) -> Predictions:
    """The local engine's :class:`Predictions` (input order, targets from ``items``) from journal rows."""
    results = []
    for item in items:
        row = rows[os.fspath(item.path)]
        probs = None if row.probabilities is None else np.asarray(row.probabilities, dtype=np.float32)
        results.append(FilePrediction(item, probs, row.error, row.n_windows))
    return collect(results, labels)


def predict_items(
    source: str | os.PathLike[str],
    metadata: ArtifactMetadata,
    items: Sequence[Item],
    journal_path: Path,
    *,
    resume: bool,
    device: str,
    batch_size: int,
    num_workers: int | None,
    on_rows: ProgressFn = lambda n: None,
    files_per_block: int = FILES_PER_BLOCK,
    scorer: type[Scorer] = Scorer,
) -> Predictions:
    """``items`` through Ray with the artifact at ``source``: what the local engine's ``collect`` returns."""
    model = Path(source).read_bytes()
    journal = Journal(journal_path, hashlib.sha256(model).hexdigest(), metadata.labels)
    rows = score_paths(
        [os.fspath(item.path) for item in items], metadata, model, journal, resume=resume, device=device,
        batch_size=batch_size, num_workers=num_workers, on_rows=on_rows, files_per_block=files_per_block,
        scorer=scorer,
    )  # fmt: skip
    return predictions_from_rows(items, rows, metadata.labels)


def write_table(path: Path, run: Predictions, thresholds: np.ndarray) -> Path:
    """``predictions.parquet``: one row per file (path, probabilities, labels, targets, error).

    ``labels`` are the 0/1 decisions of ``predictions.json``; ``targets`` the truth (null when
    unlabelled); a file that could not be used has null probabilities and its error.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    decisions = run.decisions(thresholds)
    n_ok, n_err = len(run.paths), len(run.errors)
    errors = sorted(run.errors.items())
    probs = [row.tolist() for row in run.probs] + [None] * n_err
    labels = [row.tolist() for row in decisions] + [None] * n_err
    targets: list[Any] = [None] * (n_ok + n_err)
    if run.targets is not None:
        targets[:n_ok] = [row.tolist() for row in run.targets]
    table = pa.table(
        {
            "path": pa.array(run.paths + [p for p, _ in errors], pa.string()),
            "probabilities": pa.array(probs, pa.list_(pa.float32())),
            "labels": pa.array(labels, pa.list_(pa.int8())),
            "targets": pa.array(targets, pa.list_(pa.int8())),
            "error": pa.array([None] * n_ok + [e for _, e in errors], pa.string()),
        },
        metadata={"labels": json.dumps(run.labels), "thresholds": json.dumps([float(t) for t in thresholds])},
    )
    pq.write_table(table, path)
    return path

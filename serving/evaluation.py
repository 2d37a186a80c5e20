"""Offline evaluation: dataset items -> file-level probabilities, the way the server computes them.

Every file goes through the same steps as a served request (``common.audio.load_audio`` at the
model's rate, ``split_windows`` with the model's window and hop, ``aggregate`` with the model's
aggregation), so the numbers ``lumen-test`` reports are the numbers the server would give. Metrics
are computed on files, never on windows.

The pipeline is a stream: a small thread pool decodes a bounded number of files ahead, windows from
consecutive files are packed into full batches, and a file's result is emitted as soon as its last
window has been scored. Memory stays flat however large the dataset is. A file that cannot be read
is reported with its reason and the run goes on.

The model sits behind :class:`Predictor`: an ONNX artifact (:class:`OnnxPredictor`, torch-free) or
a training checkpoint (:class:`TorchPredictor`, which imports torch only when constructed).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.artifact import ArtifactError, ArtifactMetadata
from common.audio import AudioError, Windows, aggregate, load_audio, split_windows
from common.datasets import Item
from common.labels import index_of

log = logging.getLogger(__name__)

MODEL_SUFFIXES: tuple[str, ...] = (".onnx", ".ckpt")


class EvaluationError(ValueError):
    """Bad evaluation input (model path, options); the message names the file or flag and the fix."""


class Predictor(Protocol):
    """What the pipeline needs from a model: its contract and window probabilities."""

    source: str
    metadata: ArtifactMetadata

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """float32 ``[B, window_samples]`` -> probabilities ``[B, n_labels]``."""
        ...


def normalize_audio(metadata: ArtifactMetadata) -> bool:
    """Whether files are peak-normalised before windowing (:attr:`ArtifactMetadata.normalize_audio`)."""
    return metadata.normalize_audio


class OnnxPredictor:
    """An exported artifact run by ONNX Runtime (the path a serving deployment takes)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        from serving.runtime import OnnxModel

        self.source = os.fspath(path)
        self.model = OnnxModel(path, device=device)
        self.metadata: ArtifactMetadata = self.model.metadata

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return self.model.run(windows)


def torch_device(requested: str, cuda_available: bool) -> str:
    """The torch device for ``--device``: CUDA only when this machine has it, else the CPU (and a warning).

    Mirrors :func:`serving.runtime.select_providers`, so ``--device cuda`` behaves the same for a
    checkpoint and for an ONNX artifact on a host without a GPU.
    """
    from serving.runtime import parse_device

    device = parse_device(requested)
    if device.kind == "cuda" and not cuda_available:
        log.warning("device %s requested but torch sees no CUDA device; using the CPU", device)
        return "cpu"
    return str(device)


def metadata_from_hparams(hparams: dict[str, Any], *, source: str, sha256: str = "") -> ArtifactMetadata:
    """The artifact contract of a training checkpoint, so both model kinds answer the same questions.

    ``hparams`` are the checkpoint's validated hyper-parameters (``training.checkpoint``).
    """
    try:
        meta = ArtifactMetadata(
            labels=list(hparams["labels"]),
            sample_rate=int(hparams["sample_rate"]),
            window_samples=int(hparams["window_samples"]),
            hop_samples=int(hparams["hop_samples"]),
            thresholds=[float(t) for t in hparams["thresholds"]],
            aggregation=hparams["aggregation"],
            architecture=str(hparams["architecture"]),
            training_config=dict(hparams.get("config") or {}),
            source_checkpoint_sha256=sha256,
            lumen_version=str(hparams.get("lumen_version", "")),
        )
        return meta.validate()
    except ArtifactError as exc:
        raise EvaluationError(f"{source}: {exc}") from None


class TorchPredictor:
    """A training checkpoint run by PyTorch; needs the ``train`` extra, imported only here."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        self.source = os.fspath(path)
        try:
            import torch

            from training.checkpoint import CheckpointError, load_checkpoint
        except ImportError as exc:
            raise EvaluationError(
                f"{self.source}: evaluating a .ckpt needs PyTorch ({exc}); install the 'train' extra "
                "(pip install 'lumen-audio[train]'), or export the checkpoint with lumen-export "
                "and pass the .onnx"
            ) from None
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            raise EvaluationError(str(exc)) from None
        self._torch = torch
        self.device = torch_device(device, torch.cuda.is_available())
        self.model = loaded.model.to(self.device).eval()
        self.metadata = metadata_from_hparams(loaded.hparams, source=self.source, sha256=loaded.sha256)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        torch = self._torch
        batch = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            probs = torch.sigmoid(self.model(batch))
        return probs.float().cpu().numpy()


def load_predictor(path: str | os.PathLike[str], device: str = "cpu") -> Predictor:
    """An :class:`OnnxPredictor` for ``.onnx`` and a :class:`TorchPredictor` for ``.ckpt``."""
    model_path = Path(path)
    if not model_path.is_file():
        raise EvaluationError(f"--model {model_path}: file not found")
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        return OnnxPredictor(model_path, device=device)
    if suffix == ".ckpt":
        return TorchPredictor(model_path, device=device)
    raise EvaluationError(
        f"--model {model_path}: unknown model type {suffix!r}; "
        "pass an exported .onnx artifact or a .ckpt checkpoint"
    )


@dataclass(frozen=True)
class FilePrediction:
    """One file's outcome: file probabilities ``[n_labels]`` in the model's label order, or an error."""

    item: Item
    probs: np.ndarray | None
    error: str | None = None
    n_windows: int = 0

    @property
    def path(self) -> str:
        return os.fspath(self.item.path)


@dataclass
class _Job:
    """A decoded file whose windows are being scored, possibly across several batches."""

    item: Item
    windows: Windows | None
    error: str | None
    window_probs: np.ndarray | None = None
    scored: int = 0

    @property
    def done(self) -> bool:
        return self.windows is None or self.scored == len(self.windows)


def _decode(item: Item, metadata: ArtifactMetadata, normalize: bool) -> _Job:
    try:
        audio = load_audio(item.path, metadata.sample_rate, name=os.fspath(item.path), normalize=normalize)
    except AudioError as exc:
        return _Job(item, None, exc.reason)
    except OSError as exc:
        return _Job(item, None, f"cannot read file ({exc.strerror or exc})")
    return _Job(item, split_windows(audio, metadata.window_samples, metadata.hop_samples), None)


def _decoded(
    items: Iterable[Item], decode: Callable[[Item], _Job], workers: int, ahead: int
) -> Iterator[_Job]:
    """Decode in input order with at most ``ahead`` files in flight: memory does not grow with the dataset."""
    if workers <= 0:
        yield from map(decode, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lumen-decode") as pool:
        pending: deque[Future[_Job]] = deque()
        for item in items:
            pending.append(pool.submit(decode, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class _Batcher:
    """Packs windows of consecutive files into full batches of ``size`` and scores them."""

    predictor: Predictor
    size: int
    parts: list[tuple[_Job, int, int]] = field(default_factory=list)
    chunks: list[np.ndarray] = field(default_factory=list)
    filled: int = 0

    def add(self, job: _Job, windows: np.ndarray) -> None:
        """Queue all of ``job``'s ``windows``; every batch that fills up is scored at once."""
        n = windows.shape[0]
        job.window_probs = np.empty((n, len(self.predictor.metadata.labels)), dtype=np.float32)
        start = 0
        while start < n:
            stop = min(n, start + self.size - self.filled)
            self.parts.append((job, start, stop))
            self.chunks.append(windows[start:stop])
            self.filled += stop - start
            start = stop
            if self.filled == self.size:
                self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        probs = self.predictor.predict(np.concatenate(self.chunks))
        offset = 0
        for job, a, b in self.parts:
            assert job.window_probs is not None
            job.window_probs[a:b] = probs[offset : offset + b - a]
            job.scored += b - a
            offset += b - a
        self.parts.clear()
        self.chunks.clear()
        self.filled = 0


def _finish(job: _Job, metadata: ArtifactMetadata) -> FilePrediction:
    if job.windows is None:
        return FilePrediction(job.item, None, job.error)
    assert job.window_probs is not None
    probs = aggregate(job.window_probs, metadata.aggregation, valid=job.windows.valid)
    return FilePrediction(job.item, probs, None, len(job.windows))


def predict_files(
    predictor: Predictor, items: Iterable[Item], *, batch_size: int = 32, num_workers: int = 2
) -> Iterator[FilePrediction]:
    """File-level probabilities for ``items``, yielded in input order as each file completes.

    ``num_workers`` threads decode and resample ahead of inference (0 decodes inline); at most
    ``max(8, 4 * num_workers)`` decoded files wait for the model at any time.
    """
    if batch_size < 1:
        raise EvaluationError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise EvaluationError(f"--num-workers must be >= 0, got {num_workers}")
    metadata = predictor.metadata
    normalize = normalize_audio(metadata)
    batcher = _Batcher(predictor, batch_size)
    waiting: deque[_Job] = deque()
    ahead = max(8, 4 * num_workers)
    for job in _decoded(items, lambda item: _decode(item, metadata, normalize), num_workers, ahead):
        waiting.append(job)
        if job.windows is not None:
            batcher.add(job, job.windows.audio)
        while waiting and waiting[0].done:
            yield _finish(waiting.popleft(), metadata)
    batcher.flush()
    while waiting:
        yield _finish(waiting.popleft(), metadata)


@dataclass(frozen=True)
class Predictions:
    """All scored files of a run, in input order, plus the files that could not be read."""

    labels: list[str]
    paths: list[str]
    probs: np.ndarray
    targets: np.ndarray | None
    errors: dict[str, str]

    def decisions(self, thresholds: np.ndarray) -> np.ndarray:
        """0/1 ``[N, L]``: a label is present when its probability reaches its threshold."""
        return (self.probs >= thresholds[None, :]).astype(np.int8)


def target_columns(labels: Sequence[str]) -> np.ndarray:
    """Indices that reorder a canonical 11-label vector into the model's label order."""
    return np.array([index_of(code) for code in labels], dtype=np.int64)


def collect(results: Iterable[FilePrediction], labels: Sequence[str]) -> Predictions:
    """Gather a stream of results; targets are kept only when every scored file is labelled."""
    columns = target_columns(labels)
    paths: list[str] = []
    probs: list[np.ndarray] = []
    targets: list[np.ndarray | None] = []
    errors: dict[str, str] = {}
    for result in results:
        if result.probs is None:
            errors[result.path] = result.error or "unknown error"
            continue
        paths.append(result.path)
        probs.append(result.probs)
        item_labels = result.item.labels
        targets.append(None if item_labels is None else np.asarray(item_labels, dtype=np.float32)[columns])
    n_labels = len(labels)
    labelled = bool(targets) and all(t is not None for t in targets)
    return Predictions(
        labels=list(labels),
        paths=paths,
        probs=np.stack(probs).astype(np.float32) if probs else np.zeros((0, n_labels), np.float32),
        targets=np.stack([t for t in targets if t is not None]).astype(np.int8) if labelled else None,
        errors=errors,
    )


def resolve_thresholds(metadata: ArtifactMetadata, override: float | None = None) -> np.ndarray:
    """The artifact's calibrated per-label thresholds, or one ``--threshold`` for every label."""
    if override is None:
        return np.asarray(metadata.thresholds, dtype=np.float64)
    if not 0.0 <= override <= 1.0:
        raise EvaluationError(f"--threshold must be in [0, 1], got {override}")
    return np.full(len(metadata.labels), float(override), dtype=np.float64)


def per_file_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-file F1, Jaccard and Hamming loss of 0/1 ``[N, L]`` label sets.

    A file with no true and no predicted instrument is a perfect answer (F1 = Jaccard = 1).
    """
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    inter = (t & p).sum(axis=1).astype(np.float64)
    union = (t | p).sum(axis=1).astype(np.float64)
    sizes = t.sum(axis=1) + p.sum(axis=1)
    f1 = np.divide(2 * inter, sizes, out=np.ones_like(inter), where=sizes > 0)
    jaccard = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    hamming = (t != p).mean(axis=1) if t.shape[1] else np.zeros(t.shape[0])
    return {"f1": f1, "jaccard": jaccard, "hamming_loss": hamming}

"""Torch data for training and evaluation, built on the torch-free ``common`` audio and dataset code.

Training draws one random window of ``window_samples`` per file per visit: decode + resample (and
peak-normalise, like every other consumer) happen in DataLoader workers with numpy, and only the small
window tensor crosses the process boundary. Feature extraction is *not* done here: the front-end runs
inside the model's forward on the training device (and inside the exported graph).

Validation and test cut each whole file into windows with :func:`common.audio.split_windows` (the
windowing serving uses) and keep, for every window, the index of its file, its start and its valid
length. The Lightning module turns window probabilities back into file probabilities with
:func:`common.audio.aggregate`, so the monitored metrics are file-level and equal to what serving
would answer for the same files.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from common.audio import load_audio, split_windows
from common.datasets import Item, load_datasets
from training.config import ConfigError, TrainConfig

# --quick: how many items of each split a smoke run keeps (spread over the sorted list, so several
# instruments are present).
QUICK_ITEMS = 16


def _require_labels(items: Sequence[Item], flag: str) -> None:
    unlabeled = [item.path for item in items if item.labels is None]
    if unlabeled:
        raise ConfigError(
            f"{flag}: {len(unlabeled)} file(s) have no labels (first: {unlabeled[0]}); "
            "training and evaluation need a labelled dataset type (irmastrain, irmastest, csv, openmic)"
        )


def label_matrix(items: Sequence[Item]) -> np.ndarray:
    """``[N, L]`` float32 multi-hot labels of labelled items."""
    return np.stack([np.asarray(item.labels, dtype=np.float32) for item in items])


def label_counts(items: Sequence[Item]) -> np.ndarray:
    """How many items carry each label (int64 ``[L]``)."""
    return (label_matrix(items) > 0.5).sum(axis=0).astype(np.int64)


def sampler_weights(labels: np.ndarray, reduce: Literal["max", "mean"] = "max") -> np.ndarray:
    """Per-item draw weights that balance *instruments*, not items.

    An item's weight is the max (default) or mean over its labels of ``1 / count(label)``. For
    single-label items (IRMAS training) both give ``1 / count``, so every instrument is drawn equally
    often. For multi-label items ``max`` lets an item carrying a rare instrument be drawn as often as
    that instrument needs, while ``mean`` dilutes it with its common companions. Items without any
    label get the mean weight of the others.
    """
    present = labels > 0.5
    counts = present.sum(axis=0).astype(np.float64)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    per_label = np.where(present, inverse[None, :], np.nan)
    has_label = present.any(axis=1)
    weights = np.full(labels.shape[0], np.nan)
    if has_label.any():
        rows = per_label[has_label]
        weights[has_label] = np.nanmax(rows, axis=1) if reduce == "max" else np.nanmean(rows, axis=1)
        weights[~has_label] = weights[has_label].mean()
    else:
        weights[:] = 1.0
    return weights


def weighted_sampler(items: Sequence[Item], seed: int) -> WeightedRandomSampler:
    """A with-replacement sampler drawing ``len(items)`` items per epoch by :func:`sampler_weights`.

    Its generator is seeded, so under DDP every rank draws the same sequence and Lightning's
    ``DistributedSamplerWrapper`` (applied automatically to custom samplers) hands each rank a disjoint
    slice of it.
    """
    weights = torch.as_tensor(sampler_weights(label_matrix(items)), dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(items), replacement=True, generator=generator)


def random_crop(audio: np.ndarray, window_samples: int) -> np.ndarray:
    """A random ``window_samples`` excerpt; shorter audio is tiled like serving pads its last window."""
    if audio.shape[0] <= window_samples:
        return split_windows(audio, window_samples, window_samples).audio[0]
    start = int(torch.randint(0, audio.shape[0] - window_samples + 1, (1,)))
    return np.ascontiguousarray(audio[start : start + window_samples])


class _AudioSource:
    """Decodes items at the model's rate, optionally keeping every decoded file in memory.

    The cache is filled in the main process before workers fork, so workers share it copy-on-write
    instead of each decoding its own copy.
    """

    def __init__(self, items: Sequence[Item], sample_rate: int, normalize: bool, cache: bool) -> None:
        self.items = list(items)
        self.sample_rate = sample_rate
        self.normalize = normalize
        self.cache = [self._decode(i) for i in range(len(self.items))] if cache else None

    def _decode(self, index: int) -> np.ndarray:
        path = self.items[index].path
        return load_audio(path, self.sample_rate, name=str(path), normalize=self.normalize)

    def audio(self, index: int) -> np.ndarray:
        return self.cache[index] if self.cache is not None else self._decode(index)


class TrainWindows(Dataset):
    """One random window per file per visit: ``(waveform [window] f32, labels [L] f32)``."""

    def __init__(self, items: Sequence[Item], config: TrainConfig, *, cache: bool = False) -> None:
        _require_labels(items, "--train-paths")
        self.source = _AudioSource(items, config.frontend.sample_rate, config.normalize_audio, cache)
        self.window_samples = config.window_samples
        self.labels = torch.as_tensor(label_matrix(items))

    def __len__(self) -> int:
        return len(self.source.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = random_crop(self.source.audio(index), self.window_samples)
        return torch.from_numpy(window), self.labels[index]


@dataclass(frozen=True)
class FileWindows:
    """All windows of one evaluation file (what :class:`EvalFiles` yields)."""

    file_index: int
    windows: np.ndarray  # float32 [n, window]
    valid: np.ndarray  # int64 [n]
    starts: np.ndarray  # int64 [n]
    labels: np.ndarray  # float32 [L]


@dataclass
class EvalBatch:
    """Windows of one or more files, flattened, each tagged with its file.

    ``file_index`` / ``starts`` identify a window globally, so windows gathered from several DDP ranks
    (where ``DistributedSampler`` may repeat a file to even out the ranks) can be de-duplicated.
    """

    windows: torch.Tensor  # [W, window] f32
    valid: torch.Tensor  # [W] int64
    starts: torch.Tensor  # [W] int64
    file_index: torch.Tensor  # [W] int64
    labels: torch.Tensor  # [W, L] f32 (the file's labels, repeated per window)

    def to(self, device: torch.device | str) -> EvalBatch:
        return EvalBatch(
            *(t.to(device) for t in (self.windows, self.valid, self.starts, self.file_index, self.labels))
        )

    def __len__(self) -> int:
        return int(self.windows.shape[0])


class EvalFiles(Dataset):
    """Whole files cut into serving's windows; one dataset item per file."""

    def __init__(self, items: Sequence[Item], config: TrainConfig, flag: str, *, cache: bool = False) -> None:
        _require_labels(items, flag)
        self.items = list(items)
        self.source = _AudioSource(items, config.frontend.sample_rate, config.normalize_audio, cache)
        self.window_samples = config.window_samples
        self.hop_samples = config.hop_samples
        self.labels = label_matrix(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> FileWindows:
        cut = split_windows(self.source.audio(index), self.window_samples, self.hop_samples)
        return FileWindows(index, cut.audio, cut.valid, cut.starts, self.labels[index])


def collate_files(files: Sequence[FileWindows]) -> EvalBatch:
    """Flatten the windows of several files into one :class:`EvalBatch`."""
    counts = [len(f.windows) for f in files]
    return EvalBatch(
        windows=torch.from_numpy(np.concatenate([f.windows for f in files])),
        valid=torch.from_numpy(np.concatenate([f.valid for f in files])),
        starts=torch.from_numpy(np.concatenate([f.starts for f in files])),
        file_index=torch.as_tensor(np.repeat([f.file_index for f in files], counts), dtype=torch.int64),
        labels=torch.from_numpy(np.repeat(np.stack([f.labels for f in files]), counts, axis=0)),
    )


def ignore_sigint_in_worker(_worker_id: int) -> None:
    """Workers share the terminal's process group; Ctrl+C is the main process's to handle.

    A worker that dies of SIGINT makes the main process fail with "worker exited unexpectedly"
    instead of stopping gracefully after the current batch.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def quick_subset(items: Sequence[Item], n: int = QUICK_ITEMS) -> list[Item]:
    """``n`` items evenly spread over the (sorted) list, so a smoke run still sees several labels."""
    if len(items) <= n:
        return list(items)
    picks = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


class LumenDataModule(pl.LightningDataModule):
    """Train / val / test loaders for a :class:`TrainConfig`.

    ``cache_audio`` keeps decoded audio in memory (worth it for small or synthetic sets trained for
    many epochs; IRMAS train at 16 kHz is ~1.3 GB of float32).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.train_items: list[Item] = []
        self.val_items: list[Item] = []
        self.test_items: list[Item] = []
        self._loaded = False

    def load_items(self) -> None:
        """Read the dataset specs (cheap: file lists and labels, no audio); idempotent."""
        if self._loaded:
            return
        cfg = self.config
        self.train_items = load_datasets(cfg.train_paths) if cfg.train_paths else []
        self.val_items = load_datasets(cfg.val_paths) if cfg.val_paths else []
        self.test_items = load_datasets(cfg.test_paths) if cfg.test_paths else []
        if cfg.quick:
            self.train_items, self.val_items, self.test_items = (
                quick_subset(items) for items in (self.train_items, self.val_items, self.test_items)
            )
        for flag, items in (
            ("--train-paths", self.train_items),
            ("--val-paths", self.val_items),
            ("--test-paths", self.test_items),
        ):
            _require_labels(items, flag)
        self._loaded = True

    def setup(self, stage: str | None = None) -> None:
        self.load_items()

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=ignore_sigint_in_worker if workers > 0 else None,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        if not self.train_items:
            raise ConfigError("--train-paths is required for training")
        dataset = TrainWindows(self.train_items, self.config, cache=self.config.cache_audio)
        sampler = (
            weighted_sampler(self.train_items, self.config.seed)
            if self.config.use_weighted_train_sampler
            else None
        )
        return self._loader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            shuffle=sampler is None,
            drop_last=len(dataset) > self.config.batch_size,
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
        )

    def _eval_loader(self, items: list[Item], flag: str) -> DataLoader:
        # Batches hold whole files; the module runs the forward in chunks of batch_size windows.
        dataset = EvalFiles(items, self.config, flag, cache=self.config.cache_audio)
        return self._loader(
            dataset, batch_size=max(1, self.config.batch_size // 4), shuffle=False, collate_fn=collate_files
        )

    def val_dataloader(self) -> DataLoader:
        if not self.val_items:
            raise ConfigError("--val-paths is required: metrics, the best checkpoint and thresholds use it")
        return self._eval_loader(self.val_items, "--val-paths")

    def test_dataloader(self) -> DataLoader:
        if not self.test_items:
            raise ConfigError("no --test-paths to test on")
        return self._eval_loader(self.test_items, "--test-paths")

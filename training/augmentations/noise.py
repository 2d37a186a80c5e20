"""BACKGROUND_NOISE: crops of real recordings (rooms, crowds, hum) added at a random SNR.

The folder is decoded once, at construction, with ``common.audio.load_audio`` at the model's sample
rate (so any supported format and rate works), and kept as one flat tensor; a batch of crops is then
a single gather, with short recordings tiled to fill the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common.audio import SUPPORTED_EXTENSIONS, AudioError, is_audio_path, load_audio
from training.augmentations._random import chosen, per_example, uniform
from training.augmentations.params import AugmentationError
from training.augmentations.time_domain import add_at_snr

_KEY = "background_noise_dir"


def noise_files(folder: str | Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, sorted so runs are reproducible)."""
    root = Path(folder)
    if not root.is_dir():
        raise AugmentationError(
            f"--aug-kwargs {_KEY}={str(folder)!r}: folder not found; point it at a folder of noise recordings"
        )
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_audio_path(p))
    if not files:
        raise AugmentationError(
            f"--aug-kwargs {_KEY}={str(folder)!r}: no audio files in it "
            f"(looked for {', '.join(SUPPORTED_EXTENSIONS)}, recursively)"
        )
    return files


class BackgroundNoise:
    """Callable ``wave [B, T] -> wave`` holding the decoded noise bank."""

    def __init__(self, folder: str | Path, sample_rate: int, *, p: float, snr_db_range: tuple[float, float]):
        self.p = p
        self.snr_db_range = snr_db_range
        self.files = noise_files(folder)
        clips = []
        for path in self.files:
            try:
                clip = load_audio(path, sample_rate)
            except AudioError as exc:
                raise AugmentationError(f"--aug-kwargs {_KEY}: {exc}; remove or fix the file") from None
            if not np.any(clip):
                raise AugmentationError(
                    f"--aug-kwargs {_KEY}: {path} is digital silence; it would add nothing"
                )
            clips.append(clip)
        lengths = np.array([len(c) for c in clips], dtype=np.int64)
        self._bank = torch.from_numpy(np.concatenate(clips))
        self._starts = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        self._lengths = torch.from_numpy(lengths)
        self._on_device: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """The bank on ``device``, copied there once (not on every batch)."""
        if device not in self._on_device:
            self._on_device[device] = (
                self._bank.to(device),
                self._starts.to(device),
                self._lengths.to(device),
            )
        return self._on_device[device]

    def crops(self, batch: int, length: int, device: torch.device) -> Tensor:
        """``[batch, length]`` crops: a uniformly drawn file, a uniform start, tiled if the file is short."""
        bank, starts, lengths = self._tensors(device)
        file = torch.randint(len(self.files), (batch,), device=device)
        offset = (torch.rand(batch, device=device) * lengths[file]).long()
        within = (offset.unsqueeze(1) + torch.arange(length, device=device)) % lengths[file].unsqueeze(1)
        return bank[starts[file].unsqueeze(1) + within]

    def __call__(self, wave: Tensor) -> Tensor:
        batch, length = wave.shape
        mask = chosen(batch, self.p, wave.device)
        snr_db = uniform(*self.snr_db_range, (batch,), wave.device)
        noisy = add_at_snr(wave, self.crops(batch, length, wave.device), snr_db)
        return per_example(mask, noisy, wave)

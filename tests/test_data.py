"""Training data: random crops, serving's windowing for evaluation, instrument-balanced sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from common.audio import load_audio, split_windows
from common.datasets import Item
from common.labels import LABELS, N_LABELS, index_of, to_multi_hot
from training.config import ConfigError, TrainConfig
from training.data import (
    EvalFiles,
    LumenDataModule,
    TrainWindows,
    collate_files,
    label_counts,
    quick_subset,
    random_crop,
    sampler_weights,
    weighted_sampler,
)

SR = 8000


def _config(**overrides) -> TrainConfig:
    config = TrainConfig(window_seconds=0.5, hop_seconds=0.25, num_workers=0, batch_size=4, **overrides)
    config.frontend.sample_rate = SR
    return config


def _write(path: Path, seconds: float, sr: int = SR, freq: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def _item(path: Path, *codes: str) -> Item:
    return Item(path, to_multi_hot(codes), None, None)


def test_random_crop_is_a_window_of_the_signal_and_tiles_short_audio():
    torch.manual_seed(0)
    audio = np.arange(1000, dtype=np.float32)
    crops = [random_crop(audio, 100) for _ in range(20)]
    for crop in crops:
        assert crop.shape == (100,)
        assert np.array_equal(crop, np.arange(crop[0], crop[0] + 100, dtype=np.float32))
    assert len({float(c[0]) for c in crops}) > 1
    short = np.arange(30, dtype=np.float32)
    assert np.array_equal(random_crop(short, 100), split_windows(short, 100, 100).audio[0])


def test_train_windows_resample_normalise_and_label(tmp_path):
    path = _write(tmp_path / "a.wav", 1.3, sr=16_000)
    dataset = TrainWindows([_item(path, "vio")], _config())
    wave, labels = dataset[0]
    assert wave.dtype == torch.float32 and wave.shape == (int(0.5 * SR),)
    assert labels.tolist() == to_multi_hot(["vio"]).tolist()
    full = load_audio(path, SR, normalize=True)
    assert np.abs(wave.numpy()).max() <= np.abs(full).max() + 1e-6
    assert np.abs(full).max() == pytest.approx(0.99, abs=1e-3)  # peak-normalised like serving's input


def test_eval_windows_match_common_audio_and_keep_file_ids(tmp_path):
    paths = [
        _write(tmp_path / f"f{i}.wav", seconds, freq=200 + 100 * i)
        for i, seconds in enumerate((1.1, 0.3, 2.0))
    ]
    items = [_item(paths[0], "cel"), _item(paths[1], "pia", "voi"), _item(paths[2], "gel")]
    config = _config()
    dataset = EvalFiles(items, config, "--val-paths")
    batch = collate_files([dataset[i] for i in range(3)])
    offset = 0
    for index, path in enumerate(paths):
        expected = split_windows(
            load_audio(path, SR, normalize=True), config.window_samples, config.hop_samples
        )
        rows = slice(offset, offset + len(expected))
        assert np.array_equal(batch.windows[rows].numpy(), expected.audio)
        assert np.array_equal(batch.valid[rows].numpy(), expected.valid)
        assert np.array_equal(batch.starts[rows].numpy(), expected.starts)
        assert (batch.file_index[rows] == index).all()
        assert (batch.labels[rows] == torch.from_numpy(items[index].labels)).all()
        offset += len(expected)
    assert offset == len(batch)


def test_sampler_weights_max_and_mean():
    labels = np.stack(
        [
            to_multi_hot(["cel"]),
            to_multi_hot(["cel"]),
            to_multi_hot(["cel", "vio"]),
            np.zeros(N_LABELS, dtype=np.float32),
        ]
    )
    # counts: cel 3, vio 1
    assert np.allclose(sampler_weights(labels, "max")[:3], [1 / 3, 1 / 3, 1.0])
    assert np.allclose(sampler_weights(labels, "mean")[:3], [1 / 3, 1 / 3, (1 / 3 + 1) / 2])
    assert sampler_weights(labels, "max")[3] == pytest.approx(np.mean([1 / 3, 1 / 3, 1.0]))


def test_weighted_sampler_balances_an_imbalanced_set(tmp_path):
    per_class = {"pia": 40, "gel": 10, "flu": 2}
    items = [_item(tmp_path / f"{code}{i}.wav", code) for code, n in per_class.items() for i in range(n)]
    sampler = weighted_sampler(items, seed=0)
    drawn = np.array([index for _ in range(40) for index in sampler])  # 40 epochs x 52 draws
    codes = np.array([int(np.argmax(items[i].labels)) for i in drawn])
    freq = {code: float(np.mean(codes == index_of(code))) for code in per_class}
    for code in per_class:
        assert freq[code] == pytest.approx(1 / 3, abs=0.04), freq
    # Seeded: every DDP rank draws the same sequence, so the distributed wrapper can split it.
    assert list(weighted_sampler(items, seed=0)) == list(weighted_sampler(items, seed=0))


def test_label_counts_and_quick_subset(tmp_path):
    items = [_item(tmp_path / f"{i}.wav", LABELS[i % 3]) for i in range(40)]
    assert label_counts(items)[:3].tolist() == [14, 13, 13]
    subset = quick_subset(items, 16)
    assert len(subset) == 16 and subset[0] is items[0] and subset[-1] is items[-1]
    assert len({int(np.argmax(i.labels)) for i in subset}) == 3


def test_datamodule_loaders_and_unlabelled_data(tmp_path):
    for code, n in (("cel", 3), ("vio", 2)):
        for i in range(n):
            _write(tmp_path / "train" / code / f"{code}{i}.wav", 0.8)
    _write(tmp_path / "val" / "x.wav", 1.0)
    (tmp_path / "val" / "x.txt").write_text("cel\nvio\n")
    config = _config(
        train_paths=[f"irmastrain:{tmp_path / 'train'}"],
        val_paths=[f"irmastest:{tmp_path / 'val'}"],
        use_weighted_train_sampler=True,
        cache_audio=True,
    )
    module = LumenDataModule(config)
    module.setup("fit")
    waves, labels = next(iter(module.train_dataloader()))
    assert waves.shape == (4, config.window_samples) and labels.shape == (4, N_LABELS)
    batch = next(iter(module.val_dataloader()))
    assert isinstance(batch.windows, torch.Tensor) and batch.labels[0, index_of("vio")] == 1
    config = _config(train_paths=[f"inference:{tmp_path / 'val'}"])
    with pytest.raises(ConfigError, match="no labels"):
        LumenDataModule(config).setup("fit")


def test_train_loader_workers_give_different_crops(tmp_path):
    path = _write(tmp_path / "long.wav", 4.0)
    dataset = TrainWindows([_item(path, "org")] * 4, _config(), cache=True)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    torch.manual_seed(0)
    waves, _ = next(iter(loader))
    assert len({float(w[0]) for w in waves}) > 1

"""Checkpoints: plain-data hparams (weights-only loadable), strict round trip, clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from common.labels import LABELS
from training.checkpoint import HPARAM_KEYS, CheckpointError, load_checkpoint
from training.cli import main
from training.config import TrainConfig

SR = 8000
TINY_FLAGS = [
    "--sample-rate",
    str(SR),
    "--n-mels",
    "32",
    "--n-fft",
    "256",
    "--hop-length",
    "128",
    "--window-seconds",
    "0.5",
    "--hop-seconds",
    "0.25",
    "--num-workers",
    "0",
    "--model",
    "SMALL_CNN",
]


def _tone_dataset(root: Path) -> tuple[Path, Path]:
    """Two files per instrument (train) and one labelled file each (val): tones at label-specific pitch."""
    t = np.arange(int(0.8 * SR)) / SR
    for i, code in enumerate(LABELS):
        tone = (0.3 * np.sin(2 * np.pi * (150 + 50 * i) * t)).astype(np.float32)
        for k in range(2):
            path = root / "train" / code / f"{code}{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone, SR)
        (root / "val").mkdir(exist_ok=True)
        sf.write(root / "val" / f"{code}.wav", tone, SR)
        (root / "val" / f"{code}.txt").write_text(code + "\n")
    return root / "train", root / "val"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    train, val = _tone_dataset(root)
    out = root / "out"
    status = main(
        [
            "--train-paths",
            f"irmastrain:{train}",
            "--val-paths",
            f"irmastest:{val}",
            "--quick",
            "--epochs",
            "2",
            "--nofinetune-head",
            "--output-dir",
            str(out),
            "--early-stopping-patience",
            "3",
            *TINY_FLAGS,
        ]
    )
    assert status == 0
    (run,) = out.iterdir()
    return run


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
def test_weights_only_load_and_plain_hparams(run_dir, name):
    data = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
    hparams = data["hyper_parameters"]
    assert sorted(hparams) == sorted(HPARAM_KEYS)
    assert _plain(hparams)
    assert TrainConfig.from_dict(hparams["config"]).model.model == hparams["architecture"] == "SMALL_CNN"
    assert hparams["labels"] == list(LABELS) and hparams["sample_rate"] == SR
    assert hparams["window_samples"] == SR // 2 and hparams["hop_samples"] == SR // 4
    assert len(hparams["thresholds"]) == len(LABELS)
    assert all(0.0 <= t <= 1.0 for t in hparams["thresholds"])
    assert all(key.startswith("model.") for key in data["state_dict"])


def test_strict_round_trip_gives_identical_outputs(run_dir):
    path = run_dir / "checkpoints" / "best.ckpt"
    first, second = load_checkpoint(path), load_checkpoint(path)
    assert not first.model.training
    waves = torch.randn(3, first.config.window_samples, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        out = first.model(waves)
        assert out.shape == (3, len(LABELS))
        assert torch.equal(out, second.model(waves))
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, state[f"model.{key}"])
    assert first.thresholds == first.hparams["thresholds"]
    assert len(first.sha256) == 64


def test_checkpoint_errors(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a zip or pickle at all")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        load_checkpoint(garbage)
    other_tool = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}, other_tool)
    with pytest.raises(CheckpointError, match="not a lumen-audio checkpoint"):
        load_checkpoint(other_tool)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"hyper_parameters": {"config": {}}, "model": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(pickled)
    for error in (other_tool, pickled, garbage):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(error)
        assert "\n" not in str(info.value)


def test_mismatched_weights_are_refused(run_dir, tmp_path):
    data = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    key = next(iter(data["state_dict"]))
    del data["state_dict"][key]
    broken = tmp_path / "broken.ckpt"
    torch.save(data, broken)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(broken)

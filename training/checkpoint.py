"""Self-describing Lightning checkpoints: plain-data hyper-parameters, strict loading.

A lumen checkpoint is a standard Lightning ``.ckpt`` whose ``hyper_parameters`` hold only plain data
(str/int/float/bool/None/list/dict), so ``torch.load(path, weights_only=True)`` opens it without
executing pickled code and export/serving can read it without the training code's classes:

- ``config``: :meth:`TrainConfig.to_dict` (everything needed to rebuild the model);
- ``labels``, ``sample_rate``, ``window_samples``, ``hop_samples``, ``aggregation``: the serving contract;
- ``thresholds``: per-label decision thresholds tuned on the validation set;
- ``architecture``: the model name; ``lumen_version``: the package version that wrote it.

The model's weights are the ``state_dict`` entries under ``model.`` (the LightningModule's
``self.model``); :func:`load_checkpoint` rebuilds the model from ``config`` and loads them strictly.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.version import __version__
from training.config import ConfigError, TrainConfig

MODEL_PREFIX = "model."
HPARAM_KEYS: tuple[str, ...] = (
    "config",
    "labels",
    "sample_rate",
    "window_samples",
    "hop_samples",
    "thresholds",
    "aggregation",
    "architecture",
    "lumen_version",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong (one line)."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: torch.nn.Module  # training.models.LumenModel, in eval mode
    config: TrainConfig
    thresholds: list[float]
    hparams: dict[str, Any]
    sha256: str


def build_hparams(config: TrainConfig, thresholds: list[float]) -> dict[str, Any]:
    """The checkpoint's ``hyper_parameters``: plain data only (see module docstring)."""
    if len(thresholds) != len(config.labels):
        raise ValueError(f"{len(thresholds)} thresholds for {len(config.labels)} labels")
    return {
        "config": config.to_dict(),
        "labels": list(config.labels),
        "sample_rate": int(config.frontend.sample_rate),
        "window_samples": int(config.window_samples),
        "hop_samples": int(config.hop_samples),
        "thresholds": [float(t) for t in thresholds],
        "aggregation": str(config.aggregation),
        "architecture": str(config.model.model),
        "lumen_version": __version__,
    }


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_torch_save(path: Path) -> bool:
    """Starts like a zip archive (``torch.save`` since 1.6) or a legacy pickle (marker ``0x80``).

    Only the magic bytes are checked, so a truncated checkpoint still reaches ``torch.load`` and is
    reported as unreadable rather than as some other kind of file.
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; every failure becomes a one-line :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not _looks_like_torch_save(path):
        hint = (
            "an exported artifact; serve it or evaluate it with lumen-test, and pass the .ckpt that "
            "lumen-train wrote here"
            if path.suffix.lower() == ".onnx"  # a .pt2 is a zip archive: torch.load reports it
            else "neither a torch.save zip archive nor a pickle"
        )
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({hint})")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: holds pickled objects that a weights-only load refuses ({first}); "
            "not a lumen-audio checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (top level is {type(data).__name__})")
    return data


def checkpoint_hparams(path: str | Path, data: dict[str, Any]) -> dict[str, Any]:
    """The lumen hyper-parameters of a loaded checkpoint dict, validated."""
    hparams = data.get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("config"), dict):
        raise CheckpointError(
            f"{path}: not a lumen-audio checkpoint (no hyper_parameters.config); train one with lumen-train"
        )
    missing = [key for key in HPARAM_KEYS if key not in hparams]
    if missing:
        raise CheckpointError(f"{path}: lumen checkpoint is missing hyper-parameters {missing}")
    return hparams


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model from the stored config and load its weights strictly (eval mode, CPU)."""
    from training.models import build_model

    data = read_checkpoint(path)
    hparams = checkpoint_hparams(path, data)
    try:
        config = TrainConfig.from_dict(hparams["config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: stored training config is invalid ({exc})") from None
    state = data.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no state_dict")
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    if not weights:
        raise CheckpointError(
            f"{path}: state_dict has no '{MODEL_PREFIX}*' weights; not a lumen-audio checkpoint"
        )
    model = build_model(config, load_pretrained=False)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the stored {config.model.model} config "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # same names, different shapes
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:3])
        raise CheckpointError(
            f"{path}: weights do not match the stored {config.model.model} config ({detail})"
        ) from None
    model.eval()
    thresholds = [float(t) for t in hparams["thresholds"]]
    if len(thresholds) != len(config.labels):
        raise CheckpointError(f"{path}: {len(thresholds)} thresholds for {len(config.labels)} labels")
    return LoadedCheckpoint(
        model=model, config=config, thresholds=thresholds, hparams=hparams, sha256=sha256_of(path)
    )

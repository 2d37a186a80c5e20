"""What every export format shares: the metadata, the probs/logits module, fp16 casting, atomic writes.

Each format (ONNX, TorchScript, torch.export) serialises the same :class:`ProbsAndLogits` module, so
all artifacts take ``waveform`` float32 ``[batch, window_samples]`` and give ``probs`` (sigmoid) and
``logits`` ``[batch, n_labels]``, and carry the same :class:`~common.artifact.ArtifactMetadata`.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from common.artifact import ArtifactMetadata, metadata_from_props
from common.version import __version__
from training.checkpoint import LoadedCheckpoint

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "pt2")
SUFFIXES: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}
# TorchScript and torch.export archives carry the metadata as this extra file: the same
# ``lumen.*`` props as the ONNX ``metadata_props``, as one JSON object, read back with
# :func:`metadata_from_json`.
METADATA_FILE = "lumen_metadata.json"


class ExportError(ValueError):
    """An export that cannot be done; the message names the model, the format and why (one line)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: exporters raise pages, the user needs the gist."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build_metadata(loaded: LoadedCheckpoint) -> ArtifactMetadata:
    """The serving contract for ``loaded``: everything comes from the checkpoint, nothing is guessed."""
    config = loaded.config
    return ArtifactMetadata(
        labels=list(config.labels),
        sample_rate=int(config.frontend.sample_rate),
        window_samples=int(config.window_samples),
        hop_samples=int(config.hop_samples),
        thresholds=[float(t) for t in loaded.thresholds],
        aggregation=config.aggregation,  # type: ignore[arg-type]  # validated by TrainConfig
        architecture=config.model.model,
        training_config=config.to_dict(),
        source_checkpoint_sha256=loaded.sha256,
        lumen_version=__version__,
        export_time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    ).validate()


def metadata_json(meta: ArtifactMetadata) -> str:
    return json.dumps(meta.to_props(), sort_keys=True)


def metadata_from_json(text: str | bytes, *, source: str) -> ArtifactMetadata:
    """Inverse of :func:`metadata_json` (TorchScript / pt2 ``extra_files``)."""
    try:
        props = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{source}: {METADATA_FILE} is not valid JSON ({exc})") from None
    if not isinstance(props, dict):
        raise ExportError(f"{source}: {METADATA_FILE} must hold a JSON object")
    return metadata_from_props(props, source=source)


class ProbsAndLogits(nn.Module):
    """The exported computation: ``waveform -> (probs, logits)``, both float32.

    ``logits`` are cast to float32 before the sigmoid so that a half-precision backbone
    (:func:`half_precision`) still gives float32 probabilities computed in float32.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(waveform).float()
        return torch.sigmoid(logits), logits


class _HalfOutput(nn.Module):
    """Runs the wrapped front-end in float32 (its log needs the range) and hands float16 on."""

    def __init__(self, frontend: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend

    def forward(self, *args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return self.frontend(*args, **kwargs).half()


def half_precision(model: nn.Module) -> nn.Module:
    """A float16 copy of a LumenModel whose front-end (DFT, mel, log) stays float32.

    The input stays float32 ``waveform`` and :class:`ProbsAndLogits` casts the logits back to float32
    before the sigmoid, so only the backbone and head (nearly all of the compute) run in half.
    """
    half = copy.deepcopy(model)
    frontend = half.frontend
    half.frontend = nn.Identity()
    half.half()
    half.frontend = _HalfOutput(frontend.float())
    return half.eval()


def default_output(checkpoint: str | os.PathLike[str], fmt: str) -> Path:
    """``<dir>/<ckpt stem><format suffix>``: the artifact lands next to its checkpoint."""
    path = Path(checkpoint)
    return path.with_name(path.stem + SUFFIXES[fmt])


@contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``out``; rename it onto ``out`` only if the block succeeds.

    Writing, then verifying, the temporary file means a failed export or a failed parity check
    never leaves a half-written or unverified artifact under the real name. Same directory, so
    :func:`os.replace` is an atomic rename.
    """
    if not out.parent.is_dir():
        raise ExportError(f"{out}: output directory {out.parent} does not exist")
    # Not mkstemp: its 0600 mode would survive the rename; the writers create the file normally.
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

"""TorchScript (``torch.jit.trace``) and torch.export (``.pt2``) artifacts for PyTorch-side consumers.

Both hold the same :class:`~export.artifact.ProbsAndLogits` computation as the ONNX file
(``waveform [batch, window_samples] -> (probs, logits)``) and the same metadata, as the extra file
:data:`~export.artifact.METADATA_FILE`. TorchScript is in maintenance mode upstream; ``.pt2``
(``torch.export``) is what PyTorch recommends now, and both are kept for consumers that need them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from common.artifact import ArtifactMetadata
from export.artifact import (
    METADATA_FILE,
    ExportError,
    ProbsAndLogits,
    first_line,
    metadata_from_json,
    metadata_json,
)

LoadedArtifact = tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], ArtifactMetadata]


def write_torchscript(
    module: ProbsAndLogits, meta: ArtifactMetadata, path: Path, *, batch_hint: int = 2
) -> None:
    """Trace ``module`` at ``[batch_hint, window_samples]`` and save it with ``meta`` as an extra file.

    Tracing records the ops run for the example; a batch size baked in by Python-side shape logic
    would only show on another batch size, which is why parity runs at batch 1 and 5.
    """
    example = torch.zeros(batch_hint, meta.window_samples)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # TracerWarnings flag shape-dependent Python code; parity at other batch sizes checks it.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module.eval(), (example,), check_trace=False)
    except Exception as exc:  # tracing raises many types; the user needs model + first line
        raise ExportError(f"{meta.architecture} cannot be traced to TorchScript: {first_line(exc)}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": see the module docstring
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: metadata_json(meta)})


def load_torchscript(path: Path) -> LoadedArtifact:
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), metadata_from_json(extra[METADATA_FILE], source=str(path))


def write_pt2(module: ProbsAndLogits, meta: ArtifactMetadata, path: Path, *, batch_hint: int = 2) -> None:
    """``torch.export.export`` with a dynamic batch axis, saved with ``meta`` as an extra file."""
    example = torch.zeros(batch_hint, meta.window_samples)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module.eval(), (example,), dynamic_shapes={"waveform": {0: batch}})
    except Exception as exc:  # torch.export raises many types; the user needs model + first line
        raise ExportError(
            f"{meta.architecture} cannot be exported with torch.export: {first_line(exc)}"
        ) from exc
    torch.export.save(program, path, extra_files={METADATA_FILE: metadata_json(meta)})


def load_pt2(path: Path) -> LoadedArtifact:
    extra = {METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), metadata_from_json(extra[METADATA_FILE], source=str(path))

"""One ONNX Runtime session per artifact: provider choice, contract checks at load, batched inference.

The server never trusts a file name: everything it needs (labels, rate, window, thresholds) comes
from the artifact's ``metadata_props`` (:mod:`common.artifact`), and the graph's input/output
signature is checked against that metadata when the file is loaded, so a mismatched artifact fails
once, at load, with its file name, instead of on every request.

Provider choice is explicit: ``cuda:N`` uses the CUDA execution provider only when this
onnxruntime build has it, and the log says which provider is *actually* active after the session
is created (ORT silently falls back to CPU when a CUDA library is missing).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from common.artifact import (
    INPUT_NAME,
    OUTPUT_NAME,
    ArtifactError,
    ArtifactMetadata,
    metadata_from_props,
)

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

# Batch sizes change from one batch to the next; exhaustive cuDNN search would re-benchmark every
# new shape on the request path, so the heuristic is the right trade-off for a dynamic batcher.
CUDA_OPTIONS: dict[str, Any] = {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": True}

Provider = str | tuple[str, dict[str, Any]]

_DEVICE_RE = re.compile(r"^(?P<kind>cpu|cuda)(?::(?P<index>\d+))?$")


@dataclass(frozen=True)
class Device:
    """A parsed ``--device`` value."""

    kind: Literal["cpu", "cuda"]
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def parse_device(device: str) -> Device:
    """``"cpu"``, ``"cuda"`` (= ``cuda:0``) or ``"cuda:N"``; anything else is a ValueError."""
    match = _DEVICE_RE.match(device.strip().lower())
    if match is None:
        raise ValueError(f"invalid device {device!r}; use 'cpu', 'cuda' or 'cuda:N' (e.g. cuda:0)")
    if match["kind"] == "cpu":
        if match["index"] is not None:
            raise ValueError(f"invalid device {device!r}; the CPU device takes no index, use 'cpu'")
        return Device("cpu")
    return Device("cuda", int(match["index"] or 0))


def select_providers(device: str, available: Iterable[str]) -> list[Provider]:
    """Execution providers for ``device`` given the providers this onnxruntime build offers.

    ``cuda:N`` -> CUDA on device N, then CPU as the fallback for ops CUDA lacks. When the build has
    no CUDA provider the result is CPU only and a warning is logged, so a misconfigured GPU host
    still serves (slowly) and says why.
    """
    parsed = parse_device(device)
    if parsed.kind == "cuda":
        if CUDA_PROVIDER in available:
            return [(CUDA_PROVIDER, {"device_id": parsed.index, **CUDA_OPTIONS}), CPU_PROVIDER]
        log.warning(
            "device %s requested but this onnxruntime has no %s (available: %s); using the CPU. "
            "Install onnxruntime-gpu (extra 'gpu') instead of onnxruntime for GPU serving.",
            parsed,
            CUDA_PROVIDER,
            ", ".join(available) or "none",
        )
    return [CPU_PROVIDER]


def _is_fixed(dim: object) -> bool:
    return isinstance(dim, int) and dim > 0


class OnnxModel:
    """A loaded, contract-checked artifact.

    ``run`` is thread-safe (ONNX Runtime sessions are) and releases the GIL while computing, so the
    batcher calls it from a worker thread.
    """

    def __init__(
        self, path: str | os.PathLike[str], device: str = "cpu", intra_op_threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.source = os.fspath(path)
        self.device = parse_device(device)
        providers = select_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
        # One batch at a time per session: parallelism comes from intra-op threads, not graph branches.
        options.inter_op_num_threads = 1
        # Idle ORT threads spin by default; in a server they would steal the cores that decode
        # audio and run the event loop between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not self.path.is_file():
            raise ArtifactError(f"{self.source}: file not found")
        try:
            self.session = ort.InferenceSession(self.source, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types for every load failure
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{self.source}: cannot load as an ONNX model ({reason})") from None
        self.metadata: ArtifactMetadata = metadata_from_props(
            dict(self.session.get_modelmeta().custom_metadata_map), source=self.source
        )
        self._check_signature()
        self.active_providers: list[str] = list(self.session.get_providers())
        self.on_cuda = self.active_providers[0] == CUDA_PROVIDER
        log.info("loaded %s: active providers %s", self.source, self.active_providers)
        if self.device.kind == "cuda" and not self.on_cuda:
            log.warning(
                "%s: %s requested but the session runs on %s",
                self.source,
                self.device,
                self.active_providers[0],
            )

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def window_samples(self) -> int:
        return self.metadata.window_samples

    def _check_signature(self) -> None:
        """Input ``waveform`` f32 [batch, window]; output ``probs`` f32 [batch, n_labels]."""
        meta = self.metadata
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise ArtifactError(
                f"{self.source}: graph input {INPUT_NAME!r} missing (inputs: {sorted(inputs)}); "
                "re-export with lumen-export"
            )
        if len(inputs) != 1:
            raise ArtifactError(f"{self.source}: expected exactly one graph input, got {sorted(inputs)}")
        waveform = inputs[INPUT_NAME]
        if waveform.type != "tensor(float)":
            raise ArtifactError(
                f"{self.source}: input {INPUT_NAME!r} is {waveform.type}, expected tensor(float)"
            )
        if len(waveform.shape) != 2:
            raise ArtifactError(
                f"{self.source}: input {INPUT_NAME!r} has shape {waveform.shape}, expected [batch, window_samples]"
            )
        batch_dim, window_dim = waveform.shape
        if _is_fixed(batch_dim):
            raise ArtifactError(
                f"{self.source}: input {INPUT_NAME!r} has a fixed batch size {batch_dim}; "
                "export with a dynamic batch axis"
            )
        if _is_fixed(window_dim) and window_dim != meta.window_samples:
            raise ArtifactError(
                f"{self.source}: input {INPUT_NAME!r} takes {window_dim} samples but metadata "
                f"window_samples = {meta.window_samples}"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        if OUTPUT_NAME not in outputs:
            raise ArtifactError(
                f"{self.source}: graph output {OUTPUT_NAME!r} missing (outputs: {sorted(outputs)}); "
                "re-export with lumen-export"
            )
        probs = outputs[OUTPUT_NAME]
        if probs.type != "tensor(float)":
            raise ArtifactError(
                f"{self.source}: output {OUTPUT_NAME!r} is {probs.type}, expected tensor(float)"
            )
        if len(probs.shape) != 2:
            raise ArtifactError(
                f"{self.source}: output {OUTPUT_NAME!r} has shape {probs.shape}, expected [batch, n_labels]"
            )
        if _is_fixed(probs.shape[1]) and probs.shape[1] != len(meta.labels):
            raise ArtifactError(
                f"{self.source}: output {OUTPUT_NAME!r} has {probs.shape[1]} columns but metadata "
                f"lists {len(meta.labels)} labels"
            )

    def run(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities ``[B, n_labels]`` for float32 windows ``[B, window_samples]``."""
        if windows.ndim != 2 or windows.shape[1] != self.window_samples or windows.shape[0] == 0:
            raise ValueError(
                f"expected windows of shape [B >= 1, {self.window_samples}], got {tuple(windows.shape)}"
            )
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        probs = (
            self._run_cuda(batch) if self.on_cuda else self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        )
        if probs.shape != (batch.shape[0], len(self.labels)):
            raise ArtifactError(
                f"{self.source}: output {OUTPUT_NAME!r} has shape {probs.shape} for a batch of "
                f"{batch.shape[0]}; expected ({batch.shape[0]}, {len(self.labels)})"
            )
        return probs

    def _run_cuda(self, batch: np.ndarray) -> np.ndarray:
        """IO binding: one explicit host->device copy in, output allocated on the host by ORT.

        Without binding ORT stages the input through an extra CPU buffer on every ``run``; binding
        an OrtValue on the device makes the copy explicit and lets ORT skip it.
        """
        binding = self.session.io_binding()
        device_input = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", self.device.index)
        binding.bind_ortvalue_input(INPUT_NAME, device_input)
        binding.bind_output(OUTPUT_NAME, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Run each batch size once so first requests do not pay for allocation and kernel choice."""
        for size in sorted(set(batch_sizes)):
            if size < 1:
                raise ValueError(f"warm-up batch sizes must be >= 1, got {size}")
            self.run(np.zeros((size, self.window_samples), dtype=np.float32))

"""A tiny ONNX artifact with the real contract, built with ``onnx.helper`` (no torch), for serving tests.

The model is a bank of 11 single-frequency detectors: for label ``k`` it measures the amplitude of
the sine at :func:`label_frequency` ``(k)`` in each window (a DFT at one bin, as two MatMuls) and
maps it through a sigmoid. A file made of the sines of a chosen label set is therefore predicted as
exactly that set, so a test can tell whether every file got *its own* answer back through the
batcher. :func:`reference_probs` is the same computation in numpy.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import onnx
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from common.artifact import INPUT_NAME, LOGITS_NAME, OUTPUT_NAME, ArtifactMetadata
from common.labels import LABELS
from serving.settings import Settings

SAMPLE_RATE = 8000
WINDOW = 1600  # 0.2 s
HOP = 800
BIN_STEP = 8  # label k sits at DFT bin 8 * (k + 1): 40 Hz ... 440 Hz, integer cycles per window
TONE_AMPLITUDE = 0.15
AMP_CENTER = 0.05
SCALE = 60.0


def label_frequency(index: int) -> float:
    return BIN_STEP * (index + 1) * SAMPLE_RATE / WINDOW


def metadata(**overrides: object) -> ArtifactMetadata:
    fields: dict[str, object] = {
        "labels": list(LABELS),
        "sample_rate": SAMPLE_RATE,
        "window_samples": WINDOW,
        "hop_samples": HOP,
        "thresholds": [0.5] * len(LABELS),
        "aggregation": "mean",
        "architecture": "tone-detector",
        "lumen_version": "test",
    }
    fields.update(overrides)
    return ArtifactMetadata(**fields)  # type: ignore[arg-type]


def _bases() -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(WINDOW, dtype=np.float64)[:, None]
    bins = BIN_STEP * (np.arange(len(LABELS), dtype=np.float64) + 1)[None, :]
    phase = 2 * np.pi * bins * t / WINDOW
    return np.cos(phase).astype(np.float32), np.sin(phase).astype(np.float32)


def build_model(
    path: Path,
    meta: ArtifactMetadata | None = None,
    *,
    input_name: str = INPUT_NAME,
    fixed_batch: int | None = None,
    window: int = WINDOW,
) -> Path:
    """Write the detector to ``path``; keyword arguments build deliberately broken variants."""
    meta = meta or metadata()
    cos, sin = _bases()
    if window != WINDOW:
        cos, sin = np.resize(cos, (window, cos.shape[1])), np.resize(sin, (window, sin.shape[1]))
    consts = {
        "cos": cos,
        "sin": sin,
        "norm": np.array(2.0 / WINDOW, dtype=np.float32),
        "center": np.array(AMP_CENTER, dtype=np.float32),
        "scale": np.array(SCALE, dtype=np.float32),
    }
    nodes = [
        helper.make_node("MatMul", [input_name, "cos"], ["re"]),
        helper.make_node("MatMul", [input_name, "sin"], ["im"]),
        helper.make_node("Mul", ["re", "re"], ["re2"]),
        helper.make_node("Mul", ["im", "im"], ["im2"]),
        helper.make_node("Add", ["re2", "im2"], ["power"]),
        helper.make_node("Sqrt", ["power"], ["mag"]),
        helper.make_node("Mul", ["mag", "norm"], ["amp"]),
        helper.make_node("Sub", ["amp", "center"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "scale"], [LOGITS_NAME]),
        helper.make_node("Sigmoid", [LOGITS_NAME], [OUTPUT_NAME]),
    ]
    batch: int | str = fixed_batch if fixed_batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "tone_detector",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, window])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, len(LABELS)]),
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, [batch, len(LABELS)]),
        ],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def tones(
    label_indices: Sequence[int],
    seconds: float = 0.6,
    amplitude: float = TONE_AMPLITUDE,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Sum of the detector tones of ``label_indices``."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    out = np.zeros_like(t)
    for k in label_indices:
        out += amplitude * np.sin(2 * np.pi * label_frequency(k) * t + 0.3 * k)
    return out.astype(np.float32)


def write_tones(path: Path, label_indices: Sequence[int], **kwargs: float) -> Path:
    sample_rate = int(kwargs.pop("sample_rate", SAMPLE_RATE))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tones(label_indices, sample_rate=sample_rate, **kwargs), sample_rate, subtype="PCM_16")
    return path


def reference_probs(windows: np.ndarray) -> np.ndarray:
    """Numpy twin of the ONNX graph: ``[n, WINDOW]`` -> ``[n, 11]``."""
    cos, sin = _bases()
    x = windows.astype(np.float64)
    amp = np.sqrt((x @ cos) ** 2 + (x @ sin) ** 2) * 2.0 / WINDOW
    return (1.0 / (1.0 + np.exp(-SCALE * (amp - AMP_CENTER)))).astype(np.float32)


def expected(label_indices: Sequence[int]) -> dict[str, int]:
    chosen = set(label_indices)
    return {code: int(i in chosen) for i, code in enumerate(LABELS)}


HANG_GUARD_S = 20.0


def workspace_settings(
    workspace: Path, defaults: dict[str, object], overrides: dict[str, object]
) -> Settings:
    """Settings of a test workspace (``models/``, ``data/``): a module's ``defaults``, then a test's ``overrides``."""
    values = {"model_dir": workspace / "models", "data_roots": (workspace / "data",), **defaults, **overrides}
    return Settings(**values)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], guard_s: float = HANG_GUARD_S) -> None:
    """Poll until ``condition`` holds; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + guard_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def upload(*names_and_bytes: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx ``files=`` for multipart parts named ``files``."""
    return [("files", (name, data, "audio/wav")) for name, data in names_and_bytes]


def label_set(n: int) -> list[int]:
    """A distinct, non-empty label set per ``n`` (bits of n + 1 over the first 6 labels, plus one more)."""
    bits = [k for k in range(6) if (n + 1) >> k & 1]
    return sorted({*bits, 6 + n % 5})


# ---- a live lumen-serve process ------------------------------------------------------------------------

SERVER_GUARD_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("lumen-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]


class LiveServer:
    """``lumen-serve`` in a subprocess on a free port, ready when the constructor returns."""

    def __init__(self, workspace: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workspace / f"server-{self.port}.log"
        command = [
            *serve_command(), "--model-dir", str(workspace / "models"), "--data-root", str(workspace / "data"),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *flags,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_GUARD_S
        while True:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(SERVER_GUARD_S)

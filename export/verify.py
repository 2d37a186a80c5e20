"""Parity: an artifact must give the PyTorch model's probabilities before it may replace anything.

The reference is always the float32 eager model from the checkpoint; the candidate is the written
file, loaded back the way its consumer loads it (ONNX Runtime CPU with graph optimisations off *and*
at ``ORT_ENABLE_ALL`` as serving runs it, ``torch.jit.load``, ``torch.export.load``). Inputs are
audio-like windows (a real file when given, else synthesized notes) and random noise, at batch 1 and
at batch 5 (neither is the export's example batch, so a batch size baked into the graph shows up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.artifact import INPUT_NAME, LOGITS_NAME, OUTPUT_NAME
from export.artifact import ExportError, ProbsAndLogits

BATCH_SIZES: tuple[int, ...] = (1, 5)
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2

Outputs = tuple[np.ndarray, np.ndarray]  # (probs, logits), float32 [batch, n_labels]
Runner = Callable[[np.ndarray], Outputs]


@dataclass(frozen=True)
class ParityCase:
    runtime: str
    inputs: str
    batch: int
    probs_diff: float
    logits_diff: float


@dataclass(frozen=True)
class ParityReport:
    cases: tuple[ParityCase, ...]
    tolerance: float

    @property
    def worst(self) -> ParityCase:
        return max(self.cases, key=lambda c: c.probs_diff)

    @property
    def ok(self) -> bool:
        # NaN compares False, so a NaN difference fails the check as it should.
        return all(c.probs_diff <= self.tolerance for c in self.cases)

    def lines(self) -> list[str]:
        """One human-readable line per case, then the verdict."""
        out = [
            f"  {c.runtime:<28} {c.inputs:<6} batch {c.batch}: max |dprobs| {c.probs_diff:.2e}  "
            f"max |dlogits| {c.logits_diff:.2e}"
            for c in self.cases
        ]
        verdict = "ok" if self.ok else "FAILED"
        out.append(
            f"  parity {verdict}: worst max |dprobs| {self.worst.probs_diff:.2e} (tolerance {self.tolerance:g})"
        )
        return out


def print_parity(report: ParityReport, reference: str) -> None:
    """The report as the export commands print it, passed or failed: one line per case, then the verdict."""
    print(f"parity vs {reference}:")
    print("\n".join(report.lines()))


class ParityError(ExportError):
    """The artifact's outputs differ from the PyTorch model's beyond the tolerance."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


def synth_audio_windows(count: int, window_samples: int, sample_rate: int, *, seed: int = 0) -> np.ndarray:
    """Audio-like float32 windows ``[count, window_samples]``: decaying harmonic notes over faint noise.

    Stands in for real recordings when none is given: a model sees log-mel energy spread over
    harmonics and a wide dynamic range, which random noise (flat spectrum) never exercises.
    Each window is peak-normalised like training input.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(window_samples, dtype=np.float64) / sample_rate
    out = np.empty((count, window_samples), dtype=np.float32)
    for i in range(count):
        signal = 0.003 * rng.standard_normal(window_samples)
        for _ in range(int(rng.integers(1, 4))):  # a chord of 1-3 notes
            f0 = 440.0 * 2.0 ** ((int(rng.integers(36, 85)) - 69) / 12)
            onset = rng.uniform(0, 0.3) * t[-1]
            envelope = np.where(t >= onset, np.exp(-(t - onset) * rng.uniform(0.5, 4.0)), 0.0)
            for k in range(1, 9):
                if k * f0 >= sample_rate / 2:
                    break
                signal += envelope * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
        out[i] = 0.99 * signal / np.max(np.abs(signal))
    return out


def random_windows(count: int, window_samples: int, *, seed: int = 1) -> np.ndarray:
    """Uniform noise in [-1, 1]: every frequency at full scale, the opposite extreme to audio."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (count, window_samples)).astype(np.float32)


def parity_inputs(
    window_samples: int, sample_rate: int, audio_windows: np.ndarray | None = None
) -> list[tuple[str, np.ndarray]]:
    """``(name, batch)`` pairs: audio then random, each at every size in :data:`BATCH_SIZES`.

    ``audio_windows`` (e.g. a real file cut with :func:`common.audio.split_windows`) replaces the
    synthesized notes; fewer windows than the largest batch are cycled.
    """
    largest = max(BATCH_SIZES)
    if audio_windows is None:
        audio_windows = synth_audio_windows(largest, window_samples, sample_rate)
    if audio_windows.ndim != 2 or audio_windows.shape[1] != window_samples or len(audio_windows) == 0:
        raise ValueError(f"audio windows must be [n >= 1, {window_samples}], got {audio_windows.shape}")
    audio = np.resize(audio_windows.astype(np.float32), (largest, window_samples))
    noise = random_windows(largest, window_samples)
    return [
        (name, data[:size]) for name, data in (("audio", audio), ("random", noise)) for size in BATCH_SIZES
    ]


def torch_runner(module: torch.nn.Module) -> Runner:
    """A runner for an in-memory (or loaded TorchScript / torch.export) ``waveform -> (probs, logits)``."""

    def run(batch: np.ndarray) -> Outputs:
        with torch.inference_mode():
            probs, logits = module(torch.from_numpy(batch))
        return probs.float().numpy(), logits.float().numpy()

    return run


def onnx_runners(path: Path) -> dict[str, Runner]:
    """The ONNX file in ONNX Runtime's CPU EP, without and with every graph optimisation."""
    levels = {
        "onnxruntime (no graph opt)": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "onnxruntime (ORT_ENABLE_ALL)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    runners: dict[str, Runner] = {}
    for name, level in levels.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        def run(batch: np.ndarray, session: ort.InferenceSession = session) -> Outputs:
            probs, logits = session.run([OUTPUT_NAME, LOGITS_NAME], {INPUT_NAME: batch})
            return probs, logits

        runners[name] = run
    return runners


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ExportError(f"artifact output shape {a.shape} differs from the PyTorch model's {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def check_parity(
    reference: ProbsAndLogits | Runner,
    runners: dict[str, Runner],
    inputs: Sequence[tuple[str, np.ndarray]],
    tolerance: float,
) -> ParityReport:
    """Compare every runner with ``reference`` on every input; raise :class:`ParityError` on a miss.

    ``reference`` is the float32 eager model, or (for an artifact built from other artifacts, such as
    an ensemble) a runner that computes what the artifact should give.
    """
    run_reference = torch_runner(reference.eval()) if isinstance(reference, ProbsAndLogits) else reference
    expected = [run_reference(batch) for _, batch in inputs]
    cases = []
    for runtime, run in runners.items():
        for (name, batch), (ref_probs, ref_logits) in zip(inputs, expected, strict=True):
            probs, logits = run(batch)
            cases.append(
                ParityCase(
                    runtime=runtime,
                    inputs=name,
                    batch=len(batch),
                    probs_diff=_max_abs_diff(probs, ref_probs),
                    logits_diff=_max_abs_diff(logits, ref_logits),
                )
            )
    report = ParityReport(cases=tuple(cases), tolerance=tolerance)
    if not report.ok:
        worst = report.worst
        raise ParityError(
            f"parity check failed: max |dprobs| {worst.probs_diff:.2e} > {tolerance:g} "
            f"({worst.runtime}, {worst.inputs} input, batch {worst.batch})",
            report,
        )
    return report

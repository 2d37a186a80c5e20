"""lumen-test on a .ckpt (PyTorch) and on its exported .onnx (ONNX Runtime) gives the same answers.

Same files, same windowing, same aggregation: file-level probabilities must agree to 1e-4, so the
metrics a user computes during development are the ones the served artifact reproduces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from test_export import SR, WINDOW, run_cli, tiny_config, write_checkpoint

from common.labels import LABELS
from serving.evaluate_cli import main as lumen_test

# (seconds, sample rate, channels): shorter than one window, exactly one, several with a partial
# last window, another rate (resampled), stereo (downmixed).
FILES = [(0.3, SR, 1), (WINDOW / SR, SR, 1), (1.7, SR, 1), (1.1, 2 * SR, 1), (0.9, SR, 2), (2.6, 11_025, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt_vs_onnx")
    ckpt = root / "model.ckpt"
    write_checkpoint(ckpt, tiny_config("SMALL_CNN", width=0.25), seed=3)
    # A random head barely separates the files; a steeper one spreads probabilities over (0, 1), so
    # the parity check compares answers that differ from file to file.
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["model.head.fc.weight"] *= 200.0
    torch.save(state, ckpt)
    status, stdout = run_cli([str(ckpt)])
    assert status == 0, stdout
    data = root / "test"
    data.mkdir()
    rng = np.random.default_rng(0)
    for n, (seconds, rate, channels) in enumerate(FILES):
        t = np.arange(int(seconds * rate)) / rate
        tone = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 2000, size=3))
        audio = 0.3 * tone + 0.05 * rng.standard_normal(t.shape)
        if channels == 2:
            audio = np.stack([audio, 0.5 * audio[::-1]], axis=1)
        sf.write(data / f"clip-{n}.wav", audio.astype(np.float32), rate, subtype="FLOAT")
        codes = [LABELS[n % len(LABELS)], LABELS[(5 * n + 2) % len(LABELS)]]
        (data / f"clip-{n}.txt").write_text("\n".join(sorted(set(codes))) + "\n")
    out = {}
    for model in (ckpt, ckpt.with_suffix(".onnx")):
        out_dir = root / f"out-{model.suffix[1:]}"
        code = lumen_test(
            ["--model", str(model), "--dataset-paths", f"irmastest:{data}", "--out-dir", str(out_dir)]
        )
        assert code == 0
        out[model.suffix[1:]] = out_dir
    return out


def _probabilities(out_dir: Path) -> dict[str, np.ndarray]:
    predictions = json.loads((out_dir / "predictions.json").read_text())
    return {path: np.array([p["probabilities"][c] for c in LABELS]) for path, p in predictions.items()}


def test_checkpoint_and_onnx_give_the_same_file_probabilities(runs: dict[str, Path]) -> None:
    torch_probs, onnx_probs = _probabilities(runs["ckpt"]), _probabilities(runs["onnx"])
    assert sorted(torch_probs) == sorted(onnx_probs)
    assert len(torch_probs) == len(FILES)
    worst = max(float(np.abs(torch_probs[p] - onnx_probs[p]).max()) for p in torch_probs)
    assert worst <= 1e-4
    # Not vacuous: the files differ, so the probabilities do too.
    spread = np.ptp(np.stack(list(torch_probs.values())), axis=0).max()
    assert spread > 0.02  # two orders of magnitude above the parity tolerance


def test_checkpoint_and_onnx_report_the_same_metrics(runs: dict[str, Path]) -> None:
    torch_metrics = yaml.safe_load((runs["ckpt"] / "metrics.yaml").read_text())
    onnx_metrics = yaml.safe_load((runs["onnx"] / "metrics.yaml").read_text())
    for name in ("f1_micro", "f1_macro", "hamming_distance", "lrap", "map"):
        assert torch_metrics[name] == pytest.approx(onnx_metrics[name], abs=1e-3), name

"""benchmarks/compare_predictions.py: the paired bootstrap tells a better model from a tie."""

from __future__ import annotations

import json
from pathlib import Path

import benchmark_scripts
import numpy as np
import pytest
import soundfile as sf

from common.labels import LABELS

compare_predictions = benchmark_scripts.load("compare_predictions")


def _case(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.eye(len(LABELS))[rng.integers(0, len(LABELS), n)]
    good = np.clip(0.7 * truth + 0.3 * rng.random(truth.shape), 0, 1)  # the label always scores highest
    noisy = rng.random(truth.shape)
    return truth, good, noisy


def test_a_clearly_better_candidate_is_ahead_in_every_resample() -> None:
    truth, good, noisy = _case()
    result = compare_predictions.compare(truth, (noisy >= 0.5, noisy), (good >= 0.5, good), resamples=200)
    for metric in ("f1_macro", "lrap", "top1"):
        r = result[metric]
        assert r["b"] > r["a"] and r["ci90_low"] > 0 and r["share_b_ahead"] == 1.0, metric
    assert result["top1"]["b"] == pytest.approx(1.0)


def test_the_same_model_twice_is_never_ahead() -> None:
    truth, _, noisy = _case(seed=1)
    same = (noisy >= 0.5, noisy)
    result = compare_predictions.compare(truth, same, same, resamples=100)
    for r in result.values():
        assert r["b_minus_a"] == 0 and r["ci90_low"] == r["ci90_high"] == 0 and r["share_b_ahead"] == 0


def test_cli_reads_lumen_test_predictions_and_refuses_missing_files(tmp_path: Path, capsys) -> None:
    data = tmp_path / "set"
    data.mkdir()
    truth, good, noisy = _case(n=30, seed=2)
    files = []
    for i, row in enumerate(truth):
        wav = data / f"clip_{i:02d}.wav"
        sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
        (data / f"clip_{i:02d}.txt").write_text(LABELS[int(row.argmax())] + "\n")
        files.append(str(wav))

    def write(name: str, probs: np.ndarray, keep: int) -> Path:
        entries = {
            f: {
                "labels": {c: int(p >= 0.5) for c, p in zip(LABELS, row, strict=True)},
                "probabilities": {c: float(p) for c, p in zip(LABELS, row, strict=True)},
            }
            for f, row in list(zip(files, probs, strict=True))[:keep]
        }
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(entries))
        return path

    a, b = write("a", noisy, 30), write("b", good, 30)
    out = tmp_path / "cmp.json"
    argv = [str(a), str(b), "--dataset-paths", f"irmastest:{data}", "--resamples", "50", "--out", str(out)]
    assert compare_predictions.main(argv) == 0
    saved = json.loads(out.read_text())
    assert saved["files"] == 30 and saved["top1"]["b"] == pytest.approx(1.0)
    assert "top1" in capsys.readouterr().out
    short = write("short", good, 29)
    with pytest.raises(SystemExit):
        compare_predictions.main([str(a), str(short), "--dataset-paths", f"irmastest:{data}"])
    assert "1 labelled files lack a prediction" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read it as JSON"),
        ('["a list"]', "not a lumen-test predictions.json"),
        ('{"x.wav": {"labels": {"cel": 1}, "probabilities": {"cel": 0.5}}}', "KeyError"),
        ('{"x.wav": {"labels": "cel", "probabilities": {}}}', "not a lumen-test predictions.json"),
    ],
)
def test_a_malformed_predictions_file_is_a_usage_error(
    tmp_path: Path, capsys, content: str, message: str
) -> None:
    data = tmp_path / "set"
    data.mkdir()
    sf.write(data / "x.wav", np.zeros(1600, dtype=np.float32), 16000)
    (data / "x.txt").write_text("cel\n")
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        compare_predictions.main([str(bad), str(bad), "--dataset-paths", f"irmastest:{data}"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_dataset_without_audio_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare_predictions.main(["a.json", "b.json", "--dataset-paths", f"irmastest:{tmp_path}"])
    assert exit_info.value.code == 2 and "no audio files found" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "-3", "100001", "many"])
def test_resamples_is_bounded(tmp_path: Path, capsys, count: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare_predictions.main(["a.json", "b.json", "--dataset-paths", "x", "--resamples", count])
    assert exit_info.value.code == 2 and "--resamples" in capsys.readouterr().err

"""Quality bar: the small CNN learns synthetic instruments well enough on CPU in CI time.

Train, validation (best checkpoint + threshold tuning) and held-out test sets are rendered by
``lumen-data synth`` with different seeds, so the test files are different performances than anything
seen in training. The bar is file-level macro-F1 >= 0.6 on the held-out set, measured by lumen-train's
own test stage (the best checkpoint at its validation-tuned thresholds).
"""

from __future__ import annotations

import json

import pytest

from training.cli import main
from training.synth import synthesize

SR = 16_000
TRAIN_PER_CLASS = 20
VAL_PER_CLASS = 4
TEST_PER_CLASS = 6
MACRO_F1_BAR = 0.6
TRAIN_FLAGS = [
    "--model",
    "SMALL_CNN",
    "--n-mels",
    "64",
    "--epochs",
    "8",
    "--batch-size",
    "16",
    "--lr",
    "1e-3",
    "--lr-onecycle-max",
    "5e-3",
    "--nofinetune-head",
    "--window-seconds",
    "1.0",
    "--hop-seconds",
    "0.5",
    "--num-workers",
    "0",
    "--cache-audio",
    "--seed",
    "0",
]


@pytest.mark.slow
def test_small_cnn_reaches_macro_f1_on_held_out_synthetic_set(tmp_path):
    for split, per_class, seed in (
        ("train", TRAIN_PER_CLASS, 0),
        ("val", VAL_PER_CLASS, 1),
        ("test", TEST_PER_CLASS, 2),
    ):
        synthesize(tmp_path / split, "irmastrain", per_class, seed, sample_rate=SR, progress=False)
    status = main(
        [
            "--train-paths",
            f"irmastrain:{tmp_path / 'train'}",
            "--val-paths",
            f"irmastrain:{tmp_path / 'val'}",
            "--test-paths",
            f"irmastrain:{tmp_path / 'test'}",
            "--output-dir",
            str(tmp_path / "out"),
            *TRAIN_FLAGS,
        ]
    )
    assert status == 0
    (run,) = (tmp_path / "out").iterdir()
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    print(f"held-out macro-F1 {metrics['f1_macro']:.3f}, micro-F1 {metrics['f1_micro']:.3f}")
    assert metrics["n_files"] == 11 * TEST_PER_CLASS
    assert metrics["f1_macro"] >= MACRO_F1_BAR

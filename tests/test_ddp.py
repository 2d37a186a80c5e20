"""DDP with two CPU processes (gloo): one run folder, a checkpoint, file-level metrics over all ranks."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from common.labels import LABELS
from training.synth import synthesize

SR = 16_000


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path):
    synthesize(tmp_path / "train", "irmastrain", 2, 0, sample_rate=SR, progress=False)
    val = synthesize(
        tmp_path / "val", "irmastest", 1, 1, sample_rate=SR, min_seconds=5, max_seconds=6, progress=False
    )
    # An odd count, so DistributedSampler repeats one file to even out the ranks.
    assert val.files % 2 == 1
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "--train-paths",
        f"irmastrain:{tmp_path / 'train'}",
        "--val-paths",
        f"irmastest:{tmp_path / 'val'}",
        "--quick",
        "--epochs",
        "1",
        "--nofinetune-head",
        "--model",
        "SMALL_CNN",
        "--n-mels",
        "32",
        "--window-seconds",
        "1.0",
        "--hop-seconds",
        "0.5",
        "--num-workers",
        "0",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--use-weighted-train-sampler",
        "--output-dir",
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LUMEN_RUN_DIR", "LOCAL_RANK", "WORLD_SIZE")}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = out.iterdir()  # both ranks used rank 0's run folder
    assert (run / "checkpoints" / "best.ckpt").is_file()
    data = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert len(data["hyper_parameters"]["thresholds"]) == len(LABELS)
    with open(run / "metrics.csv", newline="") as f:
        val_rows = [r for r in csv.DictReader(f) if r.get("val/n_files")]
    assert len(val_rows) == 1
    # Each rank saw half of the padded (even) file list; the metrics cover every distinct file once.
    assert float(val_rows[0]["val/n_files"]) == val.files

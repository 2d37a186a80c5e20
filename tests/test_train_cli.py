"""lumen-train end to end on a tiny synthetic set: run folder, checkpoints, logs, errors, Ctrl+C."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from common.labels import LABELS
from training.cli import main
from training.config import TrainConfig
from training.synth import synthesize

SR = 16_000
TINY = [
    "--n-mels",
    "32",
    "--num-workers",
    "0",
    "--model",
    "SMALL_CNN",
    "--window-seconds",
    "1.0",
    "--hop-seconds",
    "0.5",
]
EXPECTED_COLUMNS = {
    "val/f1_macro",
    "val/f1_micro",
    "val/hamming",
    "val/loss",
    "val/precision",
    "val/recall",
    "val/n_files",
    "val/f1_macro_tuned",
    "train/loss_epoch",
    "params/total",
    "params/trainable",
    *(f"val/f1_{code}" for code in LABELS),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "train", "irmastrain", 2, 0, sample_rate=SR, progress=False)
    val = synthesize(
        root / "val", "irmastest", 2, 1, sample_rate=SR, min_seconds=5, max_seconds=6, progress=False
    )
    return {"train": f"irmastrain:{root / 'train'}", "val": f"irmastest:{root / 'val'}", "n_val": val.files}


@pytest.fixture(scope="module")
def quick_run(data, tmp_path_factory) -> Path:
    """``--quick`` without ``--output-dir``: the run lands in ./models_quick/."""
    cwd = tmp_path_factory.mktemp("cwd")
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        status = main(
            [
                "--train-paths",
                data["train"],
                "--val-paths",
                data["val"],
                "--test-paths",
                data["val"],
                "--quick",
                "--epochs",
                "2",
                "--nofinetune-head",
                "--experiment-suffix",
                "smoke",
                "--augmentations",
                "SUM_TWO_SAMPLES",
                "TIMEINV",
                "FREQ_MASK",
                *TINY,
            ]
        )
    finally:
        os.chdir(previous)
    assert status == 0
    (run,) = (cwd / "models_quick").iterdir()
    return run


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_layout(quick_run):
    assert re.fullmatch(r"\d\d-\d\d-\d\d-\d\d-\d\d_SMALL_CNN_MEL_SPECTROGRAM_smoke", quick_run.name)
    assert (quick_run / "checkpoints" / "best.ckpt").is_file()
    assert (quick_run / "checkpoints" / "last.ckpt").is_file()
    assert list((quick_run / "tensorboard").glob("events.out.tfevents.*"))
    config = TrainConfig.from_dict(yaml.safe_load((quick_run / "config.yaml").read_text()))
    assert config.quick and config.batch_size == 2 and config.limit_train_batches == 2


def test_metrics_csv_has_file_level_metrics_lr_and_params(quick_run, data):
    rows = _rows(quick_run)
    columns = set(rows[0])
    assert columns >= EXPECTED_COLUMNS
    assert any(c.startswith("lr-") for c in columns)
    val_rows = [r for r in rows if r["val/f1_macro"]]
    assert len(val_rows) == 2  # one per epoch (the sanity check is not logged)
    assert {float(r["val/n_files"]) for r in val_rows} == {float(data["n_val"])}
    assert all(0.0 <= float(r["val/f1_macro"]) <= 1.0 for r in val_rows)
    train_steps = [r for r in rows if r.get("train/loss_step")]
    assert len(train_steps) == 4  # --quick: 2 batches x 2 epochs


def test_checkpoints_carry_tuned_thresholds(quick_run, data):
    for name in ("best.ckpt", "last.ckpt"):
        hparams = torch.load(quick_run / "checkpoints" / name, weights_only=True)["hyper_parameters"]
        thresholds = hparams["thresholds"]
        assert len(thresholds) == len(LABELS)
        assert any(t != 0.5 for t in thresholds), f"{name}: thresholds were never tuned"
    report = json.loads((quick_run / "test_metrics.json").read_text())
    best = torch.load(quick_run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert report["thresholds"] == best["thresholds"]  # test used the best checkpoint's tuned thresholds
    assert report["metrics"]["n_files"] == data["n_val"]
    assert set(report["metrics"]["per_instrument"]) == set(LABELS)


def test_resume_from_checkpoint(data, tmp_path):
    common = [
        "--train-paths",
        data["train"],
        "--val-paths",
        data["val"],
        "--quick",
        "--nofinetune-head",
        "--scheduler",
        "PLATEAU",
        *TINY,
    ]
    assert main([*common, "--epochs", "1", "--output-dir", str(tmp_path / "first")]) == 0
    (first,) = (tmp_path / "first").iterdir()
    assert (
        main(
            [
                *common,
                "--epochs",
                "2",
                "--output-dir",
                str(tmp_path / "resumed"),
                "--ckpt",
                str(first / "checkpoints" / "last.ckpt"),
            ]
        )
        == 0
    )
    (resumed,) = (tmp_path / "resumed").iterdir()
    assert {r["epoch"] for r in _rows(resumed) if r["val/f1_macro"]} == {"1"}  # epoch 0 came from the ckpt


def test_resume_refuses_to_resize_a_step_schedule(quick_run, data, tmp_path, capsys):
    status = main(
        [
            "--train-paths",
            data["train"],
            "--val-paths",
            data["val"],
            "--quick",
            "--epochs",
            "5",
            "--nofinetune-head",
            "--output-dir",
            str(tmp_path),
            *TINY,
            "--ckpt",
            str(quick_run / "checkpoints" / "last.ckpt"),
        ]
    )
    assert status == 2
    assert "cannot change length" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "NOPE"], "--model 'NOPE' is not one of"),
        (["--loss-function-kwargs", "gamma"], "not key=value"),
        (["--loss-function", "FOCAL_LOSS", "--loss-function-kwargs", "gama=2"], "gama"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--metric", "VAL_LOSS", "--metric-mode", "MAX"], "use --metric-mode MIN"),
        (["--finetune-head-epochs", "5", "--epochs", "2"], "--finetune-head-epochs"),
        (["--head-after", "no.such.layer", "--epochs", "2"], "--head-after 'no.such.layer'"),
        (["--accelerator", "quantum"], "--accelerator"),
        (["--augmentations", "TIMEINV", "--aug-kwargs", "no_such_key=1"], "no_such_key"),
        (["--f-min", "9000"], "f_min < f_max"),
        (["--audio-transform", "MFCC", "--n-mfcc", "64"], "--n-mfcc (64) must be in 1..n_mels (32)"),
        (
            [
                "--model",
                "MOBILENET_V3_SMALL",
                "--pretrained",
                "--pretrained-source",
                "/no/such/w.safetensors",
            ],
            "--pretrained-source /no/such/w.safetensors: file not found",
        ),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(data, tmp_path, capsys, flags, message):
    status = main(
        [
            "--train-paths",
            data["train"],
            "--val-paths",
            data["val"],
            "--quick",
            "--output-dir",
            str(tmp_path),
            *TINY,
            *flags,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    errors = [line for line in err if line.startswith("lumen-train: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not list(tmp_path.glob("*/checkpoints/*.ckpt"))


def test_argparse_and_dataset_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--epochs", "two"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    status = main(
        ["--train-paths", f"irmastrain:{tmp_path / 'nope'}", "--val-paths", f"irmastest:{tmp_path}"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "nope" in err[0]


@pytest.mark.slow
def test_first_ctrl_c_stops_gracefully_and_tests_the_best_checkpoint(data, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "--train-paths",
        data["train"],
        "--val-paths",
        data["val"],
        "--test-paths",
        data["val"],
        "--quick",
        "--epochs",
        "1000",
        "--nofinetune-head",
        "--output-dir",
        str(tmp_path),
        *TINY,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            csvs = list(tmp_path.glob("*/metrics.csv"))
            if csvs and len([r for r in _rows(csvs[0].parent) if r.get("val/f1_macro")]) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    assert "Ctrl+C" in out
    (run,) = tmp_path.iterdir()
    report = json.loads((run / "test_metrics.json").read_text())
    assert report["checkpoint"].endswith("best.ckpt")


def test_front_end_flags_reach_the_config():
    from training.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        ["--train-paths", "x", "--val-paths", "y", "--audio-transform", "MULTI_SPECTROGRAM",
         "--f-min", "30", "--f-max", "7600", "--n-mfcc", "20", "--multi-n-ffts", "256", "1024",
         "--n-fft", "512", "--hop-length", "256"]
    )  # fmt: skip
    frontend = config_from_args(args).frontend
    assert (frontend.f_min, frontend.f_max, frontend.n_mfcc) == (30.0, 7600.0, 20)
    assert frontend.multi_n_ffts == [256, 1024] and (frontend.n_fft, frontend.hop_length) == (512, 256)

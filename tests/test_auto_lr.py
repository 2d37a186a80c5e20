"""AUTO_LR: the LR finder runs once per run (DDP ranks share it), never on resume; refused where it can't."""

from __future__ import annotations

import os

import pytest
import yaml

from training import cli
from training.cli import AUTO_LR_ENV, RUN_DIR_ENV, auto_lr_peak, main
from training.config import ConfigError, TrainConfig
from training.synth import synthesize

SR = 16_000
TINY = ["--n-mels", "32", "--num-workers", "0", "--model", "SMALL_CNN", "--window-seconds", "1.0"]
TINY += ["--hop-seconds", "0.5", "--quick", "--nofinetune-head", "--scheduler", "AUTO_LR"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (AUTO_LR_ENV, RUN_DIR_ENV, "WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def finder(monkeypatch) -> list[float]:
    """A stand-in LR finder that records its calls and suggests 4e-3 (a real one needs ~100 steps)."""
    calls: list[float] = []

    def fake(config, module, datamodule) -> float:
        calls.append(4e-3)
        return 4e-3

    monkeypatch.setattr(cli, "find_lr", fake)
    return calls


def test_the_first_process_finds_the_lr_and_launched_ranks_reuse_it(finder):
    assert auto_lr_peak(TrainConfig(), None, None) == 4e-3
    assert os.environ[AUTO_LR_ENV] == repr(4e-3) and len(finder) == 1
    # A rank started by Lightning's launcher inherits the environment (and WORLD_SIZE) and does not search.
    os.environ["WORLD_SIZE"] = "2"
    assert auto_lr_peak(TrainConfig(), None, None) == 4e-3 and len(finder) == 1


@pytest.mark.parametrize(
    ("env", "num_nodes"), [({"WORLD_SIZE": "4"}, 1), ({"SLURM_NTASKS": "2"}, 1), ({}, 2)]
)
def test_ranks_that_would_each_search_are_refused(finder, monkeypatch, env, num_nodes):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="every rank separately.*--lr-onecycle-max"):
        auto_lr_peak(TrainConfig(num_nodes=num_nodes), None, None)
    assert finder == []


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "train", "irmastrain", 1, 0, sample_rate=SR, progress=False)
    synthesize(root / "val", "irmastest", 1, 1, sample_rate=SR, min_seconds=2, max_seconds=3, progress=False)
    return {"train": f"irmastrain:{root / 'train'}", "val": f"irmastest:{root / 'val'}"}


def test_cli_refuses_auto_lr_across_nodes_with_one_line(data, finder, tmp_path, capsys):
    flags = ["--train-paths", data["train"], "--val-paths", data["val"], *TINY, "--num-nodes", "2"]
    assert main([*flags, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lumen-train: error: --scheduler AUTO_LR") and "\n" not in err
    assert finder == []


def test_resumed_auto_lr_run_keeps_the_checkpoints_lrs(data, finder, tmp_path, monkeypatch):
    flags = ["--train-paths", data["train"], "--val-paths", data["val"], *TINY, "--epochs", "2"]
    assert main([*flags, "--output-dir", str(tmp_path / "first")]) == 0
    assert len(finder) == 1
    (first,) = (tmp_path / "first").iterdir()

    def no_search(config, module, datamodule) -> float:
        raise AssertionError("a resumed AUTO_LR run must not search again")

    monkeypatch.setattr(cli, "find_lr", no_search)
    ckpt = first / "checkpoints" / "last.ckpt"
    assert main([*flags, "--output-dir", str(tmp_path / "resumed"), "--ckpt", str(ckpt)]) == 0
    (resumed,) = (tmp_path / "resumed").iterdir()
    stored = yaml.safe_load((resumed / "config.yaml").read_text())
    assert stored["lr_onecycle_max"] == pytest.approx(4e-3) and stored["lr"] == pytest.approx(4e-3 / 25)

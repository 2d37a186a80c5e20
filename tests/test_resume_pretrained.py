"""Resuming a ``--pretrained`` Hugging Face run (AST, WAV2VEC) offline, from its own checkpoint.

``--pretrained`` writes the loaded architecture into ``model.backbone_kwargs`` so that checkpoints
rebuild without the hub; the resume check once compared that with the flags' empty dict and refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_export import AST_TINY, WAV2VEC_TINY

from training.cli import main
from training.synth import synthesize

SR = 16_000


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache with the hub switched off: nothing can be downloaded."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("synth")
    synthesize(root / "train", "irmastrain", 1, 0, sample_rate=SR, progress=False)
    synthesize(root / "val", "irmastest", 1, 1, sample_rate=SR, min_seconds=2, max_seconds=3, progress=False)
    return {"train": f"irmastrain:{root / 'train'}", "val": f"irmastest:{root / 'val'}"}


def _save_tiny(model: str, folder: Path) -> None:
    torch.manual_seed(0)
    if model == "AST":
        from transformers import ASTConfig, ASTModel

        ASTModel(ASTConfig(**AST_TINY)).save_pretrained(folder)
    else:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC_TINY)).save_pretrained(folder)


def _flags(data: dict[str, str], model: str, folder: Path) -> list[str]:
    flags = [
        "--train-paths", data["train"], "--val-paths", data["val"], "--model", model,
        "--audio-transform", model, "--pretrained-source", str(folder), "--window-seconds", "0.5",
        "--hop-seconds", "0.5", "--num-workers", "0", "--quick", "--nofinetune-head", "--scheduler", "PLATEAU",
    ]  # fmt: skip
    if model == "AST":
        flags += ["--n-mels", str(AST_TINY["num_mel_bins"])]
    return flags


@pytest.mark.parametrize("model", ["AST", "WAV2VEC"])
def test_resume_a_pretrained_hugging_face_run(data, tmp_path, offline_hub, model, capsys):
    folder = tmp_path / f"tiny-{model.lower()}"
    _save_tiny(model, folder)
    flags = [*_flags(data, model, folder), "--pretrained"]
    assert main([*flags, "--epochs", "1", "--output-dir", str(tmp_path / "first")]) == 0
    (first,) = (tmp_path / "first").iterdir()
    ckpt = first / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]["config"]["model"]
    assert stored["backbone_kwargs"]["hidden_size"] == 32  # the loaded architecture, written back
    folder.rename(tmp_path / "gone")  # the resume rebuilds from the checkpoint, not the source
    capsys.readouterr()
    status = main([*flags, "--epochs", "2", "--output-dir", str(tmp_path / "resumed"), "--ckpt", str(ckpt)])
    assert status == 0, capsys.readouterr().err
    (resumed,) = (tmp_path / "resumed").iterdir()
    data_resumed = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert data_resumed["epoch"] == 1
    assert data_resumed["hyper_parameters"]["config"]["model"]["backbone_kwargs"] == stored["backbone_kwargs"]


def test_resume_still_refuses_a_different_model(data, tmp_path, offline_hub, capsys):
    folder = tmp_path / "tiny-wav2vec"
    _save_tiny("WAV2VEC", folder)
    flags = _flags(data, "WAV2VEC", folder)
    assert main([*flags, "--pretrained", "--epochs", "1", "--output-dir", str(tmp_path / "a")]) == 0
    (first,) = (tmp_path / "a").iterdir()
    capsys.readouterr()
    ckpt = str(first / "checkpoints" / "last.ckpt")
    # Without --pretrained this is another model config: still refused, with the usual one line.
    assert (
        main([*flags, "--no-pretrained", "--epochs", "2", "--ckpt", ckpt, "--output-dir", str(tmp_path)]) == 2
    )
    assert "its model config differs" in capsys.readouterr().err

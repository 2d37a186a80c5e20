"""WAV2VEC_CNN (wav2vec 2.0's conv encoder only) and MOBNET (one MobileNetV3-L per instrument)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from test_export import WAV2VEC_TINY, run_cli, tiny_config, write_checkpoint
from test_models import config

from common.labels import LABELS
from export.onnx import graph_problems
from training.checkpoint import MODEL_PREFIX, build_hparams
from training.models import build_model
from training.seed_models import MobnetBackbones, PerBackboneHeads, Wav2VecCnnBackbone

SR = 8000


def test_wav2vec_cnn_is_the_conv_encoder_only_and_every_parameter_trains() -> None:
    model = build_model(config("WAV2VEC_CNN", "WAV2VEC", backbone_kwargs=dict(WAV2VEC_TINY)))
    assert isinstance(model.backbone, Wav2VecCnnBackbone)
    names = [n for n, _ in model.backbone.named_parameters()]
    assert names and all(n.startswith("encoder.conv_layers.") for n in names)  # no transformer
    assert model.backbone.out_features == WAV2VEC_TINY["conv_dim"][-1]
    logits = model.train()(torch.randn(3, SR // 2) * 0.3)
    assert logits.shape == (3, len(LABELS))
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_wav2vec_cnn_pretrained_takes_the_encoder_of_a_local_wav2vec2(tmp_path: Path, monkeypatch) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    published = Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC_TINY))
    published.save_pretrained(tmp_path / "w2v")
    cfg = config("WAV2VEC_CNN", "WAV2VEC", pretrained=True, pretrained_source=str(tmp_path / "w2v"))
    model = build_model(cfg)
    for name, tensor in published.feature_extractor.state_dict().items():
        assert torch.equal(model.backbone.encoder.state_dict()[name], tensor), name
    # The checkpoint rebuilds the same encoder offline from the config --pretrained wrote back.
    rebuilt = build_model(cfg, load_pretrained=False)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_wav2vec_cnn_exports_with_parity(tmp_path: Path) -> None:
    ckpt = tmp_path / "w.ckpt"
    write_checkpoint(ckpt, tiny_config("WAV2VEC_CNN", "WAV2VEC", backbone_kwargs=dict(WAV2VEC_TINY)))
    status, stdout = run_cli([str(ckpt), "--format", "onnx"])
    assert status == 0 and "parity ok" in stdout, stdout
    assert graph_problems(onnx.load(str(tmp_path / "w.onnx"))) == []


def test_lumen_train_trains_wav2vec_cnn_from_the_cli(tmp_path: Path) -> None:
    from training.cli import main
    from training.synth import synthesize

    synthesize(tmp_path / "train", "irmastrain", 1, 0, sample_rate=16_000, progress=False)
    synthesize(
        tmp_path / "val", "irmastest", 1, 1, sample_rate=16_000, min_seconds=2, max_seconds=3, progress=False
    )
    flags = [
        "--train-paths", f"irmastrain:{tmp_path / 'train'}", "--val-paths", f"irmastest:{tmp_path / 'val'}",
        "--model", "WAV2VEC_CNN", "--audio-transform", "WAV2VEC", "--head", "ATTENTION_HEAD", "--quick",
        "--epochs", "2", "--finetune-head-epochs", "1", "--window-seconds", "0.5", "--hop-seconds", "0.5",
        "--num-workers", "0", "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    assert main(flags) == 0
    (run,) = (tmp_path / "out").iterdir()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("model.backbone.encoder.conv_layers.") for k in state)


def test_mobnet_is_one_mobilenet_v3_large_per_instrument_with_its_own_head() -> None:
    model = build_model(config("MOBNET"))
    assert isinstance(model.backbone, MobnetBackbones) and isinstance(model.head, PerBackboneHeads)
    assert len(model.backbone.nets) == len(model.head.heads) == len(LABELS)
    assert model.backbone.nets[0].net.default_cfg["architecture"] == "mobilenetv3_large_100"
    model.eval()
    waveform = torch.randn(2, SR // 2) * 0.3
    logits = model(waveform)
    assert logits.shape == (2, len(LABELS))
    # Instrument 3's logit depends on backbone 3 and head 3 only.
    logits[:, 3].sum().backward()
    for k, (net, head) in enumerate(zip(model.backbone.nets, model.head.heads, strict=True)):
        grads = [p.grad for p in [*net.parameters(), *head.parameters()]]
        touched = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert touched == (k == 3), k


@pytest.mark.slow
def test_mobnet_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.ckpt"
    cfg = tiny_config("MOBNET")
    cfg.labels, cfg.model.num_labels = ["cel", "voi"], 2  # the same graph per instrument, 5x faster
    model = build_model(cfg.validate())
    state = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": build_hparams(cfg, [0.5, 0.5])}, ckpt)
    status, stdout = run_cli([str(ckpt), "--format", "onnx"])
    assert status == 0 and "parity ok" in stdout, stdout
    assert graph_problems(onnx.load(str(tmp_path / "m.onnx"))) == []

"""build_model: every backbone x head combination, transform checks, and pretrained weights that are real.

Pretrained loading is tested offline the way users run it on air-gapped machines: from a local
weights file (timm) or a local ``save_pretrained`` folder (Hugging Face), and with nothing reachable,
where it must fail loudly instead of training from random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_export import AST_TINY, WAV2VEC_TINY

from common.labels import LABELS
from training.config import ConfigError, FrontendConfig, ModelConfig, TrainConfig
from training.models import (
    AttentionHead,
    DeepHead,
    LinearHead,
    LumenModel,
    ModelLoadError,
    PerInstrumentHeads,
    SmallCNN,
    build_model,
)

SR = 8000


def config(
    model: str = "SMALL_CNN", transform: str = "MEL_SPECTROGRAM", **model_kwargs: object
) -> TrainConfig:
    frontend = FrontendConfig(
        audio_transform=transform, sample_rate=SR, n_fft=256, hop_length=128, n_mels=32, n_mfcc=20,
        multi_n_ffts=[128, 256],
    )  # fmt: skip
    model_kwargs.setdefault("width", 0.25)
    return TrainConfig(frontend=frontend, model=ModelConfig(model=model, **model_kwargs))  # type: ignore[arg-type]


def _forward_backward(model: LumenModel, batch: int = 3, samples: int = SR // 2) -> torch.Tensor:
    torch.manual_seed(0)
    logits = model(torch.randn(batch, samples) * 0.3)
    assert logits.shape == (batch, len(LABELS))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable), "some parameter got no gradient"
    return logits


@pytest.mark.parametrize("transform", ["MEL_SPECTROGRAM", "MFCC", "MULTI_SPECTROGRAM"])
def test_small_cnn_takes_every_spectrogram_transform(transform: str) -> None:
    model = build_model(config(transform=transform))
    assert isinstance(model.backbone, SmallCNN)
    expected_channels = 2 if transform == "MULTI_SPECTROGRAM" else 1
    assert model.backbone.stem[0].in_channels == expected_channels
    _forward_backward(model)


@pytest.mark.parametrize(
    ("kwargs", "head_type"),
    [
        ({}, LinearHead),
        ({"head": "DEEP_HEAD", "head_hidden_dim": [32, 16]}, DeepHead),
        ({"head": "ATTENTION_HEAD"}, AttentionHead),
        ({"per_instrument_heads": True}, PerInstrumentHeads),
        ({"per_instrument_heads": True, "head": "ATTENTION_HEAD"}, PerInstrumentHeads),
    ],
)
def test_every_head_gives_one_logit_per_instrument(kwargs: dict[str, object], head_type: type) -> None:
    model = build_model(config(**kwargs))
    assert isinstance(model.head, head_type)
    _forward_backward(model)


def test_per_instrument_heads_are_independent() -> None:
    model = build_model(config(per_instrument_heads=True)).eval()
    assert len(model.head.heads) == len(LABELS)
    waveform = torch.randn(2, SR // 2)
    before = model(waveform)
    with torch.no_grad():
        for p in model.head.heads[4].parameters():
            p.add_(0.5)
    after = model(waveform)
    changed = (before - after).abs().amax(dim=0) > 1e-6
    assert changed.tolist() == [i == 4 for i in range(len(LABELS))]


def test_attention_head_weights_time_steps() -> None:
    head = AttentionHead(8, 2, dropout=0.0).eval()
    sequence = torch.randn(1, 8, 5)
    # One loud step that the attention favours must dominate the pooled logit.
    with torch.no_grad():
        head.attention.weight.zero_()
        head.attention.bias.zero_()
        head.attention.weight[:, 0] = 10.0
        sequence[0, 0, 2] = 5.0
        step_logits = head.classifier(sequence)[0, :, 2]
        assert torch.allclose(head(sequence)[0], step_logits, atol=1e-3)


def test_timm_backbone_random_init_forward() -> None:
    model = build_model(config("MOBILENET_V3_SMALL", transform="MULTI_SPECTROGRAM"))
    assert model.backbone.net.conv_stem.in_channels == 2
    _forward_backward(model, batch=2)


def test_tiny_ast_and_wav2vec2_random_configs() -> None:
    ast = build_model(config("AST", "AST", backbone_kwargs=dict(AST_TINY)))
    _forward_backward(ast, batch=2)
    wav2vec = build_model(config("WAV2VEC", "WAV2VEC", backbone_kwargs=dict(WAV2VEC_TINY)))
    _forward_backward(wav2vec, batch=2)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (config("AST", "MEL_SPECTROGRAM"), "--model AST needs --audio-transform AST"),
        (config("WAV2VEC", "MFCC"), "--model WAV2VEC needs --audio-transform WAV2VEC"),
        (config("SMALL_CNN", "WAV2VEC"), "takes a spectrogram"),
        (config("RESNET_9000"), "unknown"),
        (config(head="DEEP_HEAD"), "--head-hidden-dim"),
        (config(head="TRANSFORMER_HEAD"), "--head 'TRANSFORMER_HEAD' is unknown"),
        (config(width=0.0), "--width"),
        (
            config("AST", "AST", backbone_kwargs={**AST_TINY, "num_mel_bins": 64}),
            "must equal the AST model's",
        ),
    ],
)
def test_inconsistent_configs_are_config_errors(cfg: TrainConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(cfg)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache with the hub switched off: nothing can be downloaded."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(config("MOBILENET_V3_SMALL", pretrained=True), id="timm"),
        pytest.param(config("AST", "AST", pretrained=True), id="ast"),
        pytest.param(
            config("WAV2VEC", "WAV2VEC", pretrained=True, pretrained_source="/nonexistent/wav2vec2"),
            id="wav2vec-missing-folder",
        ),
    ],
)
def test_pretrained_without_weights_fails_loudly(offline_hub: Path, cfg: TrainConfig) -> None:
    with pytest.raises(ModelLoadError, match="drop --pretrained"):
        build_model(cfg)


def test_pretrained_timm_weights_load_from_a_local_file(tmp_path: Path) -> None:
    import timm

    # An ImageNet-shaped checkpoint (3 input channels, 1000 classes), as timm publishes them.
    torch.manual_seed(1)
    imagenet = timm.create_model("mobilenetv3_small_100", pretrained=False)
    weights = tmp_path / "mobilenetv3_small_100.pth"
    torch.save(imagenet.state_dict(), weights)

    model = build_model(config("MOBILENET_V3_SMALL", pretrained=True, pretrained_source=str(weights)))
    net = model.backbone.net
    # Single-channel spectrograms: timm folds the RGB stem filters into one channel by summing them.
    expected_stem = imagenet.conv_stem.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(net.conv_stem.weight, expected_stem, atol=1e-6)
    assert torch.equal(net.blocks[2][0].conv_pw.weight, imagenet.blocks[2][0].conv_pw.weight)
    # Random init would not reproduce a block's weights.
    random_model = build_model(config("MOBILENET_V3_SMALL"))
    assert not torch.equal(
        random_model.backbone.net.blocks[2][0].conv_pw.weight, imagenet.blocks[2][0].conv_pw.weight
    )


def test_pretrained_ast_from_a_local_folder_is_rebuilt_offline_from_the_checkpoint_config(
    tmp_path: Path, offline_hub: Path
) -> None:
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(2)
    published = ASTModel(ASTConfig(**AST_TINY))
    folder = tmp_path / "tiny-ast"
    published.save_pretrained(folder)

    cfg = config("AST", "AST", pretrained=True, pretrained_source=str(folder))
    model = build_model(cfg)
    for name, tensor in published.state_dict().items():
        assert torch.equal(model.backbone.net.state_dict()[name], tensor), name
    # The resolved architecture went into the config, so a checkpoint rebuilds it without the folder.
    assert cfg.model.backbone_kwargs["hidden_size"] == AST_TINY["hidden_size"]
    folder.rename(tmp_path / "gone")
    rebuilt = build_model(cfg, load_pretrained=False)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    waveform = torch.randn(1, SR)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(waveform), model.eval()(waveform), atol=1e-6)

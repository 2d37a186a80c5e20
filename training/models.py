"""One ``build_model(config)`` for every architecture: front-end + backbone + head in one module.

:class:`LumenModel` takes the raw waveform ``[B, T]`` and returns logits ``[B, n_labels]``: the
front-end runs inside ``forward`` (on the training device, and inside the exported graph), so the
data pipeline, export and serving all move plain waveforms.

Every backbone returns a *sequence* ``[B, D, N]`` (D features over N time steps): CNNs average their
feature map over frequency and keep time; AST returns its patch tokens, Wav2Vec2 its frames. The heads
then pool over N — a mean for LINEAR and DEEP_HEAD, learned per-instrument attention for
ATTENTION_HEAD — so every head works with every backbone.

Pretrained weights are real and never silent: ``--pretrained`` loads timm (ImageNet) or Hugging Face
(AudioSet / LibriSpeech) weights from the local cache, a local file/folder (``pretrained_source``) or
the hub; when none is reachable :class:`ModelLoadError` says so instead of training from random init.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from training import musicnn
from training.config import ConfigError, ModelConfig, TrainConfig
from training.frontend import AST_DEFAULT_MAX_FRAMES, CNN_TRANSFORMS, build_frontend

# lumen name -> timm architecture (ImageNet weights via timm's default pretrained tag).
TIMM_MODELS: dict[str, str] = {
    "MOBILENET_V3_SMALL": "mobilenetv3_small_100",
    "MOBILENET_V3_LARGE": "mobilenetv3_large_100",
    "EFFICIENT_NET_V2_S": "tf_efficientnetv2_s",
    "EFFICIENT_NET_V2_M": "tf_efficientnetv2_m",
    "EFFICIENT_NET_V2_L": "tf_efficientnetv2_l",
    "CONVNEXT_TINY": "convnext_tiny",
    "CONVNEXT_SMALL": "convnext_small",
    "CONVNEXT_BASE": "convnext_base",
    "CONVNEXT_LARGE": "convnext_large",
    "RESNEXT50_32X4D": "resnext50_32x4d",
    "RESNEXT101_32X8D": "resnext101_32x8d",
    "RESNEXT101_64X4D": "resnext101_64x4d",
}
# Hugging Face defaults for --pretrained without --pretrained-source.
AST_DEFAULT_SOURCE = "MIT/ast-finetuned-audioset-10-10-0.4593"
WAV2VEC_DEFAULT_SOURCE = "facebook/wav2vec2-base"
# Hidden width of each per-instrument head when --head-hidden-dim is not given.
PER_INSTRUMENT_HIDDEN = 64
SMALL_CNN_CHANNELS = (32, 64, 128, 256)


class ModelLoadError(RuntimeError):
    """Pretrained weights that could not be loaded; the message names the source and the way out."""


# ---- backbones: features [B, C, F, frames] or waveform [B, T] -> sequence [B, D, N] -----------------


def _conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int | tuple[int, int] = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SeparableBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 (MobileNet-v1 style), residual when the shape allows."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn(c_in, c_in, 3, stride=stride, groups=c_in)
        self.pointwise = _conv_bn(c_in, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class SmallCNN(nn.Module):
    """A fast CPU CNN for spectrograms (~0.1-0.3 M parameters at width 1).

    A stride-2 stem, then four stages of separable blocks that halve frequency and time; the width
    multiplier scales every stage (tests use 0.25). Output: the feature map averaged over frequency.
    """

    def __init__(self, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"--width ({width}) must be > 0")
        channels = [max(8, int(round(c * width))) for c in SMALL_CNN_CHANNELS]
        self.stem = _conv_bn(in_channels, channels[0], 3, stride=2)
        stages, c_prev = [], channels[0]
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(SeparableBlock(c_prev, c, stride), SeparableBlock(c, c, 1)))
            c_prev = c
        self.stages = nn.Sequential(*stages)
        self.out_features = c_prev

    def forward(self, features: Tensor) -> Tensor:
        return self.stages(self.stem(features)).mean(dim=2)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def _looks_like_a_path(source: str) -> bool:
    """A local file/folder rather than a hub id (``org/name`` is a hub id, ``./x`` or ``/x`` is not)."""
    return source.startswith(("/", ".", "~")) or source.lower().endswith(WEIGHT_SUFFIXES)


class TimmBackbone(nn.Module):
    """A timm image CNN on spectrogram "images" with ``in_chans`` = front-end channels, unpooled."""

    def __init__(self, name: str, arch: str, in_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        import timm

        kwargs: dict[str, Any] = {
            "in_chans": in_channels,
            "num_classes": 0,
            "global_pool": "",
            **cfg.backbone_kwargs,
        }
        if cfg.pretrained and cfg.pretrained_source:
            # "~/w.pth" is a path (as _looks_like_a_path says), so expand it before testing it.
            source = Path(cfg.pretrained_source).expanduser()
            if source.exists():
                kwargs["pretrained_cfg_overlay"] = {"file": str(source)}
            elif _looks_like_a_path(cfg.pretrained_source):
                raise ModelLoadError(
                    f"--model {name}: --pretrained-source {cfg.pretrained_source}: file not found"
                )
            else:  # a hub id such as "timm/convnext_tiny.fb_in22k"
                arch = cfg.pretrained_source.removeprefix("hf-hub:").removeprefix("timm/")
        try:
            self.net = timm.create_model(arch, pretrained=cfg.pretrained, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            if not cfg.pretrained:
                raise
            raise ModelLoadError(
                f"--model {name}: could not load pretrained timm weights for {arch!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); put them in the Hugging Face "
                "cache, pass --pretrained-source /path/to/weights.safetensors, or drop --pretrained"
            ) from None
        self.out_features = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features).mean(dim=2)


def _hf_error(name: str, source: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"--model {name}: could not load pretrained weights from {source!r} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); download them into the Hugging Face "
        "cache or a local folder and pass --pretrained-source FOLDER, or drop --pretrained"
    )


def _resolve_hf(
    name: str, cfg: ModelConfig, config_cls: type, model_cls: type, default_source: str
) -> nn.Module:
    """A transformers model: pretrained from ``pretrained_source``/hub, else random from a config.

    With ``--pretrained`` the resolved architecture is written back into ``cfg.backbone_kwargs`` (the
    full config, minus bookkeeping keys) so that the checkpoint rebuilds it offline without the hub.
    """
    if not cfg.pretrained:
        return model_cls(config_cls(**cfg.backbone_kwargs))
    source = cfg.pretrained_source or default_source
    try:
        model = model_cls.from_pretrained(source, **cfg.backbone_kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _hf_error(name, source, exc) from None
    resolved = model.config.to_dict()
    for key in (
        "architectures",
        "transformers_version",
        "_name_or_path",
        "id2label",
        "label2id",
        "model_type",
    ):
        resolved.pop(key, None)
    cfg.backbone_kwargs = {k: v for k, v in resolved.items() if _plain(v)}
    return model


def _plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


class AstBackbone(nn.Module):
    """Audio Spectrogram Transformer encoder; its patch tokens (minus cls/distillation) are the sequence."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from transformers import ASTConfig, ASTModel

        self.net = _resolve_hf("AST", cfg, ASTConfig, ASTModel, AST_DEFAULT_SOURCE)
        self.out_features = int(self.net.config.hidden_size)
        self.max_length = int(self.net.config.max_length)
        self.num_mel_bins = int(self.net.config.num_mel_bins)

    def forward(self, features: Tensor) -> Tensor:
        # AstFbank gives [B, 1, n_mels, frames]; ASTModel takes [B, frames, n_mels].
        hidden = self.net(input_values=features.squeeze(1).transpose(1, 2)).last_hidden_state
        return hidden[:, 2:].transpose(1, 2)


class Wav2VecBackbone(nn.Module):
    """Wav2Vec2 encoder on the normalised waveform; its output frames (20 ms each) are the sequence."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        self.net = _resolve_hf("WAV2VEC", cfg, Wav2Vec2Config, Wav2Vec2Model, WAV2VEC_DEFAULT_SOURCE)
        self.out_features = int(self.net.config.hidden_size)

    def forward(self, waveform: Tensor) -> Tensor:
        return self.net(input_values=waveform).last_hidden_state.transpose(1, 2)


# ---- heads: sequence [B, D, N] -> logits [B, K] -------------------------------------------------------


class LinearHead(nn.Module):
    def __init__(self, d_in: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(d_in, n_out)

    def forward(self, sequence: Tensor) -> Tensor:
        return self.fc(self.dropout(sequence.mean(dim=2)))


class DeepHead(nn.Module):
    """Mean-pooled features through ``--head-hidden-dim`` Linear-LayerNorm-GELU-Dropout blocks."""

    def __init__(self, d_in: int, n_out: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ConfigError(f"--head DEEP_HEAD needs --head-hidden-dim with positive sizes, got {hidden}")
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(dropout)]
            d_in = h
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(d_in, n_out)

    def forward(self, sequence: Tensor) -> Tensor:
        return self.fc(self.mlp(sequence.mean(dim=2)))


class AttentionHead(nn.Module):
    """Attention pooling over time: per output, a softmax over the N steps weights per-step logits.

    A quiet bar of a piece need not vote as much as the bar where the clarinet plays; the attention
    learns where to listen, per instrument (decision-level attention as in PANNs / EfficientAT).
    """

    def __init__(self, d_in: int, n_out: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention = nn.Conv1d(d_in, n_out, 1)
        self.classifier = nn.Conv1d(d_in, n_out, 1)

    def forward(self, sequence: Tensor) -> Tensor:
        x = self.dropout(sequence)
        weights = torch.softmax(self.attention(x), dim=2)
        return (weights * self.classifier(x)).sum(dim=2)


def _make_head(cfg: ModelConfig, d_in: int, n_out: int) -> nn.Module:
    match cfg.head:
        case "LINEAR":
            return LinearHead(d_in, n_out, cfg.dropout)
        case "DEEP_HEAD":
            return DeepHead(d_in, n_out, list(cfg.head_hidden_dim), cfg.dropout)
        case "ATTENTION_HEAD":
            return AttentionHead(d_in, n_out, cfg.dropout)
    raise ConfigError(f"--head {cfg.head!r} is unknown")


class PerInstrumentHeads(nn.Module):
    """``--per-instrument-heads``: one independent head (of the chosen kind) per instrument.

    A LINEAR head per instrument is just a linear layer, so each gets a hidden layer
    (``--head-hidden-dim`` or 64 units) unless DEEP_HEAD/ATTENTION_HEAD already shape it.
    """

    def __init__(self, cfg: ModelConfig, d_in: int, n_labels: int) -> None:
        super().__init__()
        head_cfg = copy.copy(cfg)
        if cfg.head == "LINEAR":
            head_cfg.head = "DEEP_HEAD"
            head_cfg.head_hidden_dim = list(cfg.head_hidden_dim) or [PER_INSTRUMENT_HIDDEN]
        self.heads = nn.ModuleList(_make_head(head_cfg, d_in, 1) for _ in range(n_labels))

    def forward(self, sequence: Tensor) -> Tensor:
        return torch.cat([head(sequence) for head in self.heads], dim=1)


# ---- the model ------------------------------------------------------------------------------------


class LumenModel(nn.Module):
    """waveform ``[B, T]`` -> front-end -> (optional spectrogram augmentation) -> backbone -> head -> logits."""

    def __init__(self, frontend: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.backbone = backbone
        self.head = head

    def forward(self, waveform: Tensor, spec_augment: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        features = self.frontend(waveform)
        if spec_augment is not None:
            features = spec_augment(features)
        return self.head(self.backbone(features))


def _check_transform(name: str, transform: str) -> None:
    needs = {"AST": "AST", "WAV2VEC": "WAV2VEC", "WAV2VEC_CNN": "WAV2VEC", "MUSICNN": "MUSICNN"}.get(name)
    if needs is not None and transform != needs:
        raise ConfigError(f"--model {name} needs --audio-transform {needs} (got {transform})")
    if needs is None and transform not in CNN_TRANSFORMS:
        raise ConfigError(
            f"--model {name} takes a spectrogram: --audio-transform {', '.join(CNN_TRANSFORMS)} (got {transform})"
        )


def build_model(config: TrainConfig, *, load_pretrained: bool = True) -> LumenModel:
    """The model ``config`` describes. ``load_pretrained=False`` rebuilds the architecture only.

    Checkpoint loading passes ``load_pretrained=False``: the weights come from the checkpoint, so the
    hub must not be touched (and may be unreachable).
    """
    cfg = config.model
    name, transform = cfg.model, config.frontend.audio_transform
    _check_transform(name, transform)
    if not load_pretrained and cfg.pretrained:
        cfg = copy.copy(cfg)
        cfg.pretrained = False
    backbone: nn.Module
    if name == "AST":
        backbone = AstBackbone(cfg)
        if backbone.num_mel_bins != config.frontend.n_mels:
            raise ConfigError(
                f"--n-mels ({config.frontend.n_mels}) must equal the AST model's num_mel_bins "
                f"({backbone.num_mel_bins})"
            )
        frontend = build_frontend(config.frontend, ast_max_frames=backbone.max_length)
    elif name == "WAV2VEC":
        backbone, frontend = Wav2VecBackbone(cfg), build_frontend(config.frontend)
    elif name == "WAV2VEC_CNN":
        from training.seed_models import Wav2VecCnnBackbone

        backbone, frontend = Wav2VecCnnBackbone(cfg), build_frontend(config.frontend)
    elif name == "MOBNET":
        from training.seed_models import MobnetBackbones, PerBackboneHeads

        frontend = build_frontend(config.frontend)
        backbone = MobnetBackbones(int(frontend.out_channels), cfg)
        return LumenModel(frontend, backbone, PerBackboneHeads(cfg, backbone.out_features, cfg.num_labels))
    elif name == "MUSICNN":
        backbone, frontend = musicnn.MusicnnBackbone(), musicnn.MusicnnLogMel(config.frontend)
        if cfg.pretrained:
            musicnn.load_pretrained_backbone(backbone, cfg.pretrained_source)
    else:
        frontend = build_frontend(config.frontend, ast_max_frames=AST_DEFAULT_MAX_FRAMES)
        channels = int(frontend.out_channels)
        if name == "SMALL_CNN":
            backbone = SmallCNN(channels, cfg.width)
        elif name in TIMM_MODELS:
            backbone = TimmBackbone(name, TIMM_MODELS[name], channels, cfg)
        else:
            raise ConfigError(f"--model {name!r} is unknown")
    d_in, n_labels = int(backbone.out_features), cfg.num_labels
    head = (
        PerInstrumentHeads(cfg, d_in, n_labels)
        if cfg.per_instrument_heads
        else _make_head(cfg, d_in, n_labels)
    )
    return LumenModel(frontend, backbone, head)

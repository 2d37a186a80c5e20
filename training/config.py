"""The training configuration: one typed, plain-data object.

It is what ``lumen-train`` parses its flags into, what ``config.yaml`` holds, what the checkpoint's
hyper-parameters store (``dataclasses.asdict``: only str/int/float/bool/None/list/dict, so
``torch.load(weights_only=True)`` works) and what export copies into the artifact metadata.
Torch-free on purpose: reading a config must not need a GPU stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.labels import LABELS

MODEL_NAMES: tuple[str, ...] = (
    "SMALL_CNN",
    "MOBILENET_V3_SMALL",
    "MOBILENET_V3_LARGE",
    "EFFICIENT_NET_V2_S",
    "EFFICIENT_NET_V2_M",
    "EFFICIENT_NET_V2_L",
    "CONVNEXT_TINY",
    "CONVNEXT_SMALL",
    "CONVNEXT_BASE",
    "CONVNEXT_LARGE",
    "RESNEXT50_32X4D",
    "RESNEXT101_32X8D",
    "RESNEXT101_64X4D",
    "AST",
    "WAV2VEC",
    "WAV2VEC_CNN",
    "MOBNET",
    "MUSICNN",
)
AUDIO_TRANSFORMS: tuple[str, ...] = (
    "MEL_SPECTROGRAM",
    "MFCC",
    "MULTI_SPECTROGRAM",
    "AST",
    "WAV2VEC",
    "WAVELET",
    "MUSICNN",
)
HEADS: tuple[str, ...] = ("LINEAR", "DEEP_HEAD", "ATTENTION_HEAD")
LOSSES: tuple[str, ...] = (
    "CROSS_ENTROPY",
    "CROSS_ENTROPY_POS_WEIGHT",
    "FOCAL_LOSS",
    "FOCAL_LOSS_POS_WEIGHT",
    "INSTRUMENT_FAMILY_LOSS",
)
OPTIMIZERS: tuple[str, ...] = ("ADAM", "ADAMW")
SCHEDULERS: tuple[str, ...] = ("ONECYCLE", "PLATEAU", "COSINEANNEALING", "AUTO_LR", "NONE")
METRICS: tuple[str, ...] = ("VAL_F1", "VAL_F1_MICRO", "VAL_HAMMING", "VAL_LOSS")
AUGMENTATIONS: tuple[str, ...] = (
    "CONCAT_N_SAMPLES",
    "SUM_N_SAMPLES",
    "SUM_TWO_SAMPLES",
    "BACKGROUND_NOISE",
    "TIME_STRETCH",
    "TIME_SHIFT",
    "PITCH",
    "SPEED",
    "COLOR_NOISE",
    "TIMEINV",
    "TIME_MASK",
    "NORM_AFTER_TIME_AUGS",
    "FREQ_MASK",
    "ENVELOPE_SHIFT",
    "RANDOM_ERASE",
    "RANDOM_PIXELS",
    "SEVEN_BAND_EQ",
    "CLIPPING",
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field (as its CLI flag) and the fix."""


@dataclass
class FrontendConfig:
    """Feature extraction computed inside the model's forward (and so inside the exported graph)."""

    audio_transform: str = "MEL_SPECTROGRAM"
    sample_rate: int = 16_000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    n_mfcc: int = 40
    # MULTI_SPECTROGRAM: one log-mel channel per n_fft, all with the same hop and n_mels.
    multi_n_ffts: list[int] = field(default_factory=lambda: [400, 800, 1600])
    # WAVELET: number of complex-Morlet scales (log-spaced centre frequencies from f_min to f_max).
    n_scales: int = 64


@dataclass
class ModelConfig:
    model: str = "SMALL_CNN"
    pretrained: bool = False
    # Hub id / timm name / local folder to load pretrained weights from; None = the model's default.
    pretrained_source: str | None = None
    head: str = "LINEAR"
    head_hidden_dim: list[int] = field(default_factory=list)
    per_instrument_heads: bool = False
    dropout: float = 0.2
    # Small CNN width multiplier (tests use small values).
    width: float = 1.0
    # Model-specific overrides passed to the backbone constructor (e.g. a tiny AST config for tests).
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_labels: int = len(LABELS)


@dataclass
class TrainConfig:
    train_paths: list[str] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    test_paths: list[str] = field(default_factory=list)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    # Windowing shared with serving: training crops windows of window_seconds; validation/test cut
    # whole files into windows every hop_seconds and aggregate window probabilities per file.
    window_seconds: float = 3.0
    hop_seconds: float = 1.5
    aggregation: str = "mean"
    normalize_audio: bool = True
    # Optimisation
    loss_function: str = "CROSS_ENTROPY"
    loss_function_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "ADAMW"
    lr: float = 1e-3
    lr_warmup: float = 1e-4
    lr_onecycle_max: float = 3e-3
    weight_decay: float = 1e-2
    scheduler: str = "ONECYCLE"
    epochs: int = 10
    batch_size: int = 16
    num_workers: int = 2
    finetune_head: bool = True
    finetune_head_epochs: int = 1
    # Seed name: True lets the frozen part's BatchNorm layers update their running statistics during
    # the head-only phase; the default keeps them frozen (eval mode, as is dropout there).
    freeze_train_bn: bool = False
    head_after: str | None = None
    backbone_after: str | None = None
    # Data
    augmentations: list[str] = field(default_factory=list)
    aug_kwargs: dict[str, Any] = field(default_factory=dict)
    use_weighted_train_sampler: bool = False
    # Keep decoded audio in memory across epochs (small or synthetic sets).
    cache_audio: bool = False
    # Monitoring
    metric: str = "VAL_F1"
    metric_mode: str = "MAX"
    early_stopping_patience: int | None = None
    # Run
    output_dir: str = "models"
    experiment_suffix: str = ""
    seed: int = 0
    quick: bool = False
    limit_train_batches: float | int | None = None
    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    ckpt: str | None = None

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.frontend.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * self.frontend.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another tool)."""
        data = dict(data)
        nested = {"frontend": FrontendConfig, "model": ModelConfig}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; is this a lumen-audio config?")
        for key, value in data.items():
            if key in nested and isinstance(value, dict):
                sub = nested[key]
                sub_known = {f.name for f in dataclasses.fields(sub)}
                bad = sorted(set(value) - sub_known)
                if bad:
                    raise ConfigError(f"unknown {key} config keys {bad}")
                kwargs[key] = sub(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs).validate()

    def validate(self) -> TrainConfig:
        checks = [
            ("--model", self.model.model, MODEL_NAMES),
            ("--audio-transform", self.frontend.audio_transform, AUDIO_TRANSFORMS),
            ("--head", self.model.head, HEADS),
            ("--loss-function", self.loss_function, LOSSES),
            ("--optimizer", self.optimizer, OPTIMIZERS),
            ("--scheduler", self.scheduler, SCHEDULERS),
            ("--metric", self.metric, METRICS),
            ("--metric-mode", self.metric_mode, ("MIN", "MAX")),
            ("--aggregation", self.aggregation, ("mean", "max")),
        ]
        for flag, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
        for aug in self.augmentations:
            if aug not in AUGMENTATIONS:
                raise ConfigError(f"--augmentations {aug!r} is not one of: {', '.join(AUGMENTATIONS)}")
        if self.window_seconds <= 0 or not 0 < self.hop_seconds <= self.window_seconds:
            raise ConfigError(
                f"--window-seconds ({self.window_seconds}) must be > 0 and --hop-seconds "
                f"({self.hop_seconds}) in (0, window]"
            )
        unknown = [c for c in self.labels if c not in LABELS]
        if unknown:
            raise ConfigError(f"labels {unknown} are not IRMAS codes")
        if self.model.num_labels != len(self.labels):
            raise ConfigError(
                f"model.num_labels ({self.model.num_labels}) != number of labels ({len(self.labels)})"
            )
        return self

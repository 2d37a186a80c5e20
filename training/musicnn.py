"""MUSICNN: a PyTorch port of musicnn's ``MTT_musicnn`` (Pons & Serra 2019), pretrained on real music.

The network is the one ``musicnn/models.py::build_musicnn`` defines (musicnn 0.1.0, ISC licence,
Music Technology Group, Universitat Pompeu Fabra), trained on MagnaTagATune's 50 tags:

- front-end: batch-norm of the log-mel, then "timbral" convs that span 7 frames x 38 or 67 mel bands
  (204 filters each, max-pooled over frequency) and "temporal" convs of 128/64/32 frames x 1 band
  (51 filters each, TF ``same`` padding, max-pooled over frequency): 561 features per frame;
- mid-end: three 7-frame convs of 64 filters over those features, the last two residual;
- back-end: the 753 dense-connected features pooled over time (max and mean, interleaved as TF's
  ``flatten`` of ``[753, 2]`` orders them), batch-norm, dropout 0.5, dense 1506 -> 200 + ReLU,
  batch-norm, dropout 0.5, and (only for the original tags) dense 200 -> 50.

TF's batch-norm epsilon (1e-3) and padding conventions are reproduced, so with the converted weights
(``models/pretrained/musicnn_mtt.safetensors``, see ``training/musicnn_convert.py``) the port equals
the TF graph on the same log-mel to float32 rounding (a test checks it against a committed fixture).

Its input is musicnn's own log-mel, computed here with the project's conv-DFT front-end (no STFT node
in the exported graph): 16 kHz, n_fft 512, hop 256, 96 Slaney mels of the power spectrum,
``log10(10000 * mel + 1)``. As a ``LumenModel`` backbone it returns the 200-d penultimate layer as a
one-step sequence ``[B, 200, 1]``; the lumen head (11 instruments) replaces the 50-tag layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ConfigError, FrontendConfig
from training.frontend import PowerMelSpectrogram

SAMPLE_RATE = 16_000
N_FFT = 512
HOP_LENGTH = 256
N_MELS = 96
LOG_GAIN = 10_000.0
TF_BN_EPS = 1e-3
TIMBRAL_FILTERS = 204  # int(1.6 * 128)
TIMBRAL_WIDTHS = (38, 67)  # int(0.4 * 96), int(0.7 * 96): mel bands the two timbral kernels span
TEMPORAL_FILTERS = 51  # int(1.6 * 32)
TEMPORAL_LENGTHS = (128, 64, 32)
MIDEND_FILTERS = 64
BACKEND_UNITS = 200
N_TAGS = 50
# The 50 MagnaTagATune tags of the original output layer, in its order (musicnn/configuration.py).
MTT_TAGS: tuple[str, ...] = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal",
    "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice",
    "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice",
    "choral",
)  # fmt: skip
PRETRAINED_FILE = Path(__file__).resolve().parent.parent / "models" / "pretrained" / "musicnn_mtt.safetensors"


class MusicnnLogMel(nn.Module):
    """MUSICNN front-end: ``[B, T]`` -> ``[B, 1, 96, 1 + T // 256]``, ``log10(10000 * mel_power + 1)``.

    librosa's ``melspectrogram(sr=16000, n_fft=512, hop_length=256, n_mels=96)`` as musicnn called it
    (centred frames, reflect padding, periodic Hann, Slaney mels up to Nyquist, power 2).
    """

    out_channels = 1

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        if cfg.sample_rate != SAMPLE_RATE:
            raise ConfigError(
                f"--audio-transform MUSICNN is fixed at {SAMPLE_RATE} Hz (the pretrained network's input); "
                f"got --sample-rate {cfg.sample_rate}"
            )
        self.mel = PowerMelSpectrogram(SAMPLE_RATE, N_FFT, HOP_LENGTH, N_MELS, 0.0, None)

    def forward(self, waveform: Tensor) -> Tensor:
        return torch.log10(LOG_GAIN * self.mel(waveform) + 1.0).unsqueeze(1)


def _same_pad(kernel: int) -> tuple[int, int]:
    """TF ``padding="same"`` at stride 1: the odd sample of an even kernel's padding goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


class _ConvBlock(nn.Module):
    """conv (time x frequency, one input map) -> ReLU -> batch-norm -> max over frequency: ``[B, C, T]``."""

    def __init__(self, filters: int, kernel: tuple[int, int], time_pad: tuple[int, int]) -> None:
        super().__init__()
        self.time_pad = time_pad
        self.conv = nn.Conv2d(1, filters, kernel)
        self.bn = nn.BatchNorm2d(filters, eps=TF_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, *self.time_pad))
        return self.bn(F.relu(self.conv(x))).amax(dim=3)


class _MidendConv(nn.Module):
    """7-frame conv over all features of a frame (TF's ``[7, width]`` valid conv) -> ReLU -> batch-norm."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, MIDEND_FILTERS, 7, padding=3)
        self.bn = nn.BatchNorm1d(MIDEND_FILTERS, eps=TF_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class MusicnnBackbone(nn.Module):
    """``[B, 1, 96, frames]`` log-mel -> the 200-d penultimate features ``[B, 200, 1]``."""

    out_features = BACKEND_UNITS

    def __init__(self) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=TF_BN_EPS)
        self.timbral = nn.ModuleList(
            _ConvBlock(TIMBRAL_FILTERS, (7, width), (3, 3)) for width in TIMBRAL_WIDTHS
        )
        self.temporal = nn.ModuleList(
            _ConvBlock(TEMPORAL_FILTERS, (length, 1), _same_pad(length)) for length in TEMPORAL_LENGTHS
        )
        frontend_features = len(TIMBRAL_WIDTHS) * TIMBRAL_FILTERS + len(TEMPORAL_LENGTHS) * TEMPORAL_FILTERS
        self.midend = nn.ModuleList(
            [_MidendConv(frontend_features), _MidendConv(MIDEND_FILTERS), _MidendConv(MIDEND_FILTERS)]
        )
        pooled = 2 * (frontend_features + len(self.midend) * MIDEND_FILTERS)
        self.pool_bn = nn.BatchNorm1d(pooled, eps=TF_BN_EPS)
        self.pool_dropout = nn.Dropout(0.5)
        self.dense = nn.Linear(pooled, BACKEND_UNITS)
        self.dense_bn = nn.BatchNorm1d(BACKEND_UNITS, eps=TF_BN_EPS)
        self.dense_dropout = nn.Dropout(0.5)

    def features(self, features: Tensor) -> Tensor:
        """The dense-connected front- and mid-end features ``[B, 753, frames]``."""
        x = self.input_bn(features.transpose(2, 3))  # [B, 1, frames, mels]: TF's (time, frequency)
        front = torch.cat([block(x) for block in (*self.timbral, *self.temporal)], dim=1)
        mid1 = self.midend[0](front)
        mid2 = self.midend[1](mid1) + mid1
        mid3 = self.midend[2](mid2) + mid2
        return torch.cat([front, mid1, mid2, mid3], dim=1)

    def penultimate(self, features: Tensor) -> Tensor:
        """``[B, 200]``: pooled features through the back-end's first dense layer."""
        maps = self.features(features)
        # TF flattens [features, (max, mean)], so max and mean of each feature sit side by side.
        pooled = torch.stack([maps.amax(dim=2), maps.mean(dim=2)], dim=2).flatten(1)
        hidden = F.relu(self.dense(self.pool_dropout(self.pool_bn(pooled))))
        return self.dense_dropout(self.dense_bn(hidden))

    def forward(self, features: Tensor) -> Tensor:
        return self.penultimate(features).unsqueeze(2)


class MusicnnTagger(nn.Module):
    """The original MTT_musicnn: log-mel ``[B, 1, 96, frames]`` -> 50 tag logits (parity and zero-shot)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MusicnnBackbone()
        self.tags = nn.Linear(BACKEND_UNITS, N_TAGS)

    def forward(self, features: Tensor) -> Tensor:
        return self.tags(self.backbone.penultimate(features))


class WaveformEmbedder(nn.Module):
    """waveform ``[B, samples]`` -> the 200-d penultimate embedding ``[B, 200]`` of a MUSICNN ``LumenModel``
    (its front-end and backbone; the lumen head is left out). For probes that cache embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.frontend = model.frontend
        self.backbone = model.backbone

    def forward(self, waveform: Tensor) -> Tensor:
        return self.backbone.penultimate(self.frontend(waveform))


def export_embedder(model: nn.Module, path: str | Path, window_samples: int) -> Path:
    """Write :class:`WaveformEmbedder` of ``model`` as ONNX (input ``waveform``, output ``emb``,
    dynamic batch) to ``path``, traced in eval mode; ``model``'s own mode is left as it was."""
    path = Path(path)
    was_training = model.training
    embedder = WaveformEmbedder(model).eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                embedder,
                (torch.zeros(1, window_samples),),
                str(path),
                input_names=["waveform"],
                output_names=["emb"],
                dynamic_axes={"waveform": {0: "batch"}, "emb": {0: "batch"}},
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return path


def load_tagger(path: str | Path = PRETRAINED_FILE) -> MusicnnTagger:
    """The 50-tag network with the converted MTT weights, in eval mode."""
    from safetensors.torch import load_file

    tagger = MusicnnTagger()
    tagger.load_state_dict(load_file(str(_weights_file(path))))
    return tagger.eval()


def load_pretrained_backbone(backbone: MusicnnBackbone, path: str | Path | None) -> None:
    """Copy the converted MTT weights (minus the 50-tag layer) into ``backbone``; every key must fit."""
    from safetensors.torch import load_file

    state = load_file(str(_weights_file(path or PRETRAINED_FILE)))
    prefix = "backbone."
    backbone.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def _weights_file(path: str | Path) -> Path:
    from training.models import ModelLoadError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError(
            f"--model MUSICNN: pretrained weights {file} not found; they ship with the repository "
            "(models/pretrained/), or rebuild them with `python -m training.musicnn_convert` "
            "(see models/pretrained/README.md), or drop --pretrained"
        )
    return file

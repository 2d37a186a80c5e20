"""The seed's last two architectures, built by :func:`training.models.build_model`.

- ``WAV2VEC_CNN``: only the convolutional feature encoder of wav2vec 2.0 (7 conv layers, 512-d frames
  every 20 ms for the base model), no transformer. Its frames are the sequence ``[B, 512, N]`` every
  head pools, so it trains from the CLI like any backbone (``--audio-transform WAV2VEC``).
  ``--pretrained`` takes the encoder's weights from a full wav2vec 2.0 checkpoint (the transformer is
  dropped); without it the encoder is random from ``backbone_kwargs`` (a ``Wav2Vec2Config``).
- ``MOBNET``: the seed's per-instrument ensemble: one MobileNetV3-Large per instrument, each with a
  single-output head, logits concatenated in label order. The backbone returns the stacked sequences
  ``[B, K, D, N]`` and :class:`PerBackboneHeads` gives head ``k`` backbone ``k``'s features only, so
  the instruments share nothing but the front-end (``--finetune-head`` trains the 11 heads first).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from training.config import ModelConfig

MOBNET_ARCH = "mobilenetv3_large_100"


class Wav2VecCnnBackbone(nn.Module):
    """wav2vec 2.0's conv feature encoder on the normalised waveform: ``[B, T]`` -> ``[B, C, N]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model
        from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2FeatureEncoder

        from training.models import WAV2VEC_DEFAULT_SOURCE, _resolve_hf

        if cfg.pretrained:
            full = _resolve_hf("WAV2VEC_CNN", cfg, Wav2Vec2Config, Wav2Vec2Model, WAV2VEC_DEFAULT_SOURCE)
            config, self.encoder = full.config, full.feature_extractor
        else:
            config = Wav2Vec2Config(**cfg.backbone_kwargs)
            self.encoder = Wav2Vec2FeatureEncoder(config)
        self.out_features = int(config.conv_dim[-1])

    def forward(self, waveform: Tensor) -> Tensor:
        return self.encoder(waveform)


class MobnetBackbones(nn.Module):
    """``n_labels`` independent MobileNetV3-L backbones: features ``[B, C, F, T]`` -> ``[B, K, D, N]``."""

    def __init__(self, in_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        from training.models import TimmBackbone

        self.nets = nn.ModuleList(
            TimmBackbone("MOBNET", MOBNET_ARCH, in_channels, cfg) for _ in range(cfg.num_labels)
        )
        self.out_features = self.nets[0].out_features

    def forward(self, features: Tensor) -> Tensor:
        return torch.stack([net(features) for net in self.nets], dim=1)


class PerBackboneHeads(nn.Module):
    """Head ``k`` (one logit, of the ``--head`` kind) on backbone ``k``'s sequence; logits concatenated."""

    def __init__(self, cfg: ModelConfig, d_in: int, n_labels: int) -> None:
        super().__init__()
        from training.models import _make_head

        self.heads = nn.ModuleList(_make_head(copy.copy(cfg), d_in, 1) for _ in range(n_labels))

    def forward(self, sequences: Tensor) -> Tensor:
        return torch.cat([head(sequences[:, k]) for k, head in enumerate(self.heads)], dim=1)

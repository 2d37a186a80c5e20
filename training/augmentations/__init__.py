"""Training-time data augmentation for instrument recognition (batched torch, on the batch's device).

Waveform stage ``[B, T]`` (mixing, time-domain effects, noise, renormalisation) runs in
``training_step`` before the front-end; the spectrogram stage ``[B, C, F, T]`` runs inside the model
on the front-end output, in training only. Validation never sees either. Parameters and their
``--aug-kwargs`` keys: :mod:`training.augmentations.params`.
"""

from training.augmentations.params import (
    PARAMS,
    AugmentationError,
    aug_kwargs_help,
    parse_aug_kwargs,
    valid_keys,
)
from training.augmentations.pipeline import ORDER, AugmentationPipeline, build_augmentations

__all__ = [
    "ORDER",
    "PARAMS",
    "AugmentationError",
    "AugmentationPipeline",
    "aug_kwargs_help",
    "build_augmentations",
    "parse_aug_kwargs",
    "valid_keys",
]

"""The augmentation pipeline: which augmentations run, in which order, with which parameters.

Training only. The Lightning module calls :meth:`AugmentationPipeline.waveform` in ``training_step``
(before the model's front-end, on the batch's device) and passes :meth:`AugmentationPipeline.spectrogram`
to the model as its ``spec_augment`` hook; validation, test, export and serving never see it, so
metrics and served answers are computed on clean audio.

The order is fixed, whatever the order of ``--augmentations``: mixing first (it decides the labels),
then the recording-chain effects, then additive noise, then polarity, and NORM_AFTER_TIME_AUGS last,
restoring the peak each example had after mixing. A fixed order keeps two runs with the same set of
augmentations comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor

from training.augmentations import mixing, spectrogram, time_domain
from training.augmentations.noise import BackgroundNoise
from training.augmentations.params import describe_params, resolve_params

MIXING_ORDER: tuple[str, ...] = ("CONCAT_N_SAMPLES", "SUM_N_SAMPLES", "SUM_TWO_SAMPLES")
WAVEFORM_ORDER: tuple[str, ...] = (
    "TIME_STRETCH",
    "PITCH",
    "SPEED",
    "TIME_SHIFT",
    "SEVEN_BAND_EQ",
    "CLIPPING",
    "BACKGROUND_NOISE",
    "COLOR_NOISE",
    "TIMEINV",
)
NORMALIZE = "NORM_AFTER_TIME_AUGS"
SPECTROGRAM_ORDER: tuple[str, ...] = (
    "ENVELOPE_SHIFT",
    "FREQ_MASK",
    "TIME_MASK",
    "RANDOM_ERASE",
    "RANDOM_PIXELS",
)
MASKING_ORDER: tuple[str, ...] = SPECTROGRAM_ORDER[1:]
"""The spectrogram augmentations that set cells to the example's mean (all but ENVELOPE_SHIFT)."""
ORDER: tuple[str, ...] = (*MIXING_ORDER, *WAVEFORM_ORDER, NORMALIZE, *SPECTROGRAM_ORDER)

MixStep = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Step = Callable[[Tensor], Tensor]


def _mixing_step(name: str, params: Any) -> MixStep:
    match name:
        case "CONCAT_N_SAMPLES":
            return partial(mixing.concat_samples, p=params.p, n=params.n)
        case "SUM_N_SAMPLES":
            return partial(mixing.sum_samples, p=params.p, n=params.n, gain_range=params.gain_range)
        case "SUM_TWO_SAMPLES":
            return partial(mixing.sum_samples, p=params.p, n=2, gain_range=params.gain_range)
    raise KeyError(name)


def _waveform_step(name: str, params: Any, sample_rate: int) -> Step:
    match name:
        case "TIME_STRETCH":
            return partial(
                time_domain.time_stretch,
                sample_rate=sample_rate,
                p=params.p,
                factor_range=params.factor_range,
            )
        case "PITCH":
            return partial(
                time_domain.pitch_shift,
                sample_rate=sample_rate,
                p=params.p,
                semitone_range=params.semitone_range,
            )
        case "SPEED":
            return partial(time_domain.speed, p=params.p, semitone_range=params.semitone_range)
        case "TIME_SHIFT":
            return partial(
                time_domain.time_shift, p=params.p, max_fraction=params.max_fraction, mode=params.mode
            )
        case "SEVEN_BAND_EQ":
            return partial(
                time_domain.seven_band_eq,
                sample_rate=sample_rate,
                p=params.p,
                gain_db_range=params.gain_db_range,
            )
        case "CLIPPING":
            return partial(
                time_domain.clipping, p=params.p, threshold_range=params.threshold_range, modes=params.modes
            )
        case "BACKGROUND_NOISE":
            return BackgroundNoise(params.dir, sample_rate, p=params.p, snr_db_range=params.snr_db_range)
        case "COLOR_NOISE":
            return partial(
                time_domain.color_noise, p=params.p, colors=params.colors, snr_db_range=params.snr_db_range
            )
        case "TIMEINV":
            return partial(time_domain.polarity_inversion, p=params.p)
    raise KeyError(name)


def _spectrogram_step(name: str, params: Any) -> Step:
    match name:
        case "ENVELOPE_SHIFT":
            return partial(
                spectrogram.envelope_shift,
                p=params.p,
                shift_range=params.shift_range,
                n_coeffs=params.n_coeffs,
            )
        case "FREQ_MASK":
            return partial(
                spectrogram.freq_mask, p=params.p, n_masks=params.n_masks, max_fraction=params.max_fraction
            )
        case "TIME_MASK":
            return partial(
                spectrogram.time_mask, p=params.p, n_masks=params.n_masks, max_fraction=params.max_fraction
            )
        case "RANDOM_ERASE":
            return partial(
                spectrogram.random_erase, p=params.p, n_rects=params.n_rects, size_range=params.size_range
            )
        case "RANDOM_PIXELS":
            return partial(spectrogram.random_pixels, p=params.p, rate_range=params.rate_range)
    raise KeyError(name)


class AugmentationPipeline:
    """Batched, on-device training augmentations; build it with :func:`build_augmentations`.

    Deterministic given ``torch.manual_seed``: every draw comes from torch's global generators.
    """

    def __init__(self, params: dict[str, Any], sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.params = {name: params[name] for name in ORDER if name in params}
        self.names: tuple[str, ...] = tuple(self.params)
        self._mixing = [_mixing_step(n, self.params[n]) for n in MIXING_ORDER if n in self.params]
        self._waveform = [
            _waveform_step(n, self.params[n], sample_rate) for n in WAVEFORM_ORDER if n in self.params
        ]
        self._spectrogram = [
            _spectrogram_step(n, self.params[n]) for n in SPECTROGRAM_ORDER if n in self.params
        ]

    @property
    def has_spectrogram(self) -> bool:
        """Whether :meth:`spectrogram` does anything (the model can skip the hook otherwise)."""
        return bool(self._spectrogram)

    @torch.no_grad()
    def waveform(self, wave: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``wave`` ``[B, T]`` and multi-hot ``labels`` ``[B, L]`` -> augmented copies, same shapes and dtypes."""
        if wave.dim() != 2 or labels.dim() != 2 or wave.shape[0] != labels.shape[0]:
            raise ValueError(
                f"expected wave [B, T] and labels [B, L] with the same B, got {tuple(wave.shape)} and {tuple(labels.shape)}"
            )
        wave, labels = self.mix(wave, labels)
        reference_peak = wave.abs().amax(dim=1)
        for step in self._waveform:
            wave = step(wave)
        if NORMALIZE in self.params:
            wave = time_domain.renormalize(wave, reference_peak, p=self.params[NORMALIZE].p)
        return wave, labels

    @torch.no_grad()
    def mix(self, wave: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The mixing steps alone: the only ones that change labels (see :mod:`training.label_stats`)."""
        for step in self._mixing:
            wave, labels = step(wave, labels)
        return wave, labels

    def spectrogram(self, spec: Tensor) -> Tensor:
        """Front-end output ``[B, C, F, T]`` (or ``[B, F, T]``) -> augmented copy of the same shape.

        Not under ``no_grad``: unmasked cells pass gradients through to a trainable front-end (the
        envelope shift is linear in its input, so gradients pass through it too).
        """
        for step in self._spectrogram:
            spec = step(spec)
        return spec

    def describe(self) -> str:
        """One line per augmentation, in application order, with its effective parameters."""
        if not self.names:
            return "augmentations: none"
        width = max(len(n) for n in self.names)
        return "\n".join(f"{name:<{width}}  {describe_params(self.params[name])}" for name in self.names)

    def __repr__(self) -> str:
        return f"AugmentationPipeline({', '.join(self.names) or 'none'}, sample_rate={self.sample_rate})"


def build_augmentations(
    names: list[str] | tuple[str, ...], aug_kwargs: dict[str, Any], sample_rate: int
) -> AugmentationPipeline:
    """Check names and ``aug_kwargs`` (see :mod:`training.augmentations.params` for the keys), load the
    background-noise folder if asked, and return the pipeline. Raises ``AugmentationError`` (a
    ``ConfigError``) with the offending key and the fix."""
    return AugmentationPipeline(resolve_params(list(names), aug_kwargs), sample_rate)

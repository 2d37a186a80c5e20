"""WAVELET: a continuous-wavelet scalogram as one fixed ``conv1d``, like the log-mel front-end.

A CWT with a complex Morlet wavelet is a bank of fixed complex filters, one per scale; sampling its
output every ``hop`` samples is a strided convolution. The filters are the conjugated, time-reversed
wavelet at each scale, so ``F.conv1d`` (a correlation) computes

    W(s, t) = 1/s * sum_tau x[tau] * conj(psi((tau - t) / s)),

with ``psi`` PyWavelets' ``cmorB-C``: ``psi(u) = exp(-u^2 / B) * exp(2j pi C u) / sqrt(pi B)``. The
``1/s`` (L1) normalisation gives a sinusoid of amplitude A at a filter's centre frequency the
magnitude ~A/2 at every scale (PyWavelets' ``pywt.cwt`` uses ``1/sqrt(s)``; the tests compare the two
after that factor). Output: ``[B, 1, n_scales, 1 + T // hop]`` (low to high frequency, frames centred
on ``t * hop`` like the mel front-end), ``(ln(|W|^2 + 1e-6) + 7) / 4``; the exported graph holds only
Pad/Conv/Mul/Add/MatMul-free elementwise ops and Log.

Centre frequencies are log-spaced from ``--f-min`` (0 means :data:`DEFAULT_F_MIN`) to ``--f-max``
(default :data:`DEFAULT_F_MAX_FRACTION` of the sample rate: a Morlet centred at Nyquist would alias).
Every filter is cut at :data:`TRUNCATE` envelope standard deviations of the longest scale, so the
lowest frequency sets the kernel length (at 16 kHz, 40 Hz and B=4: 4,526 taps).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ConfigError, FrontendConfig

# PyWavelets "cmor4.0-1.0": bandwidth B (envelope exp(-u^2 / B)) and centre frequency C (cycles per u).
BANDWIDTH = 4.0
CENTER = 1.0
TRUNCATE = 4.0  # envelope standard deviations kept each side (exp(-8) = 3e-4 of the peak at the cut)
DEFAULT_F_MIN = 40.0
DEFAULT_F_MAX_FRACTION = 0.4
LOG_OFFSET = 1e-6
WAVELET_SHIFT = 7.0
WAVELET_SCALE = 4.0


def morlet(u: np.ndarray) -> np.ndarray:
    """PyWavelets' complex Morlet ``cmorB-C`` at ``u`` (wavelet time units)."""
    return np.exp(-(u**2) / BANDWIDTH) * np.exp(2j * np.pi * CENTER * u) / math.sqrt(math.pi * BANDWIDTH)


def center_frequencies(sample_rate: int, n_scales: int, f_min: float, f_max: float | None) -> np.ndarray:
    """``n_scales`` log-spaced centre frequencies in Hz, low to high (see the module docstring)."""
    low = f_min if f_min > 0 else DEFAULT_F_MIN
    high = DEFAULT_F_MAX_FRACTION * sample_rate if f_max is None else f_max
    if n_scales < 1 or not 0 < low < high <= sample_rate / 2:
        raise ConfigError(
            f"--audio-transform WAVELET: --n-scales ({n_scales}) must be >= 1 and --f-min/--f-max "
            f"({low:g}, {high:g} Hz) must satisfy 0 < f_min < f_max <= sample_rate/2 ({sample_rate / 2:g})"
        )
    return np.geomspace(low, high, n_scales)


def scales_for(frequencies: np.ndarray, sample_rate: int) -> np.ndarray:
    """Scale (samples per wavelet time unit) of each centre frequency: ``pywt.frequency2scale``."""
    return CENTER * sample_rate / np.asarray(frequencies, dtype=np.float64)


def morlet_bank(scales: np.ndarray) -> tuple[np.ndarray, int]:
    """Real and imaginary correlation filters ``[2 * S, 1, 2 * half]`` and ``half``.

    Tap ``k`` multiplies sample ``t + k - half``; the even length with ``half`` padding each side gives
    ``1 + T // hop`` frames, frame ``t`` centred on sample ``t * hop``.
    """
    sigma = math.sqrt(BANDWIDTH / 2.0)  # the envelope's standard deviation in wavelet units
    half = int(math.ceil(TRUNCATE * sigma * float(np.max(scales))))
    offsets = np.arange(-half, half, dtype=np.float64)
    filters = np.stack([np.conj(morlet(offsets / s)) / s for s in scales])  # [S, 2 * half]
    return np.concatenate([filters.real, filters.imag])[:, None, :], half


class WaveletScalogram(nn.Module):
    """WAVELET: ``[B, T]`` -> ``[B, 1, n_scales, 1 + T // hop]`` log scalogram (see module docstring)."""

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        if cfg.hop_length < 1:
            raise ConfigError(f"--hop-length ({cfg.hop_length}) must be >= 1")
        self.frequencies = center_frequencies(cfg.sample_rate, cfg.n_scales, cfg.f_min, cfg.f_max)
        basis, self.half = morlet_bank(scales_for(self.frequencies, cfg.sample_rate))
        self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32), persistent=False)
        self.n_scales, self.hop_length = len(self.frequencies), cfg.hop_length
        self.out_channels = 1

    def magnitude(self, waveform: Tensor) -> Tensor:
        """``|W(s, t)|``, ``[B, n_scales, frames]`` with the ``1/s`` normalisation."""
        return torch.sqrt(self.power(waveform))

    def power(self, waveform: Tensor) -> Tensor:
        x = F.pad(waveform.unsqueeze(1), (self.half, self.half))  # zeros: works for windows < the kernel
        coefficients = F.conv1d(x, self.basis, stride=self.hop_length)
        real, imag = coefficients[:, : self.n_scales], coefficients[:, self.n_scales :]
        return real * real + imag * imag

    def forward(self, waveform: Tensor) -> Tensor:
        log_power = torch.log(self.power(waveform) + LOG_OFFSET)
        return ((log_power + WAVELET_SHIFT) / WAVELET_SCALE).unsqueeze(1)

"""Feature extraction as plain ``nn.Module`` s: computed in the model's forward, on the model's device.

Every spectrogram here is a ``conv1d`` with a fixed, precomputed DFT basis (window folded in) followed
by matmuls, never ``torch.stft``: the exported ONNX graph then holds only Conv/Pad/MatMul/Log nodes,
which every execution provider runs (ONNX Runtime's CUDA provider has no STFT/DFT kernel and would
silently fall back to the CPU for that part of every batch). The bases are non-persistent buffers:
they are derived from the config, so checkpoints neither carry nor depend on them.

Output layouts (``[B, T]`` float32 waveform in):

- spectrogram front-ends (MEL_SPECTROGRAM, MFCC, MULTI_SPECTROGRAM, AST, WAVELET in
  :mod:`training.wavelet`): ``[B, C, F, frames]`` — the
  layout the ``spec_augment`` hook (frequency/time masking) and the image backbones expect;
- WAV2VEC: ``[B, T]``, the normalised waveform.

Log and normalisation choices (fixed, so that export and serving need no dataset statistics):

- log-mel: ``ln(mel_power + 1e-6)`` — the additive offset is ``torchaudio.transforms.MFCC``'s
  ``log_mels=True`` one, so MFCCs match torchaudio exactly, and it is smooth (no clamp kink) and
  bounded below (-13.8) for digital silence. The CNN input is then ``(log_mel + 4.5) / 5``
  (EfficientAT's affine constants), which maps log-mels of peak-normalised music to roughly [-2, 2].
- AST: exactly what ``ASTFeatureExtractor`` feeds the pretrained AST (see :class:`AstFbank`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ConfigError, FrontendConfig

LOG_OFFSET = 1e-6
LOGMEL_SHIFT = 4.5
LOGMEL_SCALE = 5.0
# ASTFeatureExtractor's AudioSet statistics and Kaldi's log floor (float32 machine epsilon).
AST_MEAN = -4.2677393
AST_STD = 4.5689974
AST_DEFAULT_MAX_FRAMES = 1024
KALDI_LOG_FLOOR = float(np.finfo(np.float32).eps)
# Wav2Vec2FeatureExtractor(do_normalize=True): (x - mean) / sqrt(var + 1e-7).
WAV2VEC_VAR_EPS = 1e-7


# ---- fixed matrices (numpy float64, cast once) ----------------------------------------------------


def hann_window(length: int, periodic: bool = True) -> np.ndarray:
    """``torch.hann_window``: periodic (the STFT convention) or symmetric (Kaldi's "hanning")."""
    denom = length if periodic else length - 1
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / denom)


def dft_basis(n_fft: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary rows ``[n_bins, n_fft]`` of the DFT of length ``n_fft`` (bins 0..n_bins-1).

    ``k * n`` is reduced modulo ``n_fft`` in integers first, so the angles stay exact for long FFTs.
    """
    k = np.arange(n_bins)[:, None]
    n = np.arange(n_fft)[None, :]
    angle = 2.0 * np.pi * ((k * n) % n_fft) / n_fft
    return np.cos(angle), -np.sin(angle)


def hz_to_mel_slaney(freq: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    linear = freq / f_sp
    logarithmic = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, logarithmic, linear)


def mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    linear = mels * f_sp
    logarithmic = min_log_hz * np.exp(logstep * (np.maximum(mels, min_log_mel) - min_log_mel))
    return np.where(mels >= min_log_mel, logarithmic, linear)


def slaney_mel_filterbank(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int
) -> np.ndarray:
    """``[n_freqs, n_mels]`` triangular filters, Slaney mel scale and area normalisation.

    Same construction as ``torchaudio.functional.melscale_fbanks(..., norm="slaney",
    mel_scale="slaney")`` (and librosa's default): each filter integrates to the same energy, so wide
    high-frequency bands are not louder than narrow low ones.
    """
    all_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2)
    f_pts = mel_to_hz_slaney(m_pts)
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    return fb * (2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels]))[None, :]


def kaldi_mel_filterbank(
    n_mels: int, padded_window: int, sample_rate: int, low_freq: float = 20.0, high_freq: float = 0.0
) -> np.ndarray:
    """``[n_mels, padded_window // 2]`` Kaldi mel banks (HTK mel scale, triangles in mel, no norm).

    As ``torchaudio.compliance.kaldi.get_mel_banks`` without VTLN; ``high_freq <= 0`` is an offset
    from Nyquist, as in Kaldi. The Nyquist bin gets no weight in Kaldi, so it is left out here.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    n_bins = padded_window // 2
    bin_width = sample_rate / padded_window

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    mel_low, mel_high = mel(low_freq), mel(high)
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + np.arange(n_mels)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    bin_mel = mel(bin_width * np.arange(n_bins))[None, :]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    return np.maximum(0.0, np.minimum(up, down))


def dct_ortho_matrix(n_mfcc: int, n_mels: int) -> np.ndarray:
    """``[n_mels, n_mfcc]`` DCT-II with orthonormal scaling (``torchaudio.functional.create_dct``)."""
    n = np.arange(n_mels)[:, None]
    k = np.arange(n_mfcc)[None, :]
    dct = np.cos(np.pi / n_mels * (n + 0.5) * k)
    dct[:, 0] *= 1.0 / math.sqrt(2.0)
    return dct * math.sqrt(2.0 / n_mels)


def _buffer(array: np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)


# ---- modules -------------------------------------------------------------------------------------


class PowerMelSpectrogram(nn.Module):
    """``[B, T]`` -> mel power ``[B, n_mels, 1 + T // hop]``; centred frames (reflect padding).

    Equals ``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft, hop_length=hop, f_min, f_max,
    n_mels, norm="slaney", mel_scale="slaney")`` (periodic Hann window of ``n_fft``, power 2).
    Frame ``t`` is centred on sample ``t * hop``, so the frame count depends only on ``hop``: spectrograms
    of different ``n_fft`` line up frame by frame.
    """

    def __init__(
        self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float | None
    ) -> None:
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ConfigError(
                f"--f-min/--f-max ({f_min}, {f_max}) must satisfy 0 <= f_min < f_max <= sample_rate/2 "
                f"({sample_rate / 2:g})"
            )
        if n_fft < 2 or hop_length < 1 or n_mels < 1:
            raise ConfigError(
                f"n_fft ({n_fft}), hop_length ({hop_length}) and n_mels ({n_mels}) must be >= 1"
            )
        self.n_fft, self.hop_length, self.n_bins = n_fft, hop_length, n_fft // 2 + 1
        window = hann_window(n_fft, periodic=True)
        real, imag = dft_basis(n_fft, self.n_bins)
        basis = np.concatenate([real * window, imag * window])[:, None, :]
        self.register_buffer("basis", _buffer(basis), persistent=False)
        fb = slaney_mel_filterbank(self.n_bins, f_min, f_max, n_mels, sample_rate)
        self.register_buffer("mel_fb", _buffer(fb.T), persistent=False)  # [n_mels, n_bins]

    def forward(self, waveform: Tensor) -> Tensor:
        pad = self.n_fft // 2
        x = F.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect")
        spec = F.conv1d(x, self.basis, stride=self.hop_length)  # [B, 2 * n_bins, frames]
        real, imag = spec[:, : self.n_bins], spec[:, self.n_bins :]
        return torch.matmul(self.mel_fb, real * real + imag * imag)


class LogMelSpectrogram(nn.Module):
    """MEL_SPECTROGRAM: ``[B, T]`` -> ``[B, 1, n_mels, frames]``, ``(ln(mel + 1e-6) + 4.5) / 5``."""

    def __init__(self, cfg: FrontendConfig, n_fft: int | None = None) -> None:
        super().__init__()
        self.mel = PowerMelSpectrogram(
            cfg.sample_rate, n_fft or cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.f_min, cfg.f_max
        )
        self.out_channels = 1

    def log_mel(self, waveform: Tensor) -> Tensor:
        """Un-normalised ``ln(mel_power + 1e-6)``, ``[B, n_mels, frames]``."""
        return torch.log(self.mel(waveform) + LOG_OFFSET)

    def forward(self, waveform: Tensor) -> Tensor:
        return ((self.log_mel(waveform) + LOGMEL_SHIFT) / LOGMEL_SCALE).unsqueeze(1)


class MFCC(nn.Module):
    """MFCC: orthonormal DCT-II of the normalised log-mel, ``[B, 1, n_mfcc, frames]``.

    :meth:`coefficients` (DCT of the raw log-mel) equals ``torchaudio.transforms.MFCC(norm="ortho",
    log_mels=True)`` with the same slaney mel settings; the forward applies the DCT to the normalised
    log-mel instead, which is the same up to a fixed affine map (scale 1/5, shift of c0) and keeps the
    input in the CNN-friendly range.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        if not 1 <= cfg.n_mfcc <= cfg.n_mels:
            raise ConfigError(f"--n-mfcc ({cfg.n_mfcc}) must be in 1..n_mels ({cfg.n_mels})")
        self.log_mel = LogMelSpectrogram(cfg)
        self.register_buffer("dct", _buffer(dct_ortho_matrix(cfg.n_mfcc, cfg.n_mels).T), persistent=False)
        self.out_channels = 1

    def coefficients(self, waveform: Tensor) -> Tensor:
        """DCT of the raw ``ln(mel + 1e-6)``, ``[B, n_mfcc, frames]`` (torchaudio's MFCC)."""
        return torch.matmul(self.dct, self.log_mel.log_mel(waveform))

    def forward(self, waveform: Tensor) -> Tensor:
        return torch.matmul(self.dct, self.log_mel(waveform))


class MultiSpectrogram(nn.Module):
    """MULTI_SPECTROGRAM: one normalised log-mel channel per ``multi_n_ffts`` entry, ``[B, C, n_mels, frames]``.

    Short FFTs resolve onsets, long ones resolve pitch; the shared hop and centred framing give every
    channel the same ``1 + T // hop`` frames, so they stack without cropping or padding.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        if not cfg.multi_n_ffts:
            raise ConfigError("--multi-n-ffts is empty; MULTI_SPECTROGRAM needs at least one n_fft")
        self.channels = nn.ModuleList(LogMelSpectrogram(cfg, n_fft=n) for n in cfg.multi_n_ffts)
        self.out_channels = len(self.channels)

    def forward(self, waveform: Tensor) -> Tensor:
        return torch.cat([channel(waveform) for channel in self.channels], dim=1)


class AstFbank(nn.Module):
    """AST: the Kaldi fbank ``ASTFeatureExtractor`` computes, as one conv + matmuls, ``[B, 1, n_mels, max_frames]``.

    ``ASTFeatureExtractor`` calls ``torchaudio.compliance.kaldi.fbank(wave, sample_frequency=16000,
    window_type="hanning", num_mel_bins=128)`` — note: a symmetric Hann window, not Kaldi's default
    Povey window — i.e. 25 ms frames every 10 ms without centring (``snip_edges``), dither 0, no energy
    term. Per frame Kaldi removes the DC offset, pre-emphasises (``x[i] -= 0.97 x[i-1]``, the first
    sample against itself), windows and zero-pads to 512 before the FFT. All four steps are linear in
    the frame, so they fold (in float64) into one DFT basis applied by a single strided ``conv1d``.
    Then: power, Kaldi mel banks (HTK scale, 20 Hz..Nyquist), ``ln(max(x, float32 eps))``, zero-padding
    or truncation to ``max_frames`` (AST's fixed ``max_length``; padding before normalisation, as the
    extractor does) and ``(x + 4.2677393) / (2 * 4.5689974)``.

    Output is ``[B, 1, n_mels, max_frames]`` like every spectrogram here (so the same masking hook
    applies); the AST adapter transposes it to the ``[B, max_frames, n_mels]`` ``ASTModel`` takes.
    """

    def __init__(self, sample_rate: int, n_mels: int, max_frames: int) -> None:
        super().__init__()
        if max_frames < 1:
            raise ConfigError(f"AST max_length ({max_frames}) must be >= 1")
        self.window = int(sample_rate * 0.025)
        self.shift = int(sample_rate * 0.010)
        self.max_frames = max_frames
        padded = 1 << (self.window - 1).bit_length()
        self.n_bins = padded // 2
        n = self.window
        dc_removal = np.eye(n) - 1.0 / n
        preemphasis = np.eye(n) - 0.97 * np.eye(n, k=-1)
        preemphasis[0, 0] = 1.0 - 0.97
        frame_to_windowed = hann_window(n, periodic=False)[:, None] * (preemphasis @ dc_removal)
        real, imag = dft_basis(padded, self.n_bins)
        basis = np.concatenate([real[:, :n] @ frame_to_windowed, imag[:, :n] @ frame_to_windowed])
        self.register_buffer("basis", _buffer(basis[:, None, :]), persistent=False)
        self.register_buffer(
            "mel_fb", _buffer(kaldi_mel_filterbank(n_mels, padded, sample_rate)), persistent=False
        )
        self.out_channels = 1

    def log_fbank(self, waveform: Tensor) -> Tensor:
        """Kaldi's log mel fbank, ``[B, n_mels, 1 + (T - window) // shift]`` (no padding, no norm)."""
        if waveform.shape[-1] < self.window:
            raise ValueError(f"AST front-end needs at least {self.window} samples, got {waveform.shape[-1]}")
        spec = F.conv1d(waveform.unsqueeze(1), self.basis, stride=self.shift)
        real, imag = spec[:, : self.n_bins], spec[:, self.n_bins :]
        mel = torch.matmul(self.mel_fb, real * real + imag * imag)
        return torch.log(torch.clamp(mel, min=KALDI_LOG_FLOOR))

    def forward(self, waveform: Tensor) -> Tensor:
        fbank = self.log_fbank(waveform)
        frames = fbank.shape[-1]
        if frames < self.max_frames:
            fbank = F.pad(fbank, (0, self.max_frames - frames))
        elif frames > self.max_frames:
            fbank = fbank[..., : self.max_frames]
        return ((fbank - AST_MEAN) / (AST_STD * 2)).unsqueeze(1)


class Wav2VecNormalize(nn.Module):
    """WAV2VEC: the raw waveform, zero mean and unit variance per example (``do_normalize=True``)."""

    out_channels = 1

    def forward(self, waveform: Tensor) -> Tensor:
        mean = waveform.mean(dim=-1, keepdim=True)
        var = waveform.var(dim=-1, unbiased=False, keepdim=True)
        return (waveform - mean) / torch.sqrt(var + WAV2VEC_VAR_EPS)


SPECTROGRAM_TRANSFORMS: tuple[str, ...] = ("MEL_SPECTROGRAM", "MFCC", "MULTI_SPECTROGRAM", "AST")
# What the CNN backbones take (AST has its own model).
CNN_TRANSFORMS: tuple[str, ...] = ("MEL_SPECTROGRAM", "MFCC", "MULTI_SPECTROGRAM", "WAVELET")


def build_frontend(cfg: FrontendConfig, *, ast_max_frames: int = AST_DEFAULT_MAX_FRAMES) -> nn.Module:
    """The front-end named by ``cfg.audio_transform``; ``.out_channels`` is its channel count ``C``.

    ``ast_max_frames`` is the AST model's ``max_length`` (its positional embeddings fix it), which
    :func:`training.models.build_model` takes from the AST config.
    """
    match cfg.audio_transform:
        case "MEL_SPECTROGRAM":
            return LogMelSpectrogram(cfg)
        case "MFCC":
            return MFCC(cfg)
        case "MULTI_SPECTROGRAM":
            return MultiSpectrogram(cfg)
        case "AST":
            return AstFbank(cfg.sample_rate, cfg.n_mels, ast_max_frames)
        case "WAV2VEC":
            return Wav2VecNormalize()
        case "WAVELET":
            from training.wavelet import WaveletScalogram

            return WaveletScalogram(cfg)
    raise ConfigError(f"--audio-transform {cfg.audio_transform!r} is unknown")

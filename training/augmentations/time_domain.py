"""Time-domain augmentations on a batch ``[B, T]``: every function draws per-example parameters and
applies them in one batched pass on the batch's device (no Python loop over examples).

Stretch and pitch shift share a phase vocoder written here (rather than ``torchaudio``'s) because
each example needs its own rate; one rate per call would force a loop over the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training.augmentations._random import chosen, log_uniform, per_example, uniform
from training.augmentations.params import COLOR_EXPONENTS

_EPS = 1e-9
EQ_BANDS = 7
EQ_LOWEST_HZ = 60.0


def vocoder_fft_size(sample_rate: int) -> int:
    """~32 ms frames (512 at 16 kHz): long enough to resolve harmonics, short enough for onsets."""
    return 2 ** round(math.log2(0.032 * sample_rate))


def phase_vocoder(wave: Tensor, rate: Tensor, n_fft: int, out_len: int) -> Tensor:
    """Play ``wave`` ``[B, T]`` at ``rate`` ``[B]`` times its tempo with unchanged pitch, ``out_len`` samples.

    Output frame k reads the input STFT at fractional frame ``k * rate``: magnitudes are interpolated
    between neighbouring frames and phases advance by each bin's measured instantaneous frequency, so
    partials stay continuous. Reads past the input's end are silent (zero padding).
    """
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=wave.device, dtype=torch.float32)
    spec = torch.stft(wave.to(torch.float32), n_fft, hop, window=window, return_complex=True)
    bins, frames_in = spec.shape[1], spec.shape[2]
    frames_out = 1 + math.ceil(out_len / hop)
    position = torch.arange(frames_out, device=wave.device, dtype=torch.float32) * rate.unsqueeze(1).float()
    base = position.floor()
    frac = (position - base).unsqueeze(1)
    first = base.long().clamp_max(frames_in - 1)
    second = (first + 1).clamp_max(frames_in - 1)
    at_first = spec.gather(2, first.unsqueeze(1).expand(-1, bins, -1))
    at_second = spec.gather(2, second.unsqueeze(1).expand(-1, bins, -1))
    magnitude = (1 - frac) * at_first.abs() + frac * at_second.abs()
    magnitude = magnitude * (position <= frames_in - 1).unsqueeze(1)

    # Each bin's nominal phase advance per hop, taken modulo 2*pi in float64: the raw value reaches
    # hundreds of radians, where float32 rounding alone would drift the phases audibly.
    bin_index = torch.arange(bins, device=wave.device, dtype=torch.float64)
    expected = (2 * math.pi * hop * bin_index / n_fft).remainder(2 * math.pi).float()
    deviation = at_second.angle() - at_first.angle() - expected.unsqueeze(1)
    deviation = deviation - 2 * math.pi * torch.round(deviation / (2 * math.pi))
    advance = deviation + expected.unsqueeze(1)
    accumulated = spec[:, :, :1].angle() + advance.cumsum(dim=2) - advance
    phase = _lock_to_peaks(accumulated, at_first.angle(), magnitude)
    out = torch.istft(torch.polar(magnitude, phase), n_fft, hop, window=window, length=out_len)
    return out.to(wave.dtype)


def _lock_to_peaks(accumulated: Tensor, analysis_phase: Tensor, magnitude: Tensor) -> Tensor:
    """Identity phase locking (Laroche & Dolson): every bin keeps its analysis phase *relative to* the
    nearest spectral peak, and only peaks use their accumulated phase. Without it the bins of one
    partial drift apart wherever frames are repeated (slow-downs, transients) and the partial partly
    cancels itself ("phasiness"); locking restores that coherence with tensor ops only.
    """
    bins = magnitude.shape[1]
    lower = torch.nn.functional.pad(magnitude, (0, 0, 1, 0), value=-1.0)[:, :-1]
    upper = torch.nn.functional.pad(magnitude, (0, 0, 0, 1), value=-1.0)[:, 1:]
    peak = (magnitude >= lower) & (magnitude > upper) & (magnitude > 0)
    index = torch.arange(bins, device=magnitude.device).view(1, -1, 1).expand_as(magnitude)
    below = torch.where(peak, index, -1).cummax(dim=1).values
    above = torch.where(peak, index, bins).flip(1).cummin(dim=1).values.flip(1)
    take_below = (below >= 0) & ((above >= bins) | (index - below <= above - index))
    nearest = torch.where(take_below, below, torch.where(above < bins, above, index))
    return accumulated.gather(1, nearest) + analysis_phase - analysis_phase.gather(1, nearest)


def read_at(wave: Tensor, position: Tensor) -> Tensor:
    """Linear interpolation of ``wave`` ``[B, L]`` at fractional sample ``position`` ``[B, T]``; 0 outside."""
    length = wave.shape[1]
    base = position.floor()
    frac = (position - base).to(wave.dtype)
    first = base.long().clamp(0, length - 1)
    second = (first + 1).clamp_max(length - 1)
    value = (1 - frac) * wave.gather(1, first) + frac * wave.gather(1, second)
    return value * ((position >= 0) & (position <= length - 1)).to(wave.dtype)


def time_stretch(wave: Tensor, *, sample_rate: int, p: float, factor_range: tuple[float, float]) -> Tensor:
    """Tempo x factor, pitch unchanged (phase vocoder); a faster example ends in zero padding, a slower
    one is cropped to the window. Vocoder smearing of transients is part of the augmentation."""
    batch, length = wave.shape
    mask = chosen(batch, p, wave.device)
    rate = log_uniform(*factor_range, (batch,), wave.device)
    return per_example(mask, phase_vocoder(wave, rate, vocoder_fft_size(sample_rate), length), wave)


def pitch_shift(wave: Tensor, *, sample_rate: int, p: float, semitone_range: tuple[float, float]) -> Tensor:
    """Pitch x 2**(semitones/12), duration unchanged: stretch to ratio x the length (same pitch), then
    read it back ratio x faster (linear interpolation), which restores the length and scales every
    frequency by ratio. Linear interpolation aliases a little above ~0.9 Nyquist when shifting up."""
    batch, length = wave.shape
    mask = chosen(batch, p, wave.device)
    ratio = torch.pow(2.0, uniform(*semitone_range, (batch,), wave.device) / 12)
    longest = math.ceil(length * max(2 ** (semitone_range[1] / 12), 1.0)) + 1
    stretched = phase_vocoder(wave, 1 / ratio, vocoder_fft_size(sample_rate), longest)
    position = torch.arange(length, device=wave.device, dtype=torch.float32) * ratio.unsqueeze(1)
    return per_example(mask, read_at(stretched, position), wave)


def speed(wave: Tensor, *, p: float, semitone_range: tuple[float, float]) -> Tensor:
    """Tape-speed change by ratio 2**(semitones/12): every frequency (pitch *and* the body's formants)
    scales by ratio and the tempo with it, like a different instrument body or a recording played at
    another speed. PITCH's timbre effect without its phase vocoder: one linear-interpolation read, 48 ms
    against PITCH's 890 ms per batch of 32 3-s examples on 2 CPU cores. A faster example ends in zero padding (up to 1 - 1/ratio of the window, 11 % at
    +2 semitones), a slower one is cropped. Speeding up folds content above Nyquist/ratio back down
    (linear interpolation, no anti-alias filter), as PITCH's final read does."""
    batch, length = wave.shape
    mask = chosen(batch, p, wave.device)
    ratio = torch.pow(2.0, uniform(*semitone_range, (batch,), wave.device) / 12)
    position = torch.arange(length, device=wave.device, dtype=torch.float32) * ratio.unsqueeze(1)
    return per_example(mask, read_at(wave, position), wave)


def time_shift(wave: Tensor, *, p: float, max_fraction: float, mode: str) -> Tensor:
    """Move the content by up to ``max_fraction`` of the window either way: ``wrap`` rolls, ``zeros`` pads."""
    batch, length = wave.shape
    mask = chosen(batch, p, wave.device)
    limit = int(max_fraction * length)
    shift = torch.randint(-limit, limit + 1, (batch, 1), device=wave.device)
    source = torch.arange(length, device=wave.device) - shift
    if mode == "wrap":
        return per_example(mask, wave.gather(1, source % length), wave)
    inside = (source >= 0) & (source < length)
    shifted = wave.gather(1, source.clamp(0, length - 1)) * inside.to(wave.dtype)
    return per_example(mask, shifted, wave)


def add_at_snr(wave: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """``wave + g * noise`` with g per example so that power(wave) / power(g * noise) = 10**(snr_db/10)."""
    signal_power = wave.pow(2).mean(dim=1)
    noise_power = noise.pow(2).mean(dim=1).clamp_min(_EPS**2)
    gain = torch.sqrt(signal_power / (noise_power * torch.pow(10.0, snr_db / 10)))
    return wave + gain.unsqueeze(1).to(wave.dtype) * noise.to(wave.dtype)


def color_noise(
    wave: Tensor, *, p: float, colors: tuple[str, ...], snr_db_range: tuple[float, float]
) -> Tensor:
    """Gaussian noise shaped in the FFT domain to PSD ∝ f**exponent (white 0, pink -1, brown -2, ...).

    The DC bin is removed (brown noise would otherwise be mostly offset). Fine in training only: this
    module is never part of an exported graph.
    """
    batch, length = wave.shape
    mask = chosen(batch, p, wave.device)
    exponents = torch.tensor([COLOR_EXPONENTS[c] for c in colors], device=wave.device)
    exponent = exponents[torch.randint(len(colors), (batch,), device=wave.device)]
    snr_db = uniform(*snr_db_range, (batch,), wave.device)
    spectrum = torch.fft.rfft(torch.randn(batch, length, device=wave.device))
    bins = torch.arange(spectrum.shape[1], device=wave.device, dtype=torch.float32).clamp_min(1)
    amplitude = bins.pow(exponent.unsqueeze(1) / 2)
    amplitude[:, 0] = 0
    noise = torch.fft.irfft(spectrum * amplitude, n=length)
    return per_example(mask, add_at_snr(wave, noise, snr_db), wave)


def polarity_inversion(wave: Tensor, *, p: float) -> Tensor:
    mask = chosen(wave.shape[0], p, wave.device)
    return per_example(mask, -wave, wave)


def eq_centres(sample_rate: int) -> Tensor:
    """7 log-spaced band centres from 60 Hz to 3/4 of Nyquist (about 2.2 octaves apart at 16 kHz)."""
    return torch.logspace(math.log10(EQ_LOWEST_HZ), math.log10(0.375 * sample_rate), EQ_BANDS)


def seven_band_eq(wave: Tensor, *, sample_rate: int, p: float, gain_db_range: tuple[float, float]) -> Tensor:
    """Random dB gain per band; the gain curve is linear in log-frequency between band centres and flat
    outside them, so there are no steps in the response (a step would ring across the whole window).
    Applied as one zero-phase multiplication in the FFT domain."""
    batch, length = wave.shape
    mask = chosen(batch, p, wave.device)
    gains_db = uniform(*gain_db_range, (batch, EQ_BANDS), wave.device)
    log_centres = eq_centres(sample_rate).log().to(wave.device)
    freqs = torch.fft.rfftfreq(length, 1 / sample_rate, device=wave.device)
    log_freqs = freqs.clamp(min=EQ_LOWEST_HZ).log().clamp_max(log_centres[-1])
    upper = torch.searchsorted(log_centres, log_freqs).clamp(1, EQ_BANDS - 1)
    lower = upper - 1
    weight = (log_freqs - log_centres[lower]) / (log_centres[upper] - log_centres[lower])
    curve_db = gains_db[:, lower] * (1 - weight) + gains_db[:, upper] * weight
    spectrum = torch.fft.rfft(wave.to(torch.float32)) * torch.pow(10.0, curve_db / 20)
    return per_example(mask, torch.fft.irfft(spectrum, n=length).to(wave.dtype), wave)


def clipping(
    wave: Tensor, *, p: float, threshold_range: tuple[float, float], modes: tuple[str, ...]
) -> Tensor:
    """Clip at threshold x the example's peak: ``hard`` clamps, ``soft`` is threshold * tanh(x / threshold)
    (saturation like an overdriven preamp). Both keep |x| <= threshold."""
    batch = wave.shape[0]
    mask = chosen(batch, p, wave.device)
    level = uniform(*threshold_range, (batch, 1), wave.device).to(wave.dtype)
    threshold = (level * wave.abs().amax(dim=1, keepdim=True)).clamp_min(_EPS)
    hard = torch.clamp(wave, -threshold, threshold)
    soft = threshold * torch.tanh(wave / threshold)
    options = torch.tensor([m == "soft" for m in modes], device=wave.device)
    use_soft = options[torch.randint(len(modes), (batch,), device=wave.device)]
    return per_example(mask, per_example(use_soft, soft, hard), wave)


def renormalize(wave: Tensor, reference_peak: Tensor, *, p: float) -> Tensor:
    """Scale each example back to ``reference_peak`` ``[B]`` (its peak before the time-domain stage):
    added noise and EQ change the level, and the model should not learn level as a cue."""
    mask = chosen(wave.shape[0], p, wave.device)
    peak = wave.abs().amax(dim=1)
    scaled = wave * (reference_peak / peak.clamp_min(_EPS)).unsqueeze(1).to(wave.dtype)
    return per_example(mask & (peak > _EPS), scaled, wave)

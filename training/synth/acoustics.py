"""The recording chain after the instrument: room, microphone/EQ, dynamics, noise (numpy only).

Each stage is a pure function of a numpy ``Generator`` and the audio, applied to a whole track mix
(pre-roll included, so clips start with the room already ringing) in the order a recording goes
through them: room -> microphone/preamp colouring -> compressor -> noise. Which stages a track gets
is drawn with the probabilities of :class:`~training.synth.variation.Variation`; the coin for every
stage is tossed for every track, so switching one stage off does not reshuffle the others.

- Room: a synthetic impulse response — the direct sound, 4-14 early reflections within the first
  ~5-60 ms (later in bigger rooms), then an exponentially decaying noise tail whose RT60 is drawn per
  track and is shorter in high bands than in low ones (air and wall absorption), mixed at a random
  direct-to-reverberant ratio. Convolved by FFT.
- Microphone/EQ: a zero-phase gain curve — a high-pass (30-200 Hz), often a high roll-off
  (2.5-12 kHz), 1-4 resonances or dips of +-9 dB and a spectral tilt.
- Dynamics: a feed-forward compressor on a 5 ms RMS envelope (threshold 6-24 dB under the peak,
  ratio 2-8, attack 3-30 ms, release 40-300 ms).
- Noise: white, pink or brown noise at a random SNR, sometimes with 50/60 Hz hum and harmonics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.synth.variation import Variation

SPEED_OF_SOUND = 343.0
DECAY_60DB = np.log(1000.0)  # amplitude falls by 60 dB when exp(-k t) = 1e-3
# Band edges (Hz) of the reverberant tail and each band's RT60 relative to the drawn one.
TAIL_BANDS: tuple[tuple[float, float, float], ...] = (
    (0.0, 250.0, 1.25),
    (250.0, 1000.0, 1.0),
    (1000.0, 4000.0, 0.8),
    (4000.0, np.inf, 0.55),
)
MAX_IR_SECONDS = 3.0
COMPRESSOR_HOP_SECONDS = 0.005


def _fft_size(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def room_impulse_response(rng: np.random.Generator, sample_rate: int, rt60: float) -> np.ndarray:
    """A mono impulse response ``[n]`` with the direct sound at sample 0 (peak 1)."""
    length = int(min(1.1 * rt60, MAX_IR_SECONDS) * sample_rate) + 1
    t = np.arange(length) / sample_rate
    # Room size follows the reverberation (bigger rooms ring longer): 3-40 m mean free path scale.
    size = float(np.clip(rt60 * rng.uniform(8.0, 20.0), 3.0, 40.0))
    first = size / SPEED_OF_SOUND * rng.uniform(0.1, 0.4)
    ir = np.zeros(length)
    ir[0] = 1.0
    for _ in range(int(rng.integers(4, 15))):
        delay = first * rng.uniform(1.0, 4.0)
        index = min(int(delay * sample_rate), length - 1)
        ir[index] += rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.7) * np.exp(-DECAY_60DB * delay / rt60)
    noise_spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1.0 / sample_rate)
    tail = np.zeros(length)
    for low, high, factor in TAIL_BANDS:
        band = np.fft.irfft(noise_spectrum * ((freqs >= low) & (freqs < high)), length)
        tail += band * np.exp(-DECAY_60DB * t / (rt60 * factor))
    onset = np.clip((t - first) / max(first, 1e-3), 0.0, 1.0)  # the diffuse field builds up
    tail *= onset
    # Direct-to-reverberant energy ratio: -6 dB (far, wet) .. +12 dB (close, dry).
    drr_db = rng.uniform(-6.0, 12.0)
    reverberant = float(np.sum(tail**2)) or 1.0
    ir += tail * np.sqrt(10 ** (-drr_db / 10) / reverberant)
    return ir


def convolve(audio: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """``audio * ir`` (linear convolution by FFT), cut to ``len(audio)``."""
    n = _fft_size(len(audio) + len(ir) - 1)
    out = np.fft.irfft(np.fft.rfft(audio, n) * np.fft.rfft(ir, n), n)
    return out[: len(audio)]


def microphone_curve(rng: np.random.Generator, freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    """Gain in dB at ``freqs``: high-pass, optional roll-off, resonances/dips and a tilt."""
    f = np.maximum(freqs, 1.0)
    high_pass = rng.uniform(30.0, 200.0)
    db = -10.0 * int(rng.integers(1, 3)) * np.log10(1.0 + (high_pass / f) ** 2)
    if rng.random() < 0.6:
        roll_off = np.exp(rng.uniform(np.log(2500.0), np.log(min(12_000.0, 0.45 * sample_rate))))
        db -= 10.0 * int(rng.integers(1, 3)) * np.log10(1.0 + (f / roll_off) ** 2)
    for _ in range(int(rng.integers(1, 5))):
        center = np.exp(rng.uniform(np.log(100.0), np.log(0.4 * sample_rate)))
        width = rng.uniform(0.3, 1.5)  # octaves
        db += rng.uniform(-9.0, 9.0) * np.exp(-0.5 * (np.log2(f / center) / width) ** 2)
    db += rng.uniform(-3.0, 3.0) * np.log10(f / 1000.0)  # dB per decade around 1 kHz
    return db


def filter_db(audio: np.ndarray, sample_rate: int, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Zero-phase filtering by a gain curve: ``curve(freqs)`` in dB at the rfft bins (0 Hz read as 1 Hz)."""
    n = len(audio)
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 1.0)
    return np.fft.irfft(np.fft.rfft(audio) * 10 ** (curve(freqs) / 20), n)


def colour(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    return filter_db(audio, sample_rate, lambda freqs: microphone_curve(rng, freqs, sample_rate))


def compress(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Feed-forward compression: gain from a smoothed RMS envelope, interpolated to samples."""
    hop = max(1, int(COMPRESSOR_HOP_SECONDS * sample_rate))
    n_frames = -(-len(audio) // hop)
    padded = np.pad(audio, (0, n_frames * hop - len(audio)))
    rms = np.sqrt(np.mean(padded.reshape(n_frames, hop) ** 2, axis=1) + 1e-12)
    level = 20 * np.log10(rms)
    threshold = level.max() - rng.uniform(6.0, 24.0)
    ratio = rng.uniform(2.0, 8.0)
    attack = np.exp(-COMPRESSOR_HOP_SECONDS / rng.uniform(0.003, 0.03))
    release = np.exp(-COMPRESSOR_HOP_SECONDS / rng.uniform(0.04, 0.3))
    envelope = np.empty(n_frames)
    state = level[0]
    for i, value in enumerate(level):
        coeff = attack if value > state else release
        state = coeff * state + (1.0 - coeff) * value
        envelope[i] = state
    reduction_db = np.maximum(envelope - threshold, 0.0) * (1.0 - 1.0 / ratio)
    centres = (np.arange(n_frames) + 0.5) * hop
    gain = 10 ** (-np.interp(np.arange(len(audio)), centres, reduction_db) / 20)
    return audio * gain


def noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise: white, pink or brown (1/f^0, 1/f^1, 1/f^2 power), sometimes with hum."""
    exponent = float(rng.choice([0.0, 1.0, 2.0]))
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 20.0)
    out = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    out /= np.sqrt(np.mean(out**2)) + 1e-12
    if rng.random() < 0.2:
        mains = float(rng.choice([50.0, 60.0]))
        t = np.arange(n) / sample_rate
        hum = sum(
            rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi))
            for k in range(1, 6)
        )
        out += rng.uniform(0.5, 2.0) * hum / (np.sqrt(np.mean(hum**2)) + 1e-12)
        out /= np.sqrt(np.mean(out**2)) + 1e-12
    return out


def add_noise(
    rng: np.random.Generator, audio: np.ndarray, sample_rate: int, snr_db: tuple[float, float]
) -> np.ndarray:
    signal_rms = float(np.sqrt(np.mean(audio**2)))
    snr = rng.uniform(*snr_db)
    return audio + noise(rng, len(audio), sample_rate) * signal_rms * 10 ** (-snr / 20)


def record(rng: np.random.Generator, audio: np.ndarray, sample_rate: int, variation: Variation) -> np.ndarray:
    """The track as a microphone in a room would have recorded it (float32 out, level unnormalised)."""
    coins = rng.random(4)  # one per stage, always drawn
    out = audio.astype(np.float64)
    if float(np.max(np.abs(out), initial=0.0)) == 0.0:
        return audio
    if coins[0] < variation.room_prob:
        rt60 = float(np.exp(rng.uniform(np.log(variation.rt60[0]), np.log(variation.rt60[1]))))
        out = convolve(out, room_impulse_response(rng, sample_rate, rt60))
    if coins[1] < variation.eq_prob:
        out = colour(rng, out, sample_rate)
    if coins[2] < variation.dynamics_prob:
        out = compress(rng, out, sample_rate)
    if coins[3] < variation.noise_prob:
        out = add_noise(rng, out, sample_rate, variation.snr_db)
    return out.astype(np.float32)

"""An electric guitar's rig between the strings and the microphone (numpy only).

A General-MIDI soundfont's electric guitars are recorded clean or with one fixed distortion, and
its lines are played by a keyboard; a real electric guitar reaches the microphone through pedals
and an amplifier. :func:`guitar_rig` puts an electric-guitar stem through a random chain of what
guitarists use, in their order, before the stem is mixed and the room, microphone and noise of
:mod:`training.synth.acoustics` are added:

- Drive (overdrive, distortion, fuzz): a pre-emphasis (the mid hump of an overdrive, or a
  treble boost), gain of 6-30 dB into a soft (tanh), hard or asymmetric clipper, run at 4x the
  sample rate so the clipping's harmonics do not fold back as aliasing a real amplifier does not
  have, AC-coupled (the offset an asymmetric stage makes is filtered out), the level restored.
- Cabinet: a 4x12 or 1x12 speaker's band limit — high-pass 70-140 Hz, a steep roll-off from
  2.5-5 kHz (18-30 dB per octave), one or two cone resonances.
- Modulation: chorus (7-25 ms delay swept 1-4 ms), flanger (0.5-5 ms, with feedback) or tremolo.
- Echo: a feedback delay of 90-550 ms, each repeat darker than the last.

Which stages a stem gets is drawn per stem (a rig with nothing in it is never drawn: at least one
stage is on); every coin is tossed every time so one stage's draw does not depend on another's.
"""

from __future__ import annotations

import numpy as np

from training.synth.acoustics import filter_db

OVERSAMPLE = 4
DRIVE_PROB = 0.7
CABINET_PROB_CLEAN = 0.5  # a cabinet always follows drive; a clean DI'd stem gets one half the time
MODULATION_PROB = 0.35
ECHO_PROB = 0.35


def _resample_fft(audio: np.ndarray, factor_up: int, factor_down: int) -> np.ndarray:
    """Band-limited resampling by ``factor_up / factor_down`` (one of them 1) in the frequency domain."""
    n = len(audio)
    spectrum = np.fft.rfft(audio)
    if factor_up > 1:
        m = n * factor_up
        padded = np.zeros(m // 2 + 1, dtype=complex)
        padded[: len(spectrum)] = spectrum
        return np.fft.irfft(padded, m) * factor_up
    m = n // factor_down
    return np.fft.irfft(spectrum[: m // 2 + 1], m) / factor_down


def drive(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Overdrive / distortion / fuzz with the input's RMS level restored."""
    rms_in = float(np.sqrt(np.mean(audio**2))) + 1e-12
    if rng.random() < 0.6:  # mid hump around 500-1200 Hz, lows cut before the clipper
        centre, boost = rng.uniform(500.0, 1200.0), rng.uniform(3.0, 12.0)
        low_cut = rng.uniform(150.0, 500.0)

        def pre(f: np.ndarray) -> np.ndarray:
            return boost * np.exp(-0.5 * (np.log2(f / centre) / 1.0) ** 2) - 10 * np.log10(
                1 + (low_cut / f) ** 2
            )
    else:  # treble boost
        corner, boost = rng.uniform(800.0, 2500.0), rng.uniform(3.0, 9.0)

        def pre(f: np.ndarray) -> np.ndarray:
            return boost * (1 - 1 / (1 + (f / corner) ** 2))

    x = filter_db(audio, sample_rate, pre)
    x = x / (float(np.max(np.abs(x))) + 1e-12)
    gain = 10 ** (rng.uniform(6.0, 30.0) / 20)
    x = _resample_fft(x, OVERSAMPLE, 1) * gain
    kind = int(rng.integers(0, 3))
    if kind == 0:
        y = np.tanh(x)
    elif kind == 1:
        y = np.clip(x, -1.0, 1.0)
    else:  # asymmetric (a single-ended stage or a fuzz): the halves clip at different levels
        bias = rng.uniform(0.1, 0.4)
        y = np.tanh(x + bias) - np.tanh(bias)
    y = _resample_fft(y, 1, OVERSAMPLE)[: len(audio)]
    # AC coupling: an asymmetric clipper's output carries a level-dependent offset; 25 Hz high-pass.
    y = filter_db(y, sample_rate, lambda f: -10 * np.log10(1 + (25.0 / f) ** 4))
    return y * rms_in / (float(np.sqrt(np.mean(y**2))) + 1e-12)


def cabinet(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    high_pass = rng.uniform(70.0, 140.0)
    roll_off = rng.uniform(2500.0, min(5000.0, 0.4 * sample_rate))
    order = int(rng.integers(3, 6))  # 18-30 dB per octave
    bumps = [
        (rng.uniform(90.0, 3000.0), rng.uniform(-6.0, 8.0), rng.uniform(0.2, 0.8))
        for _ in range(rng.integers(1, 3))
    ]

    def curve(f: np.ndarray) -> np.ndarray:
        db = -10 * np.log10(1 + (high_pass / f) ** 4) - 10 * np.log10(1 + (f / roll_off) ** (2 * order))
        for centre, gain, width in bumps:
            db += gain * np.exp(-0.5 * (np.log2(f / centre) / width) ** 2)
        return db

    return filter_db(audio, sample_rate, curve)


def _delayed(audio: np.ndarray, delay_samples: np.ndarray) -> np.ndarray:
    """``audio`` read ``delay_samples`` (per output sample, fractional) in the past; zeros before 0."""
    t = np.arange(len(audio)) - delay_samples
    return np.interp(t, np.arange(len(audio)), audio, left=0.0, right=0.0)


def modulation(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    t = np.arange(len(audio)) / sample_rate
    kind = int(rng.integers(0, 3))
    rate = rng.uniform(0.2, 3.0)
    lfo = np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    if kind == 2:  # tremolo
        depth = rng.uniform(0.2, 0.8)
        return audio * (1 - depth * (0.5 + 0.5 * lfo))
    if kind == 0:  # chorus
        base, sweep, mix, feedback = (
            rng.uniform(0.007, 0.025),
            rng.uniform(0.001, 0.004),
            rng.uniform(0.3, 0.6),
            0.0,
        )
    else:  # flanger
        base, sweep, mix, feedback = (
            rng.uniform(0.001, 0.005),
            rng.uniform(0.0005, 0.003),
            0.5,
            rng.uniform(0.2, 0.7),
        )
    delay = (base + sweep * (0.5 + 0.5 * lfo)) * sample_rate
    wet = _delayed(audio, delay)
    if feedback:  # two more passes approximate the feedback loop's comb
        wet = wet + feedback * _delayed(wet, delay)
        wet = wet + feedback**2 * _delayed(wet, delay)
    return (1 - mix) * audio + mix * wet


def echo(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    delay = int(rng.uniform(0.09, 0.55) * sample_rate)
    feedback, mix = rng.uniform(0.2, 0.55), rng.uniform(0.15, 0.45)
    darken = rng.uniform(1500.0, 5000.0)
    n = len(audio)
    spectrum = np.fft.rfft(audio)
    # One pass of the darkening low-pass as a gain per bin; the k-th repeat has been through it k times.
    dark = 1 / np.sqrt(1 + (np.maximum(np.fft.rfftfreq(n, 1.0 / sample_rate), 1.0) / darken) ** 2)
    out = audio.copy()
    for k in range(1, 8):
        if k * delay >= n:
            break
        repeat = np.fft.irfft(spectrum * dark**k, n)
        out[k * delay :] += mix * feedback ** (k - 1) * repeat[: n - k * delay]
    return out


def guitar_rig(rng: np.random.Generator, audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """``audio`` (one electric-guitar stem) through drive -> cabinet -> modulation -> echo."""
    out = audio.astype(np.float64)
    if float(np.max(np.abs(out), initial=0.0)) == 0.0:
        return audio
    coins = rng.random(4)
    stages = coins < (DRIVE_PROB, CABINET_PROB_CLEAN, MODULATION_PROB, ECHO_PROB)
    if not stages.any():
        stages[int(rng.integers(0, 4))] = True
    if stages[0]:
        out = drive(rng, out, sample_rate)
    if stages[0] or stages[1]:
        out = cabinet(rng, out, sample_rate)
    if stages[2]:
        out = modulation(rng, out, sample_rate)
    if stages[3]:
        out = echo(rng, out, sample_rate)
    return out.astype(np.float32)

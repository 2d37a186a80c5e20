"""benchmarks/tta_probe.py: the perturbations averaged at test time do what they say."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmark_scripts import load

tta = load("tta_probe")
SR = 16000


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None, :]


def peak_hz(window: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(window * np.hanning(window.size)))
    return float(np.fft.rfftfreq(window.size, 1 / SR)[spectrum.argmax()])


@pytest.mark.parametrize("semitones", [1.0, -1.0, 0.5])
def test_speed_moves_the_pitch_by_its_semitones_and_keeps_the_length(semitones: float) -> None:
    window = tone(440.0)
    out = tta.speed(window, semitones)
    assert out.shape == window.shape and out.dtype == window.dtype
    half = window.shape[1] // 2  # the first half is inside the source whichever the direction
    assert peak_hz(out[0, :half]) == pytest.approx(440.0 * 2 ** (semitones / 12), rel=0.01)
    if semitones > 0:  # played faster: the tail runs past the end of the source and is silent
        assert not out[0, -100:].any()
    np.testing.assert_array_equal(tta.speed(window, 0.0), window)


def test_tilt_raises_the_highs_against_the_lows_and_keeps_the_peak() -> None:
    window = tone(250.0) + tone(4000.0)  # two octaves below and above 1 kHz
    out = tta.tilt(window, 4.0, SR)
    spectrum_in, spectrum_out = np.abs(np.fft.rfft(window[0])), np.abs(np.fft.rfft(out[0]))
    freqs = np.fft.rfftfreq(window.shape[1], 1 / SR)
    low, high = np.argmin(np.abs(freqs - 250)), np.argmin(np.abs(freqs - 4000))
    ratio_db = 20 * np.log10(
        (spectrum_out[high] / spectrum_out[low]) / (spectrum_in[high] / spectrum_in[low])
    )
    assert ratio_db == pytest.approx(16.0, abs=0.1)  # 4 dB per octave over 4 octaves
    assert np.abs(out).max() == pytest.approx(np.abs(window).max(), rel=1e-5)
    np.testing.assert_allclose(tta.tilt(window, 0.0, SR), window, atol=1e-6)


class _Echo:
    """A fake model whose 'probability' is each window's mean absolute level and its peak frequency."""

    source = "fake"
    metadata = type("M", (), {"sample_rate": SR, "labels": ["a", "b"]})()

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return np.stack([np.abs(windows).mean(axis=1), [peak_hz(w) / 1000 for w in windows]], axis=1)


def test_the_tta_predictor_averages_the_identity_and_each_perturbed_copy() -> None:
    base = _Echo()
    windows = tone(440.0)
    pairs = [("speed", 1.0), ("speed", -1.0)]
    got = tta.TtaPredictor(base, pairs).predict(windows)  # type: ignore[arg-type]
    want = np.mean([base.predict(windows)] + [base.predict(tta.speed(windows, s)) for _, s in pairs], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(tta.TtaPredictor(base, []).predict(windows), base.predict(windows))  # type: ignore[arg-type]
    assert set(tta.CANDIDATES) >= {"identity"} and tta.CANDIDATES["identity"] == []

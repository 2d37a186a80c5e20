"""benchmarks/aggregation_study.py: the window -> file combinations it compares do what they claim."""

from __future__ import annotations

import benchmark_scripts
import numpy as np
import pytest

study = benchmark_scripts.load("aggregation_study")

# Two windows: a loud one that hears a piano, a near-silent release tail that hears an organ.
PROBS = np.array([[0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
RMS = np.array([0.2, 0.002])
VALID = np.array([48000, 48000])


def test_mean_and_max_are_the_served_aggregations() -> None:
    np.testing.assert_allclose(study.combine(PROBS, RMS, VALID, "mean"), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(study.combine(PROBS, RMS, VALID, "max"), [0.9, 0.9], atol=1e-6)


def test_energy_lets_the_silent_window_hardly_vote() -> None:
    out = study.combine(PROBS, RMS, VALID, "energy")
    # weights 0.2 and 0.002: (0.9 * 0.2 + 0.1 * 0.002) / 0.202
    np.testing.assert_allclose(out, [(0.18 + 0.0002) / 0.202, (0.02 + 0.0018) / 0.202], rtol=1e-5)


def test_energy_still_counts_padding() -> None:
    # Same loudness, but the second window holds one sample in ten: it counts a tenth.
    out = study.combine(PROBS, np.array([0.1, 0.1]), np.array([48000, 4800]), "energy")
    np.testing.assert_allclose(out, [(0.9 + 0.01) / 1.1, (0.1 + 0.09) / 1.1], rtol=1e-5)


def test_loud_drops_windows_more_than_10_db_down() -> None:
    np.testing.assert_allclose(study.combine(PROBS, RMS, VALID, "loud"), [0.9, 0.1], atol=1e-6)
    near = np.array([0.2, 0.2 * 10 ** (-9 / 20)])  # 9 dB down: kept
    np.testing.assert_allclose(study.combine(PROBS, near, VALID, "loud"), [0.5, 0.5], atol=1e-6)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError):
        study.combine(PROBS, RMS, VALID, "median")

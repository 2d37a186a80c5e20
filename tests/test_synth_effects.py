"""The electric-guitar rig of lumen-data synth (--amp-prob): drive, cabinet, modulation, echo."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import numpy as np
import pytest

from training import data_cli
from training.synth import effects, pipeline, render
from training.synth.variation import VARIED, Variation

SR = 16000
SOUNDFONT = next((p for p in render.SOUNDFONT_CANDIDATES if p.is_file()), None)
needs_soundfont = pytest.mark.skipif(
    SOUNDFONT is None or importlib.util.find_spec("fluidsynth") is None,
    reason=f"needs pyfluidsynth (synth extra) and a GM soundfont ({render.INSTALL_HINT})",
)


def _sine(f0: float, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amplitude * np.sin(2 * np.pi * f0 * t)


def _band_energy(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1.0 / SR)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def _harmonic_share(audio: np.ndarray, f0: float, tolerance: float = 15.0) -> float:
    """Share of the energy within ``tolerance`` Hz of a multiple of ``f0`` (the rest is aliasing)."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1.0 / SR)
    distance = np.abs(freqs - f0 * np.round(freqs / f0))
    return float(spectrum[(distance < tolerance) & (freqs > f0 / 2)].sum() / spectrum.sum())


def test_drive_adds_harmonics_keeps_the_level_and_does_not_alias() -> None:
    # 2.9 kHz at 16 kHz: its 3rd harmonic (8.7 kHz) is above Nyquist and would fold to 7.3 kHz
    # if the clipper ran at the output rate.
    tone = _sine(2900.0)
    naive = np.clip(tone * 30, -1, 1)
    assert _harmonic_share(naive, 2900.0) < 0.97  # the failure the oversampling prevents
    for seed in range(12):
        driven = effects.drive(np.random.default_rng(seed), tone, SR)
        assert driven.shape == tone.shape and np.isfinite(driven).all()
        assert np.sqrt(np.mean(driven**2)) == pytest.approx(np.sqrt(np.mean(tone**2)), rel=1e-6)
        assert _harmonic_share(driven, 2900.0) > 0.995, seed
    low = _sine(220.0)
    for seed in range(6):  # a low note gains harmonics: energy above its 2nd harmonic appears
        driven = effects.drive(np.random.default_rng(seed), low, SR)
        assert _band_energy(driven, 600.0, 8000.0) > 1e-3 * _band_energy(driven, 0.0, 8000.0), seed
        assert _band_energy(low, 600.0, 8000.0) < 1e-6 * _band_energy(low, 0.0, 8000.0)


def test_cabinet_band_limits_like_a_speaker() -> None:
    white = np.random.default_rng(0).standard_normal(2 * SR)
    for seed in range(8):
        out = effects.cabinet(np.random.default_rng(seed), white, SR)
        in_band = _band_energy(out, 300.0, 2000.0) / _band_energy(white, 300.0, 2000.0)
        top = _band_energy(out, 7000.0, 8000.0) / _band_energy(white, 7000.0, 8000.0)
        rumble = _band_energy(out, 0.0, 40.0) / _band_energy(white, 0.0, 40.0)
        assert top < 0.2 * in_band and rumble < 0.2 * in_band, seed


def test_echo_repeats_an_impulse_at_the_delay_and_decays() -> None:
    impulse = np.zeros(2 * SR)
    impulse[100] = 1.0
    out = effects.echo(np.random.default_rng(4), impulse, SR)
    envelope = np.abs(out)
    envelope[:200] = 0.0
    first = int(np.argmax(envelope))
    assert 0.09 * SR <= first - 100 <= 0.55 * SR
    delay = first - 100
    window = slice(first + delay - 40, first + delay + 40)  # the second repeat is quieter
    assert 0 < envelope[window].max() < envelope[first]


def test_modulation_keeps_length_and_level_bounded() -> None:
    tone = _sine(440.0, 2.0)
    for seed in range(9):  # chorus, flanger and tremolo all come up in nine draws
        out = effects.modulation(np.random.default_rng(seed), tone, SR)
        assert out.shape == tone.shape and np.isfinite(out).all()
        assert 0.05 < np.sqrt(np.mean(out**2)) / np.sqrt(np.mean(tone**2)) < 1.6
        assert not np.allclose(out, tone)


def test_guitar_rig_is_seeded_and_leaves_silence_alone() -> None:
    stem = (_sine(196.0, 2.0) * np.exp(-np.linspace(0, 3, 2 * SR))).astype(np.float32)
    first = effects.guitar_rig(np.random.default_rng(1), stem, SR)
    assert first.dtype == np.float32 and first.shape == stem.shape and np.isfinite(first).all()
    np.testing.assert_array_equal(first, effects.guitar_rig(np.random.default_rng(1), stem, SR))
    outs = [effects.guitar_rig(np.random.default_rng(s), stem, SR) for s in range(10)]
    assert all(not np.allclose(out, stem) for out in outs)  # a rig always has at least one stage on
    assert len({out.tobytes() for out in outs}) == 10
    silence = np.zeros(SR, dtype=np.float32)
    assert effects.guitar_rig(np.random.default_rng(0), silence, SR) is silence


def test_amp_prob_is_a_cli_flag_validated_and_off_in_the_presets() -> None:
    argv = shlex.split("synth --out x --layout csv --per-class 1 --variation varied --amp-prob 0.6")
    args = data_cli.build_parser().parse_args(argv)
    assert data_cli._variation(args).amp_prob == 0.6
    assert VARIED.amp_prob == 0.0  # renders with the presets stay what they were
    with pytest.raises(ValueError, match="--amp-prob must be within 0..1"):
        Variation(amp_prob=2.0).validate()


@needs_soundfont
def test_amp_changes_electric_guitar_clips_only(tmp_path: Path) -> None:
    """The rig acts on stems after FluidSynth, from its own random stream: every clip without an
    electric guitar renders byte-identically, every clip with one changes."""

    def synth(out: Path, variation: Variation) -> dict[str, bytes]:
        pipeline.synthesize(
            out, "irmastest", 2, 11, sample_rate=SR, progress=False, min_seconds=1.5, max_seconds=2.0,
            jobs=1, variation=variation,
        )  # fmt: skip
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    plain = synth(tmp_path / "plain", VARIED)
    amped = synth(tmp_path / "amp", Variation(**{**VARIED.__dict__, "amp_prob": 1.0}))
    assert plain.keys() == amped.keys()
    with_gel = [n for n in plain if n.endswith(".txt") and b"gel" in plain[n]]
    without = [n for n in plain if n.endswith(".txt") and b"gel" not in plain[n]]
    assert with_gel and without
    for txt in without:
        assert amped[txt[:-4] + ".wav"] == plain[txt[:-4] + ".wav"], txt
    for txt in with_gel:
        assert amped[txt] == plain[txt] and amped[txt[:-4] + ".wav"] != plain[txt[:-4] + ".wav"], txt

"""Sound-source variation in lumen-data synth: rooms, microphones, dynamics, noise, level and pitch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import data_cli
from training.synth import acoustics, pipeline, render
from training.synth.compose import Bend, Note, Part, Piece, choose_voice, compose, isolate, isolated_notes
from training.synth.expression import GESTURES, MAX_BEND_CENTS, add_pitch_expression, is_monophonic
from training.synth.variation import DRY, PRESETS, VARIED, Variation

SR = 16000
SOUNDFONT = next((p for p in render.SOUNDFONT_CANDIDATES if p.is_file()), None)
needs_soundfont = pytest.mark.skipif(
    SOUNDFONT is None or importlib.util.find_spec("fluidsynth") is None,
    reason=f"needs pyfluidsynth (synth extra) and a GM soundfont ({render.INSTALL_HINT})",
)
EXTRA_SOUNDFONTS = {
    "FluidR3_GM": Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "MuseScore_General": Path("/usr/share/sounds/sf3/MuseScore_General.sf3"),
}
EVERYTHING = Variation(
    room_prob=1.0,
    eq_prob=1.0,
    dynamics_prob=1.0,
    noise_prob=1.0,
    detune_cents=30.0,
    bend_prob=1.0,
    vibrato_prob=1.0,
)


def _tone(seconds: float = 2.0, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-0.5 * t)).astype(np.float32)


def _decay_time(ir: np.ndarray) -> float:
    """RT60 from Schroeder's backward integration, extrapolated from the -5..-25 dB slope (T20)."""
    energy = np.cumsum(ir[::-1] ** 2)[::-1]
    db = 10 * np.log10(energy / energy[0])
    t5, t25 = np.argmax(db <= -5) / SR, np.argmax(db <= -25) / SR
    return 3.0 * (t25 - t5)


@pytest.mark.parametrize("rt60", [0.3, 0.8, 1.5])
def test_room_impulse_response_decays_at_the_drawn_rt60(rt60: float) -> None:
    ir = acoustics.room_impulse_response(np.random.default_rng(0), SR, rt60)
    assert ir[0] == pytest.approx(1.0, abs=1e-6) and np.abs(ir[1:]).max() < 1.0
    # High bands decay faster than the drawn RT60 and low ones slower; broadband lands near it.
    assert 0.5 * rt60 < _decay_time(ir) < 1.3 * rt60


def test_microphone_curve_cuts_rumble_and_stays_bounded() -> None:
    freqs = np.fft.rfftfreq(SR, 1 / SR)
    for seed in range(20):
        db = acoustics.microphone_curve(np.random.default_rng(seed), freqs, SR)
        assert np.isfinite(db).all() and db.max() < 15
        assert db[20] < db[1000] - 3  # the high-pass: 20 Hz well under 1 kHz


def test_noise_lands_at_the_drawn_snr() -> None:
    audio = _tone().astype(np.float64)
    for seed in range(5):
        noisy = acoustics.add_noise(np.random.default_rng(seed), audio, SR, (20.0, 20.0))
        noise = noisy - audio
        snr = 10 * np.log10(np.mean(audio**2) / np.mean(noise**2))
        assert snr == pytest.approx(20.0, abs=0.1)


def test_compressor_reduces_the_dynamic_range() -> None:
    t = np.arange(2 * SR) / SR
    audio = np.sin(2 * np.pi * 330 * t) * np.where(t < 1.0, 1.0, 0.05)  # loud second, then a quiet one
    out = acoustics.compress(np.random.default_rng(0), audio, SR)
    before = np.abs(audio[: SR // 2]).max() / np.abs(audio[-SR // 2 :]).max()
    after = np.abs(out[: SR // 2]).max() / np.abs(out[-SR // 2 :]).max()
    assert after < before / 1.5


def test_record_is_deterministic_and_dry_changes_nothing() -> None:
    audio = _tone()
    np.testing.assert_array_equal(acoustics.record(np.random.default_rng(1), audio, SR, DRY), audio)
    first = acoustics.record(np.random.default_rng(1), audio, SR, EVERYTHING)
    again = acoustics.record(np.random.default_rng(1), audio, SR, EVERYTHING)
    other = acoustics.record(np.random.default_rng(2), audio, SR, EVERYTHING)
    assert first.dtype == np.float32 and first.shape == audio.shape and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, audio, atol=1e-3) and not np.allclose(first, other, atol=1e-3)


def test_pitch_expression_follows_each_instrument() -> None:
    codes = ("sax", "pia", "gel", "vio")
    for seed in range(8):
        piece = compose(np.random.default_rng(seed), codes, "jaz_blu", True, 8.0)
        add_pitch_expression(np.random.default_rng(seed), piece, EVERYTHING)
        for part in piece.parts:
            cents = [b.cents for b in part.bends]
            times = [b.time for b in part.bends]
            assert times == sorted(times)
            if part.is_drum:
                assert cents == []
                continue
            assert cents and all(abs(c) <= MAX_BEND_CENTS + 10 for c in cents)
            assert part.code is not None
            if part.code not in GESTURES or not is_monophonic(part.notes):
                assert len(cents) == 1  # the tuning offset only: no bends on chords or keyboards
    # A monophonic sax line with every gesture on: scoops start below the note.
    sax = Part("sax", 65, [Note(0.5 * i, 0.5 * i + 0.45, 60 + i, 90) for i in range(6)])
    piece = Piece(3.5, "jaz_blu", 120.0, [sax], (0.2, 0.2, 0.2))
    add_pitch_expression(np.random.default_rng(0), piece, Variation(bend_prob=1.0))
    assert min(b.cents for b in sax.bends) < -15


def test_dry_and_varied_presets_validate() -> None:
    assert PRESETS == {"dry": DRY, "varied": VARIED}
    assert not DRY.changes_pitch and not DRY.changes_sound
    assert VARIED.validate().changes_pitch and VARIED.changes_sound
    with pytest.raises(ValueError, match="--noise-prob must be within 0..1"):
        Variation(noise_prob=1.5).validate()
    with pytest.raises(ValueError, match="--rt60"):
        Variation(rt60=(1.0, 0.5)).validate()


def test_cli_preset_with_overrides() -> None:
    args = data_cli.build_parser().parse_args(
        ["synth", "--out", "x", "--layout", "csv", "--per-class", "1", "--variation", "varied"]
        + ["--room-prob", "0", "--snr-db", "30", "40"]
    )
    variation = data_cli._variation(args)
    assert variation.room_prob == 0.0 and variation.snr_db == (30.0, 40.0)
    assert variation.eq_prob == VARIED.eq_prob


def test_cli_rejects_a_bad_probability(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["synth", "--out", str(tmp_path / "o"), "--layout", "csv", "--per-class", "1", "--bend-prob", "2"]
    assert data_cli.main(argv) == 2
    assert "--bend-prob must be within 0..1" in capsys.readouterr().err


def _synth(out: Path, variation: Variation, jobs: int = 1, soundfonts: list[Path] | None = None):
    return pipeline.synthesize(
        out, "irmastest", 1, 11, sample_rate=SR, progress=False, min_seconds=1.5, max_seconds=2.0,
        jobs=jobs, variation=variation, soundfonts=soundfonts,
    )  # fmt: skip


def _read_all(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@needs_soundfont
def test_varied_render_is_independent_of_jobs_and_differs_from_dry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "BATCH_TRACKS", 3)
    varied = _read_all(_synth(tmp_path / "a", EVERYTHING, jobs=1).out_dir)
    assert varied == _read_all(_synth(tmp_path / "b", EVERYTHING, jobs=2).out_dir)
    dry = _read_all(_synth(tmp_path / "c", DRY).out_dir)
    assert varied.keys() == dry.keys()
    wavs = [name for name in dry if name.endswith(".wav")]
    assert all(varied[name] != dry[name] for name in wavs)
    assert all(varied[name] == dry[name] for name in dry if name.endswith(".txt"))  # same labels
    for name in wavs:
        audio, _ = sf.read(tmp_path / "a" / name, dtype="float32")
        assert 0.05 < np.abs(audio).max() <= 0.951


@needs_soundfont
def test_a_pitch_bend_reaches_fluidsynth() -> None:
    """A flute note bent up a semitone sounds a semitone higher (FFT peak)."""
    note = Note(0.0, 1.5, 69, 100)  # A4, 440 Hz
    peaks = []
    for cents in (0.0, 100.0):
        part = Part("flu", 73, [note], bends=[Bend(0.0, cents)] if cents else [])
        piece = Piece(1.5, "cla", 120.0, [part], (0.0, 0.0, 0.0))
        with render.FluidRenderer(SR, [SOUNDFONT]) as renderer:
            (stem,) = renderer.render(piece, SOUNDFONT)
        segment = stem[SR // 2 : SR]
        spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), 8 * SR))
        peaks.append(np.argmax(spectrum) / 8)  # Hz, 1/8 Hz resolution
    assert peaks[0] == pytest.approx(440.0, rel=0.01)
    assert peaks[1] / peaks[0] == pytest.approx(2 ** (1 / 12), rel=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXTRA_SOUNDFONTS))
def test_other_soundfonts_render(tmp_path: Path, name: str) -> None:
    path = EXTRA_SOUNDFONTS[name]
    if not path.is_file() or importlib.util.find_spec("fluidsynth") is None:
        pytest.skip(f"{path} not installed (apt-get install fluid-soundfont-gm musescore-general-soundfont)")
    report = _synth(tmp_path / name, VARIED, soundfonts=[path])
    for wav in sorted(report.out_dir.glob("*.wav")):
        audio, _ = sf.read(wav, dtype="float32")
        assert np.sqrt(np.mean(audio**2)) > 0.005, wav.name


@pytest.mark.parametrize("code", ["cel", "pia", "gel", "voi"])
def test_isolated_notes_start_every_clip_and_stay_in_range(code: str) -> None:
    rng = np.random.default_rng(3)
    starts, clip = [0.5, 3.5, 6.5], 3.0
    for trial in range(20):
        voice = choose_voice(rng, code)
        notes = isolated_notes(rng, voice, starts, clip)
        for start in starts:  # no clip is silent: its first note comes within 0.4 s
            assert any(start <= n.start <= start + 0.4 for n in notes), (trial, start)
        assert all(voice.low <= n.pitch <= voice.high and 30 <= n.velocity <= 120 for n in notes)
        assert all(any(s <= n.start < n.end <= s + clip for s in starts) for n in notes)
        onsets = sorted({n.start for n in notes})
        if voice.texture == "melodic":  # one note at a time; chords only where the instrument has them
            assert len(onsets) == len(notes)
        # Separated by silence: each note ends before the next onset (ringing is the soundfont's).
        for n in notes:
            later = [t for t in onsets if t > n.start]
            assert not later or n.end <= min(later)


def test_isolate_keeps_the_lead_alone_and_its_label() -> None:
    rng = np.random.default_rng(0)
    piece = compose(rng, ("vio",), "pop_roc", True, 6.5)
    assert len(piece.parts) == 2 and piece.parts[1].is_drum
    solo = isolate(rng, piece, [0.5, 3.5], 3.0)
    (part,) = solo.parts
    assert part.code == "vio" and part.program == piece.parts[0].program and part.notes
    assert all(c.number != 11 for c in part.controls)  # no expression swell over the silences
    assert solo.seconds == piece.seconds and piece.parts[0].notes != part.notes


def test_isolated_prob_is_a_cli_flag_and_validated(capsys: pytest.CaptureFixture[str]) -> None:
    args = data_cli.build_parser().parse_args(
        [
            "synth",
            "--out",
            "x",
            "--layout",
            "csv",
            "--per-class",
            "1",
            "--variation",
            "varied",
            "--isolated-prob",
            "0.3",
        ]
    )
    assert data_cli._variation(args).isolated_prob == 0.3
    with pytest.raises(ValueError, match="--isolated-prob must be within 0..1"):
        Variation(isolated_prob=1.5).validate()


@needs_soundfont
def test_isolated_takes_change_solo_tracks_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """irmastest mixes of 2-4 instruments render byte-identically; solo ones become isolated notes
    and keep their label. (One synth per track: FluidSynth's reverb lines carry a faint tail from one
    track into the next within a batch, so a changed solo track would perturb the mix after it.)"""
    monkeypatch.setattr(pipeline, "BATCH_TRACKS", 1)
    plain = _read_all(_synth(tmp_path / "plain", DRY).out_dir)
    taken = _read_all(_synth(tmp_path / "iso", Variation(isolated_prob=1.0)).out_dir)
    assert plain.keys() == taken.keys()
    solo = [n for n in plain if n.endswith(".txt") and plain[n].count(b"\n") == 1]
    mixed = [n for n in plain if n.endswith(".txt") and plain[n].count(b"\n") > 1]
    assert solo and mixed
    for txt in mixed:
        assert taken[txt] == plain[txt] and taken[txt[:-4] + ".wav"] == plain[txt[:-4] + ".wav"]
    changed = 0
    for txt in solo:
        assert taken[txt] == plain[txt]
        wav = txt[:-4] + ".wav"
        changed += taken[wav] != plain[wav]
    assert changed == len(solo)

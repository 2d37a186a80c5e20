"""Synthetic data: plans, note generation and FluidSynth rendering, on tiny sets at 16 kHz."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.datasets import parse_train_filename, scan_dataset
from common.labels import LABELS
from training.synth import pipeline, render
from training.synth.compose import LEGATO_OVERLAP, Note, Part, Piece, compose, tidy
from training.synth.layouts import (
    CARDINALITY_WEIGHTS,
    TRAIN_CLIP_SECONDS,
    PlanOptions,
    balanced_label_sets,
    plan,
)
from training.synth.pipeline import SynthError, synthesize
from training.synth.programs import VOICES
from training.synth.variation import DRY

SR = 16000
SOUNDFONT = next((p for p in render.SOUNDFONT_CANDIDATES if p.is_file()), None)
needs_soundfont = pytest.mark.skipif(
    SOUNDFONT is None or importlib.util.find_spec("fluidsynth") is None,
    reason=f"needs pyfluidsynth (synth extra) and a GM soundfont ({render.INSTALL_HINT})",
)


def _synth(out: Path, layout: str, per_class: int = 1, seed: int = 7, **kwargs: object):
    kwargs.setdefault("min_seconds", 1.5)
    kwargs.setdefault("max_seconds", 2.5)
    return synthesize(out, layout, per_class, seed, sample_rate=SR, progress=False, **kwargs)


def _read_all(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def train_set(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synth") / "train"
    return root, _synth(root, "irmastrain", per_class=2, drums_prob=0.5)


@needs_soundfont
def test_irmastrain_layout_reads_back_with_irmas_names(train_set) -> None:
    root, report = train_set
    items, issues = scan_dataset(report.spec)
    assert issues == []
    assert report.files == len(items) == 2 * len(LABELS)
    assert Counter(item.codes[0] for item in items) == dict.fromkeys(LABELS, 2)
    for item in items:
        tags = parse_train_filename(item.path.name)
        assert tags.instrument == item.path.parent.name == item.codes[0]
        assert tags.drums is not None and tags.genre is not None
        info = sf.info(str(item.path))
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert info.frames == round(TRAIN_CLIP_SECONDS * SR)
    assert report.audio_seconds == pytest.approx(len(items) * TRAIN_CLIP_SECONDS)


@needs_soundfont
def test_rendered_clips_are_loud_and_never_clip(train_set) -> None:
    root, _ = train_set
    for path in sorted(root.rglob("*.wav")):
        audio, _ = sf.read(path, dtype="float32")
        peak = float(np.abs(audio).max())
        rms = float(np.sqrt(np.mean(audio**2)))
        assert DRY.min_peak - 1e-3 <= peak <= pipeline.PEAK_MAX + 1e-3, path.name
        assert rms > 0.02, f"{path.name} is nearly silent (rms {rms:.4f})"


@needs_soundfont
def test_same_seed_same_bytes_whatever_the_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "BATCH_TRACKS", 3)  # several batches, so two workers really share work
    first = _synth(tmp_path / "a", "irmastest", seed=3, jobs=1)
    second = _synth(tmp_path / "b", "irmastest", seed=3, jobs=2)
    other = _synth(tmp_path / "c", "irmastest", seed=4, jobs=1)
    assert first.files > 3
    files_a, files_b = _read_all(first.out_dir), _read_all(second.out_dir)
    assert files_a == files_b
    files_c = _read_all(other.out_dir)
    wavs = [name for name in files_a if name.endswith(".wav")]
    assert any(files_a[name] != files_c.get(name) for name in wavs)


@needs_soundfont
def test_irmastest_labels_every_instrument_per_class_times(tmp_path: Path) -> None:
    report = _synth(tmp_path / "test", "irmastest", per_class=2, drums_prob=0.0)
    items, issues = scan_dataset(report.spec)
    assert issues == []
    counts = Counter(code for item in items for code in item.codes)
    assert counts == dict.fromkeys(LABELS, 2) == report.per_class
    for item in items:
        assert 1 <= len(item.codes) <= 4
        seconds = sf.info(str(item.path)).duration
        assert 1.5 <= seconds <= 2.5


@needs_soundfont
def test_csv_layout(tmp_path: Path) -> None:
    report = _synth(tmp_path / "csv", "csv", per_class=1)
    assert report.spec == f"csv:{tmp_path / 'csv' / 'labels.csv'}"
    items, issues = scan_dataset(report.spec)
    assert issues == [] and len(items) == report.files
    assert all(item.path.parent.name == "audio" for item in items)
    assert Counter(code for item in items for code in item.codes) == dict.fromkeys(LABELS, 1)


@needs_soundfont
def test_class_programs_sound_different() -> None:
    """The same notes through the cello, flute and piano programs give different spectra."""
    notes = [Note(0.05 + 0.3 * i, 0.3 + 0.3 * i, pitch, 90) for i, pitch in enumerate((62, 65, 69, 67))]
    spectra = {}
    with render.FluidRenderer(SR, [SOUNDFONT]) as renderer:
        for code, program in (("cel", 42), ("flu", 73), ("pia", 0)):
            piece = Piece(1.5, "cla", 120.0, [Part(code, program, notes)], (0.2, 0.2, 0.2))
            (stem,) = renderer.render(piece, SOUNDFONT)
            assert stem.shape == (round(1.5 * SR),) and np.abs(stem).max() > 1e-3
            mag = np.abs(np.fft.rfft(stem))
            spectra[code] = mag / np.linalg.norm(mag)
    for a, b in (("cel", "flu"), ("cel", "pia"), ("flu", "pia")):
        assert float(spectra[a] @ spectra[b]) < 0.9, f"{a} and {b} sound alike"


def test_programs_do_not_overlap_between_classes() -> None:
    owners = Counter(voice.program for voices in VOICES.values() for voice in voices)
    assert all(count == 1 for count in owners.values())


@pytest.mark.parametrize("seed", range(6))
def test_composed_notes_stay_in_range_and_winds_stay_monophonic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    programs = {v.program: v for voices in VOICES.values() for v in voices}
    for genre in ("cla", "pop_roc", "jaz_blu", "lat_sou", "cou_fol"):
        codes = tuple(rng.permutation(LABELS)[: 1 + seed % 4])
        piece = compose(rng, codes, genre, drums=genre != "cla", seconds=4.0)
        assert [p.code for p in piece.parts if not p.is_drum] == list(codes)
        for part in piece.parts:
            assert part.notes, f"{part.code} has no notes"
            assert all(0.0 <= n.start < n.end and 1 <= n.velocity <= 127 for n in part.notes)
            if part.is_drum:
                continue
            voice = programs[part.program]
            assert voice.code == part.code
            assert all(voice.low <= n.pitch <= voice.high for n in part.notes), (voice.name, genre)
            if voice.texture == "melodic":
                for a, b in zip(part.notes, part.notes[1:], strict=False):
                    assert a.end <= b.start + LEGATO_OVERLAP + 1e-9


def test_tidy_cuts_a_note_struck_again() -> None:
    notes = [Note(0.0, 1.0, 60, 80), Note(0.5, 1.5, 60, 80), Note(0.2, 0.4, 64, 80), Note(3.0, 3.5, 60, 80)]
    assert tidy(notes, seconds=2.0) == [
        Note(0.0, 0.5, 60, 80),
        Note(0.2, 0.4, 64, 80),
        Note(0.5, 1.5, 60, 80),
    ]


@pytest.mark.parametrize("per_class", [1, 3, 10])
def test_balanced_label_sets(per_class: int) -> None:
    sets = balanced_label_sets(np.random.default_rng(per_class), per_class)
    assert Counter(code for s in sets for code in s) == dict.fromkeys(LABELS, per_class)
    assert all(1 <= len(s) <= max(CARDINALITY_WEIGHTS) and len(set(s)) == len(s) for s in sets)


def test_plan_is_a_function_of_the_seed() -> None:
    options = PlanOptions(per_class=4, seed=11, soundfonts=(Path("a.sf2"), Path("b.sf2")))
    assert plan("irmastrain", options) == plan("irmastrain", options)
    assert plan("irmastrain", options) != plan("irmastrain", PlanOptions(4, 12, options.soundfonts))
    tracks = plan("irmastrain", options)
    assert {t.soundfont for t in tracks} == set(options.soundfonts)
    assert all(not t.drums for t in tracks if t.genre == "cla")
    names = [rel for t in tracks for rel in t.outputs]
    assert len(names) == len(set(names)) == 4 * len(LABELS)


def test_missing_soundfont_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match=r"soundfont not found: .*nope\.sf2.*apt-get install fluidsynth"):
        _synth(tmp_path / "out", "irmastrain", soundfonts=[tmp_path / "nope.sf2"])
    assert not (tmp_path / "out").exists()


def test_no_soundfont_anywhere_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)
    monkeypatch.setattr(render, "SOUNDFONT_CANDIDATES", (Path("/nonexistent/x.sf2"),))
    with pytest.raises(SynthError, match="sudo apt-get install fluidsynth timgm6mb-soundfont"):
        render.find_soundfonts(None)


def test_soundfont_env_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    font = tmp_path / "mine.sf2"
    font.write_bytes(b"x")
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(font))
    assert render.find_soundfonts(None) == (font,)
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(tmp_path / "gone.sf2"))
    with pytest.raises(SynthError, match="LUMEN_SOUNDFONT"):
        render.find_soundfonts(None)


@needs_soundfont
def test_invalid_soundfont_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont")
    with pytest.raises(SynthError, match=r"bad\.sf2: FluidSynth cannot load it"):
        render.FluidRenderer(SR, [bad])


def test_missing_pyfluidsynth_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # makes `import fluidsynth` fail
    with pytest.raises(SynthError, match=r"pip install -e '\.\[synth\]'"):
        render.import_fluidsynth()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"per_class": 0}, "--per-class"),
        ({"min_seconds": 5.0, "max_seconds": 2.0}, "--min-seconds"),
        ({"drums_prob": 1.5}, "--drums-prob"),
        ({"sample_rate": 1000}, "--sample-rate"),
        ({"jobs": 0}, "--jobs"),
        ({"layout": "mp3"}, "unknown layout"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"layout": "irmastrain", "per_class": 1, **kwargs}
    layout, per_class = args.pop("layout"), args.pop("per_class")
    with pytest.raises(SynthError, match=message):
        synthesize(tmp_path / "o", layout, per_class, 0, progress=False, **args)


@needs_soundfont
def test_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        _synth(tmp_path, "irmastrain")


def test_synth_and_data_cli_import_without_torch() -> None:
    # With torch made unimportable, any torch import at any depth fails the subprocess.
    code = "import sys; sys.modules['torch'] = None; import training.data_cli, training.synth.pipeline"
    subprocess.run([sys.executable, "-c", code], check=True)

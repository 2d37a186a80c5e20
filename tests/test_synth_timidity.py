"""TiMidity++ sample sources (FreePats GUS patches): config parsing, program fallback, isolation, rendering."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.datasets import scan_dataset
from common.labels import LABELS
from training.synth import timidity
from training.synth.compose import Note, Part, Piece
from training.synth.pipeline import SynthError, synthesize
from training.synth.timidity import TimidityRenderer, parse_config, program_for, wrapper_config

SR = 16000
FREEPATS = Path("/etc/timidity/freepats.cfg")
PATCHES = Path("/usr/share/midi/freepats")
needs_timidity = pytest.mark.skipif(
    shutil.which("timidity") is None
    or not FREEPATS.is_file()
    or importlib.util.find_spec("pretty_midi") is None,
    reason=f"needs timidity, freepats and pretty_midi ({timidity.INSTALL_HINT})",
)


def _config(tmp_path: Path, body: str, name: str = "set.cfg") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def _piece(part: Part, seconds: float = 2.0) -> Piece:
    return Piece(seconds, "cla", 120.0, [part], (0.0, 0.0, 0.0))


def test_parse_config_follows_source_and_sections(tmp_path: Path) -> None:
    _config(tmp_path, "bank 0\n 40 Tone/violin.pat amp=100\n# 41 commented.pat\n", "strings.cfg")
    top = _config(
        tmp_path,
        "dir /somewhere\ndrumset 0\n 35 Drum/kick.pat\ndrumset 8\n 38 Drum/snare.pat\n"
        "bank 0\n 0 Tone/piano.pat  # grand\n 73 Tone/flute.pat\nbank 1\n 5 Tone/other.pat\n"
        "source strings.cfg\nsource set.cfg\n",  # a loop back to itself is read once
    )
    programs, drumsets = parse_config(top)
    assert programs == {0, 73, 40}
    assert drumsets == {0, 8}


def test_parse_config_unreadable_is_a_synth_error(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="cannot read the TiMidity configuration"):
        parse_config(tmp_path / "absent.cfg")


def test_missing_program_falls_back_within_the_instrument() -> None:
    organ = Part("org", 17, [])  # percussive organ: FreePats has only 16 and 19
    assert program_for(organ, frozenset({16, 19, 40})) == 16  # the most common organ voice present
    assert program_for(Part("voi", 54, []), frozenset({53})) == 53
    assert program_for(Part("vio", 40, []), frozenset({40, 110})) == 40  # present: kept
    with pytest.raises(SynthError, match="no GM program for pia"):
        program_for(Part("pia", 0, []), frozenset({40}))


def test_wrapper_forgets_every_system_mapping_first(tmp_path: Path) -> None:
    config = _config(tmp_path, "bank 0\n 40 violin.pat\n")
    lines = wrapper_config(config).splitlines()
    assert lines[-1] == f"source {config.resolve()}"
    undefs = [line for line in lines if line.startswith("#extension undef")]
    assert len(undefs) == 128 * 129  # bank 0 and 128 drum sets, 128 programs each
    assert lines.count("bank 0") == 1 and sum(line.startswith("drumset ") for line in lines) == 128


@needs_timidity
def test_freepats_renders_in_time_and_at_length() -> None:
    """Stems are exactly the piece's length and the note starts where it was written (no dropped silence)."""
    part = Part("vio", 40, [Note(1.0, 1.6, 69, 100)])
    with TimidityRenderer(SR, [FREEPATS]) as renderer:
        (stem,) = renderer.render(_piece(part), FREEPATS)
    assert stem.shape == (2 * SR,) and stem.dtype == np.float32
    onset = int(np.argmax(np.abs(stem) > 0.02 * np.abs(stem).max()))
    assert abs(onset / SR - 1.0) < 0.02
    assert np.abs(stem[: SR // 2]).max() < 1e-4  # silence before the note


@needs_timidity
def test_freepats_programs_sound_different_and_missing_ones_substitute() -> None:
    notes = [Note(0.05 + 0.3 * i, 0.3 + 0.3 * i, pitch, 90) for i, pitch in enumerate((62, 65, 69, 67))]
    spectra = {}
    with TimidityRenderer(SR, [FREEPATS]) as renderer:
        for code, program in (("cel", 42), ("flu", 73), ("pia", 0), ("org", 17)):  # 17 is not in FreePats
            (stem,) = renderer.render(_piece(Part(code, program, notes), 1.5), FREEPATS)
            assert np.abs(stem).max() > 1e-3, f"{code} rendered silence"
            mag = np.abs(np.fft.rfft(stem))
            spectra[code] = mag / np.linalg.norm(mag)
    for a, b in (("cel", "flu"), ("cel", "pia"), ("flu", "pia"), ("org", "pia")):
        assert float(spectra[a] @ spectra[b]) < 0.9, f"{a} and {b} sound alike"


@needs_timidity
def test_system_soundfonts_do_not_leak_in(tmp_path: Path) -> None:
    """A set with only a violin patch cannot borrow the system configuration's piano or drums.

    On Debian the system configuration maps everything to FluidR3_GM (when fluid-soundfont-gm is
    installed): without the wrapper's undefs the snare below would sound."""
    only_violin = _config(tmp_path, f"dir {PATCHES}\nbank 0\n 40 Tone_000/040_Violin.pat\n")
    with TimidityRenderer(SR, [only_violin]) as renderer:
        with pytest.raises(SynthError, match="no GM program for pia"):
            renderer.render(_piece(Part("pia", 0, [Note(0.1, 0.5, 60, 90)])), only_violin)
        (stem,) = renderer.render(_piece(Part("vio", 40, [Note(0.1, 0.5, 69, 90)])), only_violin)
        assert np.abs(stem).max() > 1e-3
        snare = Part(None, 0, [Note(0.1 + 0.2 * k, 0.2 + 0.2 * k, 38, 110) for k in range(5)], is_drum=True)
        (drums,) = renderer.render(_piece(snare), only_violin)
        assert np.abs(drums).max() < 1e-4


@needs_timidity
def test_a_soundfont_inside_a_timidity_config_is_refused(tmp_path: Path) -> None:
    soundfont = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
    if not soundfont.is_file():
        pytest.skip("needs TimGM6mb.sf2")
    config = _config(tmp_path, f'bank 0\n 40 %font "{soundfont}" 0 40\n')
    with TimidityRenderer(SR, [config]) as renderer, pytest.raises(SynthError, match="loaded a SoundFont"):
        renderer.render(_piece(Part("vio", 40, [Note(0.1, 0.5, 69, 90)])), config)


def test_a_config_without_programs_is_refused(tmp_path: Path) -> None:
    if shutil.which("timidity") is None:
        pytest.skip("needs timidity")
    with pytest.raises(SynthError, match="defines no bank-0 program"):
        TimidityRenderer(SR, [_config(tmp_path, "dir /tmp\n")])


@needs_timidity
def test_synthesize_with_freepats_is_labelled_and_deterministic(tmp_path: Path) -> None:
    def run(out: Path) -> dict[str, bytes]:
        report = synthesize(
            out, "irmastrain", 1, 3, sample_rate=SR, soundfonts=[FREEPATS], progress=False, jobs=1
        )
        items, issues = scan_dataset(report.spec)
        assert issues == [] and len(items) == len(LABELS)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.wav"))}

    first = run(tmp_path / "a")
    assert first == run(tmp_path / "b")


def test_missing_timidity_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timidity.shutil, "which", lambda name: None)
    config = _config(tmp_path, "bank 0\n 40 violin.pat\n")
    with pytest.raises(SynthError, match="apt-get install timidity freepats"):
        synthesize(tmp_path / "out", "irmastrain", 1, 0, sample_rate=SR, soundfonts=[config], progress=False)
    assert not (tmp_path / "out").exists()

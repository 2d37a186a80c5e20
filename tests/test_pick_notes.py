"""benchmarks/pick_notes.py: note names -> MIDI pitch, evenly spaced picks, the irmastest folder it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_scripts import load

pick_notes = load("pick_notes")


@pytest.mark.parametrize(
    ("stem", "pitch"),
    [
        ("C4", 60),
        ("A4", 69),
        ("As2", 46),
        ("Ds2", 39),
        ("D#1v8", 27),
        ("A0v8", 21),
        ("C8v8", 108),
        ("Bb3", 58),
    ],
)
def test_midi_pitch_of_note_names(stem: str, pitch: int) -> None:
    assert pick_notes.midi_pitch(stem) == pitch


@pytest.mark.parametrize("stem", ["F2 v2", "G2 v2", "index", "H3", "C", "piano"])
def test_names_that_are_not_a_pitch_are_none(stem: str) -> None:
    assert pick_notes.midi_pitch(stem) is None


def test_evenly_spaced_keeps_both_ends_and_never_repeats() -> None:
    items = list(range(40))
    picked = pick_notes.evenly_spaced(items, 8)
    assert picked[0] == 0 and picked[-1] == 39 and len(set(picked)) == 8 and picked == sorted(picked)
    gaps = {b - a for a, b in zip(picked, picked[1:], strict=False)}
    assert gaps <= {5, 6}
    assert pick_notes.evenly_spaced([1, 2, 3], 8) == [1, 2, 3]
    assert pick_notes.evenly_spaced([1, 2, 3], 1) == [2]


def test_main_copies_picked_notes_with_labels_sorted_by_pitch(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in ["C2", "C3", "C4", "C5", "C6", "F2 v2", "Fs3", "D#4v8"]:
        (src / f"{name}.mp3").write_bytes(name.encode())
    assert pick_notes.main([str(src), str(out), "vio", "tj_violin", "3"]) == 0
    # by pitch: C2 C3 Fs3 C4 D#4 C5 C6 -> lowest, middle, highest
    assert sorted(p.name for p in out.glob("*.mp3")) == [
        "tj_violin_C2.mp3",
        "tj_violin_C4.mp3",
        "tj_violin_C6.mp3",
    ]
    assert (out / "tj_violin_C4.txt").read_text() == "vio\n"
    assert (out / "tj_violin_C4.mp3").read_bytes() == b"C4"
    every = tmp_path / "every"
    assert pick_notes.main([str(src), str(every), "vio", "tj", "20"]) == 0
    assert len(list(every.glob("*.mp3"))) == 7, "the recorded variant F2 v2 is left out"
    assert (every / "tj_Ds4v8.mp3").exists(), "'#' becomes 's' in the copy's name"
    assert pick_notes.main([str(src), str(out), "vio", "x", "9", "*.wav"]) == 1
    assert pick_notes.main([str(src)]) == 2
    for bad in ("0", "-3", "two"):
        assert pick_notes.main([str(src), str(tmp_path / "bad"), "vio", "x", bad]) == 2
    assert not (tmp_path / "bad").exists()

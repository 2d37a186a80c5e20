"""Song-aware splits: no song on both sides, sizes near the fraction, output readable as csv: specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.datasets import DatasetError, Item, load_dataset
from common.labels import to_multi_hot
from common.splits import group_split, song_key, write_csv_dataset
from training.data_cli import main


def _items(n_songs: int, excerpts: int) -> list[Item]:
    return [
        Item(Path(f"/x/{s:02d} - Song {s}-{e}.wav"), to_multi_hot(["pia"] if s % 2 else ["voi", "gel"]))
        for s in range(n_songs)
        for e in range(1, excerpts + 1)
    ]


def test_song_key_drops_the_excerpt_number_only() -> None:
    assert song_key(Path("a/02 - Blood Red Skies-3.wav")) == "02 - blood red skies"
    assert song_key(Path("(02) dont kill the whale-12.WAV")) == "(02) dont kill the whale"
    assert song_key(Path("x/take-2-live.wav")) == "take-2-live"  # no trailing number: its own group


# Real IRMAS training names, in both of the set's naming layouts (with and without a leading "NNN__").
IRMAS_TRAIN_NAMES = (
    "cel/008__[cel][nod][cla]0058__1.wav",
    "cel/008__[cel][nod][cla]0058__2.wav",
    "cel/008__[cel][nod][cla]0058__3.wav",
    "cel/012__[cel][nod][cla]0043__1.wav",
    "pia/[pia][cla]1308__1.wav",
    "pia/[pia][cla]1308__3.wav",
    "pia/[pia][jaz_blu]1441__2.wav",
)


def test_song_key_groups_the_excerpts_of_an_irmas_training_track() -> None:
    keys = [song_key(Path(name)) for name in IRMAS_TRAIN_NAMES]
    assert keys[0] == keys[1] == keys[2] == "008__[cel][nod][cla]0058"
    assert keys[4] == keys[5] == "[pia][cla]1308"
    assert len(set(keys)) == 4


def test_cli_keeps_irmas_training_tracks_on_one_side(tmp_path: Path) -> None:
    src = tmp_path / "train"
    for track in range(8):
        for excerpt in (1, 2, 3):
            prefix = f"{track:03d}__" if track % 2 else ""  # both naming layouts of IRMAS-train
            path = src / "cel" / f"{prefix}[cel][nod][cla]{track:04d}__{excerpt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.zeros(1600, dtype=np.float32), 16_000)
    out = tmp_path / "split"
    assert main(["split", f"irmastrain:{src}", "--out-dir", str(out), "--fraction", "0.25"]) == 0
    val, test = load_dataset(f"csv:{out / 'val.csv'}"), load_dataset(f"csv:{out / 'test.csv'}")
    tracks = [{i.path.stem.rsplit("__", 1)[0] for i in part} for part in (val, test)]
    assert tracks[0].isdisjoint(tracks[1])  # before the fix, "...0003__1" and "...0003__2" could split
    assert len(val) == 6 and len(test) == 18  # whole tracks of 3 excerpts


@pytest.mark.parametrize("fraction", [0.2, 0.3, 0.5])
def test_no_song_is_on_both_sides_and_sizes_follow_the_fraction(fraction: float) -> None:
    items = _items(n_songs=40, excerpts=3)
    first, second = group_split(items, fraction, seed=0)
    assert len(first) + len(second) == len(items)
    assert {song_key(i.path) for i in first}.isdisjoint({song_key(i.path) for i in second})
    assert abs(len(first) - fraction * len(items)) <= 3  # one song of overshoot at most


def test_split_is_deterministic_and_depends_on_the_seed() -> None:
    items = _items(n_songs=30, excerpts=2)
    a = [i.path for i in group_split(items, 0.3, seed=1)[0]]
    assert a == [i.path for i in group_split(items, 0.3, seed=1)[0]]
    assert a != [i.path for i in group_split(items, 0.3, seed=2)[0]]


def test_bad_fraction_and_single_group_are_errors() -> None:
    with pytest.raises(DatasetError, match="--fraction"):
        group_split(_items(4, 1), 1.0, seed=0)
    with pytest.raises(DatasetError, match="1 group"):
        group_split(_items(1, 5), 0.5, seed=0)


def test_written_csv_round_trips_through_the_csv_spec(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(1600, dtype=np.float32), 16_000)
    write_csv_dataset([Item(audio, to_multi_hot(["cel", "voi"]))], tmp_path / "out" / "v.csv")
    (item,) = load_dataset(f"csv:{tmp_path / 'out' / 'v.csv'}")
    assert item.path == audio.resolve() and item.codes == ("cel", "voi")


def test_cli_splits_an_irmastest_folder(tmp_path: Path, capsys) -> None:
    src = tmp_path / "test"
    src.mkdir()
    for song in range(6):
        for excerpt in (1, 2):
            stem = src / f"{song:02d} - Tune-{excerpt}"
            sf.write(stem.with_suffix(".wav"), np.zeros(1600, dtype=np.float32), 16_000)
            stem.with_suffix(".txt").write_text("pia\n" if song % 2 else "voi\r\n\tgel \n")
    out = tmp_path / "split"
    assert main(["split", f"irmastest:{src}", "--out-dir", str(out), "--fraction", "0.34"]) == 0
    val, test = load_dataset(f"csv:{out / 'val.csv'}"), load_dataset(f"csv:{out / 'test.csv'}")
    assert len(val) == 4 and len(test) == 8
    assert {song_key(i.path) for i in val}.isdisjoint({song_key(i.path) for i in test})
    assert "csv:" in capsys.readouterr().out


def test_cli_refuses_unlabelled_data(tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "a-1.wav", np.zeros(1600, dtype=np.float32), 16_000)
    assert main(["split", f"inference:{tmp_path}", "--out-dir", str(tmp_path / "o")]) == 2
    assert "labelled" in capsys.readouterr().err

"""Dataset specs and the five parsers, on tiny trees built in tmp_path (the files only need to exist)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from common.datasets import (
    DATASET_TYPES,
    OPENMIC_LABELS_CSV,
    DatasetError,
    DatasetSpec,
    Item,
    TrainTags,
    describe_spec_types,
    load_dataset,
    load_datasets,
    openmic_audio_path,
    parse_spec,
    parse_train_filename,
    scan_dataset,
)
from common.labels import LABELS, to_multi_hot

IRMAS_TRAIN_EXAMPLES = {
    "cel": "008__[cel][nod][cla]0058__1.wav",
    "pia": "[pia][cla]1308__3.wav",
    "sax": "094__[sax][dru][jaz_blu]1703__3.wav",
}


def touch(path: Path, content: bytes = b"RIFF") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def write_text(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def label_row(codes: set[str]) -> list[str]:
    return ["1" if c in codes else "0" for c in LABELS]


# --- parse_spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("irmastrain:data/train", None, DatasetSpec("irmastrain", Path("data/train"))),
        ("  CSV:labels.csv ", None, DatasetSpec("csv", Path("labels.csv"))),
        ("irmastest:C:\\data\\x", None, DatasetSpec("irmastest", Path("C:\\data\\x"))),
        ("C:\\x", "inference", DatasetSpec("inference", Path("C:\\x"))),
        ("/a/b:c", "irmastest", DatasetSpec("irmastest", Path("/a/b:c"))),
        ("csv:/mnt/x:y/labels.csv", None, DatasetSpec("csv", Path("/mnt/x:y/labels.csv"))),
        ("data/test", "irmastest", DatasetSpec("irmastest", Path("data/test"))),
    ],
)
def test_parse_spec(text: str, default: str | None, expected: DatasetSpec) -> None:
    assert parse_spec(text, default) == expected


@pytest.mark.parametrize(
    ("text", "default", "message"),
    [
        ("data/test", None, "has no type"),
        ("C:\\x", None, "has no type"),
        ("irmastest:", None, "no path after 'irmastest:'"),
        ("   ", "csv", "empty dataset spec"),
        ("data/test", "folder", "unknown default dataset type 'folder'"),
    ],
)
def test_parse_spec_errors(text: str, default: str | None, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_spec(text, default)


def test_folders_with_colons_load_typed_and_bare(tmp_path: Path) -> None:
    folder = tmp_path / "take:2" / "csv:notes"
    touch(folder / "a.wav")
    write_text(folder / "a.txt", "pia\n")
    for spec in (f"irmastest:{folder}", str(folder)):
        assert [it.codes for it in load_dataset(spec, default_type="irmastest")] == [("pia",)]


def test_spec_rejects_unknown_type_and_prints_round_trip() -> None:
    with pytest.raises(DatasetError, match="unknown dataset type 'wav'"):
        DatasetSpec("wav", Path("x"))
    assert parse_spec(str(DatasetSpec("csv", Path("a/b.csv")))) == DatasetSpec("csv", Path("a/b.csv"))


def test_describe_spec_types_lists_every_type() -> None:
    text = describe_spec_types()
    assert [line.split(":")[0] for line in text.splitlines()] == list(DATASET_TYPES)


# --- irmastrain ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "tags"),
    [
        ("008__[cel][nod][cla]0058__1.wav", TrainTags("cel", False, "cla")),
        ("[pia][cla]1308__3.wav", TrainTags("pia", None, "cla")),
        ("094__[sax][dru][jaz_blu]1703__3.wav", TrainTags("sax", True, "jaz_blu")),
        ("[cla][dru][cla]0001__2.wav", TrainTags("cla", True, "cla")),
        ("[voi][pop_roc]2547__1.WAV", TrainTags("voi", None, "pop_roc")),
        ("[gel]0001.wav", TrainTags("gel", None, None)),
        ("synth_0001.wav", TrainTags(None, None, None)),
    ],
)
def test_parse_train_filename(name: str, tags: TrainTags) -> None:
    assert parse_train_filename(name) == tags


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("[pop_roc][cel]1.wav", r"first tag \[pop_roc\] is not an instrument"),
        ("[cel][cla][dru]1.wav", r"unexpected tag\(s\) \[dru\]"),
        ("[cel][xyz]1.wav", r"unexpected tag\(s\) \[xyz\]"),
        ("[cel][nod1.wav", "unclosed"),
    ],
)
def test_parse_train_filename_errors(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_train_filename(name)


def test_irmastrain_reads_labels_tags_and_sorts(tmp_path: Path) -> None:
    for code, name in IRMAS_TRAIN_EXAMPLES.items():
        touch(tmp_path / code / name)
    touch(tmp_path / "pia" / "[pia][pop_roc]0002__1.FLAC")
    touch(tmp_path / "pia" / "notes.txt")
    touch(tmp_path / "pia" / "._[pia][cla]1308__3.wav")  # macOS resource fork: not audio
    touch(tmp_path / ".hidden" / "x.wav")
    items = load_dataset(f"irmastrain:{tmp_path}")
    assert [it.path for it in items] == sorted(it.path for it in items)
    by_name = {it.path.name: it for it in items}
    assert set(by_name) == {*IRMAS_TRAIN_EXAMPLES.values(), "[pia][pop_roc]0002__1.FLAC"}
    cel = by_name["008__[cel][nod][cla]0058__1.wav"]
    assert (cel.codes, cel.drums, cel.genre) == (("cel",), False, "cla")
    sax = by_name["094__[sax][dru][jaz_blu]1703__3.wav"]
    assert (sax.codes, sax.drums, sax.genre) == (("sax",), True, "jaz_blu")
    pia = by_name["[pia][cla]1308__3.wav"]
    assert (pia.codes, pia.drums, pia.genre) == (("pia",), None, "cla")
    assert pia.labels is not None and pia.labels.dtype == np.float32
    np.testing.assert_array_equal(pia.labels, to_multi_hot(["pia"]))


def test_irmastrain_tag_disagreeing_with_folder_names_the_file(tmp_path: Path) -> None:
    touch(tmp_path / "cel" / "008__[cel][nod][cla]0058__1.wav")
    bad = touch(tmp_path / "vio" / "[cel][cla]0001__1.wav")
    items, issues = scan_dataset(f"irmastrain:{tmp_path}")
    assert [it.path.name for it in items] == ["008__[cel][nod][cla]0058__1.wav"]
    assert [i.path for i in issues] == [str(bad)]
    assert "says [cel]" in issues[0].error and "'vio'" in issues[0].error
    with pytest.raises(DatasetError, match=r"1 problem\(s\)") as err:
        load_dataset(f"irmastrain:{tmp_path}")
    assert str(bad) in str(err.value)


def test_irmastrain_reports_stray_folders_and_files(tmp_path: Path) -> None:
    touch(tmp_path / "cel" / "[cel][cla]1.wav")
    touch(tmp_path / "drums" / "a.wav")
    touch(tmp_path / "loose.wav")
    touch(tmp_path / "cel" / "nested" / "b.wav")
    touch(tmp_path / "README.txt")
    _, issues = scan_dataset(f"irmastrain:{tmp_path}")
    assert sorted(Path(i.path).name for i in issues) == ["drums", "loose.wav", "nested"]


def test_irmastrain_missing_or_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"folder not found; expected PATH/<code>/\*\.wav"):
        scan_dataset(f"irmastrain:{tmp_path / 'nope'}")
    touch(tmp_path / "flat" / "a.wav")
    with pytest.raises(DatasetError, match="no instrument folders"):
        scan_dataset(f"irmastrain:{tmp_path / 'flat'}")
    (tmp_path / "empty" / "cel").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no audio files found"):
        scan_dataset(f"irmastrain:{tmp_path / 'empty'}")


# --- irmastest ----------------------------------------------------------------------------------------


def test_irmastest_sidecars_with_crlf_tabs_and_blank_lines(tmp_path: Path) -> None:
    touch(tmp_path / "b" / "(02) song-1.wav")
    write_text(tmp_path / "b" / "(02) song-1.txt", "gel\t\npia  \n\n", newline="\r\n")
    touch(tmp_path / "a.mp3")
    write_text(tmp_path / "a.txt", "\ufeffvoi\n\n  \nvoi\ncel")
    items = load_dataset(DatasetSpec("irmastest", tmp_path))
    assert [(it.path.name, it.codes) for it in items] == [
        ("a.mp3", ("cel", "voi")),
        ("(02) song-1.wav", ("gel", "pia")),
    ]
    assert all(it.drums is None and it.genre is None for it in items)


def test_irmastest_unknown_code_names_file_and_line(tmp_path: Path) -> None:
    touch(tmp_path / "x.wav")
    sidecar = write_text(tmp_path / "x.txt", "cel\r\n\r\nguitar\r\n", newline="")
    _, issues = scan_dataset(f"irmastest:{tmp_path}")
    assert [i.path for i in issues] == [str(sidecar)]
    assert "line 3: unknown instrument code 'guitar'" in issues[0].error


def test_irmastest_missing_and_empty_sidecars(tmp_path: Path) -> None:
    lonely = touch(tmp_path / "lonely.wav")
    touch(tmp_path / "empty.ogg")
    empty = write_text(tmp_path / "empty.txt", "\n\n")
    touch(tmp_path / "ok.wav")
    write_text(tmp_path / "ok.txt", "flu\n")
    items, issues = scan_dataset(f"irmastest:{tmp_path}")
    assert [it.path.name for it in items] == ["ok.wav"]
    assert {i.path: i.error for i in issues} == {
        str(empty): "no instrument codes (the file is empty)",
        str(lonely): "label file lonely.txt not found next to it",
    }
    with pytest.raises(DatasetError, match=r"2 problem\(s\)"):
        load_dataset(f"irmastest:{tmp_path}")


# --- csv ------------------------------------------------------------------------------------------------


def test_csv_relative_and_absolute_paths(tmp_path: Path) -> None:
    outside = touch(tmp_path / "elsewhere" / "abs.flac")
    touch(tmp_path / "sets" / "clips" / "rel.wav")
    text = csv_text(
        ["notes", "file", *LABELS],
        [["x", "clips/rel.wav", *label_row({"cel", "voi"})], ["y", str(outside), *label_row(set())]],
    )
    csv_path = write_text(tmp_path / "sets" / "labels.csv", text)
    items = load_dataset(f"csv:{csv_path}")
    assert [(it.path, it.codes) for it in items] == [
        (outside, ()),
        (tmp_path / "sets" / "clips" / "rel.wav", ("cel", "voi")),
    ]


def test_csv_missing_code_column_is_named(tmp_path: Path) -> None:
    header = ["file", *[c for c in LABELS if c != "sax"]]
    csv_path = write_text(tmp_path / "l.csv", csv_text(header, []))
    with pytest.raises(DatasetError, match="missing column\\(s\\) 'sax'"):
        scan_dataset(f"csv:{csv_path}")


def test_csv_bad_rows_are_named(tmp_path: Path) -> None:
    touch(tmp_path / "a.wav")
    touch(tmp_path / "b.wav")
    rows = [
        ["a.wav", *label_row({"cel"})],
        ["b.wav", *["2", *label_row(set())[1:]]],
        ["missing.wav", *label_row(set())],
        ["a.wav", *label_row(set())],
        ["short.wav", "1"],
    ]
    csv_path = write_text(tmp_path / "l.csv", csv_text(["file", *LABELS], rows), newline="\r\n")
    items, issues = scan_dataset(f"csv:{csv_path}")
    assert [it.path.name for it in items] == ["a.wav"]
    errors = sorted(i.error for i in issues)
    assert any("row 3: label values must be 0 or 1, got cel='2'" in e for e in errors)
    assert any("audio file not found (row 4" in e for e in errors)
    assert any("listed twice" in e and "rows 2 and 5" in e for e in errors)
    assert any("row 6: 2 cells for 12 columns" in e for e in errors)
    assert len(issues) == 4


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"csv:.*nope\.csv: file not found; expected a CSV file"):
        load_dataset(f"csv:{tmp_path / 'nope.csv'}")


# --- inference ----------------------------------------------------------------------------------------


def test_inference_folder_csv_and_single_file(tmp_path: Path) -> None:
    a = touch(tmp_path / "in" / "z" / "a.WAV")
    b = touch(tmp_path / "in" / "b.ogg")
    touch(tmp_path / "in" / "b.txt")
    items = load_dataset(f"inference:{tmp_path / 'in'}")
    assert [it.path for it in items] == sorted([a, b])
    assert all(it.labels is None and it.codes is None for it in items)
    listing = write_text(tmp_path / "list.csv", "file,comment\nin/b.ogg,x\n")
    assert [it.path for it in load_dataset(f"inference:{listing}")] == [tmp_path / "in" / "b.ogg"]
    assert [it.path for it in load_dataset(str(a), default_type="inference")] == [a]
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(f"inference:{tmp_path / 'nope'}")


# --- openmic --------------------------------------------------------------------------------------------


def make_openmic(root: Path, rows: list[tuple[str, str, str]], with_audio: set[str]) -> None:
    lines = ["sample_key,instrument,relevance,num_responses"] + [f"{k},{i},{r},3" for k, i, r in rows]
    write_text(root / OPENMIC_LABELS_CSV, "\n".join(lines) + "\n")
    for key in with_audio:
        touch(openmic_audio_path(root, key))


def test_openmic_maps_classes_threshold_drums_and_guitar(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        ("000046_3840", "piano", "0.9"),
        ("000046_3840", "voice", "0.5"),
        ("000046_3840", "drums", "0.1"),
        ("000046_3840", "violin", "0.49"),
        ("000046_3840", "synthesizer", "1.0"),
        ("000135_483840", "guitar", "0.8"),
        ("000135_483840", "piano", "0.8"),
        ("000139_119040", "guitar", "0.2"),
        ("000139_119040", "trumpet", "0.7"),
    ]
    make_openmic(tmp_path, rows, {"000046_3840", "000135_483840", "000139_119040"})
    with caplog.at_level(logging.INFO, logger="common.datasets"):
        items = load_dataset(f"openmic:{tmp_path}")
    assert "left out 1 guitar clips" in caplog.text
    assert [(it.path.name, it.codes, it.drums) for it in items] == [
        ("000046_3840.ogg", ("pia", "voi"), False),
        ("000139_119040.ogg", ("tru",), None),
    ]
    assert items[0].path == tmp_path / "audio" / "000" / "000046_3840.ogg"
    loose = load_dataset(f"openmic:{tmp_path}", relevance_threshold=0.4)
    assert loose[0].codes == ("pia", "vio", "voi")


def test_openmic_problems(tmp_path: Path) -> None:
    rows = [
        ("000046_3840", "piano", "0.9"),
        ("000046_3840", "piano", "0.8"),
        ("000046_3840", "kazoo", "0.9"),
        ("000046_3840", "cello", "high"),
        ("000002_1000", "cello", "0.9"),
    ]
    make_openmic(tmp_path, rows, {"000046_3840"})
    items, issues = scan_dataset(f"openmic:{tmp_path}")
    assert [it.codes for it in items] == [("pia",)]
    errors = [i.error for i in issues]
    assert any("audio for sample_key 000002_1000" in e for e in errors)
    assert any("row 3: second row for 000046_3840 / piano" in e for e in errors)
    assert any("row 4: unknown OpenMIC instrument 'kazoo'" in e for e in errors)
    assert any("row 5: relevance 'high' is not a number" in e for e in errors)
    with pytest.raises(DatasetError, match="openmic-2018-aggregated-labels.csv"):
        scan_dataset(f"openmic:{tmp_path / 'audio'}")
    with pytest.raises(DatasetError, match="relevance_threshold"):
        scan_dataset(f"openmic:{tmp_path}", relevance_threshold=0.0)


# --- several datasets -----------------------------------------------------------------------------------


def test_load_datasets_concatenates_and_reports_all_problems(tmp_path: Path) -> None:
    touch(tmp_path / "train" / "cel" / "[cel][cla]1.wav")
    touch(tmp_path / "test" / "a.wav")
    write_text(tmp_path / "test" / "a.txt", "gac\n")
    items = load_datasets(
        [f"irmastrain:{tmp_path / 'train'}", str(tmp_path / "test")], default_type="irmastest"
    )
    assert [it.codes for it in items] == [("cel",), ("gac",)]
    assert all(isinstance(it, Item) for it in items)
    for i in range(7):
        touch(tmp_path / "bad" / f"{i}.wav")
    with pytest.raises(DatasetError) as err:
        load_datasets([f"irmastest:{tmp_path / 'bad'}", f"irmastest:{tmp_path / 'test'}"])
    message = str(err.value)
    assert "7 problem(s)" in message and "... and 2 more" in message
    assert message.count("not found next to it") == 5

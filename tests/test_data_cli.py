"""``lumen-data synth`` and ``lumen-data inspect``, run in-process through ``main(argv)``."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from common.datasets import parse_train_filename
from common.labels import LABELS
from training.data_cli import main
from training.synth import render
from training.synth.layouts import PlanOptions, plan

SR = "16000"
SOUNDFONT = next((p for p in render.SOUNDFONT_CANDIDATES if p.is_file()), None)
pytestmark = pytest.mark.skipif(
    SOUNDFONT is None or importlib.util.find_spec("fluidsynth") is None,
    reason=f"needs pyfluidsynth (synth extra) and a GM soundfont ({render.INSTALL_HINT})",
)


def _synth(out: Path, layout: str, *extra: str) -> list[str]:
    return ["synth", "--out", str(out), "--layout", layout, "--per-class", "1", "--seed", "5",
            "--sample-rate", SR, "--min-seconds", "1.5", "--max-seconds", "2", "--no-progress",
            "--soundfont", str(SOUNDFONT), *extra]  # fmt: skip


def _inspect_json(capsys: pytest.CaptureFixture[str], *specs: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["inspect", *specs, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    for layout in ("irmastrain", "irmastest", "csv"):
        assert main(_synth(root / layout, layout, "--drums-prob", "0.5")) == 0
    return root


def test_synth_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_synth(tmp_path / "t", "irmastrain")) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(LABELS)} files" in out
    assert "x real time" in out and f"irmastrain:{tmp_path / 't'}" in out


def test_inspect_json_reads_irmastrain_back(datasets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, payload = _inspect_json(capsys, f"irmastrain:{datasets / 'irmastrain'}")
    assert code == 0 and payload["errors"] == []
    assert len(payload["items"]) == len(LABELS)
    for item in payload["items"]:
        path = Path(item["path"])
        tags = parse_train_filename(path.name)
        assert item["labels"] == [path.parent.name]
        assert (item["drums"], item["genre"]) == (tags.drums, tags.genre)
    summary = payload["summary"]["datasets"][0]
    assert summary["per_instrument"] == dict.fromkeys(LABELS, 1)
    assert summary["cardinality"] == {"1": len(LABELS)}
    assert sum(summary["drums"].values()) == sum(summary["genres"].values()) == len(LABELS)
    assert payload["summary"]["seconds"] == pytest.approx(3.0 * len(LABELS))


@pytest.mark.parametrize("layout", ["irmastest", "csv"])
def test_inspect_json_labels_match_the_plan(
    datasets: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    """Labels read back are exactly the instruments the planner put in each file."""
    root = datasets / layout
    spec = f"csv:{root / 'labels.csv'}" if layout == "csv" else f"{layout}:{root}"
    code, payload = _inspect_json(capsys, spec)
    assert code == 0 and payload["errors"] == []
    options = PlanOptions(per_class=1, seed=5, soundfonts=(SOUNDFONT,), min_seconds=1.5, max_seconds=2.0)
    expected = {str(root / t.outputs[0]): sorted(t.codes, key=LABELS.index) for t in plan(layout, options)}
    assert {item["path"]: item["labels"] for item in payload["items"]} == expected
    assert Counter(c for item in payload["items"] for c in item["labels"]) == dict.fromkeys(LABELS, 1)
    assert all(item["drums"] is None and item["genre"] is None for item in payload["items"])


def test_inspect_reports_broken_files_and_exits_1(
    tmp_path: Path, datasets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "train"
    (root / "cel").mkdir(parents=True)
    good = next((datasets / "irmastrain" / "cel").glob("*.wav"))
    (root / "cel" / good.name).write_bytes(good.read_bytes())
    (root / "cel" / "[cel][nod]0002__1.wav").write_bytes(b"RIFF not really a wav")
    (root / "cel" / "[flu][nod]0003__1.wav").write_bytes(good.read_bytes())
    code, payload = _inspect_json(capsys, f"irmastrain:{root}")
    assert code == 1
    assert [Path(i["path"]).name for i in payload["items"]] == [good.name]
    errors = {Path(e["path"]).name: e["error"] for e in payload["errors"]}
    assert set(errors) == {"[cel][nod]0002__1.wav", "[flu][nod]0003__1.wav"}
    assert "audio header" in errors["[cel][nod]0002__1.wav"]
    assert "folder" in errors["[flu][nod]0003__1.wav"]
    assert payload["summary"]["errors"] == 2

    assert main(["inspect", f"irmastrain:{root}", "--decode"]) == 1
    table = capsys.readouterr().out
    assert "failed to parse or decode" in table and "0002__1.wav" in table


def test_inspect_table_lists_counts(datasets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["inspect", f"irmastest:{datasets / 'irmastest'}"]) == 0
    out = capsys.readouterr().out
    assert "items per instrument" in out and "acoustic guitar" in out and "instruments per item" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "no-type-here"], "has no type"),
        (["inspect", "irmastest:/nonexistent/folder"], "folder not found"),
        (["synth", "--out", "X", "--layout", "csv", "--per-class", "1", "--soundfont", "/nope.sf2"],
         "soundfont not found: /nope.sf2"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / a) if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("lumen-data")

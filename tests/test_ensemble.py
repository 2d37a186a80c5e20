"""lumen-ensemble: one ONNX file that averages its members, tuned on validation, refusing what cannot mix."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf

from common.artifact import metadata_from_props
from common.datasets import scan_dataset
from common.labels import LABELS
from common.metrics import tune_thresholds
from export.cli import main as export_main
from export.ensemble_cli import main
from serving.evaluation import OnnxPredictor, predict_files
from serving.runtime import OnnxModel
from tests.test_export import SR, WINDOW, chord, tiny_config, write_checkpoint


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two artifacts of the same contract with different (random) weights, and a copy of the first
    whose metadata says it cuts windows at another hop."""
    root = tmp_path_factory.mktemp("members")
    paths = []
    for seed in (0, 1):
        ckpt = root / f"m{seed}.ckpt"
        write_checkpoint(ckpt, tiny_config(), seed=seed)
        with contextlib.redirect_stdout(io.StringIO()):
            assert export_main([str(ckpt), "--out", str(root / f"m{seed}.onnx"), "--no-verify"]) == 0
        paths.append(root / f"m{seed}.onnx")
    other = onnx.load(str(paths[0]))
    for prop in other.metadata_props:
        if prop.key == "lumen.hop_samples":
            prop.value = str(WINDOW // 4)
    onnx.save_model(other, root / "other_hop.onnx")
    return [*paths, root / "other_hop.onnx"]


def test_members_that_normalise_differently_are_refused(
    members: list[Path], val_dir: Path, tmp_path: Path
) -> None:
    """A copy of a member whose training config says it was trained on files as they are (not peak-normalised)."""
    a, b, _ = members
    flipped = onnx.load(str(a))
    for prop in flipped.metadata_props:
        if prop.key == "lumen.training_config":
            config = json.loads(prop.value)
            assert config["normalize_audio"] is True  # lumen-train's default
            prop.value = json.dumps({**config, "normalize_audio": False})
    onnx.save_model(flipped, tmp_path / "normalised.onnx")
    meta = metadata_from_props({p.key: p.value for p in flipped.metadata_props})
    assert not meta.normalize_audio and OnnxModel(a).metadata.normalize_audio
    out = tmp_path / "ens.onnx"
    argv = [
        str(b),
        str(tmp_path / "normalised.onnx"),
        "--val-paths",
        f"irmastrain:{val_dir}",
        "--out",
        str(out),
    ]
    status, _, stderr = run_cli(argv)
    assert status == 1 and "normalize_audio False differs" in stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """irmastrain layout, two files per instrument, lengths from a fraction of a window to three windows."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for i, code in enumerate(LABELS):
        (root / code).mkdir()
        for k in range(2):
            audio = chord(float(rng.uniform(0.2, 1.5))) * (0.3 + 0.05 * i)
            audio = audio + 0.01 * rng.standard_normal(audio.shape).astype(np.float32)
            sf.write(root / code / f"{code}_{k}.wav", audio, SR)
    return root


def test_ensemble_is_the_members_mean_with_thresholds_tuned_on_validation(
    members: list[Path], val_dir: Path, tmp_path: Path
) -> None:
    a, b, _ = members
    out = tmp_path / "ens.onnx"
    status, stdout, _ = run_cli([str(a), str(b), "--val-paths", f"irmastrain:{val_dir}", "--out", str(out)])
    assert status == 0, stdout
    assert "parity ok" in stdout and "validation, 22 files" in stdout

    # Window level: probs are the mean of the members', logits their logit; served by the runtime as is.
    windows = np.random.default_rng(3).uniform(-1, 1, (5, WINDOW)).astype(np.float32)
    ensemble, model_a, model_b = OnnxModel(out), OnnxModel(a), OnnxModel(b)
    expected = (model_a.run(windows) + model_b.run(windows)) / 2
    assert not np.allclose(model_a.run(windows), model_b.run(windows), atol=1e-3)  # the members differ
    np.testing.assert_allclose(ensemble.run(windows), expected, atol=1e-6)
    graph = onnx.load(str(out))
    assert [o.name for o in graph.graph.output] == ["probs", "logits"]

    # Thresholds: what tune_thresholds gives on the file-level mean of the members, computed here
    # through the serving evaluation path (independent of the ensemble code).
    items = scan_dataset(f"irmastrain:{val_dir}")[0]
    truth = np.stack([item.labels for item in items]).astype(bool)
    file_probs = [
        np.stack([r.probs for r in predict_files(OnnxPredictor(path), items, num_workers=0)])
        for path in (a, b)
    ]
    meta = metadata_from_props({p.key: p.value for p in graph.metadata_props}, source=str(out))
    np.testing.assert_allclose(
        meta.thresholds, tune_thresholds(truth, np.mean(file_probs, axis=0)), atol=1e-5
    )
    assert meta.architecture == "ENSEMBLE(SMALL_CNN+SMALL_CNN)"
    recorded = meta.training_config["ensemble_members"]
    assert [m["file"] for m in recorded] == ["m0.onnx", "m1.onnx"]
    assert len({m["sha256"] for m in recorded}) == 2
    assert (meta.window_samples, meta.hop_samples) == (ensemble.metadata.window_samples, WINDOW // 2)
    json.dumps(meta.training_config)  # plain data: it travels as JSON in metadata_props


def test_members_that_cut_windows_differently_are_refused(
    members: list[Path], val_dir: Path, tmp_path: Path
) -> None:
    a, _, c = members
    out = tmp_path / "ens.onnx"
    status, _, stderr = run_cli([str(a), str(c), "--val-paths", f"irmastrain:{val_dir}", "--out", str(out)])
    assert status == 1
    assert "hop_samples" in stderr and str(c) in stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "case, message",
    [
        ("one", "at least 2 members"),
        ("twice", "given twice"),
        ("out_is_member", "is one of the members"),
        ("batch_zero", "--batch-size must be >= 1"),
    ],
)
def test_usage_errors(members: list[Path], val_dir: Path, case: str, message: str) -> None:
    a, b, _ = members
    argv = {
        "one": [str(a), "--out", "x.onnx"],
        "twice": [str(a), str(a), "--out", "x.onnx"],
        "out_is_member": [str(a), str(b), "--out", str(b)],
        "batch_zero": [str(a), str(b), "--out", "x.onnx", "--batch-size", "0"],
    }[case] + ["--val-paths", f"irmastrain:{val_dir}"]
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
        main(argv)
    assert exit_info.value.code == 2
    assert message in err.getvalue()


def test_bad_inputs_fail_with_one_line(members: list[Path], val_dir: Path, tmp_path: Path) -> None:
    a, b, _ = members
    out = tmp_path / "e.onnx"
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_bytes(b"not a model")
    status, _, stderr = run_cli(
        [str(a), str(not_onnx), "--val-paths", f"irmastrain:{val_dir}", "--out", str(out)]
    )
    assert status == 1 and "not an ONNX file" in stderr and "Traceback" not in stderr

    status, _, stderr = run_cli(
        [str(a), str(tmp_path / "absent.onnx"), "--val-paths", f"irmastrain:{val_dir}", "--out", str(out)]
    )
    assert status == 1 and "absent.onnx: no such file" in stderr

    foreign = onnx.load(str(b))
    del foreign.metadata_props[:]  # a valid ONNX model that lumen-export did not write
    onnx.save_model(foreign, tmp_path / "foreign.onnx")
    status, _, stderr = run_cli(
        [str(a), str(tmp_path / "foreign.onnx"), "--val-paths", f"irmastrain:{val_dir}", "--out", str(out)]
    )
    assert status == 1 and "not a lumen artifact" in stderr

    status, _, stderr = run_cli(
        [str(a), str(b), "--val-paths", f"irmastrain:{val_dir}", "--out", str(tmp_path / "no" / "e.onnx")]
    )
    assert status == 1 and "does not exist" in stderr

    status, _, stderr = run_cli(
        [str(a), str(b), "--val-paths", f"irmastrain:{tmp_path / 'nowhere'}", "--out", str(out)]
    )
    assert status == 1 and "nowhere" in stderr and "Traceback" not in stderr

    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    sf.write(unlabelled / "x.wav", chord(0.5), SR)
    status, _, stderr = run_cli([str(a), str(b), "--val-paths", f"inference:{unlabelled}", "--out", str(out)])
    assert status == 1 and "labelled" in stderr

    partial = tmp_path / "partial"
    (partial / "cel").mkdir(parents=True)
    sf.write(partial / "cel" / "x.wav", chord(0.5), SR)
    status, _, stderr = run_cli([str(a), str(b), "--val-paths", f"irmastrain:{partial}", "--out", str(out)])
    assert status == 1 and "no example of cla" in stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def ensemble_file(members: list[Path], val_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    a, b, _ = members
    out = tmp_path_factory.mktemp("ens") / "ens.onnx"
    status, stdout, _ = run_cli([str(a), str(b), "--val-paths", f"irmastrain:{val_dir}", "--out", str(out)])
    assert status == 0, stdout
    return out


def test_split_gives_back_each_member_with_its_own_thresholds(
    members: list[Path], ensemble_file: Path, tmp_path: Path
) -> None:
    """--split: member i of the ensemble, written on its own, answers as the file it was built from."""
    a, b, _ = members
    status, stdout, stderr = run_cli(["--split", str(ensemble_file), "--out-dir", str(tmp_path)])
    assert status == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.onnx", "m1.onnx"]
    assert "worst max |dprobs| vs the ensemble's m1" in stdout
    windows = np.random.default_rng(5).uniform(-1, 1, (4, WINDOW)).astype(np.float32)
    for original, recovered in ((a, tmp_path / "m0.onnx"), (b, tmp_path / "m1.onnx")):
        want, got = OnnxModel(original), OnnxModel(recovered)
        np.testing.assert_allclose(got.run(windows), want.run(windows), atol=1e-6)
        assert got.metadata.thresholds == want.metadata.thresholds
        assert got.metadata.training_config == want.metadata.training_config
        assert got.metadata.architecture == want.metadata.architecture
        assert got.metadata.source_checkpoint_sha256 == want.metadata.source_checkpoint_sha256
        assert (got.metadata.window_samples, got.metadata.hop_samples) == (
            want.metadata.window_samples,
            want.metadata.hop_samples,
        )
        graph = onnx.load(str(recovered))
        assert [o.name for o in graph.graph.output] == ["probs", "logits"]
        assert not any(t.name.startswith("m0/") or t.name.startswith("m1/") for t in graph.graph.initializer)
        # Only the member's own weights: the two recovered files do not carry each other's.
        assert len(graph.graph.initializer) == len(onnx.load(str(original)).graph.initializer)


def test_split_refuses_what_is_not_an_ensemble_or_would_overwrite(
    members: list[Path], ensemble_file: Path, tmp_path: Path
) -> None:
    a, _, _ = members
    status, _, stderr = run_cli(["--split", str(a), "--out-dir", str(tmp_path)])
    assert status == 1 and "not an ensemble artifact" in stderr and "Traceback" not in stderr
    assert not list(tmp_path.iterdir())

    (tmp_path / "m1.onnx").write_bytes(b"someone's file")
    status, _, stderr = run_cli(["--split", str(ensemble_file), "--out-dir", str(tmp_path)])
    assert status == 1 and "exists; not overwriting" in stderr
    assert (tmp_path / "m1.onnx").read_bytes() == b"someone's file" and not (tmp_path / "m0.onnx").exists()

    # Metadata that records a member the graph does not hold.
    tampered = onnx.load(str(ensemble_file))
    for prop in tampered.metadata_props:
        if prop.key == "lumen.training_config":
            config = json.loads(prop.value)
            config["ensemble_members"].append(config["ensemble_members"][0])
            prop.value = json.dumps(config)
    onnx.save_model(tampered, tmp_path / "tampered.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, _, stderr = run_cli(["--split", str(tmp_path / "tampered.onnx"), "--out-dir", str(out_dir)])
    assert status == 1 and "member 2: no node produces 'm2/probs'" in stderr
    assert not list(out_dir.iterdir())

    status, _, stderr = run_cli(["--split", str(ensemble_file), "--out-dir", str(tmp_path / "absent")])
    assert status == 1 and "is not a folder" in stderr


@pytest.mark.parametrize("bad", ["abc", "0.5", None, True, float("nan"), [0.5], {"t": 0.5}])
def test_split_refuses_recorded_thresholds_that_are_not_numbers(
    ensemble_file: Path, tmp_path: Path, bad: object
) -> None:
    """The thresholds an ensemble records for a member are metadata from the file, so untrusted: a
    string (even a numeric one), null, a bool, NaN or a container is a one-line error, not a traceback
    and not a silently converted threshold; nothing is written."""
    tampered = onnx.load(str(ensemble_file))
    for prop in tampered.metadata_props:
        if prop.key == "lumen.training_config":
            config = json.loads(prop.value)
            config["ensemble_members"][1]["thresholds"][3] = bad
            prop.value = json.dumps(config)  # NaN is written as the JSON extension NaN, as Python reads it
    onnx.save_model(tampered, tmp_path / "tampered.onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, _, stderr = run_cli(["--split", str(tmp_path / "tampered.onnx"), "--out-dir", str(out_dir)])
    assert status == 1, stderr
    assert "ensemble_members[1] has thresholds that are not finite numbers" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not list(out_dir.iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--split", "e.onnx"], "--split needs --out-dir"),
        (["a.onnx", "--split", "e.onnx", "--out-dir", "."], "--split takes no members"),
        (["--split", "e.onnx", "--out-dir", ".", "--out", "x.onnx"], "--split takes no members"),
        (["a.onnx", "b.onnx", "--out", "x.onnx"], "merging needs --out and --val-paths"),
        (
            ["a.onnx", "b.onnx", "--out", "x.onnx", "--val-paths", "irmastrain:v", "--out-dir", "."],
            "--out-dir is for --split",
        ),
    ],
)
def test_split_usage_errors(argv: list[str], message: str) -> None:
    err = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
        main(argv)
    assert exit_info.value.code == 2 and message in err.getvalue()

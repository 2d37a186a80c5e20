"""lumen-test end to end on a tiny tone-detector artifact and a tiny IRMAS-test-layout dataset.

The artifact (``serving_testkit``) predicts label ``k`` from the amplitude of one sine, so each file's
probabilities are set by the tones written into it: some files are clear, some borderline, some
carry a distractor, which gives non-trivial metrics to check against scikit-learn.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from serving_testkit import SAMPLE_RATE, build_model, reference_probs, tones
from sklearn import metrics as skm

from common.audio import aggregate, load_audio, split_windows
from common.datasets import parse_spec, scan_dataset
from common.labels import LABELS, N_LABELS
from common.metrics import compute_metrics, tune_thresholds
from serving import plots
from serving.evaluate_cli import main, per_file_rows
from serving.evaluation import (
    Predictions,
    collect,
    load_predictor,
    per_file_scores,
    predict_files,
    torch_device,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_FILES = (
    "roc.png",
    "instrument_metrics.png",
    "metric_histograms.png",
    "confusion.png",
    "instrument_confusions.png",
)


def _file_plan() -> list[tuple[list[int], dict[int, float]]]:
    """(true labels, {tone label: amplitude}) per file; amplitudes around the detector's 0.05 centre."""
    rng = np.random.default_rng(7)
    plan = []
    for n in range(16):
        true = sorted({n % N_LABELS, (3 * n + 5) % N_LABELS} if n % 3 else {n % N_LABELS})
        amps = {k: float(rng.choice([0.15, 0.07, 0.052, 0.045, 0.03])) for k in true}
        distractor = (n * 7 + 2) % N_LABELS
        if distractor not in true:
            amps[distractor] = float(rng.choice([0.0, 0.048, 0.06]))
        plan.append((true, amps))
    return plan


def _write_file(path: Path, amps: dict[int, float], sample_rate: int, seed: int) -> None:
    audio = np.zeros(round(0.7 * sample_rate), dtype=np.float32)
    for k, amp in amps.items():
        if amp > 0:
            audio += tones([k], seconds=0.7, amplitude=amp, sample_rate=sample_rate)
    audio += 0.005 * np.random.default_rng(seed).standard_normal(audio.shape[0]).astype(np.float32)
    sf.write(path, audio, sample_rate, subtype="FLOAT")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    model = build_model(root / "models" / "tones.onnx")
    test_dir = root / "irmas_test"
    test_dir.mkdir()
    for n, (true, amps) in enumerate(_file_plan()):
        # Half of the files at another rate: the pipeline must resample to the model's rate.
        rate = SAMPLE_RATE if n % 2 else 2 * SAMPLE_RATE
        _write_file(test_dir / f"track-{n:02d}.wav", amps, rate, seed=n)
        (test_dir / f"track-{n:02d}.txt").write_text("".join(f"{LABELS[k]}\t\n" for k in true))
    (test_dir / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (test_dir / "broken.txt").write_text("pia\t\n")
    val_dir = root / "irmas_val"
    val_dir.mkdir()
    for n, (true, amps) in enumerate(_file_plan()[::-1][:10]):
        _write_file(val_dir / f"val-{n:02d}.wav", amps, SAMPLE_RATE, seed=100 + n)
        (val_dir / f"val-{n:02d}.txt").write_text("".join(f"{LABELS[k]}\t\n" for k in true))
    return {"root": root, "model": model, "test": test_dir, "val": val_dir}


def lumen_test(model: Path, datasets: str | list[str], out: Path | None, *flags: str) -> int:
    """``lumen-test`` in-process; ``out=None`` keeps the default output folder."""
    argv = [
        "--model",
        str(model),
        "--dataset-paths",
        *([datasets] if isinstance(datasets, str) else datasets),
    ]
    return main(argv + (["--out-dir", str(out)] if out is not None else []) + list(flags))


@pytest.fixture(scope="module")
def labelled_run(workspace: dict[str, Path]) -> Path:
    out = workspace["root"] / "labelled_out"
    code = lumen_test(
        workspace["model"], f"irmastest:{workspace['test']}", out, "--batch-size", "7", "--all-plots"
    )
    assert code == 0
    return out


def _truth(test_dir: Path, paths: list[str]) -> np.ndarray:
    rows = []
    for path in paths:
        codes = Path(path).with_suffix(".txt").read_text().split()
        rows.append([int(code in codes) for code in LABELS])
    return np.array(rows)


def test_metrics_match_scikit_learn_on_written_predictions(
    labelled_run: Path, workspace: dict[str, Path]
) -> None:
    predictions = json.loads((labelled_run / "predictions.json").read_text())
    metrics = yaml.safe_load((labelled_run / "metrics.yaml").read_text())
    paths = sorted(predictions)
    assert len(paths) == 16
    y_true = _truth(workspace["test"], paths)
    y_prob = np.array([[predictions[p]["probabilities"][c] for c in LABELS] for p in paths])
    y_pred = np.array([[predictions[p]["labels"][c] for c in LABELS] for p in paths])
    thresholds = np.array([metrics["thresholds"][c] for c in LABELS])
    np.testing.assert_array_equal(y_pred, (y_prob >= thresholds).astype(int))
    assert 0 < y_pred.sum() < y_pred.size and not np.array_equal(y_pred, y_true)  # non-trivial data

    expected = {
        "f1_micro": skm.f1_score(y_true, y_pred, average="micro", zero_division=0),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "precision_micro": skm.precision_score(y_true, y_pred, average="micro", zero_division=0),
        "precision_macro": skm.precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall_micro": skm.recall_score(y_true, y_pred, average="micro", zero_division=0),
        "recall_macro": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
        "hamming_distance": skm.hamming_loss(y_true, y_pred),
        "accuracy": 1.0 - skm.hamming_loss(y_true, y_pred),
        "exact_match": skm.accuracy_score(y_true, y_pred),
        "lrap": skm.label_ranking_average_precision_score(y_true, y_prob),
        "map": skm.average_precision_score(y_true, y_prob, average="macro"),
        "roc_auc_macro": skm.roc_auc_score(y_true, y_prob, average="macro"),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    assert metrics["n_files"] == 16
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    for k, code in enumerate(LABELS):
        row = metrics["per_instrument"][code]
        assert row["precision"] == pytest.approx(precision[k], abs=1e-6), code
        assert row["recall"] == pytest.approx(recall[k], abs=1e-6), code
        assert row["f1"] == pytest.approx(f1[k], abs=1e-6), code
        assert row["support"] == support[k]
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true[:, k], y_prob[:, k]), abs=1e-6), code
    assert metrics["threshold_source"] == "artifact"


def test_per_file_csv_ranks_the_true_instrument(labelled_run: Path, workspace: dict[str, Path]) -> None:
    predictions = json.loads((labelled_run / "predictions.json").read_text())
    metrics = yaml.safe_load((labelled_run / "metrics.yaml").read_text())
    with (labelled_run / "per_file.csv").open(newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(predictions)
    paths = sorted(predictions)
    y_true = _truth(workspace["test"], paths)
    ranks = []
    for path, truth in zip(paths, y_true, strict=True):
        row, probs = rows[path], predictions[path]["probabilities"]
        order = sorted(LABELS, key=lambda c: -probs[c])
        assert row["first"] == order[0]
        assert row["true"].split() == [c for c, t in zip(LABELS, truth, strict=True) if t]
        assert row["predicted"].split() == [c for c in LABELS if predictions[path]["labels"][c]]
        if truth.any():  # rank of the best-ranked true label, 1-based, in the sorted order
            expected = min(order.index(c) for c, t in zip(LABELS, truth, strict=True) if t) + 1
            assert int(row["true_rank"]) == expected, path
            ranks.append(expected)
    assert ranks and metrics["top1"] == pytest.approx(np.mean([r == 1 for r in ranks]))


def test_per_file_true_rank_breaks_ties_as_top1_does() -> None:
    labels = ["cel", "cla", "flu"]
    run = Predictions(
        labels=labels,
        paths=["tie_lost", "tie_won", "clear", "unlabelled"],
        probs=np.array(
            [[0.6, 0.6, 0.1], [0.6, 0.6, 0.1], [0.2, 0.3, 0.9], [0.5, 0.5, 0.5]], dtype=np.float32
        ),
        targets=np.array([[0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.int8),
        errors={},
    )
    rows = per_file_rows(run, np.full(3, 0.5))
    assert [r["true_rank"] for r in rows] == [2, 1, 2, ""]
    assert [r["first"] for r in rows] == ["cel", "cel", "flu", "cel"]
    assert rows[0]["predicted"] == "cel cla" and rows[3]["true"] == ""
    top1 = compute_metrics(run.targets, run.probs, labels=labels)["top1"]
    assert top1 == pytest.approx(np.mean([r["true_rank"] == 1 for r in rows[:3]]))


def test_every_plot_is_a_non_empty_png(labelled_run: Path) -> None:
    for name in PLOT_FILES:
        data = (labelled_run / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name


def test_unreadable_file_is_listed_not_fatal(labelled_run: Path, workspace: dict[str, Path]) -> None:
    errors = json.loads((labelled_run / "errors.json").read_text())
    broken = str(workspace["test"] / "broken.wav")
    assert list(errors) == [broken]
    assert "corrupt" in errors[broken] or "not a recognised audio file" in errors[broken]
    assert broken not in json.loads((labelled_run / "predictions.json").read_text())
    assert yaml.safe_load((labelled_run / "metrics.yaml").read_text())["unreadable_files"] == 1


def test_prediction_only_run_on_unlabelled_paths(
    labelled_run: Path, workspace: dict[str, Path], tmp_path: Path
) -> None:
    code = lumen_test(
        workspace["model"],
        f"inference:{workspace['test']}",
        tmp_path,
        "--num-workers",
        "0",
        "--batch-size",
        "64",
    )
    assert code == 0
    assert not (tmp_path / "metrics.yaml").exists()
    unlabelled = json.loads((tmp_path / "predictions.json").read_text())
    labelled = json.loads((labelled_run / "predictions.json").read_text())
    assert unlabelled == labelled  # batch size and worker count do not change a single number


def test_mixing_labelled_and_unlabelled_specs_is_an_error(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = lumen_test(workspace["model"], [f"irmastest:{workspace['test']}", str(workspace["val"])], tmp_path)
    assert code == 2
    err = capsys.readouterr().err
    assert "mixes labelled" in err and "Traceback" not in err
    assert not (tmp_path / "predictions.json").exists()


def test_threshold_override_sets_every_decision(workspace: dict[str, Path], tmp_path: Path) -> None:
    code = lumen_test(workspace["model"], f"irmastest:{workspace['val']}", tmp_path, "--threshold", "0.2")
    assert code == 0
    metrics = yaml.safe_load((tmp_path / "metrics.yaml").read_text())
    assert metrics["threshold_source"] == "--threshold 0.2"
    assert set(metrics["thresholds"].values()) == {0.2}
    for entry in json.loads((tmp_path / "predictions.json").read_text()).values():
        for code_, p in entry["probabilities"].items():
            assert entry["labels"][code_] == int(p >= 0.2)


def test_tuning_thresholds_on_the_evaluated_set_is_refused(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caught by file, not by spec text: a CSV naming one evaluated file is the same data."""
    overlap = tmp_path / "overlap.csv"
    overlap.write_text(
        "file,"
        + ",".join(LABELS)
        + "\n"
        + f"{workspace['val'] / 'val-03.wav'},"
        + ",".join("1" if code == "pia" else "0" for code in LABELS)
        + "\n"
    )
    evaluated = f"irmastest:{workspace['val']}"
    assert lumen_test(workspace["model"], evaluated, tmp_path, "--tune-thresholds-on", f"csv:{overlap}") == 2
    assert "shares 1 file(s)" in capsys.readouterr().err
    assert lumen_test(workspace["model"], evaluated, tmp_path, "--tune-thresholds-on", evaluated) == 2
    assert "shares 10 file(s)" in capsys.readouterr().err


def test_thresholds_tuned_on_a_validation_set_are_applied_and_reported(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    val = f"irmastest:{workspace['val']}"
    assert (
        lumen_test(
            workspace["model"], f"irmastest:{workspace['test']}", tmp_path, "--tune-thresholds-on", val
        )
        == 0
    )
    metrics = yaml.safe_load((tmp_path / "metrics.yaml").read_text())
    assert metrics["threshold_source"] == f"tuned on {val} (10 files)"
    assert "tuned on" in capsys.readouterr().out
    predictor = load_predictor(workspace["model"])
    items, _ = scan_dataset(val)
    on_val = collect(predict_files(predictor, items), predictor.metadata.labels)
    expected = tune_thresholds(on_val.targets, on_val.probs)
    assert [metrics["thresholds"][code] for code in LABELS] == pytest.approx(expected.tolist())
    assert not np.allclose(expected, 0.5)  # tuning moved something, so "applied" below means something
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    for entry in predictions.values():
        for code_, p in entry["probabilities"].items():
            assert entry["labels"][code_] == int(p >= metrics["thresholds"][code_])


def test_pipeline_matches_per_file_reference(workspace: dict[str, Path]) -> None:
    """Windows packed across files into batches come back to their own file, in input order."""
    predictor = load_predictor(workspace["model"])
    items, issues = scan_dataset(parse_spec(f"irmastest:{workspace['test']}"))
    assert issues == []  # broken.wav has its sidecar: the dataset is fine, the audio is not
    results = list(predict_files(predictor, items, batch_size=3, num_workers=3))
    assert [r.item.path for r in results] == [item.path for item in items]
    meta = predictor.metadata
    for result in results:
        if result.error is not None:
            assert result.item.path.name == "broken.wav"
            continue
        audio = load_audio(result.item.path, meta.sample_rate)
        windows = split_windows(audio, meta.window_samples, meta.hop_samples)
        expected = aggregate(reference_probs(windows.audio), meta.aggregation, valid=windows.valid)
        assert result.n_windows == len(windows)
        np.testing.assert_allclose(result.probs, expected, atol=1e-5)


def test_default_out_dir_is_next_to_the_model(workspace: dict[str, Path]) -> None:
    code = lumen_test(workspace["model"], str(workspace["val"]), None)
    assert code == 0
    out = workspace["model"].parent / "tones_test"
    assert set(json.loads((out / "predictions.json").read_text())) == {
        str(p) for p in sorted(workspace["val"].glob("*.wav"))
    }


def test_unknown_model_type_is_a_clear_error(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"x")
    assert lumen_test(bogus, str(workspace["val"]), None) == 2
    assert "pass an exported .onnx artifact or a .ckpt checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("requested", "cuda_available", "expected"),
    [("cpu", True, "cpu"), ("cuda", True, "cuda:0"), ("cuda:1", True, "cuda:1"), ("cuda", False, "cpu")],
)
def test_torch_device_selection(requested: str, cuda_available: bool, expected: str) -> None:
    assert torch_device(requested, cuda_available) == expected


def test_roc_points_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + 0.4 * y, 2)  # rounded: many ties
    fpr, tpr = plots.roc_points(y, scores)
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert plots.auc(fpr, tpr) == pytest.approx(skm.roc_auc_score(y, scores))
    assert plots.roc_points(np.ones(5), scores[:5]) is None


def test_per_file_scores_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, (40, N_LABELS))
    y_pred = rng.integers(0, 2, (40, N_LABELS))
    y_true[0] = 0
    y_pred[0] = 0  # nothing to find, nothing found: a perfect file
    scores = per_file_scores(y_true, y_pred)
    assert scores["f1"][0] == 1.0 and scores["jaccard"][0] == 1.0
    assert scores["f1"].mean() == pytest.approx(
        skm.f1_score(y_true, y_pred, average="samples", zero_division=1)
    )
    assert scores["jaccard"].mean() == pytest.approx(
        skm.jaccard_score(y_true, y_pred, average="samples", zero_division=1)
    )
    assert scores["hamming_loss"].mean() == pytest.approx(skm.hamming_loss(y_true, y_pred))


def test_instrument_confusions_count_mistakes_with_true_rows_and_predicted_columns() -> None:
    cel, vio, pia = LABELS.index("cel"), LABELS.index("vio"), LABELS.index("pia")
    y_true = np.zeros((4, N_LABELS), dtype=int)
    y_pred = np.zeros((4, N_LABELS), dtype=int)
    y_true[:3, cel] = 1
    y_pred[:2, vio] = 1  # two cello files heard as violin
    y_pred[2, cel] = 1  # one cello file right
    y_true[3, [cel, vio]] = 1
    y_pred[3, [cel, vio, pia]] = 1  # cello+violin both found (no mistake), piano added (a mistake)
    matrix = plots.confusions(y_true, y_pred)
    assert matrix[cel, vio] == 2 and matrix[vio, cel] == 0
    assert matrix[cel, cel] == 2 and matrix[vio, vio] == 1
    assert matrix[cel, pia] == 1 and matrix[vio, pia] == 1
    assert matrix.sum() == 7


def test_a_run_where_no_file_can_be_read_fails_with_the_reasons(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = workspace["test"] / "broken.wav"
    assert lumen_test(workspace["model"], f"inference:{broken}", tmp_path) == 1
    assert list(json.loads((tmp_path / "errors.json").read_text())) == [str(broken)]
    assert json.loads((tmp_path / "predictions.json").read_text()) == {}
    assert "no file could be evaluated" in capsys.readouterr().out


def test_plots_on_unlabelled_data_are_refused_before_inference(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lumen_test(workspace["model"], str(workspace["val"]), tmp_path, "--save-roc") == 2
    assert "need labelled datasets" in capsys.readouterr().err
    assert not tmp_path.joinpath("predictions.json").exists()

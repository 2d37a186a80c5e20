"""common.metrics against scikit-learn, value by value, on random data with awkward labels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from common.labels import LABELS
from common.metrics import compute_metrics, tune_thresholds

TOP_LEVEL_KEYS = [
    "accuracy",
    "exact_match",
    "hamming_distance",
    "f1_micro",
    "f1_macro",
    "precision_micro",
    "precision_macro",
    "recall_micro",
    "recall_macro",
    "lrap",
    "top1",
    "map",
    "roc_auc_macro",
    "n_files",
    "per_instrument",
]
PER_LABEL_KEYS = ["precision", "recall", "f1", "accuracy", "roc_auc", "average_precision", "support"]


def random_case(seed: int, n_files: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random truth with one label never present and one always present, probabilities with ties
    (rounded to 0.1 on half the labels), and per-label thresholds."""
    rng = np.random.default_rng(seed)
    n = len(LABELS)
    y_true = (rng.random((n_files, n)) < rng.uniform(0.1, 0.6, n)).astype(np.int64)
    y_true[:, 2] = 0
    y_true[:, 5] = 1
    y_prob = np.clip(0.4 * y_true + rng.random((n_files, n)) * 0.7, 0.0, 1.0)
    y_prob[:, ::2] = np.round(y_prob[:, ::2], 1)
    thresholds = rng.uniform(0.3, 0.7, n)
    return y_true, y_prob.astype(np.float32), thresholds


def _top1_loop(y_true: np.ndarray, y_prob: np.ndarray) -> float | None:
    """top1 the slow way: per labelled file, the first label (in order) with the highest score."""
    hits = []
    for truth, prob in zip(y_true.tolist(), y_prob.tolist(), strict=True):
        if any(truth):
            best = max(range(len(prob)), key=lambda j: (prob[j], -j))
            hits.append(truth[best])
    return sum(hits) / len(hits) if hits else None


def sklearn_reference(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray) -> dict[str, object]:
    y_pred = (y_prob >= thresholds).astype(np.int64)
    both = [j for j in range(y_true.shape[1]) if 0 < y_true[:, j].sum() < y_true.shape[0]]
    positive = [j for j in range(y_true.shape[1]) if y_true[:, j].sum() > 0]
    kw = {"zero_division": 0}
    p, r, f, support = skm.precision_recall_fscore_support(y_true, y_pred, average=None, **kw)
    per = {}
    for j, code in enumerate(LABELS):
        per[code] = {
            "precision": p[j],
            "recall": r[j],
            "f1": f[j],
            "accuracy": skm.accuracy_score(y_true[:, j], y_pred[:, j]),
            "roc_auc": skm.roc_auc_score(y_true[:, j], y_prob[:, j]) if j in both else None,
            "average_precision": skm.average_precision_score(y_true[:, j], y_prob[:, j])
            if j in positive
            else None,
            "support": int(support[j]),
        }
    return {
        "accuracy": 1 - skm.hamming_loss(y_true, y_pred),
        "exact_match": skm.accuracy_score(y_true, y_pred),
        "hamming_distance": skm.hamming_loss(y_true, y_pred),
        "f1_micro": skm.f1_score(y_true, y_pred, average="micro", **kw),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", **kw),
        "precision_micro": skm.precision_score(y_true, y_pred, average="micro", **kw),
        "precision_macro": skm.precision_score(y_true, y_pred, average="macro", **kw),
        "recall_micro": skm.recall_score(y_true, y_pred, average="micro", **kw),
        "recall_macro": skm.recall_score(y_true, y_pred, average="macro", **kw),
        "lrap": skm.label_ranking_average_precision_score(y_true, y_prob),
        "top1": _top1_loop(y_true, y_prob),
        "map": skm.average_precision_score(y_true[:, positive], y_prob[:, positive], average="macro"),
        "roc_auc_macro": skm.roc_auc_score(y_true[:, both], y_prob[:, both], average="macro"),
        "n_files": y_true.shape[0],
        "per_instrument": per,
    }


def assert_same(ours: object, ref: object, where: str) -> None:
    if ref is None or ours is None:
        assert ours is ref, where
    else:
        assert ours == pytest.approx(float(ref), abs=1e-12), where


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_files", [3, 57])
def test_compute_metrics_equals_sklearn(seed: int, n_files: int) -> None:
    y_true, y_prob, thresholds = random_case(seed, n_files)
    ours = compute_metrics(y_true, y_prob, thresholds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sklearn_reference(y_true, y_prob, thresholds)
    assert list(ours) == TOP_LEVEL_KEYS
    for key in TOP_LEVEL_KEYS[:-1]:
        assert_same(ours[key], ref[key], key)
    assert list(ours["per_instrument"]) == list(LABELS)
    for code in LABELS:
        assert list(ours["per_instrument"][code]) == PER_LABEL_KEYS
        for key in PER_LABEL_KEYS:
            assert_same(ours["per_instrument"][code][key], ref["per_instrument"][code][key], f"{code}.{key}")
    assert ours["per_instrument"]["flu"]["roc_auc"] is None  # never present
    assert ours["per_instrument"]["org"]["roc_auc"] is None  # always present
    assert ours["per_instrument"]["org"]["average_precision"] == pytest.approx(1.0)
    json.dumps(ours)  # JSON-safe: plain floats, ints and None


def test_lrap_files_with_no_or_all_labels_score_one() -> None:
    y_true = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0]])
    y_prob = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.1, 0.5, 0.5]])
    ours = compute_metrics(y_true, y_prob, labels=["cel", "cla", "flu"])
    assert ours["lrap"] == pytest.approx(skm.label_ranking_average_precision_score(y_true, y_prob))
    assert ours["lrap"] == pytest.approx((1 + 1 + 1 / 3) / 3)


def test_top1_counts_labelled_files_only_and_breaks_ties_in_label_order() -> None:
    y_true = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 1], [0, 1, 0]])
    y_prob = np.array([[0.9, 0.1, 0.5], [0.8, 0.3, 0.1], [0.9, 0.9, 0.9], [0.1, 0.2, 0.6], [0.4, 0.4, 0.1]])
    # hit, miss, unlabelled (skipped), hit (either label counts), tie 0.4/0.4 -> cel, a miss
    assert compute_metrics(y_true, y_prob, labels=["cel", "cla", "flu"])["top1"] == pytest.approx(2 / 4)
    single = np.eye(3, dtype=np.int64)[[0, 1, 2, 2]]
    scores = np.random.default_rng(0).random((4, 3))
    assert compute_metrics(single, scores, labels=["cel", "cla", "flu"])["top1"] == pytest.approx(
        skm.top_k_accuracy_score(single.argmax(1), scores, k=1, labels=[0, 1, 2])
    )


def test_undefined_aggregates_are_none() -> None:
    y_true = np.zeros((4, len(LABELS)), dtype=np.int64)
    ours = compute_metrics(y_true, np.full(y_true.shape, 0.7))
    assert ours["map"] is None and ours["roc_auc_macro"] is None and ours["top1"] is None
    assert ours["precision_micro"] == 0.0 and ours["f1_macro"] == 0.0
    assert ours["exact_match"] == 0.0 and ours["hamming_distance"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "y_prob", "thresholds", "message"),
    [
        (np.zeros((2, 11)), np.zeros((2, 10)), 0.5, "must both be"),
        (np.zeros((0, 11)), np.zeros((0, 11)), 0.5, "n_files = 0"),
        (np.full((2, 11), 2), np.zeros((2, 11)), 0.5, "only 0 and 1"),
        (np.zeros((2, 11)), np.full((2, 11), np.nan), 0.5, "NaN"),
        (np.zeros((2, 11)), np.zeros((2, 11)), [0.5, 0.5], "expected one threshold or 11"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 0.5, "3 label columns for 11 label names"),
    ],
)
def test_compute_metrics_rejects_bad_input(
    y_true: object, y_prob: object, thresholds: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, y_prob, thresholds)  # type: ignore[arg-type]


def f1_at(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    y_pred = (y_prob >= thresholds).astype(np.int64)
    return skm.f1_score(y_true, y_pred, average=None, zero_division=0)


def test_tune_thresholds_improves_f1_on_a_constructed_case() -> None:
    # Label 0 is under-confident (positives near 0.3), label 1 over-confident (negatives near 0.7),
    # label 2 already separates at 0.5, label 3 has no positives.
    rng = np.random.default_rng(0)
    y_true = np.zeros((40, 4), dtype=np.int64)
    y_true[:20, 0] = y_true[::2, 1] = y_true[:10, 2] = 1
    y_prob = np.empty((40, 4))
    y_prob[:, 0] = np.where(y_true[:, 0] == 1, 0.30, 0.10) + rng.uniform(-0.05, 0.05, 40)
    y_prob[:, 1] = np.where(y_true[:, 1] == 1, 0.90, 0.70) + rng.uniform(-0.05, 0.05, 40)
    y_prob[:, 2] = np.where(y_true[:, 2] == 1, 0.80, 0.20)
    y_prob[:, 3] = rng.uniform(0, 1, 40)
    tuned = tune_thresholds(y_true, y_prob)
    before, after = f1_at(y_true, y_prob, np.full(4, 0.5)), f1_at(y_true, y_prob, tuned)
    assert after[0] == 1.0 and before[0] == 0.0
    assert after[1] == 1.0 and before[1] < 1.0
    assert tuned[2] == 0.5  # 0.5 already optimal: ties go to the default
    assert tuned[3] == 0.5  # nothing to tune against
    assert 0.15 < tuned[0] < 0.25 and 0.75 < tuned[1] < 0.85  # midpoints between the classes


@pytest.mark.parametrize("seed", range(5))
def test_tuned_thresholds_are_optimal_over_a_fine_grid(seed: int) -> None:
    y_true, y_prob, _ = random_case(seed, 30)
    tuned = tune_thresholds(y_true, y_prob)
    best = f1_at(y_true, y_prob, tuned)
    for t in np.linspace(0, 1, 101):
        assert (f1_at(y_true, y_prob, np.full(len(LABELS), t)) <= best + 1e-12).all()
    assert tuned[2] == 0.5  # the label with no positives


def test_tune_thresholds_with_candidates_breaks_ties_towards_half() -> None:
    y_true = np.array([[1], [0], [1], [0]])
    y_prob = np.array([[0.9], [0.1], [0.8], [0.2]])
    assert tune_thresholds(y_true, y_prob, candidates=[0.3, 0.5, 0.7, 0.95]).tolist() == [0.5]
    assert tune_thresholds(y_true, y_prob, candidates=[0.3, 0.7]).tolist() == [0.3]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        tune_thresholds(y_true, y_prob, candidates=[1.5])

"""File-level multi-label metrics in numpy, equal to scikit-learn's definitions.

Training validation, ``lumen-test`` and the server's evaluation all report through
:func:`compute_metrics`, so a number means the same thing wherever it is printed. It is numpy-only
because ``common`` must import in the serving image (no scikit-learn, no torch);
``tests/test_metrics.py`` checks every value against scikit-learn on random data.

Definitions (N files, L labels, predictions ``y_prob >= threshold``):

- precision / recall / F1 per label with ``zero_division=0``; ``*_micro`` pools the counts of all
  labels, ``*_macro`` is the unweighted mean over all L labels (a label without positives counts 0).
- ``accuracy`` = mean per-label accuracy = ``1 - hamming_distance``; ``hamming_distance`` =
  ``sklearn.metrics.hamming_loss``; ``exact_match`` = subset accuracy (``accuracy_score``).
- ``lrap`` = ``label_ranking_average_precision_score`` (a file with no or all labels scores 1).
- ``top1`` = share of the files with at least one label whose highest-probability instrument is one
  of them (ties go to the first instrument in label order; ``None`` when no file has a label) — "was
  the instrument named first", threshold-free; on single-instrument recordings it is top-1 accuracy.
- ``roc_auc`` per label is undefined (``None``) unless the label has both classes; ``roc_auc_macro`` is
  the mean over labels where it is defined. ``average_precision`` is undefined without positives;
  ``map`` is the mean over labels with at least one positive.

Every value is a plain ``float``/``int``/``None``, so the dict is JSON-safe as it stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from common.labels import LABELS

DEFAULT_THRESHOLD = 0.5


def compute_metrics(
    y_true: np.ndarray | Sequence[Sequence[float]],
    y_prob: np.ndarray | Sequence[Sequence[float]],
    thresholds: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD,
    labels: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """All file-level metrics for ``y_true`` (0/1, ``[N, L]``) and probabilities ``y_prob`` (``[N, L]``)."""
    truth, prob = _check_inputs(y_true, y_prob, len(labels))
    cut = _check_thresholds(thresholds, truth.shape[1])
    pred = prob >= cut
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    n_files = truth.shape[0]
    per_label_precision = _ratio(tp, tp + fp)
    per_label_recall = _ratio(tp, tp + fn)
    per_label_f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    per_label_accuracy = (pred == truth).mean(axis=0)
    auc = [roc_auc(truth[:, j], prob[:, j]) for j in range(truth.shape[1])]
    ap = [average_precision(truth[:, j], prob[:, j]) for j in range(truth.shape[1])]
    hamming = float((pred != truth).mean())
    per_instrument = {
        code: {
            "precision": float(per_label_precision[j]),
            "recall": float(per_label_recall[j]),
            "f1": float(per_label_f1[j]),
            "accuracy": float(per_label_accuracy[j]),
            "roc_auc": auc[j],
            "average_precision": ap[j],
            "support": int(truth[:, j].sum()),
        }
        for j, code in enumerate(labels)
    }
    return {
        "accuracy": 1.0 - hamming,
        "exact_match": float((pred == truth).all(axis=1).mean()),
        "hamming_distance": hamming,
        "f1_micro": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "f1_macro": float(per_label_f1.mean()),
        "precision_micro": float(_ratio(tp.sum(), tp.sum() + fp.sum())),
        "precision_macro": float(per_label_precision.mean()),
        "recall_micro": float(_ratio(tp.sum(), tp.sum() + fn.sum())),
        "recall_macro": float(per_label_recall.mean()),
        "lrap": label_ranking_average_precision(truth, prob),
        "top1": top1(truth, prob),
        "map": _mean_defined(ap),
        "roc_auc_macro": _mean_defined(auc),
        "n_files": int(n_files),
        "per_instrument": per_instrument,
    }


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve of one label; ``None`` unless both classes occur.

    Computed as the Mann-Whitney statistic (tied scores count one half), which is exactly the area
    under scikit-learn's trapezoidal ROC curve.
    """
    truth = np.asarray(y_true, dtype=bool)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """scikit-learn's average precision of one label (no interpolation); ``None`` without positives.

    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score values taken as thresholds, highest first.
    """
    truth = np.asarray(y_true, dtype=bool)
    n_pos = int(truth.sum())
    if n_pos == 0:
        return None
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, hits = s[order], truth[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(hits)[last_of_value]
    precision = tps / (last_of_value + 1)
    recall_gain = np.diff(np.r_[0, tps]) / n_pos
    return float((recall_gain * precision).sum())


def top1(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Share of labelled files whose top-scoring label is a true one (see the module docstring)."""
    labelled = y_true.any(axis=1)
    if not labelled.any():
        return None
    best = score[labelled].argmax(axis=1)
    return float(y_true[labelled][np.arange(len(best)), best].mean())


def label_ranking_average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's LRAP: for each true label of a file, the share of true labels among those ranked
    at or above it; averaged per file, then over files. Files with no or all labels true score 1."""
    truth = np.asarray(y_true, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    at_or_above = s[:, None, :] >= s[:, :, None]  # [n, j, k]: label k scores >= label j
    rank = at_or_above.sum(axis=2)
    true_rank = (at_or_above & truth[:, None, :]).sum(axis=2)
    n_true = truth.sum(axis=1)
    per_file = np.where(truth, true_rank / rank, 0.0).sum(axis=1) / np.maximum(n_true, 1)
    per_file[(n_true == 0) | (n_true == truth.shape[1])] = 1.0
    return float(per_file.mean())


def tune_thresholds(
    y_true: np.ndarray | Sequence[Sequence[float]],
    y_prob: np.ndarray | Sequence[Sequence[float]],
    candidates: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Per-label threshold (float64 ``[L]``) that maximises that label's F1 on ``(y_true, y_prob)``.

    Default candidates are 0.0 (predict everything), 0.5 and the midpoints between consecutive
    distinct probabilities of the label: every distinct prediction set is reachable, and a midpoint
    leaves a margin on both sides for unseen files. Among thresholds with the best F1 the one closest
    to 0.5 wins (then the lower one), so a tuned value only moves away from the default when that buys
    F1. Labels without positives keep 0.5: there is nothing to tune against.
    """
    truth, prob = _check_inputs(y_true, y_prob, None)
    fixed = None if candidates is None else np.unique(np.asarray(candidates, dtype=np.float64))
    if fixed is not None and (fixed.size == 0 or fixed.min() < 0.0 or fixed.max() > 1.0):
        raise ValueError("candidates must be a non-empty set of thresholds in [0, 1]")
    out = np.full(truth.shape[1], DEFAULT_THRESHOLD, dtype=np.float64)
    for j in range(truth.shape[1]):
        positives = np.sort(prob[truth[:, j], j])
        if positives.size == 0:
            continue
        scores = np.sort(prob[:, j])
        cands = _default_candidates(scores) if fixed is None else fixed
        n_pred = scores.size - np.searchsorted(scores, cands, side="left")
        tp = positives.size - np.searchsorted(positives, cands, side="left")
        f1 = 2 * tp / (positives.size + n_pred)
        best = cands[f1 >= f1.max() - 1e-12]
        distance = np.round(np.abs(best - DEFAULT_THRESHOLD), 12)  # 0.3 and 0.7 are equally close
        out[j] = best[np.lexsort((best, distance))[0]]
    return out


def _default_candidates(sorted_scores: np.ndarray) -> np.ndarray:
    distinct = np.unique(sorted_scores)
    return np.r_[0.0, DEFAULT_THRESHOLD, (distinct[:-1] + distinct[1:]) / 2]


def _check_inputs(y_true: Any, y_prob: Any, n_labels: int | None) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    prob = np.asarray(y_prob, dtype=np.float64)
    if truth.ndim != 2 or truth.shape != prob.shape:
        raise ValueError(f"y_true {truth.shape} and y_prob {prob.shape} must both be [n_files, n_labels]")
    if truth.shape[0] == 0:
        raise ValueError("no files to score (n_files = 0)")
    if n_labels is not None and truth.shape[1] != n_labels:
        raise ValueError(f"{truth.shape[1]} label columns for {n_labels} label names")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(prob).all():
        raise ValueError("y_prob contains NaN or infinite values")
    return truth.astype(bool), prob


def _check_thresholds(thresholds: Any, n_labels: int) -> np.ndarray:
    cut = np.asarray(thresholds, dtype=np.float64)
    if cut.ndim == 0:
        cut = np.full(n_labels, float(cut))
    if cut.shape != (n_labels,):
        raise ValueError(f"expected one threshold or {n_labels}, got shape {cut.shape}")
    if not np.isfinite(cut).all():
        raise ValueError("thresholds must be finite")
    return cut


def _ratio(num: np.ndarray | int, den: np.ndarray | int) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    num_arr = np.asarray(num, dtype=np.float64)
    den_arr = np.asarray(den, dtype=np.float64)
    return np.divide(num_arr, den_arr, out=np.zeros_like(num_arr), where=den_arr != 0)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts + 1) / 2)[inverse]


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None

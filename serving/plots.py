"""Evaluation plots for ``lumen-test``: PNGs readable at a glance, each titled with model and dataset.

All plots are drawn from *file-level* results (windows already aggregated back to files), the
numbers ``metrics.yaml`` reports. matplotlib is an optional dependency (the ``train`` extra): it is
imported inside :func:`_figure` only, so ``serving`` stays importable on a serving-only install,
and a clear error says what to install. Figures are built with the object API (``Figure`` + the
Agg canvas), never ``pyplot``: no global backend or figure state, nothing left open.

ROC points are computed here with numpy (no scikit-learn in package code).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.labels import NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
METRIC_COLORS = {"precision": "#4C72B0", "recall": "#DD8452", "f1": "#55A868"}
METRIC_NAMES = {"f1": "F1", "jaccard": "Jaccard", "hamming_loss": "Hamming loss"}


class PlotError(RuntimeError):
    """Plotting is unavailable (matplotlib missing); the message says what to install."""


def require_matplotlib() -> None:
    """Raise :class:`PlotError` with the fix when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(
            "plots need matplotlib, which is not installed; install the 'train' extra "
            "(pip install 'lumen-audio[train]') or drop the --save-*/--all-plots flags"
        ) from None


def _figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _title(fig: Figure, what: str, caption: str) -> None:
    fig.suptitle(f"{what}\n{caption}", fontsize=12)


def caption(model: str, datasets: Sequence[str], n_files: int) -> str:
    """``"<model> on <datasets> (N files)"``, wrapped so a long dataset list stays inside the figure."""
    text = f"{model} on {', '.join(datasets)} ({n_files} files)"
    return "\n".join(textwrap.wrap(text, width=110))


def instrument_name(code: str) -> str:
    return f"{NAMES.get(code, code)} ({code})"


def roc_points(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """False- and true-positive rates at every distinct score, from (0, 0) to (1, 1).

    ``None`` when the instrument has no positive or no negative file: its ROC is undefined.
    """
    y = np.asarray(y_true, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_each_score]
    fps = last_of_each_score + 1 - tps
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve (trapezoids)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def plot_roc(
    path: str | os.PathLike[str], y_true: np.ndarray, y_prob: np.ndarray, labels: Sequence[str], caption: str
) -> Path:
    """One ROC curve per instrument (AUC in the legend) and the micro-average over all decisions."""
    fig = _figure(10.5, 7.0)
    ax = fig.add_subplot()
    colors = _label_colors(len(labels))
    for k, code in enumerate(labels):
        points = roc_points(y_true[:, k], y_prob[:, k])
        if points is None:
            ax.plot([], [], color=colors[k], label=f"{instrument_name(code)}: AUC n/a (one class only)")
            continue
        fpr, tpr = points
        ax.plot(fpr, tpr, color=colors[k], lw=1.6, label=f"{instrument_name(code)}: AUC {auc(fpr, tpr):.3f}")
    micro = roc_points(y_true.ravel(), y_prob.ravel())
    if micro is not None:
        ax.plot(*micro, color="black", lw=2.2, ls="--", label=f"micro-average: AUC {auc(*micro):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9, frameon=False)
    _title(fig, "ROC per instrument (file level)", caption)
    return _save(fig, path)


def plot_instrument_metrics(
    path: str | os.PathLike[str], metrics: Mapping[str, Any], labels: Sequence[str], caption: str
) -> Path:
    """Grouped precision / recall / F1 bars per instrument, then the micro and macro averages.

    ``metrics`` is :func:`common.metrics.compute_metrics`' dict; undefined values (``None``) are
    drawn as empty bars and the support is printed under every instrument.
    """
    per = metrics["per_instrument"]
    groups = [f"{NAMES.get(c, c)}\n({c}, n={per[c]['support']})" for c in labels] + ["micro", "macro"]
    values = {
        name: [per[c][name] for c in labels] + [metrics[f"{name}_micro"], metrics[f"{name}_macro"]]
        for name in METRIC_COLORS
    }
    fig = _figure(14.5, 5.5)
    ax = fig.add_subplot()
    x = np.arange(len(groups), dtype=np.float64)
    x[-2:] += 0.6  # a gap before the averages
    width = 0.27
    for offset, (name, color) in zip((-width, 0.0, width), METRIC_COLORS.items(), strict=True):
        heights = [np.nan if v is None else float(v) for v in values[name]]
        ax.bar(x + offset, heights, width, color=color, label="F1" if name == "f1" else name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.axvline(x[-2] - 0.8, color="grey", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncols=3, frameon=False)
    _title(fig, "Precision, recall and F1 per instrument (file level)", caption)
    return _save(fig, path)


def plot_metric_histograms(
    path: str | os.PathLike[str], scores: Mapping[str, np.ndarray], caption: str
) -> Path:
    """One histogram per per-file metric (e.g. F1, Jaccard, Hamming loss), its mean in the title."""
    fig = _figure(4.2 * max(1, len(scores)), 4.2)
    axes = fig.subplots(1, max(1, len(scores)), squeeze=False)[0]
    bins = np.linspace(0.0, 1.0, 21)
    for ax, (name, values) in zip(axes, scores.items(), strict=False):
        data = np.asarray(values, dtype=np.float64)
        label = METRIC_NAMES.get(name, name.replace("_", " "))
        ax.hist(data, bins=bins, color="#4C72B0", edgecolor="white")
        title = f"per-file {label}"
        if data.size:
            mean = float(data.mean())
            ax.axvline(mean, color="#C44E52", lw=1.8, ls="--")
            title += f" (mean {mean:.3f}, dashed)"
        ax.set(xlim=(0, 1), xlabel=label, ylabel="files")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    _title(fig, "Per-file metrics", caption)
    return _save(fig, path)


def plot_confusion(
    path: str | os.PathLike[str], y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], caption: str
) -> Path:
    """A 2x2 count grid per instrument: rows = true absent/present, columns = predicted absent/present.

    Shading is the share of the row, so a dark diagonal reads as high specificity and recall
    whatever the class balance.
    """
    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    cols = 4
    rows = -(-len(labels) // cols)
    fig = _figure(3.0 * cols, 2.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for k, code in enumerate(labels):
        counts = np.array(
            [[np.sum(~t[:, k] & ~p[:, k]), np.sum(~t[:, k] & p[:, k])],
             [np.sum(t[:, k] & ~p[:, k]), np.sum(t[:, k] & p[:, k])]]
        )  # fmt: skip
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        _count_grid(axes[k], counts, share, ["absent", "present"], ["absent", "present"], percent=True)
        axes[k].set_title(instrument_name(code), fontsize=10)
        axes[k].set_xlabel("predicted", fontsize=8)
        axes[k].set_ylabel("true", fontsize=8)
    for ax in axes[len(labels) :]:
        ax.axis("off")
    if len(labels) < axes.size:
        axes[-1].text(
            0.5,
            0.5,
            "cell: file count (share of its row)\nrows: true, columns: predicted",
            ha="center",
            va="center",
            fontsize=9,
            transform=axes[-1].transAxes,
        )
    _title(fig, "Confusion per instrument (file counts)", caption)
    return _save(fig, path)


def confusions(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``[L, L]`` file counts of which instrument is heard as which.

    Diagonal ``(i, i)``: files where ``i`` plays and is predicted (true positives). Off-diagonal
    ``(i, j)``: files where ``i`` plays and ``j`` is predicted *although ``j`` does not play*. Counting
    every ``(true i, predicted j)`` pair instead would mix mistakes with instruments that genuinely
    play together (a correctly found cello+violin file would look like cello heard as violin).
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    wrong = t.T @ (p * (1 - t))
    np.fill_diagonal(wrong, (t * p).sum(axis=0))
    return wrong


def plot_confusions(
    path: str | os.PathLike[str], y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], caption: str
) -> Path:
    """True-vs-predicted instrument matrix (:func:`confusions`); colour = share of the row's files."""
    counts = confusions(y_true, y_pred)
    support = np.asarray(y_true, dtype=np.int64).sum(axis=0)
    share = counts / np.maximum(support, 1)[:, None]
    fig = _figure(9.5, 8.8)
    ax = fig.add_subplot()
    rows = [f"{instrument_name(c)}  n={n}" for c, n in zip(labels, support, strict=True)]
    image = _count_grid(ax, counts, share, rows, [NAMES.get(c, c) for c in labels])
    ax.tick_params(axis="x", labelrotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.set_xlabel("predicted instrument (off the diagonal: predicted but not playing)")
    ax.set_ylabel("true instrument (n = files where it plays)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true instrument's files")
    _title(fig, "Which instrument is heard as which: true (rows) vs predicted (columns)", caption)
    return _save(fig, path)


def _count_grid(
    ax: Axes,
    counts: np.ndarray,
    shade: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    *,
    percent: bool = False,
) -> Any:
    """Heat-map of ``shade`` in [0, 1] with the integer ``counts`` (and the shade as %) in every cell."""
    image = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(cols)), cols, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (i, j), count in np.ndenumerate(counts):
        text = f"{int(count)}\n({shade[i, j]:.0%})" if percent else str(int(count))
        color = "white" if shade[i, j] > 0.55 else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    return image


def _label_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap((2 * k) % 20 + (2 * k) // 20) for k in range(n)]

"""Is a candidate model better than the incumbent on validation? A paired bootstrap over files.

    lumen-test --model A.onnx --dataset-paths SPEC... --out-dir a/
    lumen-test --model B.onnx --dataset-paths SPEC... --out-dir b/
    PYTHONPATH=. .venv/bin/python benchmarks/compare_predictions.py a/predictions.json \\
        b/predictions.json --dataset-paths SPEC... [--out compare.json]

Both ``predictions.json`` must cover the same labelled files (truth comes from ``scan_dataset`` on
the specs). Each resample draws the files with replacement, the same draw for both models, and
scores both with :func:`common.metrics.compute_metrics`: macro-F1 on each model's own thresholded
labels (its stored thresholds), LRAP and top-1 on its probabilities. Reported per metric: A, B,
B - A, its 90 % interval over the resamples and the share of resamples in which B is ahead. A
difference whose interval straddles zero is one that this validation set cannot tell apart, however
the evaluation sets come out.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.datasets import DatasetError, scan_dataset
from common.labels import LABELS
from common.metrics import compute_metrics, label_ranking_average_precision, top1

METRICS = ("f1_macro", "lrap", "top1")


class PredictionsError(ValueError):
    """A predictions.json that is not what lumen-test writes."""


def load_predictions(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """File (absolute path) -> (predicted 0/1 labels, probabilities), in LABELS order."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {
            os.path.abspath(name): (
                np.array([float(entry["labels"][c]) for c in LABELS]),
                np.array([float(entry["probabilities"][c]) for c in LABELS]),
            )
            for name, entry in raw.items()
        }
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictionsError(f"{path}: cannot read it as JSON ({exc})") from exc
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PredictionsError(
            f"{path}: not a lumen-test predictions.json "
            '({path: {"labels": {code: 0|1}, "probabilities": {code: p}}} for every code): '
            f"{type(exc).__name__} {exc}"
        ) from exc


def scores(truth: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """macro-F1 of the 0/1 ``labels`` (already cut at the model's stored thresholds), LRAP and top-1."""
    return {
        "f1_macro": compute_metrics(truth, labels, 0.5)["f1_macro"],
        "lrap": label_ranking_average_precision(truth, probs),
        "top1": top1(truth, probs),
    }


def compare(
    truth: np.ndarray,
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Paired bootstrap of B - A for each metric in :data:`METRICS` (arrays ``[files, labels]``)."""
    point_a, point_b = scores(truth, *a), scores(truth, *b)
    rng = np.random.default_rng(seed)
    n = len(truth)
    diffs: dict[str, list[float]] = {m: [] for m in METRICS}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        sa = scores(truth[idx], a[0][idx], a[1][idx])
        sb = scores(truth[idx], b[0][idx], b[1][idx])
        for m in METRICS:
            if sa[m] is not None and sb[m] is not None:
                diffs[m].append(sb[m] - sa[m])
    out = {}
    for m in METRICS:
        d = np.array(diffs[m])
        low, high = np.percentile(d, [5, 95]) if d.size else (np.nan, np.nan)
        out[m] = {
            "a": point_a[m],
            "b": point_b[m],
            "b_minus_a": None if point_a[m] is None or point_b[m] is None else point_b[m] - point_a[m],
            "ci90_low": float(low),
            "ci90_high": float(high),
            "share_b_ahead": float((d > 0).mean()) if d.size else float("nan"),
        }
    return out


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be within 1..100000, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the incumbent's predictions.json (lumen-test)")
    parser.add_argument("b", type=Path, help="the candidate's predictions.json, same files")
    parser.add_argument("--dataset-paths", nargs="+", required=True, metavar="SPEC")
    parser.add_argument("--resamples", type=_positive, default=1000, help="paired resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the comparison as JSON")
    args = parser.parse_args(argv)
    truth: dict[str, np.ndarray] = {}
    try:
        for spec in args.dataset_paths:
            for item in scan_dataset(spec)[0]:
                truth[os.path.abspath(str(item.path))] = np.asarray(item.labels, dtype=bool)
    except DatasetError as exc:
        parser.error(str(exc))
    try:
        a, b = load_predictions(args.a), load_predictions(args.b)
    except PredictionsError as exc:
        parser.error(str(exc))
    missing = sorted(set(truth) - set(a) | set(truth) - set(b))
    if missing:
        parser.error(f"{len(missing)} labelled files lack a prediction in A or B, e.g. {missing[0]}")
    files = sorted(truth)
    stack = lambda preds, k: np.stack([preds[f][k] for f in files])  # noqa: E731
    result = compare(
        np.stack([truth[f] for f in files]),
        (stack(a, 0), stack(a, 1)),
        (stack(b, 0), stack(b, 1)),
        args.resamples,
        args.seed,
    )
    print(
        f"{len(files)} files, {args.resamples} paired resamples; B - A (90 % interval), share of resamples B ahead"
    )
    for m, r in result.items():
        print(
            f"  {m:9s} A {r['a']:.4f}  B {r['b']:.4f}  B-A {r['b_minus_a']:+.4f} "
            f"[{r['ci90_low']:+.4f}, {r['ci90_high']:+.4f}]  B ahead {r['share_b_ahead']:.0%}"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"files": len(files), "resamples": args.resamples, **result}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

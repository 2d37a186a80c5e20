"""``lumen-test``: predictions, file-level metrics and plots for a ``.ckpt`` or an ``.onnx`` model.

Labelled datasets (irmastrain, irmastest, csv, openmic) give predictions and metrics; bare paths and
``inference:`` specs give predictions only. Mixing the two in one run is refused: metrics over a
subset of the files would silently describe a different dataset than the one named.

Outputs (``--out-dir``, default ``<model stem>_test/`` next to the model):
``predictions.json`` ``{path: {"labels": {code: 0|1}, "probabilities": {code: p}}}``,
``errors.json`` ``{path: reason}`` for every file that could not be used, ``metrics.yaml`` (labelled
runs), ``per_file.csv`` (labelled runs: each file's true and predicted instruments, the instrument
ranked first and where the best-ranked true one came, so misses can be sorted and listened to) and
the PNG plots asked for.

``--engine ray`` runs the same pipeline on Ray Data (:mod:`serving.ray_engine`, imported only then):
results are journaled to ``results.jsonl`` as they arrive (``--resume`` continues an interrupted run)
and also written as ``predictions.parquet``, one row per file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from common.artifact import ArtifactError
from common.datasets import DatasetError, DatasetSpec, Item, parse_spec, scan_dataset
from common.labels import NAMES
from common.metrics import compute_metrics, tune_thresholds
from serving import plots
from serving.evaluation import (
    EvaluationError,
    FilePrediction,
    Predictions,
    Predictor,
    collect,
    load_predictor,
    per_file_scores,
    predict_files,
    resolve_thresholds,
)
from serving.runtime import parse_device

UNLABELLED_TYPES = frozenset({"inference"})
PLOT_FLAGS: dict[str, str] = {
    "save_roc": "roc.png",
    "save_instrument_metrics": "instrument_metrics.png",
    "save_metric_hist": "metric_histograms.png",
    "save_confusion": "confusion.png",
}
CONFUSIONS_FILE = "instrument_confusions.png"
MAX_PRINTED_ERRORS = 20


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _device(text: str) -> str:
    try:
        return str(parse_device(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumen-test",
        description="Predict (and, on labelled data, score) a lumen-audio model file by file.",
    )
    parser.add_argument(
        "--model", "--ckpt", required=True, type=Path, help="a .onnx artifact or a .ckpt checkpoint"
    )
    parser.add_argument(
        "--dataset-paths",
        required=True,
        nargs="+",
        metavar="SPEC",
        help="TYPE:PATH (irmastrain, irmastest, csv, openmic: labelled; inference: unlabelled); "
        "a bare path is inference",
    )
    parser.add_argument(
        "--out-dir", type=Path, help="output folder (default: <model stem>_test/ next to the model)"
    )
    parser.add_argument(
        "--batch-size", type=_count(1), default=32, help="windows per inference batch (default 32)"
    )
    parser.add_argument(
        "--num-workers",
        type=_count(0),
        default=None,
        help="local engine: threads decoding audio ahead of inference, 0 decodes inline (default: "
        "min(4, CPUs)); ray engine: inference actors (default: one per GPU, or 1 to CPUs/2 autoscaled)",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: Ray Data, on this machine or a cluster (extra 'ray')",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="ray engine: the Ray to join, auto (the cluster this machine is a node of, as in a Ray Job) or "
        "HOST:PORT (default: start a local Ray); ray:// (Ray Client) is refused, Ray Data needs a driver "
        "on the cluster",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="ray engine: continue an interrupted run in --out-dir, skipping the files already scored",
    )
    parser.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    thresholds = parser.add_mutually_exclusive_group()
    thresholds.add_argument(
        "--threshold",
        type=float,
        help="one threshold for every instrument instead of the model's calibrated ones",
    )
    thresholds.add_argument(
        "--tune-thresholds-on",
        metavar="SPEC",
        help="labelled validation set to tune per-instrument thresholds on (never the evaluated data)",
    )
    parser.add_argument("--save-roc", action="store_true", help="ROC curve per instrument (roc.png)")
    parser.add_argument(
        "--save-confusion",
        action="store_true",
        help="2x2 confusion per instrument (confusion.png) and which instrument is heard as which "
        "(instrument_confusions.png)",
    )
    parser.add_argument("--save-metric-hist", action="store_true", help="histograms of per-file metrics")
    parser.add_argument(
        "--save-instrument-metrics", action="store_true", help="precision/recall/F1 bars per instrument"
    )
    parser.add_argument("--all-plots", action="store_true", help="every plot above")
    return parser


def default_out_dir(model: Path) -> Path:
    return model.parent / f"{model.stem}_test"


def _parse_specs(texts: Sequence[str]) -> list[DatasetSpec]:
    specs = [parse_spec(text, default_type="inference") for text in texts]
    labelled = [text for text, spec in zip(texts, specs, strict=True) if spec.type not in UNLABELLED_TYPES]
    unlabelled = [text for text, spec in zip(texts, specs, strict=True) if spec.type in UNLABELLED_TYPES]
    if labelled and unlabelled:
        raise EvaluationError(
            f"--dataset-paths mixes labelled {labelled} and unlabelled {unlabelled} datasets; metrics would "
            "cover only part of the files. Run lumen-test once per kind"
        )
    return specs


def _scan(specs: Sequence[DatasetSpec]) -> tuple[list[Item], dict[str, str]]:
    items: list[Item] = []
    errors: dict[str, str] = {}
    for spec in specs:
        found, issues = scan_dataset(spec)
        items.extend(found)
        errors.update({issue.path: issue.error for issue in issues})
    return items, errors


class FilesPerSecondColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- files/s" if speed is None else f"{speed:.1f} files/s", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        FilesPerSecondColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _tracked(
    results: Iterator[FilePrediction], progress: Progress, name: str, total: int
) -> Iterator[FilePrediction]:
    task = progress.add_task(name, total=total)
    for result in results:
        progress.advance(task)
        yield result


def _check_engine(args: argparse.Namespace) -> None:
    if args.engine == "local":
        if args.resume or args.ray_address:
            raise EvaluationError("--resume and --ray-address need --engine ray")
    elif args.model.suffix.lower() != ".onnx":
        raise EvaluationError(
            f"--engine ray runs .onnx artifacts (its workers never import torch); export {args.model} "
            "with lumen-export and pass the .onnx"
        )


def _engine_session(args: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    if args.engine == "local":
        return contextlib.nullcontext()
    from serving.ray_engine import session

    return session(args.ray_address)


def _predict(
    predictor: Predictor,
    items: Sequence[Item],
    args: argparse.Namespace,
    progress: Progress,
    name: str,
    journal: str = "results",
) -> Predictions:
    if args.engine == "ray":
        from serving.ray_engine import predict_items

        task = progress.add_task(name, total=len({os.fspath(item.path) for item in items}))
        return predict_items(
            predictor.source, predictor.metadata, items, args.out_dir / f"{journal}.jsonl",
            resume=args.resume, device=args.device, batch_size=args.batch_size,
            num_workers=args.num_workers, on_rows=lambda n: progress.advance(task, n),
        )  # fmt: skip
    workers = min(4, os.cpu_count() or 1) if args.num_workers is None else args.num_workers
    results = predict_files(predictor, items, batch_size=args.batch_size, num_workers=workers)
    return collect(_tracked(results, progress, name, len(items)), predictor.metadata.labels)


@dataclass(frozen=True)
class Thresholds:
    values: np.ndarray
    source: str
    tuned: bool = False


def _thresholds(
    predictor: Predictor, args: argparse.Namespace, evaluated: Sequence[Item], progress: Progress
) -> Thresholds:
    """Artifact thresholds, a ``--threshold`` override, or thresholds tuned on a separate labelled set."""
    if args.tune_thresholds_on is None:
        source = "artifact" if args.threshold is None else f"--threshold {args.threshold:g}"
        return Thresholds(resolve_thresholds(predictor.metadata, args.threshold), source)
    spec = parse_spec(args.tune_thresholds_on, default_type="inference")
    if spec.type in UNLABELLED_TYPES:
        raise EvaluationError(
            f"--tune-thresholds-on {args.tune_thresholds_on}: tuning needs a labelled dataset "
            "(irmastrain:, irmastest:, csv:, openmic:)"
        )
    items, _ = _scan([spec])
    shared = sorted({str(i.path.resolve()) for i in items} & {str(i.path.resolve()) for i in evaluated})
    if shared:
        raise EvaluationError(
            f"--tune-thresholds-on {args.tune_thresholds_on} shares {len(shared)} file(s) with "
            "--dataset-paths "
            f"(e.g. {shared[0]}); thresholds tuned on the evaluated data inflate its metrics. "
            "Tune on a separate validation set"
        )
    tuning = _predict(predictor, items, args, progress, "tuning set", journal="tuning-results")
    if tuning.targets is None or not tuning.paths:
        raise EvaluationError(f"--tune-thresholds-on {args.tune_thresholds_on}: no readable labelled file")
    values = np.asarray(tune_thresholds(tuning.targets, tuning.probs), dtype=np.float64)
    return Thresholds(values, f"tuned on {args.tune_thresholds_on} ({len(tuning.paths)} files)", tuned=True)


def predictions_document(run: Predictions, thresholds: np.ndarray) -> dict[str, Any]:
    """The ``predictions.json`` mapping; probabilities are the exact float32 values the metrics used."""
    decisions = run.decisions(thresholds)
    return {
        path: {
            "labels": {code: int(d) for code, d in zip(run.labels, row, strict=True)},
            "probabilities": {code: float(p) for code, p in zip(run.labels, probs, strict=True)},
        }
        for path, row, probs in zip(run.paths, decisions, run.probs, strict=True)
    }


PER_FILE_COLUMNS = (
    "file",
    "true",
    "predicted",
    "first",
    "first_probability",
    "true_rank",
    "true_probability",
)


def per_file_rows(run: Predictions, thresholds: np.ndarray) -> list[dict[str, Any]]:
    """One row per labelled file, in input order (see ``per_file.csv`` in the module docstring).

    ``true_rank`` is the rank (1 = highest probability) of the file's best-ranked true instrument,
    ties broken in label order as ``top1`` breaks them (so ``true_rank == 1`` exactly on the files
    ``top1`` counts as hits); empty for a file with no label.
    """
    assert run.targets is not None
    decisions = run.decisions(thresholds)
    rows = []
    for path, probs, truth, decided in zip(run.paths, run.probs, run.targets, decisions, strict=True):
        true_idx = np.flatnonzero(truth)
        first = int(np.argmax(probs))
        row: dict[str, Any] = {
            "file": path,
            "true": " ".join(run.labels[j] for j in true_idx),
            "predicted": " ".join(code for code, d in zip(run.labels, decided, strict=True) if d),
            "first": run.labels[first],
            "first_probability": f"{probs[first]:.4f}",
            "true_rank": "",
            "true_probability": "",
        }
        if true_idx.size:
            best = true_idx[int(np.argmax(probs[true_idx]))]  # the first of the true ones at their maximum
            ahead = (probs > probs[best]) | ((probs == probs[best]) & (np.arange(len(probs)) < best))
            row["true_rank"] = int(ahead.sum()) + 1
            row["true_probability"] = f"{probs[best]:.4f}"
        rows.append(row)
    return rows


def _write_per_file(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_FILE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def metrics_table(
    metrics: dict[str, Any], labels: Sequence[str], thresholds: np.ndarray, title: str
) -> Table:
    """Per-instrument and averaged scores, narrow enough for an 80-column terminal."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("instrument", no_wrap=True)
    for name in ("files", "thresh", "prec.", "recall", "F1", "AUC", "AP"):
        table.add_column(name, justify="right", no_wrap=True)
    per = metrics["per_instrument"]
    for code, threshold in zip(labels, thresholds, strict=True):
        row = per[code]
        table.add_row(
            f"{code} {NAMES.get(code, code)}", str(row["support"]), f"{threshold:.2f}",
            _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), _fmt(row["roc_auc"]),
            _fmt(row["average_precision"]),
        )  # fmt: skip
    table.add_section()
    for avg in ("micro", "macro"):
        macro = avg == "macro"
        table.add_row(
            avg, "", "", _fmt(metrics[f"precision_{avg}"]), _fmt(metrics[f"recall_{avg}"]),
            _fmt(metrics[f"f1_{avg}"]), _fmt(metrics["roc_auc_macro"] if macro else None),
            _fmt(metrics["map"] if macro else None), style="bold",
        )  # fmt: skip
    table.caption = (
        f"accuracy {_fmt(metrics['accuracy'])} | exact match {_fmt(metrics['exact_match'])} | "
        f"hamming {_fmt(metrics['hamming_distance'])} | LRAP {_fmt(metrics['lrap'])} | "
        f"top-1 {_fmt(metrics['top1'])} | mAP {_fmt(metrics['map'])}"
    )
    table.caption_justify = "left"
    return table


def _save_plots(
    args: argparse.Namespace, run: Predictions, decisions: np.ndarray, metrics: dict[str, Any], out_dir: Path
) -> list[Path]:
    """The PNGs the flags ask for; ``run`` is a labelled run."""
    assert run.targets is not None
    caption = plots.caption(args.model.name, args.dataset_paths, len(run.paths))
    wanted = {flag for flag in PLOT_FLAGS if args.all_plots or getattr(args, flag)}
    saved: list[Path] = []
    if "save_roc" in wanted:
        saved.append(
            plots.plot_roc(out_dir / PLOT_FLAGS["save_roc"], run.targets, run.probs, run.labels, caption)
        )
    if "save_instrument_metrics" in wanted:
        path = out_dir / PLOT_FLAGS["save_instrument_metrics"]
        saved.append(plots.plot_instrument_metrics(path, metrics, run.labels, caption))
    if "save_metric_hist" in wanted:
        scores = per_file_scores(run.targets, decisions)
        saved.append(plots.plot_metric_histograms(out_dir / PLOT_FLAGS["save_metric_hist"], scores, caption))
    if "save_confusion" in wanted:
        path = out_dir / PLOT_FLAGS["save_confusion"]
        saved.append(plots.plot_confusion(path, run.targets, decisions, run.labels, caption))
        saved.append(
            plots.plot_confusions(out_dir / CONFUSIONS_FILE, run.targets, decisions, run.labels, caption)
        )
    return saved


def _print_errors(console: Console, errors: dict[str, str], out_dir: Path) -> None:
    if not errors:
        return
    console.print(
        f"[red]{len(errors)} file(s) skipped[/red] (all listed in {escape(str(out_dir / 'errors.json'))}):"
    )
    for path, reason in sorted(errors.items())[:MAX_PRINTED_ERRORS]:
        console.print(f"  {escape(path)}: {escape(reason)}", highlight=False)
    if len(errors) > MAX_PRINTED_ERRORS:
        console.print(f"  ... and {len(errors) - MAX_PRINTED_ERRORS} more")


def _write_metrics(
    out_dir: Path,
    args: argparse.Namespace,
    metrics: dict[str, Any],
    thresholds: Thresholds,
    labels: list[str],
    n_errors: int,
) -> None:
    """``metrics.yaml``: :func:`compute_metrics`' keys, then what produced them (thresholds, model, data)."""
    document = {
        **metrics,
        "thresholds": {c: float(t) for c, t in zip(labels, thresholds.values, strict=True)},
        "threshold_source": thresholds.source,
        "model": os.fspath(args.model),
        "datasets": list(args.dataset_paths),
        "unreadable_files": n_errors,
    }
    (out_dir / "metrics.yaml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def run(args: argparse.Namespace, console: Console, progress_console: Console) -> int:
    """The whole evaluation; raises the module's user-facing errors, returns the exit code."""
    specs = _parse_specs(args.dataset_paths)
    labelled = specs[0].type not in UNLABELLED_TYPES
    wants_plots = args.all_plots or any(getattr(args, flag) for flag in PLOT_FLAGS)
    if not labelled and (wants_plots or args.tune_thresholds_on):
        raise EvaluationError(
            "plots and --tune-thresholds-on need labelled datasets "
            "(irmastrain:, irmastest:, csv:, openmic:); "
            "inference: and bare paths give predictions only"
        )
    if wants_plots:
        plots.require_matplotlib()  # fail before inference, not after it
    _check_engine(args)
    out_dir = args.out_dir = args.out_dir or default_out_dir(args.model)
    items, errors = _scan(specs)
    # The ray engine's driver only reads the artifact's contract; its actors run it on --device.
    predictor = load_predictor(args.model, device="cpu" if args.engine == "ray" else args.device)
    with _engine_session(args), _progress(progress_console) as progress:
        thresholds = _thresholds(predictor, args, items, progress)
        result = _predict(predictor, items, args, progress, "evaluating")
    errors.update(result.errors)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "predictions.json", predictions_document(result, thresholds.values))
    if args.engine == "ray":
        from serving.ray_engine import TABLE_FILE, write_table

        write_table(out_dir / TABLE_FILE, result, thresholds.values)
    _write_json(out_dir / "errors.json", dict(sorted(errors.items())))
    console.print(f"thresholds: {thresholds.source}", highlight=False)
    if thresholds.tuned:
        pairs = zip(result.labels, thresholds.values, strict=True)
        console.print("  " + "  ".join(f"{code} {t:.2f}" for code, t in pairs), highlight=False)
    if result.paths and result.targets is not None:
        metrics = compute_metrics(result.targets, result.probs, thresholds.values, labels=result.labels)
        _write_metrics(out_dir, args, metrics, thresholds, result.labels, len(errors))
        rows = per_file_rows(result, thresholds.values)
        _write_per_file(out_dir / "per_file.csv", rows)
        caption = plots.caption(args.model.name, args.dataset_paths, len(result.paths))
        console.print(metrics_table(metrics, result.labels, thresholds.values, caption))
        for path in _save_plots(args, result, result.decisions(thresholds.values), metrics, out_dir):
            console.print(f"plot: {path}", highlight=False)
        misses = sum(1 for row in rows if row["true_rank"] not in ("", 1))
        console.print(
            f"true instrument not ranked first on {misses} of {len(rows)} files: {out_dir / 'per_file.csv'}",
            highlight=False,
        )
    _print_errors(console, errors, out_dir)
    if not result.paths:
        console.print(f"[red]no file could be evaluated[/red]; see {escape(str(out_dir / 'errors.json'))}")
        return 1
    console.print(
        f"{len(result.paths)} files predicted, {len(errors)} unreadable -> {out_dir}", highlight=False
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return run(args, console, Console(stderr=True))
    except (EvaluationError, ArtifactError, DatasetError, plots.PlotError) as exc:
        print(f"lumen-test: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

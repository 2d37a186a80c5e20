"""``lumen-ensemble``: exported artifacts -> one verified ONNX file that averages their probabilities.

    lumen-ensemble a.onnx b.onnx c.onnx --val-paths irmastest:data/val --out ensemble.onnx

The members' graphs are merged into one file (:mod:`export.ensemble`); its per-instrument thresholds
are tuned on the labelled ``--val-paths`` files — the validation split, never the evaluation set —
and the ensemble's and each member's validation numbers are printed on the same files, so a user
sees whether the ensemble beats its best member before shipping it. The file is written beside its
destination, checked against the members (each run by ONNX Runtime on its own, probabilities
averaged) and only then renamed into place.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from common.artifact import INPUT_NAME, OUTPUT_NAME, ArtifactError
from common.audio import AudioError
from common.datasets import DatasetError
from export.artifact import ExportError, atomic_output
from export.ensemble import (
    LOGIT_EPS,
    MEMBER_PREFIX,
    Member,
    ensemble_metadata,
    load_member,
    member_parity_runner,
    merge,
    session,
    split,
    tune_on,
    with_metadata,
)
from export.onnx import read_onnx_metadata
from export.verify import (
    FP32_TOLERANCE,
    ParityError,
    ParityReport,
    check_parity,
    onnx_runners,
    parity_inputs,
    print_parity,
)

SUMMARY = ("f1_macro", "f1_micro", "lrap", "top1")
REFERENCE = "the members' mean (ONNX Runtime, each member on its own)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumen-ensemble",
        description="Merge exported lumen artifacts (.onnx) into one ONNX file that averages their "
        "probabilities; thresholds are tuned on labelled validation files.",
    )
    parser.add_argument("members", nargs="*", type=Path, metavar="MODEL.onnx", help="two or more artifacts")
    parser.add_argument(
        "--val-paths",
        nargs="+",
        metavar="SPEC",
        help="labelled validation specs (TYPE:PATH) the ensemble's thresholds are tuned on (required when merging)",
    )
    parser.add_argument("--out", type=Path, help="the ensemble artifact to write (required when merging)")
    parser.add_argument(
        "--split",
        type=Path,
        metavar="ENSEMBLE.onnx",
        help="the other way round: write every member of this ensemble artifact as its own artifact "
        "(its own stored thresholds) into --out-dir, each checked against the ensemble's graph",
    )
    parser.add_argument("--out-dir", type=Path, help="with --split: the folder the members are written to")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="windows per ONNX Runtime call (default 64)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line while tuning")
    return parser


def _mean_of_members(members: Sequence[Member]):  # noqa: ANN202 - a Runner
    sessions = [session(m.path) for m in members]

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = np.mean([s.run([OUTPUT_NAME], {INPUT_NAME: batch})[0] for s in sessions], axis=0)
        clipped = np.clip(probs, LOGIT_EPS, 1 - LOGIT_EPS)
        return probs.astype(np.float32), np.log(clipped / (1 - clipped)).astype(np.float32)

    return run


def _row(name: str, metrics: dict[str, object]) -> str:
    cells = "  ".join(
        f"{key} {metrics[key]:.3f}" if metrics[key] is not None else f"{key} -" for key in SUMMARY
    )
    return f"  {name:<40} {cells}"


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def _split(path: Path, out_dir: Path) -> int:
    """``--split``: every member of ``path`` written to ``out_dir`` and checked against the ensemble."""
    started = time.perf_counter()
    try:
        if not out_dir.is_dir():
            raise ExportError(f"--out-dir {out_dir} is not a folder")
        ensemble = load_member(path)
        parts = split(ensemble.model, ensemble.metadata)
        targets = [out_dir / part.name for part in parts]
        taken = [t for t in targets if t.exists()]
        if taken:
            raise ExportError(f"{taken[0]} exists; not overwriting a member (choose an empty --out-dir)")
        print(f"lumen-ensemble --split: {len(parts)} members of {path} -> {out_dir}", flush=True)
        inputs = parity_inputs(ensemble.metadata.window_samples, ensemble.metadata.sample_rate)
        for part, target in zip(parts, targets, strict=True):
            with atomic_output(target) as tmp:
                onnx.save_model(part.model, tmp, save_as_external_data=False)
                if read_onnx_metadata(tmp) != part.metadata:
                    raise ExportError(
                        f"the metadata read back differs from what was written; not writing {target}"
                    )
                report = check_parity(
                    member_parity_runner(ensemble.model, part.index),
                    onnx_runners(tmp),
                    inputs,
                    FP32_TOLERANCE,
                )
            print(
                f"  m{part.index} (recorded as {part.recorded_file!r}) -> {target} ({target.stat().st_size / 1e6:.1f} MB, {part.metadata.architecture}), "
                f"worst max |dprobs| vs the ensemble's m{part.index} {report.worst.probs_diff:.2e}; "
                "thresholds "
                + " ".join(
                    f"{c} {t:.2f}"
                    for c, t in zip(part.metadata.labels, part.metadata.thresholds, strict=True)
                )
            )
    except ParityError as exc:
        print_parity(exc.report, "the member inside the ensemble graph")
        print(f"lumen-ensemble: error: {exc}", file=sys.stderr)
        return 1
    except (ExportError, ArtifactError) as exc:
        print(f"lumen-ensemble: error: {exc}", file=sys.stderr)
        return 1
    print(f"split {path} in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.split is not None:
        if args.members or args.out is not None or args.val_paths:
            parser.error("--split takes no members, --out or --val-paths; it writes into --out-dir")
        if args.out_dir is None:
            parser.error("--split needs --out-dir")
        return _split(args.split, args.out_dir)
    if args.out_dir is not None:
        parser.error("--out-dir is for --split; a merge writes one file, --out")
    if args.out is None or not args.val_paths:
        parser.error("merging needs --out and --val-paths")
    if len(args.members) < 2:
        parser.error(f"an ensemble needs at least 2 members, got {len(args.members)}")
    if len(set(p.resolve() for p in args.members)) != len(args.members):
        parser.error("a member is given twice; an ensemble of copies is the member itself")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out.resolve() in {p.resolve() for p in args.members}:
        parser.error(f"--out {args.out} is one of the members; choose another path")
    started = time.perf_counter()
    try:
        members = [load_member(path) for path in args.members]
        print(f"lumen-ensemble: {len(members)} members -> {args.out}", flush=True)
        probe = merge(members, expose_members=True)
        probe_session = session(probe)
        n = len(members)
        names = [OUTPUT_NAME] + [MEMBER_PREFIX.format(i) + OUTPUT_NAME for i in range(n)]

        def run(batch: np.ndarray) -> list[np.ndarray]:
            return probe_session.run(names, {INPUT_NAME: batch})

        with _progress_bar(not args.no_progress) as bar:
            task = bar.add_task("tuning thresholds on validation", total=None)
            tuning = tune_on(
                run,
                members[0].metadata,
                args.val_paths,
                batch_size=args.batch_size,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        meta = ensemble_metadata(members, tuning.thresholds[0])
        model = with_metadata(merge(members), meta)
        report: ParityReport
        with atomic_output(args.out) as tmp:
            onnx.save_model(model, tmp, save_as_external_data=False)
            if read_onnx_metadata(tmp) != meta:
                raise ExportError(
                    f"the metadata read back differs from what was written; not writing {args.out}"
                )
            inputs = parity_inputs(meta.window_samples, meta.sample_rate)
            report = check_parity(_mean_of_members(members), onnx_runners(tmp), inputs, FP32_TOLERANCE)
            size = tmp.stat().st_size
    except ParityError as exc:
        print_parity(exc.report, REFERENCE)
        print(f"lumen-ensemble: error: {exc}; {args.out} was not written", file=sys.stderr)
        return 1
    except (ExportError, ArtifactError, AudioError, DatasetError) as exc:
        print(f"lumen-ensemble: error: {exc}", file=sys.stderr)
        return 1
    print(f"validation, {tuning.files} files, each at thresholds tuned on them:")
    print(_row("ensemble", tuning.metrics[0]))
    for member, metrics in zip(members, tuning.metrics[1:], strict=True):
        print(_row(str(member.path), metrics))
    if tuning.skipped:
        print(
            f"  {len(tuning.skipped)} file(s) could not be read and were left out, e.g. "
            f"{next(iter(tuning.skipped.items()))}"
        )
    print(
        "thresholds: " + ", ".join(f"{c} {t:.2f}" for c, t in zip(meta.labels, meta.thresholds, strict=True))
    )
    print_parity(report, REFERENCE)
    print(
        f"wrote {args.out} ({size / 1e6:.1f} MB, {meta.architecture}) in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``lumen-export``: a lumen checkpoint -> one verified artifact (ONNX by default).

The artifact is written to a temporary file beside its destination, verified against the eager
PyTorch model (unless ``--no-verify``), and only then renamed into place, so the destination is
either the previous file or a complete, checked new one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.artifact import ArtifactError, ArtifactMetadata
from common.audio import AudioError, load_audio, split_windows
from export.artifact import (
    FORMATS,
    ExportError,
    ProbsAndLogits,
    atomic_output,
    build_metadata,
    default_output,
    half_precision,
)
from export.onnx import DEFAULT_OPSET, check_opset, read_onnx_metadata, write_onnx
from export.torchscript import load_pt2, load_torchscript, write_pt2, write_torchscript
from export.verify import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ParityError,
    ParityReport,
    Runner,
    check_parity,
    onnx_runners,
    parity_inputs,
    print_parity,
    torch_runner,
)
from training.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint

DEFAULT_BATCH_HINT = 2
REFERENCE = "the PyTorch model (float32, eager)"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    metadata: ArtifactMetadata
    parity: ParityReport | None
    size_bytes: int


def _load_and_runners(fmt: str, path: Path) -> tuple[ArtifactMetadata, dict[str, Runner]]:
    """Read the written file back as its consumer would: its metadata and how to run it."""
    if fmt == "onnx":
        return read_onnx_metadata(path), onnx_runners(path)
    load = load_torchscript if fmt == "torchscript" else load_pt2
    module, meta = load(path)
    return meta, {f"{fmt} (torch CPU)": torch_runner(module)}


def export_checkpoint(
    loaded: LoadedCheckpoint,
    fmt: str,
    out: Path,
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    batch_hint: int = DEFAULT_BATCH_HINT,
    verify: bool = True,
    audio_windows: np.ndarray | None = None,
) -> ExportResult:
    """Write ``loaded`` to ``out`` in format ``fmt``; with ``verify``, only if parity holds.

    Raises :class:`ExportError` (one line, names the model and the reason) and
    :class:`~export.verify.ParityError` (which also carries the full report).
    """
    architecture = loaded.config.model.model
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fp16 and fmt != "onnx":
        raise ExportError(f"--fp16 is only supported with --format onnx (for GPU serving), not {fmt}")
    if batch_hint < 2:
        raise ExportError(
            f"--batch-hint must be >= 2, got {batch_hint}: a batch of 1 would be specialised into the graph"
        )
    if fmt == "onnx":
        check_opset(opset)
    meta = build_metadata(loaded)
    model = half_precision(loaded.model) if fp16 else loaded.model
    module = ProbsAndLogits(model).eval()
    writers: dict[str, Callable[[Path], None]] = {
        "onnx": lambda tmp: write_onnx(module, meta, tmp, opset=opset, batch_hint=batch_hint),
        "torchscript": lambda tmp: write_torchscript(module, meta, tmp, batch_hint=batch_hint),
        "pt2": lambda tmp: write_pt2(module, meta, tmp, batch_hint=batch_hint),
    }
    report = None
    with atomic_output(out) as tmp:
        writers[fmt](tmp)
        if verify:
            written, runners = _load_and_runners(fmt, tmp)
            if written != meta:
                raise ExportError(
                    f"{architecture}: the {fmt} metadata read back differs from what was written; not writing {out}"
                )
            inputs = parity_inputs(meta.window_samples, meta.sample_rate, audio_windows)
            tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
            report = check_parity(ProbsAndLogits(loaded.model), runners, inputs, tolerance)
        size = tmp.stat().st_size
    return ExportResult(path=out, format=fmt, metadata=meta, parity=report, size_bytes=size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lumen-export",
        description="Export a lumen-audio checkpoint to ONNX (front-end inside), TorchScript or torch.export, "
        "verified against the PyTorch model.",
    )
    parser.add_argument("ckpt", type=Path, help="lumen-train checkpoint (.ckpt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="artifact format (default: onnx)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (default: next to CKPT, e.g. best.ckpt -> best.onnx, with --fp16 best.fp16.onnx)",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="ONNX only: float16 backbone/head for GPU serving (front-end log and sigmoid stay float32); "
        "lumen-serve --device cuda serves X.fp16.onnx in place of X.onnx when both exist",
    )
    parser.add_argument(
        "--batch-hint",
        type=int,
        default=DEFAULT_BATCH_HINT,
        help="example batch size to trace with (>= 2; the exported batch axis stays dynamic)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against PyTorch")
    parser.add_argument(
        "--verify-audio",
        type=Path,
        default=None,
        help="an audio file whose windows the parity check uses (default: synthesized notes)",
    )
    return parser


def _audio_windows(path: Path, loaded: LoadedCheckpoint) -> np.ndarray:
    """The file cut exactly as serving cuts it (same rate, normalisation, window and hop)."""
    config = loaded.config
    audio = load_audio(path, config.frontend.sample_rate, normalize=config.normalize_audio)
    return split_windows(audio, config.window_samples, config.hop_samples).audio


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out if args.out is not None else default_output(args.ckpt, args.format)
    if args.out is None and args.fp16 and args.format == "onnx":
        # best.fp16.onnx beside best.onnx: what lumen-serve --device cuda picks up automatically
        out = out.with_name(out.stem + ".fp16.onnx")
    started = time.perf_counter()
    try:
        loaded = load_checkpoint(args.ckpt)  # first: an .onnx passed as CKPT is "not a checkpoint"
        if out.resolve() == args.ckpt.resolve():
            raise ExportError(f"--out {out} is the checkpoint itself; choose another output path")
        windows = _audio_windows(args.verify_audio, loaded) if args.verify_audio is not None else None
        precision = "fp16" if args.fp16 else "fp32"
        print(
            f"lumen-export: {loaded.config.model.model} from {args.ckpt} -> {out} "
            f"({args.format}{f', opset {args.opset}' if args.format == 'onnx' else ''}, {precision})",
            flush=True,
        )
        if not args.no_verify:
            source = (
                f"{args.verify_audio} ({len(windows)} windows)"
                if windows is not None
                else "synthesized notes"
            )
            print(f"audio windows: {source}", flush=True)
        result = export_checkpoint(
            loaded,
            args.format,
            out,
            opset=args.opset,
            fp16=args.fp16,
            batch_hint=args.batch_hint,
            verify=not args.no_verify,
            audio_windows=windows,
        )
    except ParityError as exc:
        print_parity(exc.report, REFERENCE)
        print(f"lumen-export: error: {exc}; {out} was not written", file=sys.stderr)
        return 1
    except (CheckpointError, ExportError, ArtifactError, AudioError) as exc:
        print(f"lumen-export: error: {exc}", file=sys.stderr)
        return 1
    if result.parity is not None:
        print_parity(result.parity, REFERENCE)
    else:
        print("parity check skipped (--no-verify)")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

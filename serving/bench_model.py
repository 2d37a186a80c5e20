"""``lumen-bench model``: offline latency and throughput of an artifact in ONNX Runtime, per batch size.

It answers "what does the server's compute cost, without the HTTP and batching around it?" and,
with ``--compare-torch CKPT``, "how much does the ONNX artifact gain over eager PyTorch?". Both
runtimes get the same input, the same thread count and the same warm-up; latency is wall time per
``run`` call (one batch), so p50/p90/p99 are per batch and windows/s = batch size / mean latency.

The artifact is loaded with :class:`serving.runtime.OnnxModel`, i.e. with exactly the session
options the server uses. torch, training and export are imported only when asked for (a ``.ckpt``
argument or ``--compare-torch``), so this command works in the torch-free serving image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from common.artifact import ArtifactError, ArtifactMetadata
from serving.cpu_budget import usable_cpus
from serving.runtime import OnnxModel

CKPT_SUFFIX = ".ckpt"
MAX_BATCH_SIZE = 1024

BatchRunner = Callable[[np.ndarray], object]


class BenchError(ValueError):
    """Bad benchmark input; the message names the flag or file."""


@dataclass(frozen=True)
class Timing:
    iterations: int
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    windows_per_s: float
    audio_seconds_per_s: float


@dataclass(frozen=True)
class BatchResult:
    batch_size: int
    ort: Timing
    torch: Timing | None
    # ORT throughput / torch throughput: > 1 means the artifact is faster.
    speedup: float | None


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,4,16"`` -> ``[1, 4, 16]`` (sorted, unique, each in 1..MAX_BATCH_SIZE)."""
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise BenchError(f"--batch-sizes {text!r} must be comma-separated integers, e.g. 1,4,16,64") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_BATCH_SIZE:
        raise BenchError(f"--batch-sizes {text!r}: give sizes in 1..{MAX_BATCH_SIZE}, e.g. 1,4,16,64")
    return sizes


def default_threads() -> int:
    """The cores this process may run on: affinity and cgroup quota (not the machine's total)."""
    return usable_cpus()


def phase_means_ms(phases: dict[int, list[dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Mean milliseconds of each phase per batch size."""
    return {
        size: {key: 1000.0 * float(np.mean([split[key] for split in splits])) for key in splits[0]}
        for size, splits in sorted(phases.items())
    }


def time_batches(run: BatchRunner, batch: np.ndarray, *, warmup: int, iters: int) -> list[float]:
    """Seconds per ``run(batch)`` call, ``iters`` of them after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run(batch)
    seconds = []
    for _ in range(iters):
        start = time.perf_counter()
        run(batch)
        seconds.append(time.perf_counter() - start)
    return seconds


def summarize(seconds: list[float], batch_size: int, window_seconds: float) -> Timing:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    windows_per_s = batch_size * len(seconds) / float(np.sum(seconds))
    return Timing(
        iterations=len(seconds),
        latency_ms_p50=p50,
        latency_ms_p90=p90,
        latency_ms_p99=p99,
        latency_ms_mean=float(ms.mean()),
        windows_per_s=windows_per_s,
        audio_seconds_per_s=windows_per_s * window_seconds,
    )


def bench_windows(batch_size: int, window_samples: int) -> np.ndarray:
    """Deterministic input; the models' cost does not depend on the values."""
    rng = np.random.default_rng(batch_size)
    return rng.uniform(-0.5, 0.5, (batch_size, window_samples)).astype(np.float32)


def run_benchmark(
    run_ort: BatchRunner,
    run_torch: BatchRunner | None,
    meta: ArtifactMetadata,
    batch_sizes: list[int],
    *,
    warmup: int,
    iters: int,
    on_result: Callable[[BatchResult], None] = lambda result: None,
) -> list[BatchResult]:
    """Time ORT (and torch) at every batch size; ``on_result`` sees each row as soon as it is measured."""
    results = []
    for size in batch_sizes:
        batch = bench_windows(size, meta.window_samples)
        ort_timing = summarize(
            time_batches(run_ort, batch, warmup=warmup, iters=iters), size, meta.window_seconds
        )
        torch_timing = None
        if run_torch is not None:
            torch_seconds = time_batches(run_torch, batch, warmup=warmup, iters=iters)
            torch_timing = summarize(torch_seconds, size, meta.window_seconds)
        speedup = ort_timing.windows_per_s / torch_timing.windows_per_s if torch_timing else None
        results.append(BatchResult(batch_size=size, ort=ort_timing, torch=torch_timing, speedup=speedup))
        on_result(results[-1])
    return results


def session_options(model: OnnxModel) -> dict[str, Any]:
    """The options the session really runs with, as reported by ONNX Runtime."""
    options = model.session.get_session_options()
    return {
        "graph_optimization_level": str(options.graph_optimization_level).rpartition(".")[2],
        "execution_mode": str(options.execution_mode).rpartition(".")[2],
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "providers": model.active_providers,
        "onnxruntime": ort.__version__,
    }


def export_for_bench(checkpoint: Path, workdir: Path) -> Path:
    """A ``.ckpt`` given as the artifact: export it (verified, fp32) into ``workdir`` first."""
    from export.cli import export_checkpoint  # torch side: only for a .ckpt argument
    from training.checkpoint import load_checkpoint

    out = workdir / (checkpoint.stem + ".onnx")
    export_checkpoint(load_checkpoint(checkpoint), "onnx", out)
    return out


def torch_runner(
    checkpoint: Path, meta: ArtifactMetadata, threads: int
) -> tuple[BatchRunner, dict[str, Any]]:
    """The checkpoint's eager model (``inference_mode``, ``threads`` intra-op threads) and a description."""
    try:
        import torch

        from training.checkpoint import load_checkpoint
    except ImportError as exc:
        raise BenchError(
            f"--compare-torch needs torch and the training extra ({exc}); pip install '.[train]'"
        ) from None
    loaded = load_checkpoint(checkpoint)
    if loaded.config.window_samples != meta.window_samples:
        raise BenchError(
            f"--compare-torch {checkpoint}: window of {loaded.config.window_samples} samples, but the artifact "
            f"takes {meta.window_samples}; compare the checkpoint the artifact was exported from"
        )
    torch.set_num_threads(threads)
    model = loaded.model.eval()

    def run(batch: np.ndarray) -> object:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(batch))).numpy()

    info = {
        "checkpoint": str(checkpoint),
        "same_checkpoint_as_artifact": loaded.sha256 == meta.source_checkpoint_sha256,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return run, info


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _latencies(timing: Timing) -> str:
    return " / ".join(_ms(v) for v in (timing.latency_ms_p50, timing.latency_ms_p90, timing.latency_ms_p99))


def results_table(title: str, compare: bool) -> Table:
    table = Table(title=title)
    columns = ["batch", "ORT ms p50/p90/p99", "ORT windows/s", "ORT audio s/s"]
    if compare:
        columns += ["torch ms p50/p90/p99", "torch windows/s", "ORT/torch"]
    for name in columns:
        table.add_column(name, justify="right")
    return table


def add_row(table: Table, result: BatchResult) -> None:
    o = result.ort
    cells = [str(result.batch_size), _latencies(o), f"{o.windows_per_s:.1f}", f"{o.audio_seconds_per_s:.1f}"]
    if result.torch is not None and result.speedup is not None:
        cells += [_latencies(result.torch), f"{result.torch.windows_per_s:.1f}", f"{result.speedup:.2f}x"]
    table.add_row(*cells)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "model",
        help="time an artifact in ONNX Runtime per batch size (optionally vs eager PyTorch)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "artifact", type=Path, help="an exported .onnx (or a .ckpt, exported to a temporary file first)"
    )
    p.add_argument(
        "--batch-sizes", default="1,4,16,64", help="comma-separated batch sizes (default: 1,4,16,64)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads for ORT and torch (default: usable cores)"
    )
    p.add_argument(
        "--compare-torch", type=Path, default=None, metavar="CKPT", help="also time this checkpoint"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, cuda or cuda:N: the server's I/O path (on CUDA: bound device buffers, and the "
        "per-batch split of host->device copy / compute / device->host copy is reported)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per batch size (default: 3)")
    p.add_argument("--iters", type=int, default=20, help="timed runs per batch size (default: 20)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> tuple[list[int], int]:
    sizes = parse_batch_sizes(args.batch_sizes)
    threads = args.threads if args.threads is not None else default_threads()
    if threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    if args.warmup < 0 or args.iters < 1:
        raise BenchError(f"--warmup must be >= 0 and --iters >= 1, got {args.warmup} and {args.iters}")
    if not args.artifact.is_file():
        raise BenchError(f"{args.artifact}: file not found")
    if args.compare_torch is not None and not args.compare_torch.is_file():
        raise BenchError(f"--compare-torch {args.compare_torch}: file not found")
    return sizes, threads


def run(args: argparse.Namespace) -> int:
    # Piped output (a file, CI log) has no terminal width; rich would squeeze the table into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    try:
        sizes, threads = _check_args(args)
        with tempfile.TemporaryDirectory(prefix="lumen-bench-") as workdir:
            artifact = args.artifact
            if artifact.suffix == CKPT_SUFFIX:
                console.print(f"exporting {artifact} to ONNX for the benchmark ...")
                artifact = export_for_bench(artifact, Path(workdir))
            model = OnnxModel(artifact, args.device, intra_op_threads=threads, max_batch_size=max(sizes))
        meta = model.metadata
        run_torch, torch_info = None, None
        if args.compare_torch is not None:
            run_torch, torch_info = torch_runner(args.compare_torch, meta, threads)
            if not torch_info["same_checkpoint_as_artifact"]:
                console.print(
                    f"[yellow]warning:[/] {args.compare_torch} is not the checkpoint {args.artifact} was exported "
                    "from (sha256 differs); the speed comparison still holds if the architecture matches"
                )
    except (BenchError, ArtifactError) as exc:
        print(f"lumen-bench model: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BenchError) else 1
    except ValueError as exc:  # training.checkpoint.CheckpointError, export.artifact.ExportError
        print(f"lumen-bench model: error: {exc}", file=sys.stderr)
        return 1
    options = session_options(model)
    machine = {
        "cpus_usable": default_threads(),
        "cpus_total": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
    }
    console.print(
        f"{meta.architecture}: {meta.window_samples} samples ({meta.window_seconds:g} s) per window; "
        f"ORT {options['providers'][0]}, {options['graph_optimization_level']}, {options['execution_mode']}, "
        f"intra-op threads {threads}, inter-op {options['inter_op_num_threads']}; warm-up {args.warmup}, "
        f"{args.iters} timed runs per batch size; load average {machine['load_average_1m']} on "
        f"{machine['cpus_usable']} usable core(s)"
    )
    table = results_table(f"lumen-bench model: {args.artifact.name}", compare=run_torch is not None)
    phases: dict[int, list[dict[str, float]]] = {}

    def run_ort(batch: np.ndarray) -> object:
        probs = model.run(batch)
        split = model.last_phases()
        if split is not None:
            phases.setdefault(len(batch), []).append(split)
        return probs

    with console.status("timing ..."):  # transient: shown on a terminal only
        results = run_benchmark(
            run_ort,
            run_torch,
            meta,
            sizes,
            warmup=args.warmup,
            iters=args.iters,
            on_result=lambda result: add_row(table, result),
        )
    console.print(table)
    phases_ms = phase_means_ms(phases)
    for size, split in phases_ms.items():
        console.print(
            f"batch {size}: host->device {split['h2d']:.3f} ms, compute {split['compute']:.3f} ms, "
            f"device->host {split['d2h']:.3f} ms (means over warm-up and timed runs)"
        )
    if args.json is not None:
        document = {
            "artifact": str(args.artifact),
            "architecture": meta.architecture,
            "window_samples": meta.window_samples,
            "sample_rate": meta.sample_rate,
            "threads": threads,
            "warmup": args.warmup,
            "iters": args.iters,
            "ort_session": options,
            "torch": torch_info,
            "machine": machine,
            "results": [asdict(r) for r in results],
            "device": str(model.device),
            # h2d / compute / d2h per batch size: only where the I/O is bound (CUDA); the CPU EP reads
            # the numpy input in place, so there is no copy to split off.
            "phases_ms": phases_ms or None,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0

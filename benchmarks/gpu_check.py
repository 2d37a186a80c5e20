"""The driver of ``benchmarks/gpu_check.sh``: train, export, parity and inference numbers in one JSON.

Run it through the shell script (it installs carried wheels and sets the paths). Modes:

- ``gpu``: real sizes (16 kHz, 3 s windows, 128 mels): ``lumen-train`` with ``--accelerator gpu
  --precision bf16-mixed``, timed train steps on the GPU (bf16 autocast) against the CPU (fp32),
  export + parity of the trained checkpoint, torch CUDA against ONNX Runtime (CPU EP, and the CUDA EP
  with lumen's bound device buffers only where this onnxruntime has it), 1 vs 2 model instances.
- ``cpu``: the same steps on the CPU at CI size (8 kHz, 1 s windows, 32 mels, a handful of steps).

Nothing here downloads anything; every failure is recorded in the JSON with its reason, and the
exit status is non-zero when a step that should work did not.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("SMALL_CNN", "MOBILENET_V3_SMALL")  # the lumen CNN and one timm CNN
MODELS_ENV = (
    "LUMEN_GPU_CHECK_MODELS"  # e.g. "SMALL_CNN": the test's subset (the timm export alone takes ~1 min)
)
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "sample_rate": 16000, "window_seconds": 3.0, "n_mels": 128, "n_fft": 400, "hop_length": 160,
        "train_items": 128, "train_batch": 32, "timed_steps": 20, "cpu_timed_steps": 3,
        "infer_batches": (1, 8, 32), "infer_iters": 20, "instance_batches": 48, "deadline_s": 540,
    },
    "cpu": {
        "sample_rate": 8000, "window_seconds": 1.0, "n_mels": 32, "n_fft": 256, "hop_length": 128,
        "train_items": 8, "train_batch": 4, "timed_steps": 2, "cpu_timed_steps": 2,
        "infer_batches": (1, 4), "infer_iters": 3, "instance_batches": 8, "deadline_s": 300,
    },
}  # fmt: skip
CUDA_EP_MISSING = (
    "this onnxruntime ({version}, providers {providers}) has no CUDAExecutionProvider: the CUDA EP needs "
    "an onnxruntime-gpu build matching the host's CUDA (torch reports CUDA {cuda}); PyPI's onnxruntime-gpu "
    "wheel is ~255 MB and built for CUDA 12, beyond the 64 MB of carried wheels, so it was not measured"
)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def environment() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        result = subprocess.run(query, capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = result.stdout.strip() or result.stderr.strip()
    return env


def write_dataset(root: Path, size: dict[str, Any]) -> tuple[Path, Path]:
    """Two ``csv:`` datasets of tone clips, one label per clip (cycling through the 11 codes)."""
    import soundfile as sf

    from common.labels import LABELS

    rate, seconds = size["sample_rate"], size["window_seconds"] * 2
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(0)
    paths = []
    for name, count in (("train", size["train_items"]), ("val", len(LABELS))):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            label = i % len(LABELS)
            tone = np.sin(2 * np.pi * (110.0 * (label + 1)) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(folder / f"{i:04d}.wav", (0.3 * tone).astype(np.float32), rate)
            rows.append({"file": f"{i:04d}.wav", **{c: int(k == label) for k, c in enumerate(LABELS)}})
        csv_path = folder / "labels.csv"
        with csv_path.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        paths.append(csv_path)
    return paths[0], paths[1]


def train_cli(
    model: str, train: Path, val: Path, out: Path, size: dict[str, Any], gpu: bool, timeout: float
) -> dict[str, Any]:
    """One epoch of the real ``lumen-train`` (a few steps) in a subprocess; the checkpoint it wrote."""
    precision = "bf16-mixed" if gpu else "32-true"
    command = [
        sys.executable, "-m", "training.cli", "--train-paths", f"csv:{train}", "--val-paths", f"csv:{val}",
        "--model", model, "--no-pretrained", "--sample-rate", str(size["sample_rate"]),
        "--window-seconds", str(size["window_seconds"]), "--hop-seconds", str(size["window_seconds"] / 2),
        "--n-mels", str(size["n_mels"]), "--n-fft", str(size["n_fft"]), "--hop-length", str(size["hop_length"]),
        "--epochs", "1", "--batch-size", str(size["train_batch"]), "--nofinetune-head", "--num-workers", "2",
        "--output-dir", str(out), "--experiment-suffix", model.lower(), "--seed", "0",
        "--accelerator", "gpu" if gpu else "cpu", "--devices", "1", "--precision", precision,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    seconds = time.perf_counter() - started
    match = re.search(r"best checkpoint (\S+\.ckpt)", result.stdout)
    record: dict[str, Any] = {
        "ok": result.returncode == 0 and match is not None,
        "seconds": round(seconds, 1),
        "steps": -(-size["train_items"] // size["train_batch"]),
        "precision": precision,
        "accelerator": "gpu" if gpu else "cpu",
    }
    if match:
        record["checkpoint"] = match.group(1)
    if not record["ok"]:
        record["error"] = (result.stderr or result.stdout).strip().splitlines()[-15:]
    return record


def step_rate(config: Any, device: str, steps: int, bf16: bool) -> dict[str, float]:
    """Train steps/s (forward with the on-device front-end, backward, AdamW) after two warm-up steps."""
    import torch

    from training.models import build_model

    model = build_model(config, load_pretrained=False).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    waves = torch.randn(config.batch_size, config.window_samples, device=device) * 0.1
    labels = torch.zeros(config.batch_size, len(config.labels), device=device)
    labels[:, 0] = 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(waves)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    return {
        "steps_per_s": round(steps / seconds, 3),
        "windows_per_s": round(steps * config.batch_size / seconds, 1),
        "batch_size": config.batch_size,
        "precision": "bf16-mixed" if bf16 else "fp32",
    }


def export_and_parity(checkpoint: Path, out: Path, fp16: bool) -> dict[str, Any]:
    """``lumen-export`` in process (it verifies ORT CPU against eager torch and refuses on failure)."""
    from export.cli import export_checkpoint
    from training.checkpoint import load_checkpoint

    started = time.perf_counter()
    try:
        result = export_checkpoint(load_checkpoint(checkpoint), "onnx", out, fp16=fp16)
    except Exception as exc:  # noqa: BLE001 - recorded, the JSON says what failed
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    report = result.parity
    assert report is not None
    return {
        "ok": report.ok,
        "path": str(out),
        "seconds": round(time.perf_counter() - started, 1),
        "size_mb": round(result.size_bytes / 1e6, 2),
        "worst_probs_diff": report.worst.probs_diff,
        "tolerance": report.tolerance,
    }


def p50_ms(run: Callable[[], Any], iters: int, sync: Callable[[], None] = lambda: None) -> float:
    run()
    sync()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def instance_rate(model: Any, batch: np.ndarray, batches: int, instances: int) -> float:
    """Windows/s through :class:`serving.batcher.Batcher` with ``instances`` batches in flight."""
    from serving.batcher import Batcher

    async def scenario() -> float:
        size = len(batch)
        batcher = Batcher(
            model.runners[:instances],
            name="check",
            max_batch_size=size,
            max_delay_s=0.0,
            max_queue=size * batches,
        )
        await batcher.submit(batch)
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(batch) for _ in range(batches)))
        seconds = time.perf_counter() - started
        await batcher.close()
        return size * batches / seconds

    return round(asyncio.run(scenario()), 1)


def inference(
    onnx_path: Path, fp16_path: Path | None, checkpoint: Path, size: dict[str, Any], gpu: bool
) -> dict:
    """Torch (CUDA on a GPU host, else CPU) against ORT CPU EP and, where present, ORT CUDA EP."""
    import onnxruntime as ort
    import torch

    from serving.runtime import CUDA_PROVIDER, OnnxModel
    from training.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    window = loaded.config.window_samples
    rng = np.random.default_rng(1)
    windows = {b: (0.1 * rng.standard_normal((b, window))).astype(np.float32) for b in size["infer_batches"]}
    largest = max(windows)
    device = "cuda" if gpu else "cpu"
    net = loaded.model.to(device).eval()

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    def torch_probs(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(net(torch.from_numpy(x).to(device))).float().cpu().numpy()

    out: dict[str, Any] = {"window_samples": window, "batch_sizes": list(windows)}
    reference = torch_probs(windows[largest])
    out[f"torch_{device}_p50_ms"] = {
        b: p50_ms(lambda x=x: torch_probs(x), size["infer_iters"], sync) for b, x in windows.items()
    }
    cpu_ep = OnnxModel(onnx_path, "cpu", instances=2, max_batch_size=largest)
    out["ort_cpu_p50_ms"] = {
        b: p50_ms(lambda x=x: cpu_ep.run(x), size["infer_iters"]) for b, x in windows.items()
    }
    out[f"max_abs_diff_torch_{device}_vs_ort_cpu"] = float(
        np.abs(cpu_ep.run(windows[largest]) - reference).max()
    )
    out["ort_cpu_instances_windows_per_s"] = {
        n: instance_rate(cpu_ep, windows[largest], size["instance_batches"], n) for n in (1, 2)
    }
    if CUDA_PROVIDER not in ort.get_available_providers():
        out["ort_cuda"] = {
            "skipped": CUDA_EP_MISSING.format(
                version=ort.__version__, providers=ort.get_available_providers(), cuda=torch.version.cuda
            )
        }
        return out
    cuda: dict[str, Any] = {}
    for name, path in (("fp32", onnx_path), ("fp16", fp16_path)):
        if path is None:
            continue
        model = OnnxModel(path, "cuda", instances=2, max_batch_size=largest, prefer_fp16=False)
        model.warmup(model.buckets)
        cuda[name] = {
            "active_providers": model.active_providers,
            "p50_ms": {
                b: p50_ms(lambda x=x, m=model: m.run(x), size["infer_iters"]) for b, x in windows.items()
            },
            "max_abs_diff_vs_torch_cuda": float(np.abs(model.run(windows[largest]) - reference).max()),
            "instances_windows_per_s": {
                n: instance_rate(model, windows[largest], size["instance_batches"], n) for n in (1, 2)
            },
        }
    try:
        graphs = OnnxModel(onnx_path, "cuda", instances=1, max_batch_size=largest, cuda_graph=True)
        graphs.warmup(graphs.buckets)
        cuda["fp32_cuda_graph"] = {
            "enabled": graphs.cuda_graph,
            "p50_ms": {b: p50_ms(lambda x=x: graphs.run(x), size["infer_iters"]) for b, x in windows.items()},
            "max_abs_diff_vs_torch_cuda": float(np.abs(graphs.run(windows[largest]) - reference).max()),
        }
    except Exception as exc:  # noqa: BLE001 - recorded
        cuda["fp32_cuda_graph"] = {"error": f"{type(exc).__name__}: {exc}"}
    out["ort_cuda"] = cuda
    return out


def check(mode: str, outdir: Path) -> dict[str, Any]:
    import torch

    from training.config import FrontendConfig, ModelConfig, TrainConfig

    size = SIZES[mode]
    gpu = mode == "gpu"
    deadline = Deadline(size["deadline_s"])
    report: dict[str, Any] = {"mode": mode, "sizes": size, "environment": environment(), "models": {}}
    if gpu and not torch.cuda.is_available():
        report["error"] = "gpu mode but torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)"
        return report
    work = outdir / "work"
    train_csv, val_csv = write_dataset(work / "data", size)
    models = os.environ.get(MODELS_ENV, "").split() or list(MODELS)
    for name in models:
        entry: dict[str, Any] = report["models"].setdefault(name, {})
        try:
            if deadline.left() < 60:
                entry["error"] = "skipped: the 10-minute budget ran out"
                continue
            config = TrainConfig(
                frontend=FrontendConfig(
                    sample_rate=size["sample_rate"], n_mels=size["n_mels"], n_fft=size["n_fft"],
                    hop_length=size["hop_length"],
                ),
                model=ModelConfig(model=name),
                window_seconds=size["window_seconds"],
                hop_seconds=size["window_seconds"] / 2,
                batch_size=size["train_batch"],
            ).validate()  # fmt: skip
            steps: dict[str, Any] = {"cpu": step_rate(config, "cpu", size["cpu_timed_steps"], bf16=False)}
            if gpu:
                steps["gpu"] = step_rate(config, "cuda", size["timed_steps"], bf16=True)
                steps["gpu_over_cpu"] = round(steps["gpu"]["steps_per_s"] / steps["cpu"]["steps_per_s"], 2)
            entry["train_steps"] = steps
            entry["lumen_train"] = train_cli(
                name, train_csv, val_csv, work / "runs", size, gpu, timeout=max(60.0, deadline.left() - 60)
            )
            checkpoint = entry["lumen_train"].get("checkpoint")
            if checkpoint is None:
                continue
            onnx_path = work / f"{name.lower()}.onnx"
            entry["export_fp32"] = export_and_parity(Path(checkpoint), onnx_path, fp16=False)
            fp16_path = None
            if gpu:
                fp16_path = work / f"{name.lower()}.fp16.onnx"
                entry["export_fp16"] = export_and_parity(Path(checkpoint), fp16_path, fp16=True)
                fp16_path = fp16_path if entry["export_fp16"]["ok"] else None
            if entry["export_fp32"]["ok"]:
                entry["inference"] = inference(onnx_path, fp16_path, Path(checkpoint), size, gpu)
        except Exception as exc:  # noqa: BLE001 - one model failing must not hide the other's numbers
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc().splitlines()[-8:]
    return report


def failures(report: dict[str, Any]) -> list[str]:
    problems = [report["error"]] if "error" in report else []
    for name, entry in report["models"].items():
        if "error" in entry:
            problems.append(f"{name}: {entry['error']}")
        if not entry.get("lumen_train", {}).get("ok", False):
            problems.append(f"{name}: lumen-train did not finish")
        for key in ("export_fp32", "export_fp16"):
            if key in entry and not entry[key]["ok"]:
                problems.append(f"{name}: {key} failed: {entry[key].get('error', 'parity')}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(SIZES), required=True)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = check(args.mode, args.outdir)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    report["problems"] = failures(report)
    path = args.outdir / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "sizes"}, indent=2, default=str))
    print(f"gpu_check: wrote {path} in {report['seconds_total']} s; problems: {report['problems'] or 'none'}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

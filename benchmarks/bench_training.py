"""Is the data loader or the model the bottleneck of training? (CPU by default.)

Measures, for each model, training-loader throughput (decode + resample + peak-normalise + random crop
in DataLoader workers, exactly :class:`training.data.TrainWindows`) against model-step throughput
(forward with the on-device front-end, backward, AdamW step) in samples (windows) per second. The
loader is fine when its rate is above the model's: the model then never waits for data.

The audio is IRMAS-like by default: 3 s stereo 44.1 kHz WAV files, so each item pays a real resample
to the model rate. ``--data irmastrain:PATH`` measures your own files instead.

    python benchmarks/bench_training.py --models SMALL_CNN EFFICIENT_NET_V2_S --batches 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from common.datasets import Item, load_datasets
from common.labels import LABELS, to_multi_hot
from training.config import TrainConfig
from training.data import TrainWindows, ignore_sigint_in_worker
from training.models import build_model

IRMAS_RATE = 44_100
IRMAS_SECONDS = 3.0


def irmas_like_items(root: Path, n: int, seed: int = 0) -> list[Item]:
    """``n`` noisy-tone stereo 44.1 kHz clips of 3 s (decode and resample cost like IRMAS train)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(IRMAS_RATE * IRMAS_SECONDS)) / IRMAS_RATE
    items = []
    for i in range(n):
        code = LABELS[i % len(LABELS)]
        tone = np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.1 * rng.standard_normal(t.size)
        path = root / f"{i:04d}_{code}.wav"
        sf.write(path, (0.3 * np.stack([tone, tone], axis=1)).astype(np.float32), IRMAS_RATE)
        items.append(Item(path, to_multi_hot([code]), None, None))
    return items


def loader_rate(items: list[Item], config: TrainConfig, batches: int) -> float:
    """Windows per second delivered by the training DataLoader (after one warm-up batch)."""
    dataset = TrainWindows(items, config, cache=config.cache_audio)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.num_workers,
        worker_init_fn=ignore_sigint_in_worker,
        persistent_workers=config.num_workers > 0,
    )
    it = iter(loader)
    next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            waves, _ = next(it)
        except StopIteration:
            it = iter(loader)
            waves, _ = next(it)
        seen += waves.shape[0]
    return seen / (time.perf_counter() - start)


def model_rate(config: TrainConfig, batches: int, device: str) -> float:
    """Windows per second through forward + backward + optimizer step (after one warm-up step)."""
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    waves = torch.randn(config.batch_size, config.window_samples, device=device) * 0.1
    labels = torch.zeros(config.batch_size, len(config.labels), device=device)
    labels[:, 0] = 1

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(waves), labels)
        loss.backward()
        optimizer.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batches * config.batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["SMALL_CNN", "EFFICIENT_NET_V2_S"])
    parser.add_argument("--data", help="a dataset spec; default: generated IRMAS-like clips")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--cache-audio", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        n_items = max(2 * args.batch_size * (args.batches + 1), 32)
        items = load_datasets([args.data]) if args.data else irmas_like_items(Path(tmp), n_items)
        config = TrainConfig(
            batch_size=args.batch_size, num_workers=args.num_workers, cache_audio=args.cache_audio
        )
        loader = loader_rate(items, config, args.batches)
        print(
            f"loader: {loader:8.1f} windows/s  ({args.num_workers} workers, batch {args.batch_size}, "
            f"{config.window_seconds:g} s @ {config.frontend.sample_rate} Hz, "
            f"{'cached' if args.cache_audio else 'decode+resample each item'})"
        )
        for name in args.models:
            config.model.model = name
            rate = model_rate(config, args.batches, args.device)
            verdict = "loader keeps up" if loader >= rate else "LOADER IS THE BOTTLENECK"
            print(
                f"{name:>20}: {rate:8.1f} windows/s train step on {args.device} -> {verdict} "
                f"(loader/model = {loader / rate:.1f}x)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reproduce the export table of benchmarks/RESULTS.md: ONNX Runtime vs eager PyTorch for SMALL_CNN and EfficientNet-V2-S.

Builds each model at the default config (16 kHz, 3 s windows, 128 log-mels) with random weights
(speed does not depend on the values, and no hub download is needed), writes a checkpoint in
lumen-train's layout, exports it with ``lumen-export`` (parity-checked) and times it with
``lumen-bench model --compare-torch``. JSON results land next to this file.

    .venv/bin/python benchmarks/bench_model_export.py [--models SMALL_CNN,EFFICIENT_NET_V2_S]
        [--batch-sizes 1,4,16] [--iters 10] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from export.cli import main as export_main
from serving.bench import main as bench_main
from training.checkpoint import MODEL_PREFIX, build_hparams
from training.config import ModelConfig, TrainConfig
from training.models import build_model

HERE = Path(__file__).resolve().parent


def write_checkpoint(model_name: str, path: Path) -> None:
    config = TrainConfig(model=ModelConfig(model=model_name)).validate()
    torch.manual_seed(0)
    state = {MODEL_PREFIX + k: v for k, v in build_model(config).state_dict().items()}
    thresholds = [0.5] * len(config.labels)
    torch.save({"state_dict": state, "hyper_parameters": build_hparams(config, thresholds)}, path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="SMALL_CNN,EFFICIENT_NET_V2_S")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lumen-bench-export-") as workdir:
        for name in args.models.split(","):
            ckpt = Path(workdir) / f"{name.lower()}.ckpt"
            write_checkpoint(name, ckpt)
            if export_main([str(ckpt)]) != 0:
                return 1
            argv = ["model", str(ckpt.with_suffix(".onnx")), "--batch-sizes", args.batch_sizes]
            argv += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--compare-torch", str(ckpt)]
            argv += ["--json", str(HERE / f"bench_model_{name.lower()}.json")]
            if args.threads is not None:
                argv += ["--threads", str(args.threads)]
            if bench_main(argv) != 0:
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

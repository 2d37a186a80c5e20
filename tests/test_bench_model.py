"""lumen-bench model: per-batch-size timings of an artifact (and of eager torch), table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from serving import bench
from serving.bench_model import BenchError, parse_batch_sizes, summarize
from training.checkpoint import MODEL_PREFIX, build_hparams
from training.config import FrontendConfig, ModelConfig, TrainConfig
from training.models import build_model

REPO = Path(__file__).resolve().parents[1]
SR = 8000
WINDOW = 4000


def write_checkpoint(path: Path, *, window_seconds: float = WINDOW / SR) -> Path:
    """A tiny SMALL_CNN checkpoint in lumen-train's layout (random weights: timing does not care)."""
    config = TrainConfig(
        frontend=FrontendConfig(sample_rate=SR, n_fft=256, hop_length=128, n_mels=32),
        model=ModelConfig(model="SMALL_CNN", width=0.25),
        window_seconds=window_seconds,
        hop_seconds=window_seconds / 2,
    ).validate()
    torch.manual_seed(0)
    state = {MODEL_PREFIX + k: v for k, v in build_model(config).state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": build_hparams(config, [0.5] * 11)}, path)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, Path]:
    """(onnx, ckpt): the checkpoint exported with lumen-export."""
    from export.cli import main as export_main

    root = tmp_path_factory.mktemp("bench")
    ckpt = write_checkpoint(root / "tiny.ckpt")
    assert export_main([str(ckpt), "--no-verify"]) == 0
    return root / "tiny.onnx", ckpt


def test_parse_batch_sizes_sorts_and_rejects_nonsense() -> None:
    assert parse_batch_sizes("16,1, 4,4") == [1, 4, 16]
    for bad in ("", "0,4", "a,b", "1,100000"):
        with pytest.raises(BenchError, match="--batch-sizes"):
            parse_batch_sizes(bad)


def test_summarize_turns_latencies_into_throughput() -> None:
    timing = summarize([0.010, 0.010, 0.030, 0.010], batch_size=4, window_seconds=0.5)
    assert timing.iterations == 4
    assert timing.latency_ms_p50 == pytest.approx(10.0)
    assert timing.latency_ms_p99 == pytest.approx(29.4)  # numpy's linear interpolation
    assert timing.latency_ms_mean == pytest.approx(15.0)
    assert timing.windows_per_s == pytest.approx(16 / 0.060)
    assert timing.audio_seconds_per_s == pytest.approx(16 / 0.060 * 0.5)


def test_bench_onnx_writes_table_and_json(artifact, tmp_path, capsys) -> None:
    onnx_path, _ = artifact
    report = tmp_path / "bench.json"
    argv = ["model", str(onnx_path), "--batch-sizes", "1,3", "--iters", "3", "--warmup", "1"]
    assert bench.main([*argv, "--threads", "1", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "windows/s" in out and "ORT_ENABLE_ALL" in out and "torch" not in out
    document = json.loads(report.read_text())
    assert document["architecture"] == "SMALL_CNN" and document["threads"] == 1
    assert document["ort_session"]["intra_op_num_threads"] == 1
    assert document["torch"] is None
    assert [r["batch_size"] for r in document["results"]] == [1, 3]
    for row in document["results"]:
        ort = row["ort"]
        assert ort["iterations"] == 3
        assert 0 < ort["latency_ms_p50"] <= ort["latency_ms_p90"] <= ort["latency_ms_p99"]
        assert ort["audio_seconds_per_s"] == pytest.approx(ort["windows_per_s"] * WINDOW / SR)
        assert row["torch"] is None and row["speedup"] is None


def test_compare_torch_times_both_and_reports_the_ratio(artifact, tmp_path, capsys) -> None:
    onnx_path, ckpt = artifact
    report = tmp_path / "bench.json"
    argv = ["model", str(onnx_path), "--batch-sizes", "2", "--iters", "2", "--warmup", "0"]
    assert bench.main([*argv, "--compare-torch", str(ckpt), "--json", str(report)]) == 0
    assert "ORT/torch" in capsys.readouterr().out
    document = json.loads(report.read_text())
    assert document["torch"]["same_checkpoint_as_artifact"] is True
    (row,) = document["results"]
    assert row["torch"]["iterations"] == 2
    assert row["speedup"] == pytest.approx(row["ort"]["windows_per_s"] / row["torch"]["windows_per_s"])


def test_a_checkpoint_is_exported_on_the_fly(artifact, tmp_path, capsys) -> None:
    _, ckpt = artifact
    assert bench.main(["model", str(ckpt), "--batch-sizes", "1", "--iters", "1", "--warmup", "0"]) == 0
    assert "SMALL_CNN" in capsys.readouterr().out


def test_mismatched_comparison_checkpoint_is_refused(artifact, tmp_path, capsys) -> None:
    onnx_path, _ = artifact
    other = write_checkpoint(tmp_path / "long.ckpt", window_seconds=1.0)
    status = bench.main(["model", str(onnx_path), "--compare-torch", str(other), "--iters", "1"])
    err = capsys.readouterr().err
    assert status != 0 and "window of 8000 samples" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--iters", "0"], "--iters"),
        (["--threads", "0"], "--threads"),
        (["--compare-torch", "missing.ckpt"], "missing.ckpt: file not found"),
    ],
)
def test_bad_flags_are_one_line_errors(artifact, capsys, flags, message) -> None:
    status = bench.main(["model", str(artifact[0]), *flags])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_artifact_is_an_error(tmp_path, capsys) -> None:
    assert bench.main(["model", str(tmp_path / "none.onnx")]) == 2
    assert "none.onnx: file not found" in capsys.readouterr().err


def test_benchmarking_an_onnx_file_never_imports_torch(artifact, tmp_path) -> None:
    """The serving image has no torch: only a .ckpt or --compare-torch may need it."""
    probe = textwrap.dedent(
        """
        import importlib.abc, sys
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {"torch", "training", "export", "onnx"}:
                    raise ModuleNotFoundError(f"blocked: {name}", name=name)
        sys.meta_path.insert(0, Blocker())
        from serving import bench
        raise SystemExit(bench.main(["model", sys.argv[1], "--batch-sizes", "1", "--iters", "1", "--warmup", "0"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(artifact[0])], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr

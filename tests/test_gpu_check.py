"""benchmarks/gpu_check.sh --cpu: the GPU check's steps run end to end on the CPU and its JSON holds numbers.

CI runs the lumen CNN only (LUMEN_GPU_CHECK_MODELS); the timm CNN's training and export are covered
by the training and export tests, and the full set runs on a GPU host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cpu_mode_trains_exports_checks_parity_and_reports_the_missing_cuda_ep(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "LUMEN_GPU_CHECK_MODELS": "SMALL_CNN", "LUMEN_WHEELS": ""}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["mode"] == "cpu" and report["problems"] == []
    assert report["environment"]["onnxruntime"] and "torch" in report["environment"]
    entry = report["models"]["SMALL_CNN"]
    assert entry["train_steps"]["cpu"]["steps_per_s"] > 0
    run = entry["lumen_train"]
    assert run["ok"] and Path(run["checkpoint"]).is_file() and run["precision"] == "32-true"
    export = entry["export_fp32"]
    assert export["ok"] and export["worst_probs_diff"] <= export["tolerance"] == 1e-4
    inference = entry["inference"]
    assert inference["max_abs_diff_torch_cpu_vs_ort_cpu"] < 1e-4
    assert all(ms > 0 for ms in inference["ort_cpu_p50_ms"].values())
    assert set(inference["ort_cpu_instances_windows_per_s"]) == {"1", "2"}
    if "skipped" in inference["ort_cuda"]:  # no onnxruntime-gpu here: said plainly, not faked
        assert "CUDAExecutionProvider" in inference["ort_cuda"]["skipped"]


def test_the_script_refuses_a_missing_outdir_argument() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage" in result.stderr

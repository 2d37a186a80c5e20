"""lumen-serve: flag parsing, and a real server process on a free port driven over HTTP.

The process tests start ``lumen-serve`` as users do, then check readiness, answers under 64
concurrent requests of different files (each must get its own answer back through the shared
batcher), the OpenAPI document under schemathesis, and a graceful SIGTERM during a streaming job.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import serving_testkit as kit
from prometheus_client.parser import text_string_to_metric_families

from serving.cli import build_parser, main, settings_from_args

HANG_GUARD_S = 60.0
MODEL = "tone.onnx"
N_CONCURRENT = 64


# ---- flags ----------------------------------------------------------------------------------------------


def test_aliases_and_repeatable_flags_map_onto_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--model-dir", str(tmp_path), "--batch-size", "8", "--num-workers", "3", "--model", "a.onnx",
         "--model", "b/c.onnx", "--data-root", "x", "y", "--device", "cuda:1", "--hot-reload"]
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.max_batch_size == 8 and settings.decode_workers == 3
    assert settings.models == ("a.onnx", "b/c.onnx")
    assert (
        settings.data_roots == (Path("x"), Path("y")) and settings.device == "cuda:1" and settings.hot_reload
    )
    defaults = settings_from_args(build_parser().parse_args(["--model-dir", "m"]))
    assert defaults.data_roots == (Path("data"),)
    # Per-request access lines are opt-in: /metrics already counts requests by endpoint and status.
    assert not defaults.access_log
    assert settings_from_args(build_parser().parse_args(["--model-dir", "m", "--access-log"])).access_log


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "gpu"], "invalid device 'gpu'"),
        (["--max-batch-size", "64", "--max-queue", "8"], "--max-queue (8) must be >= --max-batch-size (64)"),
        (["--num-workers", "0"], "--num-workers must be >= 1"),
        (["--max-files", "0"], "--max-files must be >= 1"),
        (["--max-paths", "0"], "--max-paths must be >= 1"),
        (["--max-datasets", "0"], "--max-datasets must be >= 1"),
        (["--max-request-mb", "0"], "--max-request-mb must be > 0"),
        (["--max-channels", "0"], "--max-channels must be >= 1"),
        (["--min-sample-rate", "9000", "--max-sample-rate", "8000"], "need 1 <= --min-sample-rate (9000)"),
        (["--max-concurrent-requests", "0"], "--max-concurrent-requests must be >= 1"),
        (["--body-timeout", "0"], "--body-timeout must be > 0"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["--model-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_model_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# ---- a real process -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serving_process")
    kit.build_model(base / "models" / MODEL)
    for i in range(N_CONCURRENT):  # one window each: batches > 1 can only come from coalescing requests
        kit.write_tones(base / "data" / "one_window" / f"f{i:02d}.wav", kit.label_set(i), seconds=0.2)
    for i in range(12):
        kit.write_tones(base / "data" / "many" / f"m{i:02d}.wav", kit.label_set(i))
    return base


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[kit.LiveServer]:
    running = kit.LiveServer(workspace, "--max-batch-delay-ms", "20")
    try:
        yield running
    finally:
        assert running.stop() in (0, -signal.SIGTERM), running.log.read_text()


def test_health_ready_models_and_predict(server: kit.LiveServer, workspace: Path) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ready").json() == {"ready": True, "models": {MODEL: "ready"}}
    assert [m["id"] for m in httpx.get(f"{server.url}/models").json()] == [MODEL]
    audio = (workspace / "data" / "many" / "m05.wav").read_bytes()
    response = httpx.post(
        f"{server.url}/model/predict", params={"model": MODEL}, files={"files": ("m05.wav", audio)}
    )
    assert response.status_code == 200
    assert response.json()["predictions"]["m05.wav"] == kit.expected(kit.label_set(5))


def batch_histogram(metrics_text: str) -> dict[str, float]:
    """``{le: cumulative count}`` of ``lumen_batch_size`` for the test model."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "lumen_batch_size":
            return {
                s.labels["le"]: s.value
                for s in family.samples
                if s.name == "lumen_batch_size_bucket" and s.labels["model"] == MODEL
            }
    raise AssertionError("lumen_batch_size missing from /metrics")


def test_concurrent_requests_of_different_files_each_get_their_own_answer(
    server: kit.LiveServer, workspace: Path
) -> None:
    files = sorted((workspace / "data" / "one_window").glob("*.wav"))
    before = batch_histogram(httpx.get(f"{server.url}/metrics").text)

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=N_CONCURRENT)
        async with httpx.AsyncClient(base_url=server.url, timeout=HANG_GUARD_S, limits=limits) as client:
            return await asyncio.gather(*(
                client.post("/model/predict", params={"model": MODEL}, files={"files": (f.name, f.read_bytes())})
                for f in files
            ))  # fmt: skip

    responses = asyncio.run(fire())
    for i, (path, response) in enumerate(zip(files, responses, strict=True)):
        assert response.status_code == 200
        assert response.json()["predictions"] == {path.name: kit.expected(kit.label_set(i))}
    after = batch_histogram(httpx.get(f"{server.url}/metrics").text)
    batches = after["+Inf"] - before["+Inf"]
    single = after["1.0"] - before["1.0"]
    assert 0 < batches < N_CONCURRENT and single < batches  # some batches held windows of several requests


def test_schemathesis_finds_no_server_errors(server: kit.LiveServer, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"query.model" = "{MODEL}"\n')
    command = [
        str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
        f"{server.url}/docs/openapi.json", "--checks", "not_a_server_error", "--max-examples", "20",
        "--phases", "examples,coverage,fuzzing", "--seed", "7", "--workers", "1",
        "--generation-database", "none", "--no-color", "--request-timeout", "30",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    statuses = {
        (s.labels["endpoint"], s.labels["status"])
        for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
        if family.name == "lumen_requests"
        for s in family.samples
        if s.name == "lumen_requests_total"
    }
    assert ("/model/predict", "200") in statuses  # the fuzzing reached the model, not only 4xx paths
    assert not [
        (e, s) for e, s in statuses if s.startswith("5") and e != "/ready"
    ]  # /ready: 503 while loading


def test_sigterm_lets_a_running_stream_finish(workspace: Path) -> None:
    running = kit.LiveServer(workspace, "--directory-chunk-files", "1")
    body = {"model": MODEL, "paths": ["many"]}
    lines: list[dict[str, object]] = []
    with httpx.stream(
        "POST", f"{running.url}/model/predict-directory-stream", json=body, timeout=HANG_GUARD_S
    ) as r:
        stream = r.iter_lines()
        lines.append(json.loads(next(stream)))
        os.kill(running.process.pid, signal.SIGTERM)  # the job is mid-stream now
        lines.extend(json.loads(line) for line in stream if line)
    assert running.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    assert lines[-1] == {"type": "summary", "model": MODEL, "n_files": 12, "n_errors": 0}
    assert len(lines) == 13


def test_the_cpu_budget_flags_and_environment_shape_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_args(build_parser().parse_args(["--cpu-threads", "8", "--instances", "2"]))
    assert (settings.budget.instances, settings.budget.intra_op_threads, settings.budget.decode_workers) == (
        2,
        2,
        3,
    )
    explicit = ["--cpu-threads", "8", "--intra-op-threads", "5", "--num-workers", "1"]
    budget = settings_from_args(build_parser().parse_args(explicit)).budget
    assert (budget.intra_op_threads, budget.decode_workers) == (5, 1)
    monkeypatch.setenv("LUMEN_CPU_THREADS", "4")  # what deploy/k8s.yaml sets from limits.cpu
    assert settings_from_args(build_parser().parse_args([])).cpu_threads == 4
    cuda = settings_from_args(build_parser().parse_args(["--device", "cuda", "--cpu-threads", "16"])).budget
    assert (cuda.instances, cuda.intra_op_threads, cuda.decode_workers) == (2, 1, 13)

"""Regression tests for the serving hardening issue: one test (or more) per defect it lists.

Each test builds the hostile input the issue describes and checks the answer a client gets: a typed
4xx/424/503, a per-file error, or a well-formed stream, never a 500, never a decode past the
budget, never anything from outside the data root.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import serving_testkit as kit
import soundfile as sf
from litestar.testing import TestClient
from serving_testkit import HANG_GUARD_S, upload, wait_for

from common.audio import window_count
from common.labels import LABELS
from serving import pipeline as pipeline_module
from serving.app import create_app
from serving.batcher import Batcher, QueueFull, RequestTooLarge
from serving.disconnect import unless_disconnected
from serving.registry import ModelRegistry
from serving.runtime import OnnxModel
from serving.settings import Settings

MODEL = "tone.onnx"
SECRET = "root:x:0:0:TOP-SECRET-LINE"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hardening")
    kit.build_model(base / "models" / MODEL)
    data = base / "data"
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    kit.write_tones(outside / "secret.wav", [1])
    kit.write_tones(outside / "cel" / "outside_name_1.wav", [0])
    for i in range(3):
        kit.write_tones(data / "songs" / f"s{i}.wav", kit.label_set(i))
    # irmastest: a clip whose sidecar is a symlink to a secret outside the root
    kit.write_tones(data / "leaky" / "clip.wav", [0])
    os.symlink(outside / "secret.txt", data / "leaky" / "clip.txt")
    kit.write_tones(data / "leaky" / "fine.wav", [5])
    (data / "leaky" / "fine.txt").write_text("org\n")
    # irmastrain: a class folder that is a symlink out of the root
    kit.write_tones(data / "train" / "pia" / "[pia]a__1.wav", [6])
    os.symlink(outside / "cel", data / "train" / "cel")
    # CSV rows: outside and existing, outside and missing, ~user, a symlink loop
    os.symlink(data / "loop_b.wav", data / "loop_a.wav")
    os.symlink(data / "loop_a.wav", data / "loop_b.wav")
    (data / "rows.csv").write_text(
        "file\n../outside/secret.wav\n../outside/nothing_here.wav\n~nosuchuser_lumen/a.wav\n"
        "loop_a.wav\nsongs/s0.wav\n"
    )
    # a second data root holding the same relative path as the first
    kit.write_tones(base / "data2" / "songs" / "s0.wav", kit.label_set(1))
    return base


def settings(workspace: Path, **overrides: Any) -> Settings:
    return kit.workspace_settings(
        workspace,
        {
            "models": (MODEL,),
            "max_audio_seconds": 30.0,
            "max_upload_mb": 2.0,
            "directory_chunk_files": 2,
            "decode_workers": 2,
        },
        overrides,
    )


@pytest.fixture(scope="module")
def client(workspace: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(workspace))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        yield test_client


def wav_bytes(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def song(workspace: Path, i: int) -> bytes:
    return (workspace / "data" / "songs" / f"s{i}.wav").read_bytes()


def assert_no_leak(workspace: Path, text: str) -> None:
    assert SECRET not in text and "TOP-SECRET" not in text
    assert str(workspace) not in text  # no absolute server path at all
    assert "outside_name" not in text


# ---- 1. decode memory bomb ------------------------------------------------------------------------------


def test_high_rate_many_channel_flac_is_refused_from_its_header(client: TestClient) -> None:
    bomb = wav_bytes(np.zeros((655_350 // 10, 8), dtype=np.float32), 655_350, "FLAC", "PCM_16")
    response = client.post("/model/predict", params={"model": MODEL}, files=upload(("bomb.flac", bomb)))
    assert response.status_code == 200
    assert "sample rate 655350 Hz is outside" in response.json()["errors"]["bomb.flac"]


def test_too_many_channels_and_an_absurd_claimed_rate_are_refused(client: TestClient) -> None:
    nine = wav_bytes(np.zeros((800, 9), dtype=np.float32), 8000)
    claimed = bytearray(wav_bytes(np.zeros(800, dtype=np.float32), 8000))
    struct.pack_into("<I", claimed, 24, 2**31 - 1)  # the fmt chunk's sample-rate field
    files = upload(("nine.wav", nine), ("claimed.wav", bytes(claimed)))
    errors = client.post("/model/predict", params={"model": MODEL}, files=files).json()["errors"]
    assert "9 channels; at most 8" in errors["nine.wav"]
    assert "outside the accepted" in errors["claimed.wav"]


@pytest.mark.parametrize(("fmt", "subtype"), [("AIFF", "PCM_16"), ("CAF", "PCM_16"), ("W64", "PCM_16")])
def test_containers_outside_the_allow_list_are_refused(client: TestClient, fmt: str, subtype: str) -> None:
    data = wav_bytes(np.zeros(800, dtype=np.float32), 8000, fmt, subtype)
    response = client.post("/model/predict", params={"model": MODEL}, files=upload(("x.wav", data)))
    assert "not a recognised audio file" in response.json()["errors"]["x.wav"]


def test_a_file_over_the_decode_budget_is_never_decoded(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    original = pipeline_module.decode_windows

    def counting(source: Any, key: str, *args: Any) -> Any:
        decoded.append(key)
        return original(source, key, *args)

    monkeypatch.setattr(pipeline_module, "decode_windows", counting)
    # 0.6 MiB as decoded samples (passes the header check) but ~3 MiB with resampled copy and windows
    long_silence = wav_bytes(np.zeros(8000 * 20, dtype=np.float32), 8000, "FLAC")
    app = create_app(settings(workspace, max_request_mb=1.0))
    with TestClient(app) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        files = upload(("big.flac", long_silence), ("small.wav", song(workspace, 0)))
        body = test_client.post("/model/predict", params={"model": MODEL}, files=files).json()
    assert "one request may use 1 MiB (--max-request-mb)" in body["errors"]["big.flac"]
    assert body["predictions"]["small.wav"] == kit.expected(kit.label_set(0))
    assert decoded == ["small.wav"]


def test_an_upload_whose_files_together_exceed_the_budget_is_413(workspace: Path) -> None:
    one = wav_bytes(np.zeros(8000 * 12, dtype=np.float32), 8000, "FLAC")  # ~1.1 MiB each, 2 MiB budget
    with TestClient(create_app(settings(workspace, max_request_mb=2.0))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        files = upload(("a.flac", one), ("b.flac", one))
        response = test_client.post("/model/predict", params={"model": MODEL}, files=files)
        assert response.status_code == 413 and "send fewer files" in response.json()["detail"]
        assert 'lumen_rejected_requests_total{reason="budget"} 1.0' in test_client.get("/metrics").text


# ---- 2. a bad artifact does not take the good ones down -------------------------------------------------


class FakeOrtFail(Exception):
    """Stands in for onnxruntime's pybind ``Fail`` (not an ArtifactError, not an OSError)."""


def test_a_warm_up_failure_of_one_model_leaves_the_others_serving(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    kit.build_model(models / "good.onnx")
    kit.build_model(models / "bad.onnx")
    kit.build_model(models / "oom.onnx")
    original = OnnxModel.warmup

    def warmup(self: OnnxModel, sizes: Any) -> None:
        if self.path.name == "bad.onnx":
            raise FakeOrtFail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned")
        if self.path.name == "oom.onnx":
            raise FakeOrtFail("CUDA failure 2: out of memory")
        original(self, sizes)

    monkeypatch.setattr(OnnxModel, "warmup", warmup)
    app = create_app(settings(workspace, model_dir=models, models=()))
    with TestClient(app) as test_client:
        wait_for(lambda: "loading" not in test_client.get("/ready").json()["models"].values())
        ready = test_client.get("/ready")
        assert ready.status_code == 503  # a start-up load failed: not "ready" for a load balancer
        assert ready.json()["models"]["good.onnx"] == "ready"
        listed = {m["id"]: m for m in test_client.get("/models").json()}
        assert listed["good.onnx"]["loaded"] and "FAIL" in listed["bad.onnx"]["error"]
        files = upload(("s.wav", song(workspace, 0)))
        assert (
            test_client.post("/model/predict", params={"model": "good.onnx"}, files=files).status_code == 200
        )
        broken = test_client.post("/model/predict", params={"model": "bad.onnx"}, files=files)
        assert broken.status_code == 424 and "retry-after" not in broken.headers
        transient = test_client.post("/model/predict", params={"model": "oom.onnx"}, files=files)
        assert transient.status_code == 503 and int(transient.headers["retry-after"]) >= 1
        # after the backoff a transient failure is retried, and succeeds once the cause is gone
        monkeypatch.setattr(OnnxModel, "warmup", original)
        app.state.server.registry.entries["oom.onnx"].retry_at = 0.0
        healed = test_client.post("/model/predict", params={"model": "oom.onnx"}, files=files)
        assert healed.status_code == 200
        # a permanent failure is not retried on every request, only when the file changes
        still = test_client.post("/model/predict", params={"model": "bad.onnx"}, files=files)
        assert still.status_code == 424
        kit.build_model(models / "bad.onnx", kit.metadata(architecture="fixed"))
        os.utime(models / "bad.onnx", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert (
            test_client.post("/model/predict", params={"model": "bad.onnx"}, files=files).status_code == 200
        )


def test_the_hot_reload_watcher_survives_an_unexpected_error(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = ModelRegistry.poll

    async def flaky(self: ModelRegistry, previous: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        calls.append(1)
        if len(calls) == 1:
            raise FakeOrtFail("boom in poll")
        return await original(self, previous)

    monkeypatch.setattr(ModelRegistry, "poll", flaky)
    app = create_app(settings(workspace, hot_reload=True, reload_interval_s=0.05))
    with TestClient(app) as test_client:
        wait_for(lambda: len(calls) >= 3)
        assert not app.state.server.registry._watcher.done()
        assert test_client.get("/ready").status_code == 200


# ---- 3. a multi-file upload is admitted whole ------------------------------------------------------------


def test_a_multi_file_upload_is_admitted_whole_or_answered_413(workspace: Path) -> None:
    frames = sf.info(str(workspace / "data" / "songs" / "s0.wav")).frames
    n = window_count(frames, kit.WINDOW, kit.HOP)
    files = upload(*((f"f{i}.wav", song(workspace, i)) for i in range(3)))
    with TestClient(create_app(settings(workspace, max_batch_size=1, max_queue=3 * n))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        fits = test_client.post("/model/predict", params={"model": MODEL}, files=files)
        assert fits.status_code == 200 and len(fits.json()["predictions"]) == 3
    with TestClient(create_app(settings(workspace, max_batch_size=1, max_queue=3 * n - 1))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        never = test_client.post("/model/predict", params={"model": MODEL}, files=files)
        assert never.status_code == 413 and "retry" not in never.headers
        assert f"needs {3 * n} windows" in never.json()["detail"]


# ---- 4. data-root confinement of the dataset scanners ------------------------------------------------------


def test_a_sidecar_symlinked_out_of_the_root_is_never_read(client: TestClient, workspace: Path) -> None:
    body = {"model": MODEL, "datasets": [{"dataset_type": "irmastest", "dataset_path": "leaky"}]}
    response = client.post("/model/test-directory", json=body)
    assert response.status_code == 200
    result = response.json()
    assert_no_leak(workspace, response.text)
    assert "outside the data root" in result["errors"]["leaky/clip.wav"]
    assert result["predictions"]["leaky/fine.wav"] == kit.expected([5])


def test_a_class_folder_symlinked_out_of_the_root_lists_nothing(client: TestClient, workspace: Path) -> None:
    body = {"model": MODEL, "datasets": [{"dataset_type": "irmastrain", "dataset_path": "train"}]}
    response = client.post("/model/test-directory", json=body)
    assert response.status_code == 200
    assert_no_leak(workspace, response.text)
    assert "outside the data root" in response.json()["errors"]["train/cel"]


def test_csv_rows_are_no_existence_oracle_and_keys_are_never_absolute(
    client: TestClient, workspace: Path
) -> None:
    response = client.post("/model/predict-directory", json={"model": MODEL, "paths": ["rows.csv"]})
    assert response.status_code == 200  # ~nosuchuser and a symlink loop are per-row errors, not 500s
    assert_no_leak(workspace, response.text)
    errors = response.json()["errors"]
    existing = errors["<outside the data root>/secret.wav"]
    missing = errors["<outside the data root>/nothing_here.wav"]
    assert existing.replace("row 2", "row N") == missing.replace("row 3", "row N")  # same answer
    assert "cannot expand '~nosuchuser_lumen/a.wav'" in errors["rows.csv"]
    assert "loop_a.wav" in errors
    assert response.json()["predictions"]["songs/s0.wav"] == kit.expected(kit.label_set(0))


# ---- 5. bad input never a 500; streams always end with a summary ------------------------------------------------


def test_the_stream_ends_with_a_summary_line_when_the_job_fails(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def exploding(*args: Any, **kwargs: Any) -> Any:
        raise QueueFull(MODEL, 9, 9, 1)
        yield  # pragma: no cover - makes this an async generator

    monkeypatch.setattr(pipeline_module.Pipeline, "predict_chunks", exploding)
    for endpoint, body in [
        ("/model/predict-directory-stream", {"model": MODEL, "paths": ["songs"]}),
        (
            "/model/test-directory-stream",
            {"model": MODEL, "datasets": [{"dataset_type": "irmastest", "dataset_path": "leaky"}]},
        ),
    ]:
        response = client.post(endpoint, json=body)
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines[-1]["type"] == "summary" and lines[-1]["status"] == 503, endpoint
        assert "busy" in lines[-1]["error"]


def test_stream_with_a_bad_csv_row_ends_normally(client: TestClient, workspace: Path) -> None:
    response = client.post("/model/predict-directory-stream", json={"model": MODEL, "paths": ["rows.csv"]})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["type"] == "summary" and "error" not in lines[-1]
    assert_no_leak(workspace, response.text)


# ---- 6. path resolution off the event loop, with caps and de-duplication ---------------------------------------


def test_path_resolution_runs_off_the_event_loop(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    original = pipeline_module.resolve_request_paths

    def slow(roots: Any, raw: Any) -> Any:
        entered.set()
        assert release.wait(HANG_GUARD_S)
        return original(roots, raw)

    monkeypatch.setattr("serving.app.resolve_request_paths", slow)
    with TestClient(create_app(settings(workspace))) as test_client, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        job = pool.submit(
            test_client.post, "/model/predict-directory", json={"model": MODEL, "paths": ["songs"]}
        )
        assert entered.wait(HANG_GUARD_S)
        assert test_client.get("/health").status_code == 200  # the loop answers while paths resolve
        release.set()
        assert job.result(HANG_GUARD_S).status_code == 200


def test_path_and_dataset_counts_are_capped(client: TestClient) -> None:
    many = client.post("/model/predict-directory", json={"model": MODEL, "paths": ["songs"] * 1001})
    assert many.status_code == 413 and "--max-paths" in many.json()["detail"]
    datasets = [{"dataset_type": "irmastest", "dataset_path": "leaky"}] * 17
    response = client.post("/model/test-directory", json={"model": MODEL, "datasets": datasets})
    assert response.status_code == 413 and "--max-datasets" in response.json()["detail"]


def test_a_file_reached_twice_is_answered_once(client: TestClient) -> None:
    body = {"model": MODEL, "paths": ["songs", "songs/s0.wav", "songs"]}
    result = client.post("/model/predict-directory", json=body).json()
    assert sorted(result["predictions"]) == ["songs/s0.wav", "songs/s1.wav", "songs/s2.wav"]


# ---- 7. no answer lost -----------------------------------------------------------------------------------------


def test_upload_names_that_collide_with_suffixes_stay_distinct(client: TestClient, workspace: Path) -> None:
    files = upload(
        ("x.wav", song(workspace, 0)), ("x.wav", song(workspace, 1)), ("x.wav (2)", song(workspace, 2))
    )
    predictions = client.post("/model/predict", params={"model": MODEL}, files=files).json()["predictions"]
    assert len(predictions) == 3
    assert predictions["x.wav"] == kit.expected(kit.label_set(0))
    assert predictions["x.wav (2)"] == kit.expected(kit.label_set(1))
    assert predictions["x.wav (2) (2)"] == kit.expected(kit.label_set(2))


def test_the_same_relative_path_under_two_roots_keeps_both_answers(workspace: Path) -> None:
    roots = (workspace / "data", workspace / "data2")
    with TestClient(create_app(settings(workspace, data_roots=roots))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        paths = [str(workspace / "data" / "songs" / "s0.wav"), str(workspace / "data2" / "songs" / "s0.wav")]
        response = test_client.post("/model/predict-directory", json={"model": MODEL, "paths": paths})
    predictions = response.json()["predictions"]
    assert predictions == {
        "data/songs/s0.wav": kit.expected(kit.label_set(0)),
        "data2/songs/s0.wav": kit.expected(kit.label_set(1)),
    }
    assert str(workspace) not in response.text


# ---- 8. load is shed before the expensive work ---------------------------------------------------------


def test_requests_beyond_the_concurrency_limit_get_503_before_their_body_is_read(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    original = OnnxModel.run

    def held(self: OnnxModel, windows: np.ndarray, instance: int = 0) -> np.ndarray:
        assert gate.wait(HANG_GUARD_S)
        return original(self, windows, instance)

    gate.set()
    monkeypatch.setattr(OnnxModel, "run", held)  # before the app: the batcher binds run at load
    app = create_app(settings(workspace, max_concurrent_requests=1))
    with TestClient(app) as test_client, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        gate.clear()
        first = pool.submit(
            test_client.post,
            "/model/predict",
            params={"model": MODEL},
            files=upload(("a.wav", song(workspace, 0))),
        )
        wait_for(lambda: "lumen_requests_in_flight 1.0" in test_client.get("/metrics").text)
        second = test_client.post("/model/predict", params={"model": MODEL}, files=upload(("b.wav", b"x")))
        assert test_client.get("/health").status_code == 200  # status endpoints are never limited
        gate.set()
        assert first.result(HANG_GUARD_S).status_code == 200
        metrics = test_client.get("/metrics").text
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "--max-concurrent-requests" in second.json()["detail"]
    assert 'lumen_rejected_requests_total{reason="concurrency"} 1.0' in metrics


def test_too_many_parts_are_413_naming_the_limit(workspace: Path) -> None:
    with TestClient(create_app(settings(workspace, max_files=2))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        three = upload(*((f"{i}.wav", song(workspace, 0)) for i in range(3)))
        response = test_client.post("/model/predict", params={"model": MODEL}, files=three)
        assert response.status_code == 413 and "--max-files" in response.json()["detail"]
        flood = upload(*((f"{i}.wav", b"RIFF") for i in range(50)))  # past Litestar's part limit
        response = test_client.post("/model/predict", params={"model": MODEL}, files=flood)
        assert response.status_code == 413 and "at most 2 files" in response.json()["detail"]


def test_background_work_never_holds_more_than_half_the_queue() -> None:
    async def scenario() -> None:
        batcher = Batcher(
            lambda x: np.zeros((len(x), 1), np.float32),
            name="m",
            max_batch_size=4,
            max_delay_s=0,
            max_queue=8,
        )
        background = await batcher.reserve(4, background=True)  # half the queue: admitted at once
        waiting = asyncio.ensure_future(batcher.reserve(2, background=True))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a second background booking would pass the half mark
        upload = await batcher.reserve(4)  # uploads still find room
        with pytest.raises(QueueFull):
            await batcher.reserve(1)
        with pytest.raises(RequestTooLarge):
            await batcher.reserve(9)
        background.release()
        upload.release()
        (await asyncio.wait_for(waiting, HANG_GUARD_S)).release()
        assert batcher.occupancy == 0
        await batcher.close()

    asyncio.run(scenario())


# ---- 9. status semantics -----------------------------------------------------------------------------------


def test_an_inference_failure_is_counted_and_a_request_that_got_nothing_is_500(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = threading.Event()
    original = OnnxModel.run

    def run(self: OnnxModel, windows: np.ndarray, instance: int = 0) -> np.ndarray:
        if failing.is_set():
            raise FakeOrtFail("kernel exploded")
        return original(self, windows, instance)

    monkeypatch.setattr(OnnxModel, "run", run)  # before the app: the batcher binds run at load
    app = create_app(settings(workspace))
    with TestClient(app) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        failing.set()
        response = test_client.post(
            "/model/predict", params={"model": MODEL}, files=upload(("a.wav", song(workspace, 0)))
        )
        assert response.status_code == 500 and "kernel exploded" in response.json()["detail"]
        assert f'lumen_inference_failures_total{{model="{MODEL}"}}' in test_client.get("/metrics").text


def test_a_crashed_scheduler_fails_its_batch_restarts_and_serves_again() -> None:
    async def scenario() -> None:
        calls = 0

        def run(x: np.ndarray) -> np.ndarray:
            return np.ones((len(x), 2), np.float32)

        restarts: list[str] = []

        class Observer:
            def queue_depth(self, model: str, depth: int) -> None:
                pass

            def batch_done(self, model: str, size: int, seconds: float) -> None:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise ZeroDivisionError("bug outside run")

            def batch_failed(self, model: str, size: int) -> None:
                pass

            def queue_wait(self, model: str, seconds: float) -> None:
                pass

            def scheduler_restart(self, model: str) -> None:
                restarts.append(model)

        batcher = Batcher(run, name="m", max_batch_size=4, max_delay_s=0, max_queue=8, observer=Observer())
        with pytest.raises(RuntimeError, match="scheduler error"):
            await asyncio.wait_for(batcher.submit(np.zeros((2, 3), np.float32)), HANG_GUARD_S)
        again = await asyncio.wait_for(batcher.submit(np.zeros((2, 3), np.float32)), HANG_GUARD_S)
        assert again.shape == (2, 2) and restarts == ["m"]
        await batcher.close()

    asyncio.run(scenario())


# ---- 10. a cancelled handler takes its work out of the batcher -------------------------------------------


def test_cancelling_the_handler_cancels_its_work() -> None:
    class Silent:
        async def receive(self) -> dict[str, str]:
            await asyncio.Event().wait()
            return {}

    async def scenario() -> bool:
        work = asyncio.ensure_future(asyncio.Event().wait())
        handler = asyncio.ensure_future(unless_disconnected(Silent(), work))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        handler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handler
        return work.cancelled()

    assert asyncio.run(scenario())


def test_rejections_are_counted_by_reason_and_process_metrics_exported(
    client: TestClient, workspace: Path
) -> None:
    client.post("/model/predict-directory", json={"model": MODEL, "paths": ["songs"] * 1001})
    client.post("/model/predict", params={"model": MODEL}, files=upload(("a.wav", song(workspace, 0))))
    text = client.get("/metrics").text
    assert 'lumen_rejected_requests_total{reason="paths"}' in text
    assert "process_resident_memory_bytes" in text and "lumen_queue_wait_seconds_bucket" in text
    assert LABELS  # the tone model's labels are the canonical ones


# ---- beyond the list: slow bodies, oversized JSON -------------------------------------------------------


def test_a_client_that_stalls_mid_body_gets_408_and_frees_its_slot(workspace: Path) -> None:
    server = kit.LiveServer(workspace, "--body-timeout", "0.5", "--max-concurrent-requests", "1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD_S) as conn:
            conn.sendall(
                f"POST /model/predict?model={MODEL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
                "Content-Length: 100000\r\n\r\nRIFF".encode()
            )
            raw = b""
            while chunk := conn.recv(65536):  # the server answers and closes; we never finish
                raw += chunk
        reply = raw.decode(errors="replace")
        assert reply.startswith("HTTP/1.1 408") and "--body-timeout" in reply
        # the slot is free again: a normal request gets through the concurrency cap of 1
        response = httpx.post(
            f"{server.url}/model/predict",
            params={"model": MODEL},
            content=song(workspace, 0),
            headers={"content-type": "audio/wav"},
            timeout=HANG_GUARD_S,
        )
        assert response.status_code == 200
        assert (
            'lumen_rejected_requests_total{reason="body_timeout"} 1.0'
            in httpx.get(f"{server.url}/metrics").text
        )
    finally:
        server.stop()


def test_the_body_deadline_ends_with_the_body() -> None:
    from serving.app import BodyTimeout, _body_deadline

    async def scenario() -> None:
        messages = [{"type": "http.request", "body": b"x", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.sleep(0.2)  # waiting for the disconnect: longer than the deadline
            return {"type": "http.disconnect"}

        timed = _body_deadline(receive, 0.05)
        assert (await timed())["body"] == b"x"
        assert (await timed())["type"] == "http.disconnect"  # no BodyTimeout once the body is in

        async def stalled() -> dict[str, Any]:
            await asyncio.sleep(1)
            return {}

        with pytest.raises(BodyTimeout):
            await _body_deadline(stalled, 0.05)()

    asyncio.run(scenario())


def test_json_bodies_of_the_directory_endpoints_are_capped(client: TestClient) -> None:
    huge = json.dumps({"model": MODEL, "paths": ["x" * 1000] * 5000})  # ~5 MB, before any parsing
    response = client.post(
        "/model/predict-directory", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_an_unreadable_dataset_folder_is_a_per_dataset_error(
    client: TestClient, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)  # root can read anything: simulate the EACCES
    body = {"model": MODEL, "datasets": [{"dataset_type": "irmastrain", "dataset_path": "train"}]}
    response = client.post("/model/test-directory", json=body)
    assert response.status_code == 200
    assert response.json()["errors"] == {"train": "cannot read the dataset (Permission denied)"}

"""serving.app through Litestar's TestClient: every endpoint and every error the issue lists.

The model is the tone detector of ``serving_testkit``: a file made of the tones of a label set is
predicted as exactly that set, so each assertion below checks real routing, not just status codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
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
from serving.app import create_app
from serving.disconnect import ClientDisconnected, unless_disconnected
from serving.pipeline import ResponseMaps
from serving.runtime import OnnxModel
from serving.settings import Settings

MODEL = "tone.onnx"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("serving_app")
    models = base / "models"
    kit.build_model(models / MODEL)
    kit.build_model(models / "nested" / "strict.onnx", kit.metadata(thresholds=[0.999] * len(LABELS)))
    (models / "broken.onnx").write_bytes(b"definitely not onnx")
    data = base / "data"
    for i in range(4):
        kit.write_tones(data / "songs" / f"s{i}.wav", kit.label_set(i))
    kit.write_tones(data / "songs" / "deeper" / "d.wav", [10])
    kit.write_tones(data / "songs" / "._resource_fork.wav", [0])
    (data / "songs" / "corrupt.wav").write_bytes(b"RIFF not really")
    kit.write_tones(data / "long.wav", [3], seconds=2.0)
    kit.write_tones(data / "hires.wav", [2, 8], sample_rate=16000)
    (data / "list.csv").write_text("file\nsongs/s0.wav\nsongs/s1.wav\n")
    for name, labels in {"a": [0, 9], "b": [5]}.items():
        kit.write_tones(data / "irmastest" / f"{name}.wav", labels)
        (data / "irmastest" / f"{name}.txt").write_text("\n".join(LABELS[k] for k in labels) + "\n")
    rows = ["file," + ",".join(LABELS)] + [
        f"songs/s{i}.wav," + ",".join(str(v) for v in kit.expected(kit.label_set(i)).values())
        for i in range(3)
    ]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    outside = base / "outside"
    kit.write_tones(outside / "secret.wav", [1])
    os.symlink(outside / "secret.wav", data / "songs" / "escape.wav")
    os.symlink(outside, data / "link_out")
    return base


def settings(workspace: Path, **overrides: Any) -> Settings:
    return kit.workspace_settings(
        workspace,
        {
            "max_audio_seconds": 1.0,
            "max_upload_mb": 0.25,
            "directory_chunk_files": 2,
            "decode_workers": 2,
        },
        overrides,
    )


@pytest.fixture(scope="module")
def client(workspace: Path) -> Iterator[TestClient]:
    # broken.onnx is not a start-up model here (it would keep /ready at 503): it loads on first use.
    with TestClient(create_app(settings(workspace, models=(MODEL, "nested/strict.onnx")))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        yield test_client


def song(workspace: Path, name: str) -> tuple[str, bytes]:
    return name, (workspace / "data" / "songs" / name).read_bytes()


# ---- status endpoints -------------------------------------------------------------------------------------


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body == {"ready": True, "models": {MODEL: "ready", "nested/strict.onnx": "ready"}}


def test_ready_without_model_flags_is_503_while_a_start_up_load_failed(workspace: Path) -> None:
    with TestClient(create_app(settings(workspace))) as test_client:
        wait_for(lambda: "broken.onnx" in test_client.get("/ready").json()["models"])
        wait_for(lambda: "loading" not in test_client.get("/ready").json()["models"].values())
        ready = test_client.get("/ready")
        assert ready.status_code == 503
        models = ready.json()["models"]
        assert models[MODEL] == "ready" and models["nested/strict.onnx"] == "ready"
        assert "cannot load as an ONNX model" in models["broken.onnx"]
        # the good models beside the broken one serve
        response = test_client.post(
            "/model/predict", params={"model": MODEL}, files=upload(song(workspace, "s0.wav"))
        )
        assert response.status_code == 200


def test_models_lists_every_artifact_with_its_contract_or_error(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/models").json()}
    assert sorted(models) == ["broken.onnx", "nested/strict.onnx", MODEL]
    tone = models[MODEL]
    assert tone["loaded"] and tone["architecture"] == "tone-detector"
    assert tone["labels"] == list(LABELS) and tone["sample_rate"] == kit.SAMPLE_RATE
    assert tone["window_seconds"] == pytest.approx(0.2) and tone["thresholds"] == [0.5] * len(LABELS)
    assert tone["active_providers"] == ["CPUExecutionProvider"]
    client.post("/model/predict", params={"model": "broken.onnx"}, files=upload(("a.wav", b"RIFF")))
    models = {m["id"]: m for m in client.get("/models").json()}
    assert not models["broken.onnx"]["loaded"] and "broken.onnx" in models["broken.onnx"]["error"]


def test_openapi_document_and_swagger_ui(client: TestClient) -> None:
    schema = client.get("/docs/openapi.json").json()
    assert {
        "/models",
        "/model/predict",
        "/model/predict-directory",
        "/model/predict-directory-stream",
        "/model/test-directory",
        "/model/test-directory-stream",
        "/health",
        "/ready",
        "/metrics",
    } <= set(schema["paths"])
    assert "PredictResponse" in json.dumps(schema["components"])
    ui = client.get("/docs")
    assert ui.status_code == 200 and "swagger" in ui.text.lower()


# ---- predict ----------------------------------------------------------------------------------------------


def test_predict_gives_each_file_its_own_answer_and_reports_bad_files(
    client: TestClient, workspace: Path
) -> None:
    files = upload(
        song(workspace, "s0.wav"),
        song(workspace, "s1.wav"),
        song(workspace, "s2.wav"),
        ("corrupt.wav", b"RIFF nope"),
        ("empty.wav", b""),
        ("long.wav", (workspace / "data" / "long.wav").read_bytes()),
    )
    response = client.post("/model/predict", params={"model": MODEL}, files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == MODEL
    for i in range(3):
        assert body["predictions"][f"s{i}.wav"] == kit.expected(kit.label_set(i))
        probs = body["probabilities"][f"s{i}.wav"]
        assert list(probs) == list(LABELS) and all(0.0 <= p <= 1.0 for p in probs.values())
    assert set(body["errors"]) == {"corrupt.wav", "empty.wav", "long.wav"}
    assert "not a recognised audio file" in body["errors"]["corrupt.wav"]
    assert "empty" in body["errors"]["empty.wav"]
    assert "limit is 1 s" in body["errors"]["long.wav"]
    assert "timeline" not in body


def test_predict_resamples_other_rates(client: TestClient, workspace: Path) -> None:
    files = upload(("hires.wav", (workspace / "data" / "hires.wav").read_bytes()))
    body = client.post("/model/predict", params={"model": MODEL}, files=files).json()
    assert body["predictions"]["hires.wav"] == kit.expected([2, 8])


def test_repeated_file_names_keep_every_answer(client: TestClient, workspace: Path) -> None:
    _, first = song(workspace, "s0.wav")
    _, second = song(workspace, "s1.wav")
    body = client.post(
        "/model/predict", params={"model": MODEL}, files=upload(("x.wav", first), ("x.wav", second))
    ).json()
    assert body["predictions"]["x.wav"] == kit.expected(kit.label_set(0))
    assert body["predictions"]["x.wav (2)"] == kit.expected(kit.label_set(1))


def test_thresholds_come_from_the_artifact_unless_overridden(client: TestClient, workspace: Path) -> None:
    files = upload(song(workspace, "s0.wav"))
    strict = client.post("/model/predict", params={"model": "nested/strict.onnx"}, files=files).json()
    assert set(strict["predictions"]["s0.wav"].values()) == {0}  # 0.9975 < 0.999
    low = client.post("/model/predict", params={"model": MODEL, "threshold": 0.01}, files=files).json()
    assert set(low["predictions"]["s0.wav"].values()) == {1}


def test_timeline_has_one_entry_per_window(client: TestClient, workspace: Path) -> None:
    params = {"model": MODEL, "timeline": "true"}
    body = client.post("/model/predict", params=params, files=upload(song(workspace, "s3.wav"))).json()
    timeline = body["timeline"]["s3.wav"]
    assert [(w["start"], w["end"]) for w in timeline] == [
        (0.0, 0.2),
        (0.1, 0.3),
        (0.2, 0.4),
        (0.3, 0.5),
        (0.4, 0.6),
    ]
    hot = {LABELS[k] for k in kit.label_set(3)}
    assert all({c for c, p in w["probabilities"].items() if p > 0.5} == hot for w in timeline)


@pytest.mark.parametrize(
    ("params", "files", "status", "needle"),
    [
        ({"model": "nope.onnx"}, True, 404, "unknown model 'nope.onnx'"),
        ({"model": "../models/tone.onnx"}, True, 404, "unknown model"),
        ({"model": "broken.onnx"}, True, 424, "retrying will not help"),
        ({}, True, 400, "'model'"),
        ({"model": MODEL, "threshold": 1.5}, True, 400, "threshold"),
        ({"model": MODEL}, False, 400, "files"),
    ],
    ids=["unknown-model", "model-path-escape", "broken-model", "no-model", "bad-threshold", "no-files"],
)
def test_predict_errors(
    client: TestClient, workspace: Path, params: dict[str, Any], files: bool, status: int, needle: str
) -> None:
    if files:
        response = client.post("/model/predict", params=params, files=upload(song(workspace, "s0.wav")))
    else:
        response = client.post(
            "/model/predict", params=params, files=[("other", ("a.wav", b"x", "audio/wav"))]
        )
    assert response.status_code == status
    assert needle in response.text


def test_predict_with_an_unknown_body_type_is_415_with_a_hint(client: TestClient) -> None:
    response = client.post(
        "/model/predict",
        params={"model": MODEL},
        content=b"raw bytes",
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 415
    assert "'files'" in response.json()["detail"] and "audio/wav" in response.json()["detail"]


@pytest.mark.parametrize("media", ["audio/wav", "application/octet-stream"])
def test_one_file_as_the_raw_body_answers_like_multipart(
    client: TestClient, workspace: Path, media: str
) -> None:
    name, data = song(workspace, "s1.wav")
    multipart = client.post("/model/predict", params={"model": MODEL}, files=upload((name, data))).json()
    raw = client.post(
        "/model/predict",
        params={"model": MODEL, "filename": name},
        content=data,
        headers={"content-type": media},
    )
    assert raw.status_code == 200 and raw.json() == multipart
    unnamed = client.post(
        "/model/predict", params={"model": MODEL}, content=data, headers={"content-type": media}
    )
    assert unnamed.json()["predictions"]["upload"] == kit.expected(kit.label_set(1))


def test_raw_body_uploads_keep_every_limit(client: TestClient) -> None:
    headers = {"content-type": "audio/flac"}
    big = client.post("/model/predict", params={"model": MODEL}, content=b"\0" * 300_000, headers=headers)
    assert big.status_code == 413
    empty = client.post("/model/predict", params={"model": MODEL}, content=b"", headers=headers)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    corrupt = client.post("/model/predict", params={"model": MODEL}, content=b"RIFF nope", headers=headers)
    assert "not a recognised audio file" in corrupt.json()["errors"]["upload"]


def test_upload_over_the_limit_is_413(client: TestClient) -> None:
    big = upload(("big.wav", b"\0" * 300_000))
    assert client.post("/model/predict", params={"model": MODEL}, files=big).status_code == 413


# ---- directories ----------------------------------------------------------------------------------------


def test_predict_directory_walks_folders_files_and_csvs(client: TestClient) -> None:
    body = {"model": MODEL, "paths": ["songs", "long.wav", "list.csv", "missing_dir", "irmastest/a.txt"]}
    response = client.post("/model/predict-directory", json=body)
    assert response.status_code == 200
    result = response.json()
    for i in range(4):
        assert result["predictions"][f"songs/s{i}.wav"] == kit.expected(kit.label_set(i))
    assert result["predictions"]["songs/deeper/d.wav"] == kit.expected([10])
    assert "songs/._resource_fork.wav" not in result["predictions"]
    assert set(result["errors"]) == {
        "songs/corrupt.wav",
        "songs/escape.wav",
        "long.wav",
        "missing_dir",
        "irmastest/a.txt",
    }
    assert "outside --data-root" in result["errors"]["songs/escape.wav"]
    assert result["errors"]["missing_dir"] == "not found"


@pytest.mark.parametrize(
    ("path", "status"),
    [("..", 403), ("/etc", 403), ("link_out", 403), ("link_out/secret.wav", 403), ("bad\u0000path", 400)],
)
def test_directory_paths_outside_the_data_root_are_refused(
    client: TestClient, path: str, status: int
) -> None:
    for endpoint in ("/model/predict-directory", "/model/predict-directory-stream"):
        response = client.post(endpoint, json={"model": MODEL, "paths": [path]})
        assert response.status_code == status, endpoint
        assert repr(path) in response.json()["detail"]


def test_malformed_directory_bodies_name_the_field(client: TestClient) -> None:
    missing = client.post("/model/predict-directory", json={"model": MODEL})
    assert missing.status_code == 400 and "paths" in missing.text
    wrong_type = client.post("/model/predict-directory", json={"model": MODEL, "paths": "songs"})
    assert wrong_type.status_code == 400 and "paths" in wrong_type.text
    not_json = client.post(
        "/model/predict-directory", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    assert (
        client.post("/model/predict-directory", json={"model": "nope", "paths": ["songs"]}).status_code == 404
    )


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def test_predict_directory_stream_reports_progress_then_a_summary(client: TestClient) -> None:
    body = {"model": MODEL, "paths": ["songs"]}
    lines = ndjson(client.post("/model/predict-directory-stream", json=body))
    chunks, summary = lines[:-1], lines[-1]
    assert all(line["type"] == "chunk" for line in chunks) and len(chunks) == 4  # 7 files, 2 per chunk
    assert [c["done"] for c in chunks] == [2, 4, 6, 7]
    merged = {k: v for c in chunks for k, v in c["predictions"].items()}
    assert merged == client.post("/model/predict-directory", json=body).json()["predictions"]
    assert summary == {"type": "summary", "model": MODEL, "n_files": 7, "n_errors": 2}


def test_test_directory_scores_labelled_datasets(client: TestClient) -> None:
    body = {
        "model": MODEL,
        "datasets": [
            {"dataset_type": "irmastest", "dataset_path": "irmastest"},
            {"dataset_type": "csv", "dataset_path": "labels.csv"},
        ],
    }
    response = client.post("/model/test-directory", json=body)
    assert response.status_code == 200
    result = response.json()
    assert sorted(result["predictions"]) == [
        "irmastest/a.wav",
        "irmastest/b.wav",
        "songs/s0.wav",
        "songs/s1.wav",
        "songs/s2.wav",
    ]
    assert result["errors"] == {}
    metrics = result["metrics"]
    assert metrics["n_files"] == 5
    assert metrics["accuracy"] == 1.0 and metrics["exact_match"] == 1.0 and metrics["hamming_distance"] == 0.0
    assert metrics["f1_micro"] == 1.0 and metrics["lrap"] == pytest.approx(1.0)
    assert "instrument_metrics" not in result
    detailed = client.post("/model/test-directory", json={**body, "add_instrument_metrics": True}).json()
    assert detailed["instrument_metrics"]["cel"]["support"] == 1 + sum(
        0 in kit.label_set(i) for i in range(3)
    )
    assert set(detailed["instrument_metrics"]) == set(LABELS)


def test_test_directory_reports_dataset_problems_per_entry(client: TestClient) -> None:
    body = {
        "model": MODEL,
        "datasets": [
            {"dataset_type": "irmastest", "dataset_path": "nowhere"},
            {"dataset_type": "irmastrain", "dataset_path": "songs"},
        ],
    }
    result = client.post("/model/test-directory", json=body).json()
    assert result["errors"]["nowhere"] == "dataset path not found"
    assert result["metrics"] is None or result["metrics"]["n_files"] >= 0
    outside = {"model": MODEL, "datasets": [{"dataset_type": "csv", "dataset_path": "../outside/x.csv"}]}
    assert client.post("/model/test-directory", json=outside).status_code == 403
    bad_type = {"model": MODEL, "datasets": [{"dataset_type": "openmic", "dataset_path": "songs"}]}
    response = client.post("/model/test-directory", json=bad_type)
    assert response.status_code == 400 and "dataset_type" in response.text


def test_test_directory_stream_ends_with_metrics(client: TestClient) -> None:
    body = {"model": MODEL, "datasets": [{"dataset_type": "csv", "dataset_path": "labels.csv"}]}
    lines = ndjson(client.post("/model/test-directory-stream", json=body))
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["n_files"] == 3
    assert summary["metrics"]["exact_match"] == 1.0


# ---- metrics ----------------------------------------------------------------------------------------------


def test_metrics_count_requests_batches_and_decode_errors(client: TestClient, workspace: Path) -> None:
    client.post(
        "/model/predict", params={"model": MODEL}, files=upload(song(workspace, "s0.wav"), ("bad.wav", b"zz"))
    )
    text = client.get("/metrics").text
    assert 'lumen_requests_total{endpoint="/model/predict",method="POST",status="200"}' in text
    assert 'lumen_request_latency_seconds_bucket{endpoint="/model/predict"' in text
    assert f'lumen_batch_size_count{{model="{MODEL}"}}' in text
    assert f'lumen_inference_latency_seconds_count{{model="{MODEL}"}}' in text
    assert f'lumen_queue_depth{{model="{MODEL}"}} 0.0' in text
    assert f'lumen_windows_processed_total{{model="{MODEL}"}}' in text
    assert f'lumen_decode_errors_total{{model="{MODEL}"}}' in text


# ---- behaviour under load, bugs, lifecycle -------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    gate.set()
    original = OnnxModel.run

    def held_run(self: OnnxModel, windows: np.ndarray, instance: int = 0) -> np.ndarray:
        assert gate.wait(HANG_GUARD_S)
        return original(self, windows, instance)

    monkeypatch.setattr(OnnxModel, "run", held_run)
    frames = sf.info(str(workspace / "data" / "songs" / "s0.wav")).frames
    n = window_count(frames, kit.WINDOW, kit.HOP)  # the queue holds exactly one such file
    app = create_app(settings(workspace, models=(MODEL,), max_batch_size=1, max_queue=n))
    with TestClient(app) as test_client, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        batcher = app.state.server.registry.entries[MODEL].loaded.batcher
        gate.clear()
        first = pool.submit(
            test_client.post,
            "/model/predict",
            params={"model": MODEL},
            files=upload(song(workspace, "s0.wav")),
        )
        wait_for(lambda: batcher.occupancy == n - 1)  # one window computing (held), the rest queued
        busy = test_client.post(
            "/model/predict", params={"model": MODEL}, files=upload(song(workspace, "s1.wav"))
        )
        gate.set()
        assert first.result(HANG_GUARD_S).status_code == 200
    assert busy.status_code == 503
    assert int(busy.headers["retry-after"]) >= 1 and "busy" in busy.json()["detail"]


def test_a_disconnected_client_cancels_its_work() -> None:
    class FakeRequest:
        def __init__(self) -> None:
            self.messages = asyncio.Queue()

        async def receive(self) -> dict[str, str]:
            return await self.messages.get()

    async def scenario() -> bool:
        request = FakeRequest()
        work = asyncio.ensure_future(asyncio.Event().wait())
        await request.messages.put({"type": "http.disconnect"})
        with pytest.raises(ClientDisconnected):
            await asyncio.wait_for(unless_disconnected(request, work), HANG_GUARD_S)  # type: ignore[arg-type]
        return work.cancelled()

    assert asyncio.run(scenario())


def test_an_oip_client_that_disconnects_stops_waiting_for_its_inference(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OIP route is guarded like the native ones: a client that goes away while its windows are
    being computed gets its work cancelled (499 in the metrics) instead of holding the handler."""
    gate, entered = threading.Event(), threading.Event()
    original = OnnxModel.run

    def held_run(self: OnnxModel, windows: np.ndarray, instance: int = 0) -> np.ndarray:
        entered.set()
        assert gate.wait(HANG_GUARD_S)
        return original(self, windows, instance)

    app = create_app(settings(workspace, models=(MODEL,)))
    waveform = np.zeros(kit.WINDOW, np.float32).tolist()
    body = json.dumps(
        {"inputs": [{"name": "waveform", "shape": [1, kit.WINDOW], "datatype": "FP32", "data": waveform}]}
    ).encode()

    async def scenario() -> list[int]:
        life_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        life_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        lifespan = asyncio.ensure_future(app({"type": "lifespan"}, life_in.get, life_out.put))  # type: ignore[arg-type]
        await life_in.put({"type": "lifespan.startup"})
        assert (await asyncio.wait_for(life_out.get(), HANG_GUARD_S))["type"] == "lifespan.startup.complete"
        registry = app.state.server.registry
        for _ in range(int(HANG_GUARD_S / 0.01)):
            if registry.entries[MODEL].loaded is not None:
                break
            await asyncio.sleep(0.01)
        monkeypatch.setattr(OnnxModel, "run", held_run)  # after the warm-up run
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await messages.put({"type": "http.request", "body": body, "more_body": False})
        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": f"/v2/models/{MODEL}/infer", "raw_path": f"/v2/models/{MODEL}/infer".encode(),
            "query_string": b"", "root_path": "", "server": ("testserver", 80), "client": ("test", 1),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        request = asyncio.ensure_future(app(scope, messages.get, send))  # type: ignore[arg-type]
        assert await asyncio.to_thread(entered.wait, HANG_GUARD_S)  # its window is computing (held)
        await messages.put({"type": "http.disconnect"})
        await asyncio.wait_for(request, HANG_GUARD_S)  # returns while the model is still held
        held = not gate.is_set()
        gate.set()
        await life_in.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, HANG_GUARD_S)
        assert held
        return statuses

    assert asyncio.run(scenario()) == [499]


def test_a_real_bug_is_a_logged_500(
    client: TestClient, workspace: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: ResponseMaps, result: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(ResponseMaps, "add", broken)
    with caplog.at_level(logging.ERROR, logger="serving.app"):
        response = client.post(
            "/model/predict", params={"model": MODEL}, files=upload(song(workspace, "s0.wav"))
        )
    assert response.status_code == 500 and "bug" not in response.text
    assert "ZeroDivisionError" in caplog.text


def test_lazy_models_load_on_first_use(workspace: Path) -> None:
    with TestClient(create_app(settings(workspace, lazy=True))) as test_client:
        assert test_client.get("/ready").json() == {"ready": True, "models": {}}
        assert not {m["id"]: m for m in test_client.get("/models").json()}[MODEL]["loaded"]
        response = test_client.post(
            "/model/predict", params={"model": MODEL}, files=upload(song(workspace, "s2.wav"))
        )
        assert response.json()["predictions"]["s2.wav"] == kit.expected(kit.label_set(2))
        assert {m["id"]: m for m in test_client.get("/models").json()}[MODEL]["loaded"]


def test_ready_is_503_until_every_requested_model_is_loaded(workspace: Path) -> None:
    with TestClient(create_app(settings(workspace, models=(MODEL, "missing.onnx")))) as test_client:
        wait_for(lambda: test_client.get("/ready").json()["models"][MODEL] == "ready")
        response = test_client.get("/ready")
        assert response.status_code == 503
        assert "not found" in response.json()["models"]["missing.onnx"]


def test_hot_reload_adds_and_replaces_models(tmp_path: Path, workspace: Path) -> None:
    models = tmp_path / "models"
    kit.build_model(models / "a.onnx")
    app = create_app(settings(workspace, model_dir=models, hot_reload=True, reload_interval_s=0.05))
    with TestClient(app) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)

        def listing() -> dict[str, Any]:
            return {m["id"]: m for m in test_client.get("/models").json()}

        kit.build_model(models / "b.onnx")
        wait_for(lambda: listing().get("b.onnx", {}).get("loaded", False))
        staged = tmp_path / "staged.onnx"
        kit.build_model(staged, kit.metadata(thresholds=[0.25] * len(LABELS)))
        staged.replace(models / "a.onnx")
        wait_for(lambda: listing()["a.onnx"]["thresholds"] == [0.25] * len(LABELS))
        response = test_client.post(
            "/model/predict", params={"model": "a.onnx"}, files=upload(song(workspace, "s0.wav"))
        )
        assert response.json()["predictions"]["s0.wav"] == kit.expected(kit.label_set(0))
        (models / "b.onnx").unlink()
        wait_for(lambda: "b.onnx" not in listing())


def test_a_reload_lets_in_flight_requests_finish_on_the_old_model(
    tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    original = OnnxModel.run

    def held_run(self: OnnxModel, windows: np.ndarray, instance: int = 0) -> np.ndarray:
        if len(windows) == 5:  # the request's batch (one 0.6 s file); warm-up batches pass
            assert gate.wait(HANG_GUARD_S)
        return original(self, windows, instance)

    monkeypatch.setattr(OnnxModel, "run", held_run)
    models = tmp_path / "models"
    kit.build_model(models / "a.onnx")
    app = create_app(settings(workspace, model_dir=models, hot_reload=True, reload_interval_s=0.05))
    with TestClient(app) as test_client, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        in_flight = pool.submit(
            test_client.post,
            "/model/predict",
            params={"model": "a.onnx"},
            files=upload(song(workspace, "s0.wav")),
        )
        wait_for(lambda: "lumen_queue_depth" in test_client.get("/metrics").text)
        staged = tmp_path / "staged.onnx"
        kit.build_model(staged, kit.metadata(thresholds=[0.25] * len(LABELS)))
        staged.replace(models / "a.onnx")
        wait_for(lambda: test_client.get("/models").json()[0]["thresholds"] == [0.25] * len(LABELS))
        gate.set()
        response = in_flight.result(HANG_GUARD_S)
    assert response.status_code == 200
    assert response.json()["predictions"]["s0.wav"] == kit.expected(kit.label_set(0))

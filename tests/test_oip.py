"""serving.oip against a live ``lumen-serve``, driven by Triton's own ``tritonclient[http]``.

The model is the tone detector of ``serving_testkit`` under a nested id (``nested/tone.onnx``), so
every call also proves that ids with ``/`` route. Window probabilities are checked against the numpy
twin of the graph, whole-file answers against the native ``POST /model/predict`` of the same server.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import serving_testkit as kit
import soundfile as sf
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from common.labels import LABELS
from serving.cli import build_parser

MODEL = "nested/tone.onnx"
MAX_QUEUE = 64
MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.LiveServer]:
    workspace = tmp_path_factory.mktemp("oip")
    kit.build_model(workspace / "models" / MODEL)
    (workspace / "data").mkdir()
    live = kit.LiveServer(
        workspace,
        "--max-batch-size",
        "8",
        "--max-queue",
        str(MAX_QUEUE),
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
    )
    yield live
    assert live.stop() in (0, -signal.SIGTERM), live.log.read_text()  # uvicorn re-raises SIGTERM


@pytest.fixture(scope="module")
def client(server: kit.LiveServer) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield triton_client
    triton_client.close()


def windows_of(label_sets: list[list[int]]) -> np.ndarray:
    return np.stack([kit.tones(labels, seconds=kit.WINDOW / kit.SAMPLE_RATE) for labels in label_sets])


def wav_bytes(labels: list[int], seconds: float = 0.6) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, kit.tones(labels, seconds=seconds), kit.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def fp32_input(windows: np.ndarray, *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("waveform", list(windows.shape), "FP32")
    tensor.set_data_from_numpy(windows, binary_data=binary)
    return tensor


def bytes_input(files: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("audio", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    return tensor


def status_of(error: pytest.ExceptionInfo[InferenceServerException]) -> int:
    return int(error.value.status())


# ---- health and metadata --------------------------------------------------------------------------------


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "lumen-audio" and "binary_tensor_data" in metadata["extensions"]


def test_model_ready_and_metadata_with_a_slash_in_the_name(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version="1")
    assert not client.is_model_ready("nested/missing.onnx")
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    inputs = {t["name"]: t for t in metadata["inputs"]}
    assert inputs["waveform"] == {"name": "waveform", "datatype": "FP32", "shape": [-1, kit.WINDOW]}
    assert inputs["audio"]["datatype"] == "BYTES"
    outputs = {t["name"]: t for t in metadata["outputs"]}
    assert outputs["probs"]["shape"] == [-1, len(LABELS)] and outputs["predictions"]["datatype"] == "BOOL"
    assert metadata["parameters"]["labels"] == list(LABELS)
    assert metadata["parameters"]["window_samples"] == kit.WINDOW


def test_unknown_model_and_version_are_404(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope.onnx'") as error:
        client.get_model_metadata("nope.onnx")
    assert status_of(error) == 404
    with pytest.raises(InferenceServerException, match="only version 1") as error:
        client.get_model_metadata(MODEL, model_version="2")
    assert status_of(error) == 404


# ---- waveform FP32 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_waveform_windows_through_the_batcher(client: triton.InferenceServerClient, binary: bool) -> None:
    label_sets = [kit.label_set(i) for i in range(5)]
    windows = windows_of(label_sets)
    outputs = [
        triton.InferRequestedOutput("probs", binary_data=binary),
        triton.InferRequestedOutput("predictions", binary_data=binary),
    ]
    result = client.infer(MODEL, [fp32_input(windows, binary=binary)], outputs=outputs, request_id="r1")
    probs = result.as_numpy("probs")
    assert probs.dtype == np.float32 and probs.shape == (5, len(LABELS))
    np.testing.assert_allclose(probs, kit.reference_probs(windows), atol=1e-5)
    predictions = result.as_numpy("predictions")
    assert predictions.dtype == np.bool_
    for row, labels in zip(predictions, label_sets, strict=True):
        assert [int(v) for v in row] == list(kit.expected(labels).values())
    assert result.get_response()["id"] == "r1"


def test_default_outputs_are_binary_and_threshold_parameter_applies(
    client: triton.InferenceServerClient,
) -> None:
    windows = windows_of([[2]])
    result = client.infer(MODEL, [fp32_input(windows, binary=True)], parameters={"threshold": 0.01})
    response = result.get_response()
    assert {o["name"] for o in response["outputs"]} == {"probs", "predictions"}
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert result.as_numpy("predictions").all()  # every tone detector sits above 0.01


@pytest.mark.parametrize(
    ("shape_of", "values", "message"),
    [
        (lambda n: [n, kit.WINDOW - 1], None, r"must have shape \[n, 1600\]"),
        (lambda n: [MAX_QUEUE + 1, kit.WINDOW], None, "n must be in 1..64"),
        (lambda n: [n, kit.WINDOW], np.nan, "NaN or infinite"),
        (lambda n: [n, kit.WINDOW], np.inf, "NaN or infinite"),
    ],
    ids=["window-length", "too-many-windows", "nan", "inf"],
)
def test_bad_waveforms_are_400(
    client: triton.InferenceServerClient, shape_of: object, values: float | None, message: str
) -> None:
    shape = shape_of(2)  # type: ignore[operator]
    windows = np.zeros(shape, dtype=np.float32)
    if values is not None:
        windows[1, 7] = values
    with pytest.raises(InferenceServerException, match=message) as error:
        client.infer(MODEL, [fp32_input(windows, binary=True)])
    assert status_of(error) == 400


def test_wrong_datatype_and_unknown_names_are_400(client: triton.InferenceServerClient) -> None:
    as_fp64 = triton.InferInput("waveform", [1, kit.WINDOW], "FP64")
    as_fp64.set_data_from_numpy(np.zeros((1, kit.WINDOW), dtype=np.float64))
    with pytest.raises(InferenceServerException, match="must be FP32, got FP64") as error:
        client.infer(MODEL, [as_fp64])
    assert status_of(error) == 400
    other = triton.InferInput("spectrogram", [1, 4], "FP32")
    other.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'spectrogram'"):
        client.infer(MODEL, [other])
    with pytest.raises(InferenceServerException, match="unknown output 'logits'"):
        client.infer(
            MODEL,
            [fp32_input(windows_of([[1]]), binary=True)],
            outputs=[triton.InferRequestedOutput("logits")],
        )


# ---- audio BYTES ------------------------------------------------------------------------------------------


def test_audio_files_match_the_native_predict_endpoint(
    client: triton.InferenceServerClient, server: kit.LiveServer
) -> None:
    label_sets = [[0, 3], [7], [1, 5, 9]]
    files = [wav_bytes(labels, seconds=0.6 + 0.3 * i) for i, labels in enumerate(label_sets)]
    result = client.infer(MODEL, [bytes_input(files)])
    probs = result.as_numpy("probs")
    assert probs.shape == (3, len(LABELS))
    native = httpx.post(
        f"{server.url}/model/predict",
        params={"model": MODEL},
        files=[("files", (f"f{i}.wav", data, "audio/wav")) for i, data in enumerate(files)],
        timeout=30,
    ).json()
    for i, labels in enumerate(label_sets):
        expected = [native["probabilities"][f"f{i}.wav"][code] for code in LABELS]
        np.testing.assert_allclose(probs[i], expected, atol=1e-5)
        assert [int(v) for v in result.as_numpy("predictions")[i]] == list(kit.expected(labels).values())


def test_undecodable_file_is_400_naming_the_element(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=r"audio\[1\]: ") as error:
        client.infer(MODEL, [bytes_input([wav_bytes([2]), b"RIFF this is not audio"])])
    assert status_of(error) == 400


def test_bytes_as_json_strings_are_refused_with_the_fix(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("audio", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["not audio"], dtype=np.object_), binary_data=False)
    with pytest.raises(InferenceServerException, match="binary tensor data extension") as error:
        client.infer(MODEL, [tensor])
    assert status_of(error) == 400


MAX_FILES = build_parser().get_default("max_files")  # the live server runs with the default --max-files


def test_too_many_files_is_400(server: kit.LiveServer) -> None:
    n = MAX_FILES + 1
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "audio",
                    "shape": [n],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 * n},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=header + b"\0\0\0\0" * n,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400
    assert response.json() == {"error": f"input 'audio': 1..{MAX_FILES} files per request, got {n}"}


# ---- hand-written requests: framing errors a client library never sends ----------------------------------


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "invalid inference request JSON"),
        (b'{"inputs": []}', "99", "Inference-Header-Content-Length is 99"),
        (b'{"inputs": []}', "x", "must be an integer"),
        (b'{"inputs": [{"name": "waveform"}]}', None, "invalid inference request JSON"),
        (b'{"inputs": []}', None, "exactly one input"),
    ],
    ids=["not-json", "header-too-long", "header-not-int", "missing-fields", "no-input"],
)
def test_malformed_bodies_are_400_in_oip_form(
    server: kit.LiveServer, body: bytes, header_length: str | None, message: str
) -> None:
    headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_binary_sizes_must_add_up(server: kit.LiveServer) -> None:
    raw = np.zeros((1, kit.WINDOW), dtype="<f4").tobytes()
    tensor = {"name": "waveform", "shape": [1, kit.WINDOW], "datatype": "FP32"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}).encode()
    url = f"{server.url}/v2/models/{MODEL}/infer"
    extra = httpx.post(
        url, content=header + raw + b"xx", headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert extra.status_code == 400 and "2 bytes after the last binary input" in extra.json()["error"]
    short = httpx.post(
        url, content=header + raw[:-4], headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert short.status_code == 400 and "runs past the end" in short.json()["error"]
    ok = httpx.post(url, content=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("application/json")


def test_wrong_method_and_body_limit_keep_oip_errors(server: kit.LiveServer) -> None:
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/infer").status_code == 405
    assert httpx.post(f"{server.url}/v2/models/{MODEL}/ready", content=b"{}").status_code == 405
    too_big = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer", content=b" " * (2 * MAX_UPLOAD_MB * 1024 * 1024)
    )
    assert too_big.status_code == 413 and "error" in too_big.json()


def test_openapi_documents_oip_errors(server: kit.LiveServer) -> None:
    schema = httpx.get(f"{server.url}/docs/openapi.json").json()
    infer = schema["paths"]["/v2/models/{rest}"]["post"]
    for code in ("400", "404", "413", "503", "500"):
        ref = infer["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse")

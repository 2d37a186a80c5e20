"""Regression tests for the second security review of the server: one test (or more) per defect found.

Each test sends what an attacker would and checks what the server does: a typed 4xx instead of a
500, admission control that cannot be side-stepped, and parsing whose memory and work are bounded
by the request's declared shape rather than by whatever the body holds. Memory is measured with
``tracemalloc`` (allocations, not time), so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serving_testkit as kit
from litestar.testing import TestClient
from serving_testkit import wait_for

from common.labels import LABELS
from serving import oip
from serving.app import create_app
from serving.settings import Settings

MODEL = "tone.onnx"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("attacks")
    kit.build_model(base / "models" / MODEL)
    kit.write_tones(base / "data" / "songs" / "s0.wav", [1])
    for i, code in enumerate(LABELS[:3]):  # an irmastest set: clips with sidecar label files
        kit.write_tones(base / "data" / "set" / f"c{i}.wav", [i])
        (base / "data" / "set" / f"c{i}.txt").write_text(code + "\n")
    return base


def settings(workspace: Path, **overrides: Any) -> Settings:
    return kit.workspace_settings(
        workspace,
        {"models": (MODEL,), "max_upload_mb": 2.0, "decode_workers": 1},
        overrides,
    )


@pytest.fixture(scope="module")
def client(workspace: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(workspace))) as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        yield test_client


def waveform_request(data: Any, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "inputs": [{"name": "waveform", "shape": shape or [1, kit.WINDOW], "datatype": "FP32", "data": data}]
    }


def peak_allocated(fn: Any, *args: Any) -> int:
    """Peak bytes Python allocated while ``fn(*args)`` ran (its exception, if any, swallowed)."""
    tracemalloc.start()
    try:
        fn(*args)
    except oip.OipError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# ---- 1. a shape of many huge dimensions: bigint work on the event loop, then a 500 ----------------------


def test_a_shape_of_many_huge_dimensions_is_400_before_its_product(client: TestClient) -> None:
    body = {"inputs": [{"name": "audio", "shape": [2**63 - 1] * 5000, "datatype": "BYTES"}]}
    response = client.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert "dimensions" in response.json()["error"]


# ---- 2. deeply nested JSON: RecursionError -> 500 with a logged traceback --------------------------------


@pytest.mark.parametrize("depth", [2_000, 200_000])
def test_deeply_nested_json_is_400_not_500(client: TestClient, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for body in (
        b'{"inputs":[{"name":"waveform","shape":[1,1600],"datatype":"FP32","data":' + nested + b"}]}",
        b'{"inputs":[],"parameters":{"x":' + nested + b"}}",
    ):
        response = client.post(INFER, content=body)
        assert response.status_code == 400, response.text
        assert "invalid inference request JSON" in response.json()["error"]


# ---- 3. JSON tensor data and parameters decoded into Python object trees (~30x the body) ----------------


def test_json_tensor_data_is_parsed_without_a_python_object_per_value() -> None:
    # 2 MB of empty lists: decoded as Python lists they were ~45 MB (64 bytes per 3-byte '[],')
    junk = b'{"inputs":[{"name":"waveform","shape":[1,1600],"datatype":"FP32","data":[' + b"[]," * 700_000
    junk += b"[]]}]}"

    def parse_and_validate(body: bytes) -> None:
        request, payloads = oip.parse_request(body, None)
        oip.waveform_windows(request.inputs[0], payloads.get("waveform"), kit.WINDOW, 1024)

    assert peak_allocated(parse_and_validate, junk) < 3 * len(junk)
    with pytest.raises(oip.OipError, match="data must be numbers"):
        parse_and_validate(junk)


def test_json_tensor_numbers_are_decoded_a_slice_at_a_time() -> None:
    """Real numbers, exactly as many as the shape says: the whole array as Python floats is 32 bytes
    per value (8x this 4-byte-per-value body, 10x with the lists); decoded a slice at a time it is
    the float32 result, two copies of the text and one slice, and every value arrives."""
    n = 400
    body = (
        b'{"inputs":[{"name":"waveform","shape":[%d,%d],"datatype":"FP32","data":[' % (n, kit.WINDOW)
        + b",".join([b"1.5"] * (n * kit.WINDOW))
        + b"]}]}"
    )
    got: list[np.ndarray] = []

    def parse_and_validate(raw: bytes) -> None:
        request, payloads = oip.parse_request(raw, None)
        got.append(oip.waveform_windows(request.inputs[0], payloads.get("waveform"), kit.WINDOW, 1024))

    peak = peak_allocated(parse_and_validate, body)
    assert got and got[0].shape == (n, kit.WINDOW) and (got[0] == 1.5).all()
    assert peak < 5 * len(body), (peak, len(body))


def test_json_parameters_must_be_scalars(client: TestClient) -> None:
    body = waveform_request([0.0] * kit.WINDOW)
    body["parameters"] = {"threshold": 0.5, "junk": [[], [], {}]}
    response = client.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert "parameters" in response.json()["error"]


def test_json_waveform_data_still_matches_the_model_in_every_layout(client: TestClient) -> None:
    windows = np.stack([kit.tones(labels, seconds=kit.WINDOW / kit.SAMPLE_RATE) for labels in ([1], [3, 7])])
    expected = kit.reference_probs(windows)
    for data in (windows.ravel().tolist(), windows.tolist()):
        text = json.dumps(waveform_request(data, list(windows.shape)), indent=1)  # whitespace too
        response = client.post(INFER, content=text.encode())
        assert response.status_code == 200, response.text
        probs = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
        np.testing.assert_allclose(probs, expected, atol=1e-5)


@pytest.mark.parametrize(
    "data",
    [
        [[], [0.0] * (kit.WINDOW - 1)],  # the right comma count, but an empty row among the values
        ["0.5"] * kit.WINDOW,  # numbers as strings
        [True] * kit.WINDOW,
        [None] * kit.WINDOW,
        [{"x": 1}] * kit.WINDOW,
        [0.0] * (kit.WINDOW - 1),
        1e39,
        [1e39] * kit.WINDOW,
    ],
)
def test_json_waveform_data_that_is_not_exactly_the_numbers_of_its_shape_is_400(
    client: TestClient, data: Any
) -> None:
    response = client.post(INFER, json=waveform_request(data))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "data" in error or "NaN or infinite" in error


# ---- 4. a BYTES payload of millions of elements was split up in full on the event loop -----------------


def test_a_bytes_payload_is_read_only_as_far_as_its_shape_claims() -> None:
    tensor = oip.InferInputTensor(name="audio", shape=[1], datatype="BYTES")
    payload = b"\x01\x00\x00\x00x" * 400_000  # 2 MB: 400 000 one-byte elements for a shape of [1]
    peak = peak_allocated(oip.audio_files, tensor, payload, 64)
    assert peak < len(payload) // 4  # it was ~16 MB: a bytes object and a list slot per element
    with pytest.raises(oip.OipError, match="needs 1 elements, got 1 and more"):
        oip.audio_files(tensor, payload, 64)
    assert oip.audio_files(tensor, payload[:5], 64) == [b"x"]


# ---- 5. test-directory scored a dataset once per naming of it (x --max-datasets work, wrong metrics) -----


def test_a_dataset_named_several_ways_is_scored_once(client: TestClient) -> None:
    names = ["set", "set/", "./set", "set/../set", "songs/../set"]
    datasets = [{"dataset_type": "irmastest", "dataset_path": name} for name in names]
    response = client.post("/model/test-directory", json={"model": MODEL, "datasets": datasets})
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(body["probabilities"]) == ["set/c0.wav", "set/c1.wav", "set/c2.wav"]
    assert body["metrics"]["n_files"] == 3 and body["errors"] == {}
    stream = client.post("/model/test-directory-stream", json={"model": MODEL, "datasets": datasets})
    summary = json.loads(stream.text.splitlines()[-1])
    assert summary["n_files"] == 3 and summary["metrics"]["n_files"] == 3


# ---- 6. a multipart text field that is not text: Litestar's parser raised out of the handler (500) -------


@pytest.mark.parametrize(
    ("disposition", "content_type"),
    [
        (b'form-data; name="files"', b"audio/wav"),  # no filename: a text field holding audio bytes
        (b'form-data; name="files"', b"text/plain; charset=no-such-charset"),
        (b'form-data; name="note"', b"text/plain; charset=no-such-charset"),
    ],
)
def test_a_multipart_text_field_that_cannot_be_decoded_is_400(
    client: TestClient, workspace: Path, disposition: bytes, content_type: bytes
) -> None:
    wav = (workspace / "data" / "songs" / "s0.wav").read_bytes()
    body = (
        b"--xx\r\nContent-Disposition: "
        + disposition
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\n\r\n"
        + wav
        + b"\r\n--xx--\r\n"
    )
    response = client.post(
        "/model/predict",
        params={"model": MODEL},
        content=body,
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert response.status_code == 400, response.text
    assert "filename" in response.json()["detail"]


# ---- 7. deeply nested JSON on the directory endpoints: RecursionError out of Litestar's parser (500) ----


@pytest.mark.parametrize(
    "endpoint",
    [
        "/model/predict-directory",
        "/model/predict-directory-stream",
        "/model/test-directory",
        "/model/test-directory-stream",
    ],
)
def test_deeply_nested_json_on_the_directory_endpoints_is_400(client: TestClient, endpoint: str) -> None:
    nested = b"[" * 5_000 + b"]" * 5_000
    for body in (nested, b'{"model": ' + nested + b"}", b'{"model": "tone.onnx", "junk": ' + nested + b"}"):
        response = client.post(endpoint, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
    assert response.json()["detail"] == "invalid JSON body: nested too deeply"


def test_the_500_log_line_cannot_be_split_by_a_newline_in_the_path(caplog: pytest.LogCaptureFixture) -> None:
    """A decoded request path may hold %0A; the one line logged for an unexpected error must not let
    it start a forged line of its own (the path is logged escaped)."""
    from types import SimpleNamespace

    from serving.app import _bug

    forged = "/model/predict\n2026-12-05 INFO admin logged in"
    request = SimpleNamespace(method="POST", url=SimpleNamespace(path=forged))
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        with caplog.at_level("ERROR"):
            response = _bug(request, exc)  # type: ignore[arg-type]
    assert response.status_code == 500
    (record,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error on")]
    assert "\n" not in record.getMessage() and "\\n2026-12-05 INFO admin" in record.getMessage()


# ---- DNS rebinding: a page whose own name resolves to 127.0.0.1 reads a localhost server's answers ----


@pytest.mark.parametrize(
    "header, name",
    [
        ("localhost:8090", "localhost"),
        ("LOCALHOST", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8090", "::1"),
        ("[::1]", "::1"),
        ("attacker.example:8090", "attacker.example"),
        ("localhost.attacker.example", "localhost.attacker.example"),
        ("", ""),
    ],
)
def test_host_name_drops_the_port_and_brackets(header: str, name: str) -> None:
    from serving.app import host_name

    assert host_name(header) == name


def test_lumen_serve_on_loopback_answers_only_loopback_host_names() -> None:
    from serving.cli import build_parser, settings_from_args

    def allowed(*argv: str) -> tuple[str, ...]:
        return settings_from_args(build_parser().parse_args(["--cpu-threads", "1", *argv])).allowed_hosts

    assert allowed() == ("localhost", "127.0.0.1", "::1")  # the default --host is localhost
    assert allowed("--host", "127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert allowed("--host", "0.0.0.0") == ()  # any: behind a proxy or a cluster Service
    assert allowed("--host", "0.0.0.0", "--allowed-hosts", "Lumen.Example", "[::1]") == (
        "lumen.example",
        "::1",
    )
    assert allowed("--allowed-hosts", "*") == ()
    # An empty name would match a request that sends no Host header at all: refused.
    with pytest.raises(ValueError, match="--allowed-hosts names must not be empty"):
        allowed("--allowed-hosts", "localhost", " [] ")


@pytest.mark.filterwarnings("ignore:The base_url")  # Litestar prefers a dotted name; localhost is the point
def test_a_rebinding_page_is_refused_before_any_work(workspace: Path) -> None:
    loopback = settings(workspace, allowed_hosts=("localhost", "127.0.0.1", "::1"))
    with TestClient(create_app(loopback), base_url="http://localhost:8090") as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)
        assert test_client.get("/models").status_code == 200
        assert test_client.get("/models", headers={"host": "127.0.0.1"}).status_code == 200
        assert test_client.get("/models", headers={"host": "[::1]:8090"}).status_code == 200
        for evil in ("attacker.example:8090", "localhost.attacker.example", "127.0.0.1.nip.io"):
            response = test_client.post(
                "/model/predict-directory",
                json={"model": MODEL, "paths": ["songs"]},
                headers={"host": evil},
            )
            assert response.status_code == 400, evil
            assert "Host header" in response.json()["detail"] and "songs" not in response.text
        assert test_client.get("/", headers={"host": "attacker.example"}).status_code == 400
        metrics = test_client.get("/metrics").text
        assert 'lumen_rejected_requests_total{reason="host"} 4.0' in metrics


@pytest.mark.filterwarnings("ignore:The base_url")
def test_a_cross_site_page_cannot_make_a_local_server_work(workspace: Path) -> None:
    """Any page may POST a form or text/plain JSON to localhost without a CORS preflight; it cannot read
    the answer but could make the server decode, infer and score --data-root on every visit. A POST
    whose Origin is not an allowed name is refused; the server's own page and non-browser clients
    (no Origin) are served."""
    loopback = settings(workspace, allowed_hosts=("localhost", "127.0.0.1", "::1"))
    job = json.dumps({"model": MODEL, "paths": ["songs"]}).encode()
    with TestClient(create_app(loopback), base_url="http://localhost:8090") as test_client:
        wait_for(lambda: test_client.get("/ready").status_code == 200)

        def post(origin: str | None) -> Any:
            headers = {"content-type": "text/plain"} | ({"origin": origin} if origin is not None else {})
            return test_client.post("/model/predict-directory", content=job, headers=headers)

        for origin in ("https://attacker.example", "null", "http://localhost.attacker.example:8090", "x"):
            response = post(origin)
            assert response.status_code == 403, origin
            assert "cross-site" in response.json()["detail"] and "songs" not in response.text
        upload = test_client.post(
            "/model/predict",
            params={"model": MODEL},
            files={"files": ("s0.wav", (workspace / "data" / "songs" / "s0.wav").read_bytes())},
            headers={"origin": "https://attacker.example"},
        )
        assert upload.status_code == 403
        for origin in (None, "http://localhost:8090", "http://127.0.0.1:8090", "http://[::1]:8090"):
            response = post(origin)
            assert response.status_code == 200, (origin, response.text)
            assert "songs/s0.wav" in response.json()["predictions"]
        # Reading is not a cross-site write: a GET with a foreign Origin is answered (CORS keeps the
        # answer from the foreign page; nothing runs).
        assert test_client.get("/models", headers={"origin": "https://attacker.example"}).status_code == 200
        metrics = test_client.get("/metrics").text
        assert 'lumen_rejected_requests_total{reason="origin"} 5.0' in metrics


@pytest.mark.parametrize(
    "origin, name",
    [
        ("http://localhost:8090", "localhost"),
        ("https://LOCALHOST", "localhost"),
        ("http://[::1]:8090", "::1"),
        ("null", ""),
        ("http://[bad", ""),
    ],
)
def test_origin_host(origin: str, name: str) -> None:
    from serving.app import origin_host

    assert origin_host(origin) == name


# ---- clickjacking and MIME sniffing: every response says nosniff and no framing ------------------------


def test_every_response_forbids_framing_and_sniffing(client: TestClient) -> None:
    """The web page (its "score a dataset" button) could be framed under another site's buttons, and a
    JSON error that echoes a client's name could be sniffed as HTML; the middlewares' own answers
    (400 Host, 503 busy) and error bodies carry the headers too, exactly once."""
    page = client.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    responses = [
        page,
        client.get("/docs"),
        client.get("/static/no-such-file"),
        client.get("/models"),
        client.post("/model/predict", params={"model": "<b>x</b>.onnx"}, content=b"x"),
        client.post(INFER, content=b"[" * 5000),
    ]
    for response in responses:
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], response.url
        assert response.headers.get_list("x-frame-options") == ["DENY"], response.url
    assert {r.status_code for r in responses} >= {200, 400, 404}

"""The Open Inference Protocol (KServe v2 / Triton HTTP) beside the native API, on the same engine.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}``,
``/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer`` (each also under
``/versions/1``, the only version). A model's name is its id from ``GET /models``, a path relative
to ``--model-dir`` that may hold ``/`` (``demo/tiny.onnx``): one path parameter takes the rest of the
URL and the action is split off its end. Ids always end in ``.onnx``, so the split is unambiguous.

Two inputs, one per request:

- ``waveform`` FP32 ``[n, window_samples]``: windows already cut at the model's rate, submitted
  straight to the model's dynamic batcher (``n`` at most ``--max-queue``, finite values only);
  outputs are per window.
- ``audio`` BYTES ``[n]``: whole encoded files (wav/flac/ogg/mp3), each going through the same
  decode, limits and windowing as ``POST /model/predict``; outputs are per file. BYTES need the
  binary tensor data extension (a JSON string cannot carry audio).

Outputs: ``probs`` FP32 ``[n, labels]`` and ``predictions`` BOOL ``[n, labels]`` (the model's
per-label thresholds, or ``parameters.threshold``). The binary tensor data extension works both ways:
``Inference-Header-Content-Length`` on the request, and binary outputs when asked for
(``binary_data`` on an output, or ``binary_data_output`` on the request). Every client error is a 4xx
with OIP's ``{"error": "..."}`` body; errors raised by the shared engine (unknown model, full queue,
body too large...) keep the status the native API gives them, through the app's own handlers.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import msgspec
import numpy as np
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath

from common.artifact import INPUT_NAME, OUTPUT_NAME
from common.version import __version__
from serving.batcher import BatcherClosed, QueueFull
from serving.disconnect import unless_disconnected
from serving.pipeline import Job, thresholds_for
from serving.registry import LoadedModel, ModelNotFound

AUDIO_INPUT = "audio"
PREDICTIONS_OUTPUT = "predictions"
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "Inference-Header-Content-Length"
PARSE_IN_THREAD_BYTES = 256 * 1024
"""Bodies above this are parsed in a worker thread, so a big JSON tensor never stalls the event loop."""
MAX_DIMS = 8
"""Dimensions of an input ``shape``, checked before their product (a shape of 50 000 huge sizes took
seconds of bigint arithmetic and then failed to format)."""
_NUMBER_BYTES = b"0123456789+-.eE,[] \t\r\n"
"""Everything a JSON array of numbers (flat or nested) may hold; tensor data is parsed from these bytes."""
_LAYOUT_BYTES = b"[] \t\r\n"
_JSON_CHUNK_BYTES = 1 << 16
_FLOATS = msgspec.json.Decoder(list[float])

Parameters = dict[str, str | int | float | bool | None]
"""OIP's ``$parameters``: string, number or boolean values, never nested (no unbounded object trees)."""

_MODEL_PATH = re.compile(r"^(?P<name>.+?)(?:/versions/(?P<version>[^/]+))?(?:/(?P<action>ready|infer))?$")

# ---- wire format (msgspec Structs: also the OpenAPI schema) --------------------------------------------


class ErrorResponse(msgspec.Struct):
    """OIP's error body; ``tritonclient`` raises ``InferenceServerException`` with this message."""

    error: str


class ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(msgspec.Struct):
    live: bool


class ReadyState(msgspec.Struct):
    ready: bool


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct, kw_only=True):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]
    """lumen's artifact contract: labels (column order of the outputs), sample rate, window, thresholds."""


class InferInputTensor(msgspec.Struct, kw_only=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters = msgspec.field(default_factory=dict)
    data: msgspec.Raw = msgspec.Raw()
    """The JSON text of ``data``, kept as bytes: decoded into Python objects, a 50 MB array of empty
    lists took 1.1 GB. :func:`json_floats` parses it straight into float32 once the shape is checked."""


class RequestedOutput(msgspec.Struct, kw_only=True):
    name: str
    parameters: Parameters = msgspec.field(default_factory=dict)


class InferRequest(msgspec.Struct, kw_only=True):
    inputs: list[InferInputTensor]
    id: str | None = None
    parameters: Parameters = msgspec.field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None


class OipError(Exception):
    """A request the protocol layer refuses, with its HTTP status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


OIP_ERRORS: dict[int, str] = {
    400: "Malformed request or tensor (name, datatype, shape, size, values), or a file that cannot be decoded",
    404: "Unknown model or version",
    405: "Wrong method for this model route (infer is POST, the others GET)",
    413: "Request body larger than --max-upload-mb",
    500: "A server bug or a failed inference; details in the server log",
    503: "The model failed to load, was unloaded, or its queue is full (then with Retry-After)",
}


def _responses(*codes: int) -> dict[int, ResponseSpec]:
    return {
        code: ResponseSpec(ErrorResponse, description=OIP_ERRORS[code], generate_examples=False)
        for code in sorted({*codes, 500})
    }


# ---- errors -------------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response[ErrorResponse]:
    return Response(ErrorResponse(error=message), status_code=status, headers=headers)


def _as_oip_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    """``exc`` as OIP's ``{"error"}``, with the status and headers the app's own handler gives it.

    Going through ``request.app.exception_handlers`` keeps one error mapping for both APIs: a new
    engine error mapped in the app is mapped here too.
    """
    if isinstance(exc, OipError):
        return _error(exc.status, str(exc), exc.headers)
    handlers = request.app.exception_handlers
    handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
    if handler is None:
        raise exc
    native = handler(request, exc)
    content = native.content
    message = content.get("detail") if isinstance(content, dict) else None
    headers = {k: v for k, v in dict(native.headers or {}).items() if k.lower() != "content-type"}
    return _error(native.status_code, str(message or exc), headers or None)


# ---- tensors in -------------------------------------------------------------------------------------------


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, dict[str, bytes]]:
    """The JSON header and the binary payload of each input that has one (binary tensor data extension)."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise OipError(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= size <= len(body):
            raise OipError(400, f"{HEADER_LENGTH} is {size} but the body has {len(body)} bytes")
        header, binary = body[:size], body[size:]
    try:
        request = msgspec.json.decode(header, type=InferRequest)
    except msgspec.DecodeError as exc:
        raise OipError(400, f"invalid inference request JSON: {exc}") from None
    except RecursionError:  # msgspec's depth guard: '[[[[...' is a client error, not a server bug
        raise OipError(400, "invalid inference request JSON: nested too deeply") from None
    payloads: dict[str, bytes] = {}
    offset = 0
    for tensor in request.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OipError(400, f"input {tensor.name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise OipError(
                400, f"input {tensor.name!r}: binary_data_size {size} runs past the end of the body"
            )
        payloads[tensor.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise OipError(
            400, f"{len(binary) - offset} bytes after the last binary input; check binary_data_size"
        )
    return request, payloads


def _element_count(tensor: InferInputTensor) -> int:
    if not 1 <= len(tensor.shape) <= MAX_DIMS:
        raise OipError(400, f"input {tensor.name!r}: shape must have 1..{MAX_DIMS} dimensions")
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in tensor.shape):
        raise OipError(400, f"input {tensor.name!r}: shape must be a non-empty list of sizes >= 0")
    return math.prod(tensor.shape)


def _has_data(tensor: InferInputTensor) -> bool:
    """Whether ``data`` was given (not absent, not ``null``); only a short value is copied to look."""
    size = len(tensor.data)
    return size > 16 or (size > 0 and bytes(tensor.data).strip() != b"null")


def json_floats(name: str, raw: msgspec.Raw, count: int) -> np.ndarray:
    """A JSON array of numbers (flat or nested, row-major) as ``count`` float32 values.

    Parsed from the bytes (already valid JSON) with no Python object per value for the whole array:
    anything but numbers, brackets, commas and whitespace is refused first; the brackets are dropped
    and the numbers decoded in slices of about :data:`_JSON_CHUNK_BYTES` straight into the float32
    result, so a 50 MB body holds at most one slice of Python floats at a time (the whole array as
    Python objects took 1.1 GB). An empty list between values (``[[], [1]]``) leaves two commas
    side by side, which no slice decodes: refused.
    """
    text = bytes(raw)
    if text.translate(None, _NUMBER_BYTES):
        raise OipError(400, f"input {name!r}: data must be numbers (flat or nested lists)")
    flat = text.translate(None, _LAYOUT_BYTES)
    out = np.empty(count, dtype=np.float32)
    filled, start = 0, 0
    try:
        while start < len(flat):
            end = flat.find(b",", start + _JSON_CHUNK_BYTES) if start + _JSON_CHUNK_BYTES < len(flat) else -1
            end = len(flat) if end == -1 else end
            values = _FLOATS.decode(b"[" + flat[start:end] + b"]")
            if filled + len(values) > count:
                raise OipError(400, f"input {name!r}: data has more values than shape {count} needs")
            with np.errstate(over="ignore"):  # beyond float32 is inf here, refused by the finiteness check
                out[filled : filled + len(values)] = values
            filled += len(values)
            start = end + 1
    except msgspec.DecodeError:
        raise OipError(400, f"input {name!r}: data must be numbers (flat or nested lists)") from None
    if filled != count or flat.endswith(b","):
        raise OipError(400, f"input {name!r}: data has {filled} values, shape needs {count}")
    return out


def waveform_windows(
    tensor: InferInputTensor, payload: bytes | None, window_samples: int, max_windows: int
) -> np.ndarray:
    """``[n, window_samples]`` float32 from JSON ``data`` or little-endian binary, fully validated."""
    name = tensor.name
    if tensor.datatype != "FP32":
        raise OipError(400, f"input {name!r} must be FP32, got {tensor.datatype}")
    count = _element_count(tensor)
    if len(tensor.shape) != 2 or tensor.shape[1] != window_samples:
        raise OipError(
            400,
            f"input {name!r} must have shape [n, {window_samples}] (windows of this model's "
            f"window_samples at its sample rate), got {tensor.shape}",
        )
    n = tensor.shape[0]
    if not 1 <= n <= max_windows:
        raise OipError(400, f"input {name!r}: n must be in 1..{max_windows} windows (--max-queue), got {n}")
    if payload is not None:
        if len(payload) != count * 4:
            raise OipError(400, f"input {name!r}: {len(payload)} binary bytes for {count} FP32 values")
        windows = np.frombuffer(payload, dtype="<f4").reshape(n, window_samples)
    else:
        if not _has_data(tensor):
            raise OipError(400, f"input {name!r} has neither 'data' nor binary_data_size")
        windows = json_floats(name, tensor.data, count).reshape(n, window_samples)
    if not np.isfinite(windows).all():
        raise OipError(400, f"input {name!r} holds NaN or infinite values")
    return windows.astype(np.float32, copy=False)


def audio_files(tensor: InferInputTensor, payload: bytes | None, max_files: int) -> list[bytes]:
    """The encoded files of a BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise OipError(400, f"input {name!r} must be BYTES (one encoded audio file per element)")
    count = _element_count(tensor)
    if not 1 <= count <= max_files:
        raise OipError(400, f"input {name!r}: 1..{max_files} files per request, got {count}")
    if payload is None:
        raise OipError(
            400,
            f"input {name!r}: send audio files with the binary tensor data extension "
            "(binary_data_size + Inference-Header-Content-Length); JSON strings cannot carry audio",
        )
    files: list[bytes] = []
    offset = 0
    # At most ``count`` elements are read: a payload of millions of empty elements is refused after
    # ``count`` steps instead of being split up on the event loop first.
    while offset < len(payload) and len(files) < count:
        if offset + 4 > len(payload):
            raise OipError(400, f"input {name!r}: truncated element length at byte {offset}")
        size = int.from_bytes(payload[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(payload):
            raise OipError(400, f"input {name!r}: element {len(files)} claims {size} bytes past the end")
        files.append(payload[offset : offset + size])
        offset += size
    if len(files) != count or offset != len(payload):
        more = " and more" if offset != len(payload) else ""
        raise OipError(
            400, f"input {name!r}: shape {tensor.shape} needs {count} elements, got {len(files)}{more}"
        )
    return files


def _threshold(parameters: dict[str, Any]) -> float | None:
    value = parameters.get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise OipError(400, f"parameters.threshold must be a number in [0, 1], got {value!r}")
    return float(value)


# ---- tensors out ------------------------------------------------------------------------------------------


def _selected_outputs(request: InferRequest) -> list[tuple[str, bool]]:
    """``(name, binary)`` per output to return, in the order the client asked for them."""
    default_binary = request.parameters.get("binary_data_output") is True
    if request.outputs is None:
        return [(OUTPUT_NAME, default_binary), (PREDICTIONS_OUTPUT, default_binary)]
    selected = []
    for output in request.outputs:
        if output.name not in (OUTPUT_NAME, PREDICTIONS_OUTPUT):
            raise OipError(
                400, f"unknown output {output.name!r}; outputs: {OUTPUT_NAME}, {PREDICTIONS_OUTPUT}"
            )
        selected.append((output.name, output.parameters.get("binary_data", default_binary) is True))
    return selected


def encode_response(
    loaded: LoadedModel, request: InferRequest, probs: np.ndarray, thresholds: np.ndarray
) -> Response[Any]:
    tensors = {
        OUTPUT_NAME: ("FP32", probs.astype("<f4", copy=False)),
        PREDICTIONS_OUTPUT: ("BOOL", probs >= thresholds[None, :]),
    }
    outputs: list[OutputTensor] = []
    chunks: list[bytes] = []
    for name, binary in _selected_outputs(request):
        datatype, values = tensors[name]
        shape = list(values.shape)
        if binary:
            raw = values.tobytes()
            chunks.append(raw)
            outputs.append(
                OutputTensor(
                    name=name, datatype=datatype, shape=shape, parameters={"binary_data_size": len(raw)}
                )
            )
        else:
            outputs.append(
                OutputTensor(name=name, datatype=datatype, shape=shape, data=values.ravel().tolist())
            )
    header = msgspec.json.encode(
        InferResponse(model_name=loaded.id, model_version=VERSION, outputs=outputs, id=request.id)
    )
    if not chunks:
        return Response(header, media_type=MediaType.JSON)
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


# ---- routes ---------------------------------------------------------------------------------------------


def _split_model_path(rest: str) -> tuple[str, str | None]:
    """``demo/tiny.onnx/versions/1/infer`` -> ``("demo/tiny.onnx", "infer")``; other versions are 404."""
    match = _MODEL_PATH.match(rest.strip("/"))
    if match is None:
        raise OipError(404, "no model name in the URL: /v2/models/<model id>[/versions/1][/ready|/infer]")
    version = match["version"]
    if version is not None and version != VERSION:
        raise OipError(404, f"model {match['name']!r} has only version {VERSION}, not {version!r}")
    return match["name"], match["action"]


def model_metadata(loaded: LoadedModel) -> ModelMetadata:
    meta = loaded.model.metadata
    n_labels = len(meta.labels)
    return ModelMetadata(
        name=loaded.id,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=[
            TensorMetadata(name=INPUT_NAME, datatype="FP32", shape=[-1, meta.window_samples]),
            TensorMetadata(name=AUDIO_INPUT, datatype="BYTES", shape=[-1]),
        ],
        outputs=[
            TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, n_labels]),
            TensorMetadata(name=PREDICTIONS_OUTPUT, datatype="BOOL", shape=[-1, n_labels]),
        ],
        parameters={
            "labels": list(meta.labels),
            "thresholds": list(meta.thresholds),
            "sample_rate": meta.sample_rate,
            "window_samples": meta.window_samples,
            "hop_samples": meta.hop_samples,
            "aggregation": meta.aggregation,
            "architecture": meta.architecture,
        },
    )


@get("/v2", tags=["open inference protocol"], summary="Server metadata", responses=_responses())
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="lumen-audio", version=__version__, extensions=EXTENSIONS)


@get("/v2/health/live", tags=["open inference protocol"], summary="200 while the process is alive")
async def server_live() -> LiveResponse:
    return LiveResponse(live=True)


@get(
    "/v2/health/ready",
    tags=["open inference protocol"],
    summary="200 once every start-up model is loaded and warm, else 400 (the protocol's 4xx)",
    responses={400: ResponseSpec(ReadyState, description="Not ready yet", generate_examples=False)},
)
async def server_ready(server: NamedDependency[Any]) -> Response[ReadyState]:
    is_ready, _ = server.registry.ready()
    return Response(ReadyState(ready=is_ready), status_code=200 if is_ready else 400)


async def _model_get(server: Any, rest: str) -> Response[Any]:
    name, action = _split_model_path(rest)
    if action == "infer":
        raise OipError(405, "infer is POST /v2/models/<model id>/infer")
    if action == "ready":
        entry = server.registry.entries.get(name)
        if entry is None:
            raise ModelNotFound(name, sorted(server.registry.entries))
        ready = entry.loaded is not None
        return Response(ReadyState(ready=ready), status_code=200 if ready else 400)
    return Response(model_metadata(await server.registry.get(name)))


@get(
    "/v2/models/{rest:path}",
    tags=["open inference protocol"],
    summary="Model metadata (/v2/models/<id>) or readiness (/v2/models/<id>/ready); ids may contain '/'",
    responses=_responses(400, 404, 405, 503),
)
async def model_get(
    request: Request[Any, Any, Any], server: NamedDependency[Any], rest: FromPath[str]
) -> Response[ModelMetadata]:
    try:
        return await _model_get(server, rest)
    except Exception as exc:
        return _as_oip_error(request, exc)


async def _run_waveform(loaded: LoadedModel, windows: np.ndarray) -> np.ndarray:
    with loaded.batcher.producer() as producer:
        try:
            return await producer.submit(windows)
        except QueueFull:
            raise
        except BatcherClosed as exc:
            raise OipError(503, str(exc)) from None
        except RuntimeError as exc:  # inference failed; the batcher logged the traceback
            raise OipError(500, str(exc)) from None


async def _run_audio(server: Any, loaded: LoadedModel, name: str, files: list[bytes]) -> np.ndarray:
    jobs = [Job(f"{name}[{i}]", source=data) for i, data in enumerate(files)]
    results = await server.pipeline.predict(loaded, jobs)
    failed = [f"{r.key}: {r.error}" for r in results if r.probs is None]
    if failed:
        raise OipError(400, "; ".join(failed))
    return np.stack([r.probs for r in results]).astype(np.float32)


async def _infer(request: Request[Any, Any, Any], server: Any, rest: str) -> Response[Any]:
    name, action = _split_model_path(rest)
    if action != "infer":
        raise OipError(405, "this model route is GET; inference is POST /v2/models/<model id>/infer")
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise OipError(400, "compressed request bodies are not supported; send them uncompressed")
    async with server.registry.use(name) as loaded:
        body = await request.body()
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) > PARSE_IN_THREAD_BYTES:
            infer_request, payloads = await asyncio.to_thread(parse_request, body, header_length)
        else:
            infer_request, payloads = parse_request(body, header_length)
        if len(infer_request.inputs) != 1:
            raise OipError(400, f"send exactly one input, {INPUT_NAME!r} or {AUDIO_INPUT!r}")
        tensor = infer_request.inputs[0]
        meta = loaded.model.metadata
        threshold = _threshold(infer_request.parameters)
        _selected_outputs(infer_request)  # refuse unknown outputs before any work
        payload = payloads.get(tensor.name)
        if tensor.name == INPUT_NAME:
            args = (tensor, payload, meta.window_samples, server.settings.max_queue)
            if len(body) > PARSE_IN_THREAD_BYTES:
                windows = await asyncio.to_thread(waveform_windows, *args)
            else:
                windows = waveform_windows(*args)
            probs = await unless_disconnected(request, _run_waveform(loaded, windows))
        elif tensor.name == AUDIO_INPUT:
            files = audio_files(tensor, payload, server.settings.max_files)
            probs = await unless_disconnected(request, _run_audio(server, loaded, tensor.name, files))
        else:
            raise OipError(400, f"unknown input {tensor.name!r}; inputs: {INPUT_NAME}, {AUDIO_INPUT}")
    return encode_response(loaded, infer_request, probs, thresholds_for(meta, threshold))


@post(
    "/v2/models/{rest:path}",
    status_code=200,
    tags=["open inference protocol"],
    summary="Inference: POST /v2/models/<id>/infer with a 'waveform' FP32 or an 'audio' BYTES tensor",
    description=(
        "JSON body, or the binary tensor data extension (Inference-Header-Content-Length header: the JSON "
        "header's length, then each binary input in order). Outputs 'probs' FP32 and 'predictions' BOOL, "
        "[n, labels] in the label order of the model metadata's parameters.labels."
    ),
    responses=_responses(400, 404, 405, 413, 503),
)
async def model_infer(
    request: Request[Any, Any, Any], server: NamedDependency[Any], rest: FromPath[str]
) -> Response[InferResponse]:
    try:
        return await _infer(request, server, rest)
    except Exception as exc:
        return _as_oip_error(request, exc)


def oip_routes() -> list[HTTPRouteHandler]:
    return [server_metadata, server_live, server_ready, model_get, model_infer]

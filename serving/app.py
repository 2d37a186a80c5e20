"""The Litestar application: ``create_app(settings)`` builds it; nothing happens at import time.

State (model registry, decode thread pool, metrics) is created in the lifespan and reaches the
handlers through dependency injection (``server``). Bad input never becomes a 500: domain errors map
to 400/403/404/413/424/503 here, per-file problems become ``errors`` entries, streams end with a
summary line that carries the error, and only a genuine bug reaches the catch-all handler, which
logs the traceback and answers a plain 500.

Admission, cheapest first (see DESIGN.md and :mod:`serving.pipeline`): the ``_admission``
middleware turns away predict/test requests beyond ``--max-concurrent-requests`` before their body
is read; Litestar enforces the body size and the multipart part count while parsing; handlers check
the file/path/dataset counts; the pipeline checks headers, the decode budget and queue room before
anything decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException, HTTPException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import JSONBody, Parameter
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from common.version import __version__
from serving.batcher import QueueFull, RequestTooLarge
from serving.disconnect import ClientDisconnected, unless_disconnected
from serving.docs import error_responses, openapi_config
from serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from serving.oip import oip_routes
from serving.pipeline import (
    DataRoots,
    Evaluation,
    FileResult,
    InvalidPath,
    Job,
    OverBudget,
    PathForbidden,
    Pipeline,
    ResponseMaps,
    dataset_jobs,
    iter_audio_jobs,
    resolve_request_paths,
    thresholds_for,
)
from serving.registry import LoadedModel, ModelBroken, ModelNotFound, ModelRegistry, ModelUnavailable
from serving.schemas import (
    HealthResponse,
    ModelInfo,
    PredictDirectoryRequest,
    PredictResponse,
    ReadyResponse,
    StreamChunk,
    StreamSummary,
    TestDirectoryRequest,
    TestDirectoryResponse,
)
from serving.settings import Settings
from serving.webui import web_routes

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
# JSON bodies of the directory endpoints: 1000 paths of 4 KiB fit; a 50 MB JSON body would only stall
# the event loop in the parser before --max-paths could refuse it.
JSON_BODY_LIMIT = 4 * 1024 * 1024
UPLOAD_HINT = "send the audio as multipart/form-data parts named 'files' (curl -F files=@song.wav)"


@dataclass
class Server:
    """Everything a handler needs, built once per app in the lifespan."""

    settings: Settings
    registry: ModelRegistry
    pipeline: Pipeline
    roots: DataRoots
    metrics: ServerMetrics


# One file as the whole body (no multipart): these media types, plus an optional ?filename=.
RAW_AUDIO_TYPES = frozenset(
    {
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/flac",
        "audio/x-flac",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp3",
        "application/octet-stream",
    }
)
_BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)


@dataclass
class PredictOperation(Operation):
    """``POST /model/predict`` reads its body itself (multipart *or* one raw file), so the OpenAPI
    request body is written out here instead of being derived from a ``data`` parameter."""

    def __post_init__(self) -> None:
        multipart = Schema(
            type=OpenAPIType.OBJECT,
            properties={"files": Schema(type=OpenAPIType.ARRAY, items=_BINARY)},
            required=["files"],
        )
        content = {"multipart/form-data": OpenAPIMediaType(schema=multipart)}
        content.update({media: OpenAPIMediaType(schema=_BINARY) for media in sorted(RAW_AUDIO_TYPES)})
        self.request_body = RequestBody(
            content=content,
            required=True,
            description="Audio files as multipart parts named 'files', or one file as the raw body "
            "(Content-Type audio/wav, audio/flac, audio/ogg, audio/mpeg or application/octet-stream; "
            "name it with ?filename=)",
        )


class TooMany(ValueError):
    """More files, paths or datasets in one request than the server's limit (413)."""

    def __init__(self, what: str, count: int, limit: int, flag: str) -> None:
        super().__init__(f"{count} {what} in one request; the limit is {limit} ({flag}); split the request")
        self.reason = what


class UnsupportedUpload(ValueError):
    """A predict body that is neither multipart nor one of the raw audio media types (415)."""


class BodyTimeout(Exception):
    """The client stopped sending its body for longer than ``--body-timeout`` (slowloris): 408."""


class InferenceFailed(RuntimeError):
    """Every file of a request failed inside the model (a server fault, logged): 500."""


def _server(state: State) -> Server:
    return state.server


class LumenRequest(Request[Any, Any, Any]):
    """Litestar's request, with JSON nested deeper than msgspec's recursion guard a client error.

    Litestar decodes a JSON body untyped before converting it to the handler's Struct, so
    ``{"zz": [[[[...]]]]}`` raised ``RecursionError`` out of its parser: a 500 and a logged traceback
    per request on every directory endpoint.
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("invalid JSON body: nested too deeply") from None


# ---- helpers ---------------------------------------------------------------------------------------------


def _model_info(server: Server, model_id: str) -> ModelInfo:
    entry = server.registry.entries[model_id]
    info = ModelInfo(id=model_id, path=str(entry.path), loaded=entry.loaded is not None, error=entry.error)
    if entry.loaded is not None:
        model = entry.loaded.model
        meta = model.metadata
        info.architecture = meta.architecture
        info.labels = list(meta.labels)
        info.sample_rate = meta.sample_rate
        info.window_seconds = meta.window_seconds
        info.hop_seconds = meta.hop_seconds
        info.thresholds = list(meta.thresholds)
        info.aggregation = meta.aggregation
        info.active_providers = list(model.active_providers)
    return info


def _maps(loaded: LoadedModel, threshold: float | None, timeline: bool = False) -> ResponseMaps:
    meta = loaded.model.metadata
    return ResponseMaps(list(meta.labels), thresholds_for(meta, threshold), meta.sample_rate, timeline)


def _upload_keys(files: list[UploadFile]) -> list[str]:
    """File names as response keys, all distinct: a repeated name gets the first free `` (n)``."""
    keys: list[str] = []
    used: set[str] = set()
    for i, upload in enumerate(files):
        name = upload.filename or f"file{i + 1}"
        key, n = name, 1
        while key in used:
            n += 1
            key = f"{name} ({n})"
        used.add(key)
        keys.append(key)
    return keys


async def _uploaded_jobs(request: Request[Any, Any, Any], server: Server, filename: str | None) -> list[Job]:
    """The upload as jobs: multipart parts named ``files``, or the raw body as one file.

    A raw body skips multipart parsing, the largest per-request CPU cost on the event loop.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        try:
            form = await request.form()
        except (UnicodeDecodeError, LookupError) as exc:
            # A part without a filename is a text field, decoded in its charset while parsing: audio
            # bytes there (or charset=bogus) raised out of Litestar's parser as a 500.
            what = "unknown charset" if not isinstance(exc, UnicodeDecodeError) else "bytes that are not text"
            raise ClientException(
                f"a multipart part without a filename is a text field, and one holds {what}; "
                "give each file part a filename"
            ) from None
        files = [f for f in form.getall("files") if isinstance(f, UploadFile)] if "files" in form else []
        if not files:
            raise ClientException(f"no multipart parts named 'files'; {UPLOAD_HINT}")
        _check_count("files", len(files), server.settings.max_files, "--max-files")
        keys = _upload_keys(files)
        return [Job(key, source=await upload.read()) for key, upload in zip(keys, files, strict=True)]
    if media in RAW_AUDIO_TYPES:
        body = await request.body()
        if not body:
            raise ClientException("empty request body; send the audio file as the body")
        return [Job(filename or "upload", source=body)]
    raise UnsupportedUpload(
        f"Content-Type {media or 'missing'!r} is not an upload; {UPLOAD_HINT}, or send one file as the "
        f"body with Content-Type {', '.join(sorted(RAW_AUDIO_TYPES))}"
    )


def _check_count(what: str, count: int, limit: int, flag: str) -> None:
    if count > limit:
        raise TooMany(what, count, limit, flag)


async def _resolve_paths(server: Server, raw_paths: list[str]) -> list[Path]:
    """Resolve and confine client paths off the event loop (a stat each; 1000 of them take ms)."""
    _check_count("paths", len(raw_paths), server.settings.max_paths, "--max-paths")
    return await asyncio.to_thread(resolve_request_paths, server.roots, raw_paths)


def _check_inference(maps: ResponseMaps) -> None:
    if maps.inference_failures and not maps.probabilities:
        raise InferenceFailed(next(iter(maps.errors.values()), "inference failed"))


def _directory_chunks(
    server: Server, loaded: LoadedModel, resolved: list[Path], timeline: bool
) -> AsyncIterator[list[FileResult]]:
    jobs = iter_audio_jobs(server.roots, resolved)
    return server.pipeline.predict_chunks(
        loaded, jobs, server.settings.directory_chunk_files, keep_windows=timeline
    )


def _ndjson(item: msgspec.Struct) -> bytes:
    return msgspec.json.encode(item) + b"\n"


# ---- handlers --------------------------------------------------------------------------------------------


@get("/health", tags=["status"], summary="The process is alive")
async def health() -> HealthResponse:
    return HealthResponse()


@get(
    "/ready",
    tags=["status"],
    summary="200 once every start-up model is loaded and warmed, else 503",
    responses={503: ResponseSpec(ReadyResponse, description="Not ready yet", generate_examples=False)},
)
async def ready(server: NamedDependency[Server]) -> Response[ReadyResponse]:
    is_ready, models = server.registry.ready()
    return Response(ReadyResponse(ready=is_ready, models=models), status_code=200 if is_ready else 503)


@get("/metrics", tags=["status"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def prometheus_metrics(server: NamedDependency[Server]) -> Response[bytes]:
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@get("/models", tags=["models"], summary="Every .onnx artifact under --model-dir, loaded or not")
async def list_models(server: NamedDependency[Server]) -> list[ModelInfo]:
    return [_model_info(server, model_id) for model_id in sorted(server.registry.entries)]


@post(
    "/model/predict",
    status_code=200,
    tags=["predict"],
    summary="Predict instruments in uploaded files (multipart, or one file as the raw body)",
    responses=error_responses(400, 404, 408, 413, 415, 424, 503),
    operation_class=PredictOperation,
)
async def predict(
    request: Request[Any, Any, Any],
    server: NamedDependency[Server],
    model: Annotated[str, Parameter(description="Model id from GET /models", min_length=1)],
    threshold: Annotated[
        float | None,
        Parameter(ge=0.0, le=1.0, description="One threshold for every label instead of the model's"),
    ] = None,
    timeline: Annotated[bool, Parameter(description="Add per-window probabilities")] = False,
    filename: Annotated[
        str | None,
        Parameter(description="Response key for a raw-body upload (default 'upload')", max_length=255),
    ] = None,
) -> PredictResponse:
    async with server.registry.use(model) as loaded:
        jobs = await _uploaded_jobs(request, server, filename)
        results = await unless_disconnected(
            request, server.pipeline.predict(loaded, jobs, keep_windows=timeline)
        )
    maps = _maps(loaded, threshold, timeline)
    for result in results:
        maps.add(result)
    _check_inference(maps)
    return PredictResponse(
        model=loaded.id,
        predictions=maps.predictions,
        probabilities=maps.probabilities,
        errors=maps.errors,
        timeline=maps.timeline if timeline else None,
    )


@post(
    "/model/predict-directory",
    status_code=200,
    tags=["predict"],
    summary="Predict every audio file in server-side directories/files below --data-root",
    responses=error_responses(400, 403, 404, 413, 424, 503),
    request_max_body_size=JSON_BODY_LIMIT,
)
async def predict_directory(
    request: Request[Any, Any, Any], server: NamedDependency[Server], data: JSONBody[PredictDirectoryRequest]
) -> PredictResponse:
    resolved = await _resolve_paths(server, data.paths)
    async with server.registry.use(data.model) as loaded:
        maps = _maps(loaded, data.threshold, data.timeline)

        async def run() -> None:
            async for chunk in _directory_chunks(server, loaded, resolved, data.timeline):
                for result in chunk:
                    maps.add(result)

        await unless_disconnected(request, run())
    _check_inference(maps)
    return PredictResponse(
        model=loaded.id,
        predictions=maps.predictions,
        probabilities=maps.probabilities,
        errors=maps.errors,
        timeline=maps.timeline if data.timeline else None,
    )


@post(
    "/model/predict-directory-stream",
    status_code=200,
    tags=["predict"],
    media_type=NDJSON,
    summary="Like predict-directory, as NDJSON: one line per finished chunk of files, then a summary",
    responses=error_responses(400, 403, 404, 413, 424, 503),
    request_max_body_size=JSON_BODY_LIMIT,
)
async def predict_directory_stream(
    server: NamedDependency[Server], data: JSONBody[PredictDirectoryRequest]
) -> Stream:
    await server.registry.get(data.model)  # unknown or broken model: 404/424/503 before the stream starts
    resolved = await _resolve_paths(server, data.paths)
    counts = _StreamCounts()

    async def lines() -> AsyncIterator[bytes]:
        async with server.registry.use(data.model) as loaded:
            async for chunk in _directory_chunks(server, loaded, resolved, data.timeline):
                maps = _maps(loaded, data.threshold, data.timeline)
                for result in chunk:
                    maps.add(result)
                yield counts.chunk(maps, len(chunk), data.timeline)
        yield _ndjson(StreamSummary(model=data.model, n_files=counts.done, n_errors=counts.errors))

    return Stream(_summarised(server, data.model, lines(), counts), media_type=NDJSON)


def _evaluation(server: Server, loaded: LoadedModel, data: TestDirectoryRequest) -> Evaluation:
    meta = loaded.model.metadata
    return Evaluation(
        list(meta.labels),
        thresholds_for(meta, data.threshold),
        server.settings.add_instrument_metrics or data.add_instrument_metrics,
    )


@post(
    "/model/test-directory",
    status_code=200,
    tags=["test"],
    summary="Predict labelled datasets below --data-root and report file-level metrics",
    responses=error_responses(400, 403, 404, 413, 424, 503),
    request_max_body_size=JSON_BODY_LIMIT,
)
async def test_directory(
    request: Request[Any, Any, Any], server: NamedDependency[Server], data: JSONBody[TestDirectoryRequest]
) -> TestDirectoryResponse:
    _check_count("datasets", len(data.datasets), server.settings.max_datasets, "--max-datasets")
    async with server.registry.use(data.model) as loaded:
        jobs = await asyncio.to_thread(dataset_jobs, server.roots, data.datasets)
        maps = _maps(loaded, data.threshold)
        evaluation = _evaluation(server, loaded, data)

        async def run() -> None:
            async for chunk in server.pipeline.predict_chunks(
                loaded, jobs, server.settings.directory_chunk_files
            ):
                for result in chunk:
                    maps.add(result)
                    evaluation.add(result)

        await unless_disconnected(request, run())
    _check_inference(maps)
    file_metrics, instrument_metrics = evaluation.metrics()
    return TestDirectoryResponse(
        model=loaded.id,
        predictions=maps.predictions,
        probabilities=maps.probabilities,
        errors=maps.errors,
        metrics=file_metrics,
        instrument_metrics=instrument_metrics,
    )


@post(
    "/model/test-directory-stream",
    status_code=200,
    tags=["test"],
    media_type=NDJSON,
    summary="Like test-directory, as NDJSON: one line per finished chunk, then a summary with metrics",
    responses=error_responses(400, 403, 404, 413, 424, 503),
    request_max_body_size=JSON_BODY_LIMIT,
)
async def test_directory_stream(
    server: NamedDependency[Server], data: JSONBody[TestDirectoryRequest]
) -> Stream:
    _check_count("datasets", len(data.datasets), server.settings.max_datasets, "--max-datasets")
    await server.registry.get(data.model)  # unknown or broken model: 404/424/503 before the stream starts
    jobs = await asyncio.to_thread(dataset_jobs, server.roots, data.datasets)
    counts = _StreamCounts()

    async def lines() -> AsyncIterator[bytes]:
        async with server.registry.use(data.model) as loaded:
            evaluation = _evaluation(server, loaded, data)
            async for chunk in server.pipeline.predict_chunks(
                loaded, jobs, server.settings.directory_chunk_files
            ):
                maps = _maps(loaded, data.threshold)
                for result in chunk:
                    maps.add(result)
                    evaluation.add(result)
                yield counts.chunk(maps, len(chunk), timeline=False)
        file_metrics, instrument_metrics = evaluation.metrics()
        yield _ndjson(
            StreamSummary(
                model=data.model,
                n_files=counts.done,
                n_errors=counts.errors,
                metrics=file_metrics,
                instrument_metrics=instrument_metrics,
            )
        )

    return Stream(_summarised(server, data.model, lines(), counts), media_type=NDJSON)


@dataclass
class _StreamCounts:
    done: int = 0
    errors: int = 0

    def chunk(self, maps: ResponseMaps, n_files: int, timeline: bool) -> bytes:
        self.done += n_files
        self.errors += len(maps.errors)
        return _ndjson(
            StreamChunk(
                done=self.done,
                predictions=maps.predictions,
                probabilities=maps.probabilities,
                errors=maps.errors,
                timeline=maps.timeline if timeline else None,
            )
        )


async def _summarised(
    server: Server, model: str, lines: AsyncIterator[bytes], counts: _StreamCounts
) -> AsyncIterator[bytes]:
    """``lines``, and if they stop with an error, a summary line saying so: the status is already
    200 and sent, so a well-formed last line is the only way left to tell the client."""
    try:
        async for line in lines:
            yield line
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, detail = _status_of(exc)
        if status == 500:
            log.exception("stream for model %s failed", model)
        yield _ndjson(
            StreamSummary(
                model=model,
                n_files=counts.done,
                n_errors=counts.errors,
                error=server.roots.redact(detail),
                status=status,
            )
        )


# ---- errors ---------------------------------------------------------------------------------------------

# Domain exceptions -> (status, rejection reason for the metrics or None).
_STATUS: list[tuple[type[Exception], int, str | None]] = [
    (ModelNotFound, 404, None),
    (ModelBroken, 424, None),
    (ModelUnavailable, 503, None),
    (PathForbidden, 403, None),
    (InvalidPath, 400, None),
    (UnsupportedUpload, 415, None),
    (BodyTimeout, 408, None),
    (TooMany, 413, "count"),
    (OverBudget, 413, "budget"),
    (RequestTooLarge, 413, "too_large"),
    (QueueFull, 503, "queue"),
    (InferenceFailed, 500, None),
]


def _status_of(exc: Exception) -> tuple[int, str]:
    for kind, status, _ in _STATUS:
        if isinstance(exc, kind):
            return status, str(exc)
    return 500, "internal server error (logged on the server)"


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response({"status_code": status, "detail": detail}, status_code=status, headers=headers)


def _not_found(_: Request[Any, Any, Any], exc: ModelNotFound) -> Response[dict[str, Any]]:
    return _error(404, str(exc))


def _unavailable(_: Request[Any, Any, Any], exc: ModelUnavailable) -> Response[dict[str, Any]]:
    return _error(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


def _broken(_: Request[Any, Any, Any], exc: ModelBroken) -> Response[dict[str, Any]]:
    return _error(424, f"{exc}; fix or replace the artifact (retrying will not help)")


def _rejected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """413s of admission control, counted by reason (``TooMany`` carries files/paths/datasets)."""
    reason = getattr(exc, "reason", None) or next(r for k, _, r in _STATUS if isinstance(exc, k))
    request.app.state.server.metrics.reject(reason)
    return _error(413, str(exc))


def _body_timeout(request: Request[Any, Any, Any], exc: BodyTimeout) -> Response[dict[str, Any]]:
    request.app.state.server.metrics.reject("body_timeout")
    return _error(408, str(exc), headers={"Connection": "close"})


def _unsupported(_: Request[Any, Any, Any], exc: UnsupportedUpload) -> Response[dict[str, Any]]:
    return _error(415, str(exc))


def _inference_failed(_: Request[Any, Any, Any], exc: InferenceFailed) -> Response[dict[str, Any]]:
    return _error(500, f"inference failed for every file of the request (logged on the server): {exc}")


def _invalid_path(_: Request[Any, Any, Any], exc: InvalidPath) -> Response[dict[str, Any]]:
    return _error(400, str(exc))


def _forbidden(_: Request[Any, Any, Any], exc: PathForbidden) -> Response[dict[str, Any]]:
    return _error(403, str(exc))


def _queue_full(request: Request[Any, Any, Any], exc: QueueFull) -> Response[dict[str, Any]]:
    request.app.state.server.metrics.reject("queue")
    return _error(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


def _disconnected(_: Request[Any, Any, Any], exc: ClientDisconnected) -> Response[dict[str, Any]]:
    # Nobody reads this; 499 (nginx's "client closed request") keeps it apart in the request metrics.
    return _error(499, "client disconnected")


def _bug(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, HTTPException):  # Litestar's own 4xx (validation, 405, 413, ...) pass through
        detail, status = exc.detail, exc.status_code
        if status == 400 and detail == "Request Entity Too Large":  # the multipart part limit
            status = 413
            detail = f"too many multipart parts; at most {request.app.state.server.settings.max_files} files"
            request.app.state.server.metrics.reject("parts")
        elif status == 413:
            request.app.state.server.metrics.reject("body_size")
        elif status == 400 and not exc.extra and request.url.path == "/model/predict":
            detail += f"; {UPLOAD_HINT}"
        return Response(
            {"status_code": status, "detail": detail, **({"extra": exc.extra} if exc.extra else {})},
            status_code=status,
            headers=exc.headers,
        )
    # %r: a decoded path may hold a newline (%0A), which must not start a forged log line
    log.exception("unhandled error on %s %r", request.method, request.url.path)
    return _error(500, "internal server error (logged on the server)")


# ---- metrics middleware and app factory ---------------------------------------------------------------


def _request_metrics(metrics: ServerMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """Count and time every routed HTTP request by its route template and final status."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                endpoint = scope.get("path_template") or "<unmatched>"
                metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - started)

        return wrapped

    return middleware


EXPENSIVE_PREFIX = "/model/"


def _is_expensive(path: str) -> bool:
    """Predict/test endpoints of both APIs (OIP infer included), the ones that decode or infer."""
    return path.startswith(EXPENSIVE_PREFIX) or (path.startswith("/v2/") and path.endswith("/infer"))


def _body_deadline(receive: Receive, timeout: float) -> Receive:
    """``receive`` that raises :class:`BodyTimeout` when a body chunk takes longer than ``timeout``.

    Only until the body is complete: afterwards ``receive`` waits for the disconnect, untimed.
    """
    body_done = False

    async def timed() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout(timeout):  # no extra task per chunk, unlike wait_for
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(f"no request body data for {timeout:g} s (--body-timeout)") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return timed


SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))
"""On every response: no MIME sniffing (an error body that echoes a client's file name stays JSON), and
no framing (another site cannot lay the web page under its own buttons: clickjacking)."""


def _security_headers() -> Callable[[ASGIApp], ASGIApp]:
    """Add :data:`SECURITY_HEADERS` to every HTTP response, the middlewares' own answers included."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    names = {name.lower() for name, _ in message.get("headers", [])}
                    extra = [(name, value) for name, value in SECURITY_HEADERS if name not in names]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            await app(scope, receive, send_with_headers)

        return wrapped

    return middleware


def host_name(header: str) -> str:
    """The name in a Host header, without its port or IPv6 brackets, lower-cased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    name, _, port = value.rpartition(":")
    return name if name and port.isdigit() and ":" not in name else value


def origin_host(header: str) -> str:
    """The host name of an Origin header (``http://localhost:8090`` -> ``localhost``); '' for ``null``."""
    try:
        return urlsplit(header.strip()).hostname or ""
    except ValueError:
        return ""


def _json_answer(status: int, detail: str, *headers: tuple[bytes, bytes]) -> tuple[dict[str, Any], bytes]:
    """The ASGI start message and body of an ``ErrorBody`` answer a middleware sends itself (built once)."""
    body = msgspec.json.encode({"status_code": status, "detail": detail})
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    return start, body


def _host_check(settings: Settings, metrics: ServerMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """Refuse requests addressed to, or sent from a page of, another site (``--allowed-hosts``), first.

    - Host: a page on ``attacker.example`` that re-points its own name at 127.0.0.1 (DNS rebinding)
      makes a browser send requests to a server bound to localhost *and read the answers*, since to
      the browser they are same-origin; the Host header still says ``attacker.example``.
    - Origin: any page may POST a form (a multipart upload) or ``text/plain`` JSON to localhost without
      asking (no CORS preflight). It cannot read the answer, but it can make a local server decode,
      infer and score datasets under ``--data-root`` on every visit. Browsers name the sending page in
      ``Origin``; a POST whose Origin is not an allowed name (or is ``null``: sandboxed frames,
      ``file:``) is refused. Clients other than browsers send no Origin and are not affected.
    """
    allowed = frozenset(settings.allowed_hosts)
    hint = ", ".join(sorted(allowed))
    wrong_host = _json_answer(
        400, f"this server does not answer for that Host header (--allowed-hosts: {hint})"
    )
    cross_site = _json_answer(
        403, f"cross-site request refused: the sending page's Origin is not one of --allowed-hosts ({hint})"
    )

    def middleware(app: ASGIApp) -> ASGIApp:
        if not allowed:
            return app

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":  # (no websocket routes)
                headers = dict(scope["headers"])  # the last of a repeated name; browsers send one of each
                refusal = None
                if host_name(headers.get(b"host", b"").decode("latin-1")) not in allowed:
                    refusal, reason = wrong_host, "host"
                elif (
                    scope["method"] not in ("GET", "HEAD", "OPTIONS")
                    and b"origin" in headers
                    and origin_host(headers[b"origin"].decode("latin-1")) not in allowed
                ):
                    refusal, reason = cross_site, "origin"
                if refusal is not None:
                    metrics.reject(reason)
                    await send(refusal[0])
                    await send({"type": "http.response.body", "body": refusal[1]})
                    return
            await app(scope, receive, send)

        return wrapped

    return middleware


def _admission(settings: Settings, metrics: ServerMetrics) -> Callable[[ASGIApp], ASGIApp]:
    """Bound the predict/test requests in flight; the next one gets 503 before its body is read.

    A body is the first expensive thing a request costs (upload, multipart parse), so this check
    sits in front of Litestar's body handling. Status, metrics and docs endpoints are never limited.
    Because a slot is held while the body arrives, a client that stalls mid-body for longer than
    ``--body-timeout`` gets 408 (:class:`BodyTimeout`), so slow senders cannot hold every slot.
    """
    limit = settings.max_concurrent_requests
    body_timeout = settings.body_timeout_s
    in_flight = 0
    busy_start, busy_body = _json_answer(
        503,
        f"server busy: {limit} requests in flight (--max-concurrent-requests); retry in 1 s",
        (b"retry-after", b"1"),
    )

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal in_flight
            if scope["type"] != "http" or not _is_expensive(scope["path"]):
                await app(scope, receive, send)
                return
            if in_flight >= limit:
                metrics.reject("concurrency")
                await send(busy_start)
                await send({"type": "http.response.body", "body": busy_body})
                return
            in_flight += 1
            metrics.in_flight.set(in_flight)
            try:
                await app(scope, _body_deadline(receive, body_timeout), send)
            finally:
                in_flight -= 1
                metrics.in_flight.set(in_flight)

        return wrapped

    return middleware


def create_app(settings: Settings) -> Litestar:
    """A ready-to-serve app; models start loading in the lifespan, ``/ready`` says when they are warm."""
    settings.validate()
    metrics = ServerMetrics()
    metrics.thread_budget(settings.budget.as_gauges())

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        decode_pool = ThreadPoolExecutor(
            max_workers=settings.budget.decode_workers, thread_name_prefix="decode"
        )
        registry = ModelRegistry(settings, observer=metrics)
        app.state.server = Server(
            settings=settings,
            registry=registry,
            pipeline=Pipeline(
                decode_pool,
                metrics,
                settings.decode_limits,
                request_budget_bytes=settings.max_request_bytes,
                decode_concurrency=settings.budget.decode_workers,
            ),
            roots=DataRoots(settings.data_roots),
            metrics=metrics,
        )
        registry.start()
        try:
            yield
        finally:
            await registry.close()
            decode_pool.shutdown(wait=True)

    return Litestar(
        route_handlers=[
            health,
            ready,
            prometheus_metrics,
            list_models,
            predict,
            predict_directory,
            predict_directory_stream,
            test_directory,
            test_directory_stream,
            *oip_routes(),
            *web_routes(),
        ],
        dependencies={"server": Provide(_server, sync_to_thread=False)},
        request_class=LumenRequest,
        lifespan=[lifespan],
        middleware=[
            _security_headers(),
            _host_check(settings, metrics),
            _request_metrics(metrics),
            _admission(settings, metrics),
        ],
        exception_handlers={
            ModelNotFound: _not_found,
            ModelUnavailable: _unavailable,
            ModelBroken: _broken,
            PathForbidden: _forbidden,
            InvalidPath: _invalid_path,
            TooMany: _rejected,
            OverBudget: _rejected,
            RequestTooLarge: _rejected,
            QueueFull: _queue_full,
            InferenceFailed: _inference_failed,
            UnsupportedUpload: _unsupported,
            BodyTimeout: _body_timeout,
            ClientDisconnected: _disconnected,
            Exception: _bug,
        },
        request_max_body_size=settings.max_upload_bytes,
        # a few parts more than --max-files, so the handler can answer with the limit's name
        multipart_form_part_limit=settings.max_files + 4,
        openapi_config=openapi_config(
            title="lumen-audio",
            version=__version__,
            description="Musical-instrument recognition (IRMAS, 11 instruments, multi-label) with dynamic batching.",
        ),
    )

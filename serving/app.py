"""The Litestar application: ``create_app(settings)`` builds it; nothing happens at import time.

State (model registry, decode thread pool, metrics) is created in the lifespan and reaches the
handlers through dependency injection (``server``). Bad input never becomes a 500: domain errors map
to 400/403/404/413/503 here, per-file problems become ``errors`` entries, and only a genuine bug
reaches the catch-all handler, which logs the traceback and answers a plain 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import JSONBody, MultipartBody, Parameter
from litestar.response import Stream
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from common.version import __version__
from serving.batcher import QueueFull
from serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from serving.pipeline import (
    DataRoots,
    Evaluation,
    FileResult,
    InvalidPath,
    Job,
    PathForbidden,
    Pipeline,
    ResponseMaps,
    dataset_jobs,
    iter_audio_jobs,
    thresholds_for,
)
from serving.registry import LoadedModel, ModelNotFound, ModelRegistry, ModelUnavailable
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

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
UPLOAD_HINT = "send the audio as multipart/form-data parts named 'files' (curl -F files=@song.wav)"
T = TypeVar("T")


@dataclass
class Server:
    """Everything a handler needs, built once per app in the lifespan."""

    settings: Settings
    registry: ModelRegistry
    pipeline: Pipeline
    roots: DataRoots
    metrics: ServerMetrics


@dataclass
class PredictUpload:
    files: list[UploadFile]


class ClientDisconnected(Exception):
    """The client went away while its request was queued; its windows have been dropped."""


def _server(state: State) -> Server:
    return state.server


# ---- helpers ---------------------------------------------------------------------------------------------


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it (and so dropping its queued windows) if the client disconnects."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected
    return task.result()


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
    """File names as response keys; repeated names get `` (2)``, `` (3)`` so no answer is lost."""
    keys: list[str] = []
    seen: dict[str, int] = {}
    for i, upload in enumerate(files):
        name = upload.filename or f"file{i + 1}"
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return keys


def _resolve_paths(server: Server, raw_paths: list[str]) -> list[Path]:
    return [server.roots.resolve(raw) for raw in raw_paths]


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


@get("/ready", tags=["status"], summary="200 once every start-up model is loaded and warmed, else 503")
async def ready(server: NamedDependency[Server]) -> Response[ReadyResponse]:
    is_ready, models = server.registry.ready()
    return Response(ReadyResponse(ready=is_ready, models=models), status_code=200 if is_ready else 503)


@get("/metrics", tags=["status"], summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def prometheus_metrics(server: NamedDependency[Server]) -> Response[bytes]:
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@get("/models", tags=["models"], summary="Every .onnx artifact under --model-dir, loaded or not")
async def list_models(server: NamedDependency[Server]) -> list[ModelInfo]:
    return [_model_info(server, model_id) for model_id in sorted(server.registry.entries)]


@post("/model/predict", status_code=200, tags=["predict"], summary="Predict instruments in uploaded files")
async def predict(
    request: Request[Any, Any, Any],
    server: NamedDependency[Server],
    data: MultipartBody[PredictUpload],
    model: Annotated[str, Parameter(description="Model id from GET /models", min_length=1)],
    threshold: Annotated[
        float | None,
        Parameter(ge=0.0, le=1.0, description="One threshold for every label instead of the model's"),
    ] = None,
    timeline: Annotated[bool, Parameter(description="Add per-window probabilities")] = False,
) -> PredictResponse:
    async with server.registry.use(model) as loaded:
        keys = _upload_keys(data.files)
        jobs = [Job(key, source=await upload.read()) for key, upload in zip(keys, data.files, strict=True)]
        results = await _unless_disconnected(
            request, server.pipeline.predict(loaded, jobs, keep_windows=timeline)
        )
    maps = _maps(loaded, threshold, timeline)
    for result in results:
        maps.add(result)
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
)
async def predict_directory(
    request: Request[Any, Any, Any], server: NamedDependency[Server], data: JSONBody[PredictDirectoryRequest]
) -> PredictResponse:
    resolved = _resolve_paths(server, data.paths)
    async with server.registry.use(data.model) as loaded:
        maps = _maps(loaded, data.threshold, data.timeline)

        async def run() -> None:
            async for chunk in _directory_chunks(server, loaded, resolved, data.timeline):
                for result in chunk:
                    maps.add(result)

        await _unless_disconnected(request, run())
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
)
async def predict_directory_stream(
    server: NamedDependency[Server], data: JSONBody[PredictDirectoryRequest]
) -> Stream:
    await server.registry.get(data.model)  # unknown or broken model: 404/503 before the stream starts
    resolved = _resolve_paths(server, data.paths)

    async def lines() -> AsyncIterator[bytes]:
        done = errors = 0
        async with server.registry.use(data.model) as loaded:
            async for chunk in _directory_chunks(server, loaded, resolved, data.timeline):
                maps = _maps(loaded, data.threshold, data.timeline)
                for result in chunk:
                    maps.add(result)
                done += len(chunk)
                errors += len(maps.errors)
                yield _ndjson(
                    StreamChunk(
                        done=done,
                        predictions=maps.predictions,
                        probabilities=maps.probabilities,
                        errors=maps.errors,
                        timeline=maps.timeline if data.timeline else None,
                    )
                )
        yield _ndjson(StreamSummary(model=data.model, n_files=done, n_errors=errors))

    return Stream(lines(), media_type=NDJSON)


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
)
async def test_directory(
    request: Request[Any, Any, Any], server: NamedDependency[Server], data: JSONBody[TestDirectoryRequest]
) -> TestDirectoryResponse:
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

        await _unless_disconnected(request, run())
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
)
async def test_directory_stream(
    server: NamedDependency[Server], data: JSONBody[TestDirectoryRequest]
) -> Stream:
    await server.registry.get(data.model)  # unknown or broken model: 404/503 before the stream starts
    jobs = await asyncio.to_thread(dataset_jobs, server.roots, data.datasets)

    async def lines() -> AsyncIterator[bytes]:
        done = errors = 0
        async with server.registry.use(data.model) as loaded:
            evaluation = _evaluation(server, loaded, data)
            async for chunk in server.pipeline.predict_chunks(
                loaded, jobs, server.settings.directory_chunk_files
            ):
                maps = _maps(loaded, data.threshold)
                for result in chunk:
                    maps.add(result)
                    evaluation.add(result)
                done += len(chunk)
                errors += len(maps.errors)
                yield _ndjson(
                    StreamChunk(
                        done=done,
                        predictions=maps.predictions,
                        probabilities=maps.probabilities,
                        errors=maps.errors,
                    )
                )
        file_metrics, instrument_metrics = evaluation.metrics()
        yield _ndjson(
            StreamSummary(
                model=data.model,
                n_files=done,
                n_errors=errors,
                metrics=file_metrics,
                instrument_metrics=instrument_metrics,
            )
        )

    return Stream(lines(), media_type=NDJSON)


# ---- errors ---------------------------------------------------------------------------------------------


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response({"status_code": status, "detail": detail}, status_code=status, headers=headers)


def _not_found(_: Request[Any, Any, Any], exc: ModelNotFound) -> Response[dict[str, Any]]:
    return _error(404, str(exc))


def _unavailable(_: Request[Any, Any, Any], exc: ModelUnavailable) -> Response[dict[str, Any]]:
    return _error(503, str(exc))


def _invalid_path(_: Request[Any, Any, Any], exc: InvalidPath) -> Response[dict[str, Any]]:
    return _error(400, str(exc))


def _forbidden(_: Request[Any, Any, Any], exc: PathForbidden) -> Response[dict[str, Any]]:
    return _error(403, str(exc))


def _queue_full(_: Request[Any, Any, Any], exc: QueueFull) -> Response[dict[str, Any]]:
    return _error(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


def _disconnected(_: Request[Any, Any, Any], exc: ClientDisconnected) -> Response[dict[str, Any]]:
    # Nobody reads this; 499 (nginx's "client closed request") keeps it apart in the request metrics.
    return _error(499, "client disconnected")


def _bug(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, HTTPException):  # Litestar's own 4xx (validation, 405, 413, ...) pass through
        detail = exc.detail
        if exc.status_code == 400 and not exc.extra and request.url.path == "/model/predict":
            detail += f"; {UPLOAD_HINT}"
        return Response(
            {"status_code": exc.status_code, "detail": detail, **({"extra": exc.extra} if exc.extra else {})},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path)
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
            pipeline=Pipeline(decode_pool, metrics, settings.max_audio_seconds),
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
        ],
        dependencies={"server": Provide(_server, sync_to_thread=False)},
        lifespan=[lifespan],
        middleware=[_request_metrics(metrics)],
        exception_handlers={
            ModelNotFound: _not_found,
            ModelUnavailable: _unavailable,
            PathForbidden: _forbidden,
            InvalidPath: _invalid_path,
            QueueFull: _queue_full,
            ClientDisconnected: _disconnected,
            Exception: _bug,
        },
        request_max_body_size=settings.max_upload_bytes,
        openapi_config=OpenAPIConfig(
            title="lumen-audio",
            version=__version__,
            description="Musical-instrument recognition (IRMAS, 11 instruments, multi-label) with dynamic batching.",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
    )

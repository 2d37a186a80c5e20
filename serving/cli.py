"""``lumen-serve``: parse flags into :class:`~serving.settings.Settings` and run the app with uvicorn.

Shutdown is graceful: on SIGINT/SIGTERM uvicorn stops accepting connections and waits (up to
``--shutdown-grace`` seconds) for open requests; the app's lifespan then drains every batcher.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from litestar import Litestar

from serving.app import create_app
from serving.cpu_budget import cpu_limit
from serving.settings import Settings, default_allowed_hosts, host_name_flag
from serving.write_deadline import http_protocol

PROG = "lumen-serve"
CPU_THREADS_ENV = "LUMEN_CPU_THREADS"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, but only where they say something and the help does not already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve lumen-audio ONNX artifacts over HTTP with dynamic batching (Swagger UI at /docs).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--model-dir",
        "--path-models",  # the seed's name
        type=Path,
        default=Path("models"),
        help="folder searched recursively for .onnx artifacts",
    )
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="ID",
        help="load and warm this model id at start (repeatable); default: every artifact",
    )
    p.add_argument("--lazy", action="store_true", help="load nothing at start; each model loads on first use")
    p.add_argument("--host", default="localhost", help="interface to bind; 0.0.0.0 listens on all")
    p.add_argument("--port", type=int, default=8090, help="TCP port")
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        metavar="NAME",
        default=None,
        help="names a browser may use for this server: other Host headers get 400, POSTs from pages of "
        "other Origins 403 (default: localhost 127.0.0.1 ::1 when --host is loopback, which stops "
        "DNS-rebinding and cross-site pages; any name otherwise); '*' allows any",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (falls back to CPU with a warning)")
    p.add_argument(
        "--max-batch-size",
        "--batch-size",
        dest="max_batch_size",
        type=int,
        default=32,
        help="windows per inference batch, at most",
    )
    p.add_argument(
        "--max-batch-delay-ms", type=float, default=5.0, help="longest a window waits for a batch to fill"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=1024,
        help="queued windows per model before new requests get 503 + Retry-After",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=_env_int(CPU_THREADS_ENV),
        help=f"CPU threads to share between ONNX Runtime, decoding and the event loop (default: ${CPU_THREADS_ENV}, "
        "else the CPUs this process may use: affinity and cgroup quota)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        help="ONNX Runtime intra-op threads per instance (default: from --cpu-threads)",
    )
    p.add_argument(
        "--instances",
        type=int,
        default=None,
        help="batches in flight per model, each on its own ORT session on CUDA (default: 1 on CPU, 2 on CUDA)",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="CUDA only: capture one CUDA graph per batch-size bucket (needs every node on the CUDA EP)",
    )
    p.add_argument(
        "--data-root",
        dest="data_roots",
        type=Path,
        nargs="+",
        action="extend",
        default=None,
        metavar="DIR",
        help="folders the directory endpoints may read (default: data)",
    )
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger request bodies get 413")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, help="longer files get a per-file error")
    limits = p.add_argument_group("admission limits (see README: Threat model and limits)")
    limits.add_argument("--max-files", type=int, default=64, help="files per upload request (more: 413)")
    limits.add_argument(
        "--max-paths", type=int, default=1000, help="paths per predict-directory request (more: 413)"
    )
    limits.add_argument(
        "--max-datasets", type=int, default=16, help="datasets per test-directory request (more: 413)"
    )
    limits.add_argument(
        "--max-request-mb",
        type=float,
        default=512.0,
        help="decoded-size budget of one request (decode + resample + windows, float32); "
        "a file over it gets a per-file error, an upload over it 413",
    )
    limits.add_argument("--max-channels", type=int, default=8, help="files with more channels are refused")
    limits.add_argument(
        "--max-sample-rate", type=int, default=192_000, help="files at a higher rate are refused"
    )
    limits.add_argument("--min-sample-rate", type=int, default=1000, help="files at a lower rate are refused")
    limits.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=64,
        help="predict/test requests served at once; more get 503 + Retry-After before the body is read",
    )
    limits.add_argument(
        "--body-timeout",
        dest="body_timeout_s",
        type=float,
        default=30.0,
        help="seconds a client may pause while sending a body before it gets 408 (slowloris)",
    )
    limits.add_argument(
        "--write-timeout",
        dest="write_timeout_s",
        type=float,
        default=30.0,
        help="seconds a response may wait for a client that stopped reading it before the connection is "
        "dropped (a slow reader cannot hold a slot or a buffered answer)",
    )
    p.add_argument(
        "--add-instrument-metrics",
        action="store_true",
        help="test-directory always reports per-instrument metrics",
    )
    p.add_argument(
        "--hot-reload", action="store_true", help="pick up new or replaced artifacts while serving"
    )
    p.add_argument(
        "--reload-interval",
        dest="reload_interval_s",
        type=float,
        default=2.0,
        help="seconds between hot-reload scans",
    )
    p.add_argument(
        "--num-workers",
        "--decode-workers",
        dest="decode_workers",
        type=int,
        default=None,
        help="threads that decode and resample audio (default: from --cpu-threads)",
    )
    p.add_argument(
        "--directory-chunk-files", type=int, default=32, help="files in flight at a time per directory job"
    )
    p.add_argument(
        "--shutdown-grace",
        dest="shutdown_grace_s",
        type=float,
        default=30.0,
        help="seconds to let open requests finish on shutdown",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request (off: GET /metrics counts requests by endpoint and status)",
    )
    return p


def _env_int(name: str) -> int | None:
    """An integer from the environment (how the k8s manifest passes the container's CPU limit)."""
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        raise SystemExit(f"{PROG}: error: ${name} must be a whole number of CPUs, got {value!r}") from None


def _count_drop(app: Litestar) -> None:
    """``lumen_rejected_requests_total{reason="write_timeout"}`` (the metrics live in the app's state)."""
    server = getattr(app.state, "server", None)
    if server is not None:
        server.metrics.reject("write_timeout")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = vars(args).copy()
    if values["cpu_threads"] is None:
        del values["cpu_threads"]  # the Settings default: what this process may use
    values["models"] = tuple(values["models"])
    values["data_roots"] = tuple(values["data_roots"] or (Path("data"),))
    hosts = values["allowed_hosts"]
    if hosts is None:
        values["allowed_hosts"] = default_allowed_hosts(values["host"])
    else:
        values["allowed_hosts"] = () if "*" in hosts else tuple(host_name_flag(h) for h in hosts)
    return Settings(**values).validate()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if not settings.model_dir.is_dir():
        print(f"{PROG}: error: --model-dir {settings.model_dir} is not a folder", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for root in settings.data_roots:
        if not root.is_dir():
            logging.getLogger(PROG).warning(
                "--data-root %s does not exist; paths below it will be reported as not found", root
            )

    limit = cpu_limit()
    source = "--cpu-threads" if args.cpu_threads is not None else limit.describe()
    print(f"{PROG}: cpu budget: {settings.budget.describe()} ({source})", flush=True)
    app = create_app(settings)
    print(
        f"{PROG}: serving {settings.model_dir} on http://{settings.host}:{settings.port} "
        f"(Swagger UI: http://{settings.host}:{settings.port}/docs)",
        flush=True,
    )
    uvicorn.run(
        app,
        http=http_protocol(settings.write_timeout_s, on_drop=lambda: _count_drop(app)),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

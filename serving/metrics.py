"""Prometheus metrics of one app, in its own CollectorRegistry (two apps in one process never collide).

Queue and compute are measured separately (as Triton does): queue depth and batch size tell whether
the batcher is coalescing; queue wait is how long a request's first window waited for a batch;
inference latency is the model alone (split into host->device / compute / device->host where I/O is
bound to a CUDA device); decode time is the worker's time per file; request latency is what clients
see, so latency minus decode, queue and compute is HTTP, parsing and hops between threads. Rejections are counted
by reason (``lumen_rejected_requests_total{reason}``: body_size, parts, paths, datasets, budget,
too_large, queue, concurrency, body_timeout, host, origin, write_timeout; ``lumen_rejected_files_total{reason}``:
format, limit, invalid, budget), and the standard process collectors export RSS and CPU seconds.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lumen_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "lumen_request_latency_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge(
            "lumen_queue_depth", "Windows waiting for a batch", ["model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "lumen_batch_size",
            "Windows per inference batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "lumen_inference_latency_seconds",
            "ONNX Runtime time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.windows = Counter(
            "lumen_windows_processed", "Windows run through a model", ["model"], registry=self.registry
        )
        self.cpu_threads = Gauge(
            "lumen_cpu_threads",
            "The CPU thread budget (--cpu-threads) and its split: total, ORT intra-op threads per instance, "
            "ORT instances, decode workers, event loop",
            ["part"],
            registry=self.registry,
        )
        self.decode_errors = Counter(
            "lumen_decode_errors", "Files that could not be decoded", ["model"], registry=self.registry
        )
        self.rejected_requests = Counter(
            "lumen_rejected_requests",
            "Requests refused by admission control, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.rejected_files = Counter(
            "lumen_rejected_files",
            "Files refused before or during decoding, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.inference_failures = Counter(
            "lumen_inference_failures",
            "Batches whose inference raised (their requests got per-file errors)",
            ["model"],
            registry=self.registry,
        )
        self.queue_wait_time = Histogram(
            "lumen_queue_wait_seconds",
            "Time a request's windows waited in the queue before their first batch started",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.scheduler_restarts = Counter(
            "lumen_scheduler_restarts",
            "Batch scheduler loops restarted after an unexpected error",
            ["model"],
            registry=self.registry,
        )
        self.decode_time = Histogram(
            "lumen_decode_seconds",
            "Per file: decode + resample + windowing in a decode worker (waiting for the worker excluded)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decode_wait_time = Histogram(
            "lumen_decode_wait_seconds",
            "Per file: time waiting for a decode slot and worker before its decode started",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_phase_time = Histogram(
            "lumen_batch_phase_seconds",
            "Per batch where ORT's I/O is bound to the device (CUDA): host->device copy (h2d), "
            "compute, device->host copy (d2h); the CPU EP reads its input in place and reports none",
            ["model", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lumen_requests_in_flight", "Expensive requests being served now", registry=self.registry
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # BatchObserver
    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_latency.labels(model).observe(seconds)
        self.windows.labels(model).inc(size)

    def batch_failed(self, model: str, size: int) -> None:
        self.inference_failures.labels(model).inc()

    def queue_wait(self, model: str, seconds: float) -> None:
        self.queue_wait_time.labels(model).observe(seconds)

    def scheduler_restart(self, model: str) -> None:
        self.scheduler_restarts.labels(model).inc()

    def batch_phases(self, model: str, phases: dict[str, float]) -> None:
        """h2d / compute / d2h of one batch (called from the instance's worker thread)."""
        for phase, seconds in phases.items():
            self.batch_phase_time.labels(model, phase).observe(seconds)

    def file_decoded(self, model: str, waited: float, seconds: float) -> None:
        self.decode_wait_time.labels(model).observe(max(0.0, waited))
        self.decode_time.labels(model).observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejected_requests.labels(reason).inc()

    def thread_budget(self, parts: dict[str, int]) -> None:
        for part, threads in parts.items():
            self.cpu_threads.labels(part).set(threads)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.request_latency.labels(endpoint, method, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

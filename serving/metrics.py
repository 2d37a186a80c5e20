"""Prometheus metrics of one app, in its own CollectorRegistry (two apps in one process never collide).

Queue and compute are measured separately (as Triton does): queue depth and batch size tell whether
the batcher is coalescing; inference latency is the model alone; request latency is what clients see.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
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

    # BatchObserver
    def queue_depth(self, model: str, depth: int) -> None:
        self.queue.labels(model).set(depth)

    def batch_done(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_latency.labels(model).observe(seconds)
        self.windows.labels(model).inc(size)

    def thread_budget(self, parts: dict[str, int]) -> None:
        for part, threads in parts.items():
            self.cpu_threads.labels(part).set(threads)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.request_latency.labels(endpoint, method, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

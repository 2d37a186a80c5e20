"""Server settings as one typed, validated object: what ``lumen-serve`` parses and ``create_app`` takes.

Keeping argv parsing out of the app (see :mod:`serving.cli`) lets tests build an app from a
``Settings`` directly, and keeps every knob visible in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from common.audio import DecodeLimits
from serving.cpu_budget import ThreadBudget, split_budget, usable_cpus
from serving.runtime import default_instances, parse_device

MIB = 1024 * 1024
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name_flag(name: str) -> str:
    """A host name as given on the command line, compared as Host/Origin headers are: no brackets, lower case."""
    return name.strip().strip("[]").lower()


def is_loopback(host: str) -> bool:
    """Whether ``--host`` binds only this machine (``localhost``, ``127.x.y.z``, ``::1``)."""
    name = host_name_flag(host)
    return name in LOOPBACK_NAMES or name.startswith("127.")


def default_allowed_hosts(host: str) -> tuple[str, ...]:
    """A server bound to loopback answers only requests addressed to a loopback name: a web page whose
    domain an attacker re-points at 127.0.0.1 (DNS rebinding) sends its own name in Host and is
    refused, so it cannot read this server's answers. Bound elsewhere: any name (a proxy or the
    cluster decides who reaches it; ``--allowed-hosts`` narrows it)."""
    return LOOPBACK_NAMES if is_loopback(host) else ()


@dataclass(frozen=True, kw_only=True)
class Settings:
    model_dir: Path
    models: tuple[str, ...] = ()
    """Model ids loaded (and warmed) at start; empty means every artifact under ``model_dir``."""
    lazy: bool = False
    """Load nothing at start; every model loads on its first request."""
    host: str = "localhost"
    port: int = 8090
    allowed_hosts: tuple[str, ...] = ()
    """Host-header names a request may carry (port ignored, case-insensitive); empty: any. lumen-serve
    fills in the loopback names when it binds a loopback interface (see :func:`default_allowed_hosts`)."""
    device: str = "cpu"
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_queue: int = 1024
    """Windows waiting for a batch, over all requests of one model; beyond it requests get 503."""
    intra_op_threads: int | None = None
    """ONNX Runtime intra-op threads per instance; None: from the thread budget."""
    instances: int | None = None
    """Batches in flight per model (one ORT session or a share of one each); None: 1 on CPU, 2 on CUDA."""
    cuda_graph: bool = False
    cpu_threads: int = field(default_factory=usable_cpus)
    """The CPU thread budget split between ORT, decoding and the event loop (see serving.cpu_budget)."""
    data_roots: tuple[Path, ...] = (Path("data"),)
    max_upload_mb: float = 50.0
    max_audio_seconds: float = 600.0
    max_files: int = 64
    """Files (multipart parts) per upload request."""
    max_paths: int = 1000
    """Paths per predict-directory request."""
    max_datasets: int = 16
    """Datasets per test-directory request."""
    max_request_mb: float = 512.0
    """Decoded-size budget of one request: decode + resample + windows, float32 (see pipeline)."""
    max_channels: int = 8
    max_sample_rate: int = 192_000
    min_sample_rate: int = 1000
    max_concurrent_requests: int = 64
    """Predict/test requests served at once; more get 503 before their body is read."""
    body_timeout_s: float = 30.0
    """Longest pause between two chunks of a request body before the request gets 408."""
    write_timeout_s: float = 30.0
    """Longest a response may wait for a client that reads none of it before the connection is dropped."""
    add_instrument_metrics: bool = False
    hot_reload: bool = False
    reload_interval_s: float = 2.0
    decode_workers: int | None = None
    """Decode/resample threads; None: from the thread budget."""
    directory_chunk_files: int = 32
    """Files decoded and predicted at a time by directory jobs (bounds their memory)."""
    shutdown_grace_s: float = 30.0
    log_level: str = "info"
    # One log line per request costs ~7% of the event loop at high request rates; /metrics counts them.
    access_log: bool = False

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MIB)

    @property
    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(
            max_seconds=self.max_audio_seconds,
            max_channels=self.max_channels,
            min_sample_rate=self.min_sample_rate,
            max_sample_rate=self.max_sample_rate,
            max_decoded_bytes=self.max_request_bytes,
        )

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @cached_property
    def budget(self) -> ThreadBudget:
        """``cpu_threads`` shared out; explicit ``intra_op_threads`` / ``decode_workers`` win."""
        return split_budget(
            self.cpu_threads,
            instances=self.instances or default_instances(self.device),
            on_cuda=parse_device(self.device).kind == "cuda",
            intra_op_threads=self.intra_op_threads,
            decode_workers=self.decode_workers,
        )

    def validate(self) -> Settings:
        """Raise ValueError naming the first bad setting (as its command-line flag) and the fix."""
        parse_device(self.device)
        checks: list[tuple[bool, str]] = [
            (self.max_batch_size >= 1, f"--max-batch-size must be >= 1, got {self.max_batch_size}"),
            (
                self.max_batch_delay_ms >= 0,
                f"--max-batch-delay-ms must be >= 0, got {self.max_batch_delay_ms}",
            ),
            (
                self.max_queue >= self.max_batch_size,
                f"--max-queue ({self.max_queue}) must be >= --max-batch-size ({self.max_batch_size})",
            ),
            (
                self.intra_op_threads is None or self.intra_op_threads >= 1,
                f"--intra-op-threads must be >= 1, got {self.intra_op_threads}",
            ),
            (self.max_upload_mb > 0, f"--max-upload-mb must be > 0, got {self.max_upload_mb}"),
            (self.max_audio_seconds > 0, f"--max-audio-seconds must be > 0, got {self.max_audio_seconds}"),
            (self.max_files >= 1, f"--max-files must be >= 1, got {self.max_files}"),
            (self.max_paths >= 1, f"--max-paths must be >= 1, got {self.max_paths}"),
            (self.max_datasets >= 1, f"--max-datasets must be >= 1, got {self.max_datasets}"),
            (self.max_request_mb > 0, f"--max-request-mb must be > 0, got {self.max_request_mb}"),
            (self.max_channels >= 1, f"--max-channels must be >= 1, got {self.max_channels}"),
            (
                1 <= self.min_sample_rate <= self.max_sample_rate,
                f"need 1 <= --min-sample-rate ({self.min_sample_rate}) <= --max-sample-rate "
                f"({self.max_sample_rate})",
            ),
            (
                self.max_concurrent_requests >= 1,
                f"--max-concurrent-requests must be >= 1, got {self.max_concurrent_requests}",
            ),
            (self.body_timeout_s > 0, f"--body-timeout must be > 0, got {self.body_timeout_s}"),
            (self.write_timeout_s > 0, f"--write-timeout must be > 0, got {self.write_timeout_s}"),
            (
                all(self.allowed_hosts),
                f"--allowed-hosts names must not be empty, got {list(self.allowed_hosts)}; '*' allows any",
            ),
            (self.reload_interval_s > 0, f"--reload-interval must be > 0, got {self.reload_interval_s}"),
            (
                self.decode_workers is None or self.decode_workers >= 1,
                f"--num-workers must be >= 1, got {self.decode_workers}",
            ),
            (
                self.instances is None or self.instances >= 1,
                f"--instances must be >= 1, got {self.instances}",
            ),
            (self.cpu_threads >= 1, f"--cpu-threads must be >= 1, got {self.cpu_threads}"),
            (
                self.directory_chunk_files >= 1,
                f"--directory-chunk-files must be >= 1, got {self.directory_chunk_files}",
            ),
            (0 <= self.port <= 65535, f"--port must be in 0..65535, got {self.port}"),
            (bool(self.data_roots), "--data-root needs at least one directory"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

"""``lumen-bench server``: closed-loop load on ``POST /model/predict``, like Triton's perf_analyzer.

For each concurrency level, that many clients send one file per request back to back for
``--duration`` seconds (after a short warm-up that is not counted). Reported per level: requests/s,
audio-seconds/s, latency percentiles, errors, and the mean batch size the server formed during the
level, read from its ``/metrics`` (``lumen_batch_size`` sum/count deltas), and where each request's
time went, in Triton's vocabulary: decode_wait and decode (per file: waiting for a decode worker,
then decoding in it), queue (until its first
batch), compute (per batch; on CUDA with bound I/O also host->device and device->host copies) and
"other" (mean latency minus those: HTTP, body parsing, hops between threads). With ``nvidia-smi`` on
the host the GPU's mean utilisation during the level is reported too. Only loopback URLs are
accepted and every run is bounded in time and request count: this is a benchmark, not a load
generator for other people's servers.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from common.audio import is_audio_path

MAX_CONCURRENCY = 256
MAX_DURATION_S = 300.0
MAX_FILES = 256
BATCH_METRIC = "lumen_batch_size"


class BenchError(ValueError):
    """Bad benchmark input; the message names the flag or file."""


@dataclass(frozen=True)
class AudioFile:
    name: str
    data: bytes
    seconds: float


@dataclass(frozen=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    audio_seconds_per_s: float
    latency_ms_p50: float | None
    latency_ms_p90: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    mean_batch_size: float | None
    split_ms: dict[str, float | None] | None = None  # decode/queue/h2d/compute/d2h/other, per request
    gpu_utilization_pct: float | None = None  # mean of nvidia-smi samples during the level


def check_loopback(url: str) -> str:
    """The URL without a trailing slash, if it points at this machine; BenchError otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BenchError(f"URL {url!r} must look like http://localhost:8090")
    host = parts.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise BenchError(f"URL {url!r}: only loopback servers (localhost, 127.0.0.1, ::1) may be benchmarked")
    return url.rstrip("/")


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchError(
            f"--concurrency {text!r}: expected comma-separated integers like 1,4,16,64"
        ) from None
    if not levels or any(not 1 <= c <= MAX_CONCURRENCY for c in levels):
        raise BenchError(f"--concurrency {text!r}: each level must be in 1..{MAX_CONCURRENCY}")
    return levels


def load_audio_files(path: Path) -> list[AudioFile]:
    """One file, or up to ``MAX_FILES`` audio files from a folder (sorted), read into memory once."""
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and is_audio_path(p))[:MAX_FILES]
    elif path.is_file():
        paths = [path]
    else:
        raise BenchError(f"--audio {path}: not found")
    if not paths:
        raise BenchError(f"--audio {path}: no audio files (.wav .flac .ogg .mp3)")
    files = []
    for p in paths:
        try:
            seconds = float(sf.info(p).duration)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise BenchError(f"--audio {p}: not readable audio ({exc})") from None
        files.append(AudioFile(p.name, p.read_bytes(), seconds))
    return files


def _families(metrics_text: str) -> dict[str, Any]:
    """The server's ``/metrics`` text parsed once, by metric family name."""
    return {family.name: family for family in text_string_to_metric_families(metrics_text)}


def _histogram_totals(
    families: dict[str, Any], name: str, model: str, labels: dict[str, str] | None = None
) -> tuple[float, float]:
    """``(sum, count)`` of histogram ``name`` for ``model`` (and ``labels``, where given)."""
    total = count = 0.0
    family = families.get(name)
    for sample in family.samples if family is not None else ():
        if sample.labels.get("model") != model or any(
            sample.labels.get(k) != v for k, v in (labels or {}).items()
        ):
            continue
        if sample.name == f"{name}_sum":
            total += sample.value
        elif sample.name == f"{name}_count":
            count += sample.value
    return total, count


def batch_totals(metrics_text: str, model: str) -> tuple[float, float]:
    """``(sum, count)`` of the server's batch-size histogram for ``model``."""
    return _histogram_totals(_families(metrics_text), BATCH_METRIC, model)


STAGE_METRICS = {  # stage -> (histogram, extra labels)
    "decode_wait": ("lumen_decode_wait_seconds", {}),
    "decode": ("lumen_decode_seconds", {}),
    "queue": ("lumen_queue_wait_seconds", {}),
    "h2d": ("lumen_batch_phase_seconds", {"phase": "h2d"}),
    "compute": ("lumen_inference_latency_seconds", {}),
    "d2h": ("lumen_batch_phase_seconds", {"phase": "d2h"}),
}


def stage_totals(metrics_text: str, model: str) -> dict[str, tuple[float, float]]:
    """``stage -> (sum seconds, count)`` of the server's per-stage histograms for ``model``."""
    return _stage_totals(_families(metrics_text), model)


def _stage_totals(families: dict[str, Any], model: str) -> dict[str, tuple[float, float]]:
    totals = {
        stage: _histogram_totals(families, name, model, labels)
        for stage, (name, labels) in STAGE_METRICS.items()
    }
    # Where I/O is bound to the device, the batch's inference latency spans h2d + compute + d2h:
    # the split then takes compute from the phase histogram, so the copies are not counted twice.
    phase_compute = _histogram_totals(families, "lumen_batch_phase_seconds", model, {"phase": "compute"})
    if phase_compute[1] > 0:
        totals["compute"] = phase_compute
    return totals


def time_split_ms(
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
    mean_latency_s: float | None,
) -> dict[str, float | None]:
    """Mean milliseconds per stage over one level (None where the server observed none), plus
    ``other``: the mean client latency not spent in any stage (HTTP, parsing, thread hops).

    decode_wait (for a decode worker) and decode are per file, queue (for the first batch) per request;
    compute, h2d and d2h are per batch, which is what each
    request of a batch waits for, so the stages add up to one request's path through the server.
    """
    split: dict[str, float | None] = {}
    for stage in STAGE_METRICS:
        total = after[stage][0] - before[stage][0]
        count = after[stage][1] - before[stage][1]
        split[stage] = round(1000.0 * total / count, 3) if count > 0 else None
    if mean_latency_s is None:
        split["other"] = None
    else:
        known = sum(v for v in split.values() if v is not None)
        split["other"] = round(1000.0 * mean_latency_s - known, 3)
    return split


class GpuSampler:
    """Mean GPU utilisation over a stretch of time, from ``nvidia-smi`` sampling every 100 ms.

    On a host without ``nvidia-smi`` (or where it fails) :meth:`stop` returns None: the benchmark
    then reports no utilisation instead of a made-up 0 %. The server must be on this host (the
    benchmark only accepts loopback URLs), so this is the server's GPU.
    """

    def __init__(self, command: str = "nvidia-smi") -> None:
        self.command = shutil.which(command)
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        if self.command is None:
            return
        query = [self.command, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        try:
            self._process = subprocess.Popen(
                query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            self._process = None

    def stop(self) -> float | None:
        if self._process is None:
            return None
        self._process.terminate()
        try:
            out, _ = self._process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, _ = self._process.communicate()
        self._process = None
        samples = []
        for line in out.splitlines():
            # One line per GPU and sample; "[N/A]" or errors are skipped, not counted as idle.
            for cell in line.split(","):
                try:
                    samples.append(float(cell.strip()))
                except ValueError:
                    continue
        return round(sum(samples) / len(samples), 1) if samples else None


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(latencies, q)) * 1000.0, 2) if latencies else None


BOUNDARY = "lumen-bench-boundary"


def predict_request(base: str, model: str, audio: AudioFile, upload: str = "multipart") -> bytes:
    """The complete HTTP/1.1 request for one file, built once: the load loop only writes bytes.

    ``upload="raw"`` sends the file as the whole body (no multipart parsing on the server).
    """
    parts = urlsplit(base)
    if upload == "raw":
        query = urlencode({"model": model, "filename": audio.name})
        head = (
            f"POST {parts.path.rstrip('/')}/model/predict?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(audio.data)}\r\n\r\n"
        )
        return head.encode() + audio.data
    query = urlencode({"model": model})
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{audio.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + audio.data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {parts.path.rstrip('/')}/model/predict?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for this benchmark.

    A general-purpose async client spends more CPU per request than the server under test once
    dozens of requests are in flight (and on a small machine they share the cores), so the load
    loop writes prebuilt requests and reads responses with plain asyncio streams.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> int:
        """The response status; the body is read and dropped."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(request)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
        if headers.get("transfer-encoding") == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")
        else:
            await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split(" ", 2)[1])

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def _worker(
    base: str,
    requests: list[tuple[bytes, float]],
    picker: itertools.count[int],
    deadline: float,
    budget: list[int],
    record: list[tuple[float, bool, float]] | None,
    timeout: float,
) -> None:
    parts = urlsplit(base)
    connection = Connection(parts.hostname or "localhost", parts.port or 80)
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            request, seconds = requests[next(picker) % len(requests)]
            started = time.perf_counter()
            try:
                ok = await asyncio.wait_for(connection.send(request), timeout) == 200
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                TimeoutError,
                ValueError,
            ):
                connection.close()
                ok = False
            if record is not None:
                record.append((time.perf_counter() - started, ok, seconds))
    finally:
        connection.close()


async def run_level(
    base: str,
    model: str,
    files: list[AudioFile],
    concurrency: int,
    duration: float,
    warmup: float,
    max_requests: int,
    timeout: float,
    upload: str = "multipart",
) -> LevelResult:
    requests = [(predict_request(base, model, audio, upload), audio.seconds) for audio in files]
    picker = itertools.count()
    if warmup > 0:
        deadline = time.perf_counter() + warmup
        await asyncio.gather(
            *(
                _worker(base, requests, picker, deadline, [max_requests], None, timeout)
                for _ in range(concurrency)
            )
        )
    gpu = GpuSampler()
    async with httpx.AsyncClient(timeout=timeout) as client:
        families = _families((await client.get(f"{base}/metrics")).text)
        before = _histogram_totals(families, BATCH_METRIC, model)
        stages_before = _stage_totals(families, model)
        record: list[tuple[float, bool, float]] = []
        budget = [max_requests]
        gpu.start()
        started = time.perf_counter()
        deadline = started + duration
        try:
            await asyncio.gather(
                *(
                    _worker(base, requests, picker, deadline, budget, record, timeout)
                    for _ in range(concurrency)
                )
            )
        finally:
            elapsed = time.perf_counter() - started
            utilization = gpu.stop()
        families = _families((await client.get(f"{base}/metrics")).text)
        after = _histogram_totals(families, BATCH_METRIC, model)
        stages_after = _stage_totals(families, model)
    latencies = [lat for lat, ok, _ in record if ok]
    mean_latency = sum(latencies) / len(latencies) if latencies else None
    audio_seconds = sum(sec for _, ok, sec in record if ok)
    batches = after[1] - before[1]
    return LevelResult(
        concurrency=concurrency,
        requests=len(record),
        errors=sum(1 for _, ok, _ in record if not ok),
        seconds=round(elapsed, 3),
        requests_per_s=round(len(latencies) / elapsed, 2),
        audio_seconds_per_s=round(audio_seconds / elapsed, 2),
        latency_ms_p50=percentile_ms(latencies, 50),
        latency_ms_p90=percentile_ms(latencies, 90),
        latency_ms_p95=percentile_ms(latencies, 95),
        latency_ms_p99=percentile_ms(latencies, 99),
        mean_batch_size=round((after[0] - before[0]) / batches, 2) if batches else None,
        split_ms=time_split_ms(stages_before, stages_after, mean_latency),
        gpu_utilization_pct=utilization,
    )


TABLE_HEADER = (
    f"{'conc':>5} {'req/s':>9} {'audio s/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
    f"{'errors':>7} {'batch':>6}"
)


def format_row(r: LevelResult) -> str:
    cells = [r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p95, r.latency_ms_p99]
    latency = " ".join(f"{c:>8.1f}" if c is not None else f"{'-':>8}" for c in cells)
    batch = f"{r.mean_batch_size:>6.1f}" if r.mean_batch_size is not None else f"{'-':>6}"
    return f"{r.concurrency:>5} {r.requests_per_s:>9.1f} {r.audio_seconds_per_s:>10.1f} {latency} {r.errors:>7} {batch}"


SPLIT_STAGES = ("decode_wait", "decode", "queue", "h2d", "compute", "d2h", "other")
SPLIT_HEADER = f"{'conc':>5} " + " ".join(f"{stage + ' ms':>14}" for stage in SPLIT_STAGES) + f" {'GPU %':>6}"


def format_split_row(r: LevelResult) -> str:
    split = r.split_ms or {}
    cells = [split.get(stage) for stage in SPLIT_STAGES]
    text = " ".join(f"{c:>14.2f}" if c is not None else f"{'-':>14}" for c in cells)
    gpu = f"{r.gpu_utilization_pct:>6.1f}" if r.gpu_utilization_pct is not None else f"{'-':>6}"
    return f"{r.concurrency:>5} {text} {gpu}"


def run(args: argparse.Namespace) -> int:
    try:
        base = check_loopback(args.url)
        levels = parse_concurrency(args.concurrency)
        if not 0 < args.duration <= MAX_DURATION_S:
            raise BenchError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds, got {args.duration}")
        if args.max_requests < 1:
            raise BenchError(f"--max-requests must be >= 1, got {args.max_requests}")
        files = load_audio_files(args.audio)
    except BenchError as exc:
        print(f"lumen-bench server: error: {exc}", file=sys.stderr)
        return 2
    try:
        health = httpx.get(f"{base}/ready", timeout=10)
    except httpx.HTTPError as exc:
        print(f"lumen-bench server: error: cannot reach {base}/ready ({exc})", file=sys.stderr)
        return 1
    if health.status_code != 200:
        print(f"lumen-bench server: error: {base}/ready answered {health.status_code}", file=sys.stderr)
        return 1
    print(
        f"{len(files)} file(s), {sum(f.seconds for f in files) / len(files):.2f} s mean; model {args.model}; "
        f"{args.duration:g} s per level after {args.warmup:g} s warm-up; {args.upload} uploads",
        flush=True,
    )
    print(TABLE_HEADER, flush=True)
    results = []
    for level in levels:
        results.append(
            asyncio.run(
                run_level(
                    base,
                    args.model,
                    files,
                    level,
                    args.duration,
                    args.warmup,
                    args.max_requests,
                    args.timeout,
                    args.upload,
                )
            )
        )
        print(format_row(results[-1]), flush=True)
    print(
        "\nwhere a request's time went (mean ms; decode_wait/decode per file, queue per request, h2d/compute/d2h "
        "per batch, other = latency - the rest: HTTP, parsing, thread hops; '-' = not observed)",
        flush=True,
    )
    print(SPLIT_HEADER, flush=True)
    for r in results:
        print(format_split_row(r), flush=True)
    if args.json is not None:
        document: dict[str, Any] = {
            "url": base,
            "model": args.model,
            "files": len(files),
            "duration_s": args.duration,
            "upload": args.upload,
            "levels": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if all(r.requests == r.errors for r in results) else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "server",
        help="load-test a running lumen-serve (loopback only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="server base URL, e.g. http://localhost:8090")
    p.add_argument("--model", required=True, help="model id (GET /models)")
    p.add_argument("--audio", type=Path, required=True, help="an audio file or a folder of them")
    p.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--max-requests", type=int, default=100_000, help="request cap per level")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument(
        "--upload",
        choices=["multipart", "raw"],
        default="multipart",
        help="multipart/form-data, or the file as the raw request body",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(func=run)

"""Served throughput and latency with a Go load generator (hey), and where each request's time went.

``lumen-bench server`` is a Python client: on a 2-core machine it takes CPU from the server it
measures. This script drives an already running ``lumen-serve`` with ``hey`` (apt-get install hey)
at each concurrency level and reads the server's ``/metrics`` before and after, so every level
reports requests/s, p50/p99 and the server-side split of a request's mean latency (decode per file,
queue until the first batch, compute per batch, h2d/d2h on CUDA, *other* = the rest: HTTP, body
parsing, hops between threads), plus the server process's CPU time per request.

    lumen-serve --model-dir models/demo --port 8090 &
    python benchmarks/bench_server_split.py http://127.0.0.1:8090 lumen-demo.onnx clip3s.wav \\
        --concurrency 1,16,64 --duration 8 --upload multipart --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from serving.bench_server import (
    SPLIT_STAGES,
    AudioFile,
    check_loopback,
    parse_concurrency,
    predict_request,
    stage_totals,
    time_split_ms,
)

CPU_METRIC = re.compile(r"^process_cpu_seconds_total\s+([0-9.eE+-]+)$", re.MULTILINE)


def process_cpu_seconds(metrics_text: str) -> float:
    match = CPU_METRIC.search(metrics_text)
    return float(match.group(1)) if match else float("nan")


def parse_hey(text: str) -> dict[str, float]:
    """requests/s, mean and percentile latencies (ms) and the count of 200 answers from hey's report."""
    out: dict[str, float] = {}
    if m := re.search(r"Requests/sec:\s+([0-9.]+)", text):
        out["requests_per_s"] = float(m.group(1))
    if m := re.search(r"Average:\s+([0-9.]+) secs", text):
        out["mean_ms"] = 1000.0 * float(m.group(1))
    for q in ("50", "90", "99"):
        if m := re.search(rf"{q}%{{1,2}} in ([0-9.]+) secs", text):
            out[f"p{q}_ms"] = 1000.0 * float(m.group(1))
    out["ok"] = float(sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", text)))
    out["failed"] = float(
        sum(int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text) if code != "200")
    )
    return out


def request_parts(base: str, model: str, audio: Path, upload: str) -> tuple[str, str, bytes]:
    """hey's URL, Content-Type and body for one upload (built like lumen-bench's requests)."""
    raw = predict_request(base, model, AudioFile(audio.name, audio.read_bytes(), 0.0), upload)
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return base + path, headers["Content-Type"], body


def run_level(
    base: str, model: str, url: str, content_type: str, body: Path, concurrency: int, duration: float
) -> dict:
    metrics_url = f"{base}/metrics"

    def hey(seconds: float) -> str:
        command = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST", "-T", content_type]
        return subprocess.run(
            [*command, "-D", str(body), url], check=True, capture_output=True, text=True
        ).stdout

    hey(2)  # warm-up, not counted
    before = httpx.get(metrics_url, timeout=10).text
    report = hey(duration)
    after = httpx.get(metrics_url, timeout=10).text
    result = parse_hey(report)
    split = time_split_ms(
        stage_totals(before, model), stage_totals(after, model), result.get("mean_ms", 0.0) / 1000.0
    )
    cpu = process_cpu_seconds(after) - process_cpu_seconds(before)
    return {
        "concurrency": concurrency,
        **{k: round(v, 3) for k, v in result.items()},
        "server_cpu_ms_per_request": round(1000.0 * cpu / result["ok"], 3) if result.get("ok") else None,
        "split_ms": split,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="server base URL (loopback), e.g. http://127.0.0.1:8090")
    parser.add_argument("model", help="model id (GET /models)")
    parser.add_argument("audio", type=Path, help="the file every request uploads")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    parser.add_argument("--upload", choices=["multipart", "raw"], default="multipart")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        print("bench_server_split: needs hey (apt-get install hey)", file=sys.stderr)
        return 2
    base = check_loopback(args.url)
    url, content_type, body = request_parts(base, args.model, args.audio, args.upload)
    levels = []
    with tempfile.NamedTemporaryFile(suffix=".body") as handle:
        Path(handle.name).write_bytes(body)
        print(
            f"{'conc':>5} {'req/s':>8} {'p50 ms':>7} {'mean ms':>8} {'cpu ms/req':>10} "
            + " ".join(f"{s:>11}" for s in SPLIT_STAGES)
        )
        for c in parse_concurrency(args.concurrency):
            level = run_level(base, args.model, url, content_type, Path(handle.name), c, args.duration)
            levels.append(level)
            cells = " ".join(
                f"{v:>11.2f}" if (v := level["split_ms"][s]) is not None else f"{'-':>11}"
                for s in SPLIT_STAGES
            )
            print(
                f"{c:>5} {level.get('requests_per_s', 0):>8.1f} {level.get('p50_ms', 0):>7.2f} "
                f"{level.get('mean_ms', 0):>8.2f} {level['server_cpu_ms_per_request'] or 0:>10.2f} {cells}",
                flush=True,
            )
    if args.json is not None:
        document = {
            "url": base,
            "model": args.model,
            "audio": args.audio.name,
            "upload": args.upload,
            "levels": levels,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

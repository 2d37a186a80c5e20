"""Peak RSS of lumen-serve under single hostile or worst-case requests (Linux: /proc VmHWM).

Starts the server on the demo artifact with the default limits, then sends one request at a time
and reads the process's peak resident set (VmHWM) after each. Requests grow in size, so each row's
"added peak" is what that request (or an earlier, larger one) cost above the warmed-up baseline.

    python benchmarks/bench_request_memory.py --json benchmarks/bench_request_memory.json
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
MODEL = "lumen-demo.onnx"


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _flac(seconds: float, rate: int, channels: int, noise: bool = False) -> bytes:
    """A FLAC written block by block (a 600 s x 8 ch file never sits in this process's memory)."""
    frames = int(seconds * rate)
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, frames, 1 << 18):
            block = np.zeros((min(1 << 18, frames - start), channels), dtype=np.float32)
            if noise:
                block += rng.normal(0, 0.01, block.shape).astype(np.float32)
            f.write(block)
    return buf.getvalue()


def cases() -> list[tuple[str, list[tuple[str, bytes]]]]:
    return [
        ("3 s 44.1 kHz stereo clip", [("clip.flac", _flac(3, 44_100, 2, noise=True))]),
        ("bomb: 655 350 Hz x 8 ch FLAC (refused from header)", [("bomb.flac", _flac(5, 655_350, 8))]),
        ("bomb: 192 kHz x 8 ch x 600 s (over budget)", [("bomb2.flac", _flac(600, 192_000, 8))]),
        ("600 s 44.1 kHz stereo (longest allowed file)", [("long.flac", _flac(600, 44_100, 2))]),
        (
            "2 x 600 s 44.1 kHz stereo (~500 MiB priced, just within the budget)",
            [("a.flac", _flac(600, 44_100, 2)), ("b.flac", _flac(600, 44_100, 2))],
        ),
        ("64 x 600 s 44.1 kHz stereo (request over budget: 413)", [("x.flac", _flac(600, 44_100, 2))] * 64),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--max-request-mb", type=float, default=512.0)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "serving.cli", "--model-dir", str(ROOT / "models" / "demo"), "--port", str(port),
         "--data-root", str(ROOT / "data"), "--max-request-mb", str(args.max_request_mb), "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with httpx.Client(timeout=300) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get(f"{url}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.2)
            baseline = _kib(server.pid, "VmRSS")
            print(f"baseline RSS after warm-up: {baseline / 1024:.0f} MiB")
            for name, files in cases():
                body = sum(len(b) for _, b in files)
                started = time.perf_counter()
                response = client.post(
                    f"{url}/model/predict",
                    params={"model": MODEL},
                    files=[("files", (n, b, "audio/flac")) for n, b in files],
                )
                seconds = time.perf_counter() - started
                peak = _kib(server.pid, "VmHWM")
                answer = response.json()
                outcome = (
                    f"{response.status_code}: "
                    + (answer.get("detail") or "; ".join(answer["errors"].values()) or "ok")
                )[:120]
                rows.append(
                    {
                        "request": name,
                        "body_mib": round(body / 2**20, 2),
                        "status": response.status_code,
                        "outcome": outcome,
                        "seconds": round(seconds, 2),
                        "peak_rss_mib": round(peak / 1024),
                        "peak_above_baseline_mib": round((peak - baseline) / 1024),
                    }
                )
                print(json.dumps(rows[-1]))
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "max_request_mb": args.max_request_mb,
        "baseline_rss_mib": round(baseline / 1024),
        "requests": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Slow readers (reverse slowloris): a client that sends a whole request and then reads nothing.

Uvicorn waits, untimed, for a client to read before it writes more. Without ``--write-timeout`` a
non-reading client of a ``-stream`` endpoint held its ``--max-concurrent-requests`` slot forever, and
one of any big answer held the answer's bytes in the server's memory forever (after its slot was
freed). These tests hold a socket with a tiny receive window open against a live server and never
call ``recv`` until the server has given up on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import serving_testkit as kit
from serving_testkit import HANG_GUARD_S, wait_for

from serving.batcher import Batcher
from serving.cli import build_parser, settings_from_args
from serving.settings import Settings
from serving.write_deadline import http_protocol

MODEL = "tone.onnx"
N_FILES = 400  # hard links of one 10 s file: ~8 MB of NDJSON/JSON with timeline=true, answered in ~2 s


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("slow_clients")
    kit.build_model(base / "models" / MODEL)
    many = base / "data" / "many"
    first = kit.write_tones(many / "f0000.wav", kit.label_set(3), seconds=10.0)
    for i in range(1, N_FILES):
        os.link(first, many / f"f{i:04d}.wav")  # distinct paths: each is answered
    kit.write_tones(base / "data" / "one.wav", kit.label_set(1))
    return base


def _non_reading_request(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """Send the whole request on a socket with a tiny receive window; the caller never reads it."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    conn.settimeout(HANG_GUARD_S)
    conn.connect(("127.0.0.1", port))
    raw = json.dumps(body).encode()
    conn.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    return conn


def _write_timeouts(server: kit.LiveServer) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=HANG_GUARD_S).text.splitlines():
        if line.startswith('lumen_rejected_requests_total{reason="write_timeout"}'):
            return float(line.split()[-1])
    return 0.0


def _small_request_ok(server: kit.LiveServer) -> bool:
    response = httpx.post(
        f"{server.url}/model/predict-directory",
        json={"model": MODEL, "paths": ["one.wav"]},
        timeout=HANG_GUARD_S,
    )
    assert response.status_code in (200, 503), response.text
    return response.status_code == 200


def test_a_stream_client_that_stops_reading_is_dropped_and_frees_its_slot(workspace: Path) -> None:
    server = kit.LiveServer(workspace, "--write-timeout", "0.5", "--max-concurrent-requests", "1")
    try:
        body = {"model": MODEL, "paths": ["many"], "timeline": True}
        with _non_reading_request(server.port, "/model/predict-directory-stream", body):
            # Before --write-timeout the stream sat in send() for good: 503 to everyone, forever.
            wait_for(lambda: _small_request_ok(server), guard_s=3 * HANG_GUARD_S)
            assert _write_timeouts(server) >= 1
    finally:
        server.stop()


def test_a_big_answer_nobody_reads_is_dropped_not_buffered_forever(workspace: Path) -> None:
    server = kit.LiveServer(workspace, "--write-timeout", "0.5")
    try:
        body = {"model": MODEL, "paths": ["many"], "timeline": True}
        with _non_reading_request(server.port, "/model/predict-directory", body) as conn:
            # The handler returns at once (its slot is free); the ~8 MB answer waited in the
            # transport's buffer for as long as the client kept the socket open.
            wait_for(lambda: _write_timeouts(server) >= 1, guard_s=3 * HANG_GUARD_S)
            received = b""
            with contextlib.suppress(ConnectionResetError):  # cut: RST or FIN, never the whole answer
                while chunk := conn.recv(1 << 20):
                    received += chunk
            head, _, answer = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[
                    1
                ]
            )
            assert length > 4_000_000 and len(answer) < length  # what the kernel had taken, then the cut
        assert _small_request_ok(server)
    finally:
        server.stop()


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class _Base:
    """What the deadline needs of uvicorn's protocol: a transport and the flow-control callbacks."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        pass


def test_the_clock_runs_only_while_writing_is_paused() -> None:
    drops: list[int] = []

    async def scenario() -> None:
        protocol = http_protocol(30.0, on_drop=lambda: drops.append(1), base=_Base)()  # type: ignore[arg-type]
        protocol.pause_writing()
        timer = protocol._stalled
        assert protocol.paused and timer is not None
        protocol.pause_writing()  # a second pause does not restart (or add) a clock
        assert protocol._stalled is timer
        protocol.resume_writing()  # the client read: the clock stops, a reader that keeps up is never cut
        assert not protocol.paused and protocol._stalled is None and timer.cancelled()
        protocol.pause_writing()
        protocol.connection_lost(None)
        assert protocol._stalled is None
        assert not protocol.transport.aborted and not drops
        protocol.pause_writing()
        protocol._drop_stalled()  # what the timer calls after timeout_s
        assert protocol.transport.aborted and drops == [1]

    asyncio.run(scenario())


def test_write_timeout_flag_reaches_settings_and_is_validated() -> None:
    args = build_parser().parse_args(["--write-timeout", "7.5"])
    assert settings_from_args(args).write_timeout_s == 7.5
    assert (
        build_parser().parse_args([]).write_timeout_s == Settings(model_dir=Path(".")).write_timeout_s == 30.0
    )
    with pytest.raises(ValueError, match="--write-timeout must be > 0"):
        Settings(model_dir=Path("."), write_timeout_s=0).validate()


# ---- head-of-line: a small request behind a big one in the shared batcher -----------------------------


def test_a_small_request_is_not_queued_behind_every_window_of_a_big_one() -> None:
    """A 64-file upload booked ahead of a one-file request used to fill every batch until it was done
    (measured with the demo model: the one-file request took 3.4 s instead of 0.04 s)."""
    batches: list[list[int]] = []

    def model(batch: np.ndarray) -> np.ndarray:
        batches.append([int(v) for v in batch[:, 0]])
        return np.repeat(batch[:, :1], 2, axis=1)

    async def scenario() -> None:
        batcher = Batcher(model, name="m", max_batch_size=4, max_delay_s=0.0, max_queue=64)
        try:
            big, small = await batcher.reserve(24), await batcher.reserve(2)
            with big, small:
                files = [np.full((8, 3), 1, np.float32) for _ in range(3)]  # big: 3 files x 8 windows
                submits = [asyncio.ensure_future(batcher.submit(f, reservation=big)) for f in files]
                submits.append(
                    asyncio.ensure_future(batcher.submit(np.full((2, 3), 2, np.float32), reservation=small))
                )
                results = await asyncio.wait_for(asyncio.gather(*submits), HANG_GUARD_S)
            assert [r[:, 0].tolist() for r in results] == [[1.0] * 8] * 3 + [[2.0, 2.0]]  # routing intact
        finally:
            await batcher.close()

    asyncio.run(scenario())
    assert sum(len(b) for b in batches) == 26
    first_small = next(i for i, b in enumerate(batches) if 2 in b)
    assert first_small == 0 and batches[0].count(2) == 2, batches  # FIFO: only in the 7th and last batch
    assert batches[0].count(1) == 2  # the big request keeps the rest of the batch

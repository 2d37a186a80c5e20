"""lumen-bench server: input checks, /metrics parsing, and a short real run against lumen-serve."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import benchmark_scripts
import pytest
import serving_testkit as kit

from serving import bench, bench_server
from serving.metrics import ServerMetrics

MODEL = "tone.onnx"


@pytest.mark.parametrize("url", ["http://localhost:8090", "http://127.0.0.1:1/", "http://[::1]:8090"])
def test_loopback_urls_are_accepted(url: str) -> None:
    assert bench_server.check_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url", ["http://example.com:8090", "http://10.0.0.5", "ftp://localhost", "localhost:8090"]
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(bench_server.BenchError, match="loopback|must look like"):
        bench_server.check_loopback(url)


@pytest.mark.parametrize("text", ["", "0", "1,x", "1,999"])
def test_bad_concurrency_lists_are_refused(text: str) -> None:
    with pytest.raises(bench_server.BenchError, match="--concurrency"):
        bench_server.parse_concurrency(text)


def test_batch_totals_read_the_servers_histogram() -> None:
    metrics = ServerMetrics()
    for size in (4, 8, 12):
        metrics.batch_done(MODEL, size, 0.01)
    metrics.batch_done("other.onnx", 100, 0.01)
    assert bench_server.batch_totals(metrics.render().decode(), MODEL) == (24.0, 3.0)


def test_stage_totals_and_the_time_split_per_request() -> None:
    metrics = ServerMetrics()
    before = bench_server.stage_totals(metrics.render().decode(), MODEL)
    assert all(count == 0 for _, count in before.values())
    for waited, seconds in ((0.001, 0.002), (0.0, 0.004)):  # two files decoded
        metrics.file_decoded(MODEL, waited, seconds)
    metrics.queue_wait(MODEL, 0.001)
    metrics.queue_wait(MODEL, 0.003)
    metrics.batch_done(MODEL, 10, 0.005)
    metrics.batch_phases(MODEL, {"h2d": 0.0005, "compute": 0.005, "d2h": 0.0002})
    metrics.file_decoded("other.onnx", 9.0, 9.0)  # another model's stages are not counted
    after = bench_server.stage_totals(metrics.render().decode(), MODEL)
    assert after["decode"] == pytest.approx((0.006, 2.0)) and after["queue"] == pytest.approx((0.004, 2.0))
    assert after["h2d"] == pytest.approx((0.0005, 1.0)) and after["d2h"] == pytest.approx((0.0002, 1.0))
    split = bench_server.time_split_ms(before, after, mean_latency_s=0.0150)
    assert split == pytest.approx(
        {
            "decode_wait": 0.5,
            "decode": 3.0,
            "queue": 2.0,
            "h2d": 0.5,
            "compute": 5.0,
            "d2h": 0.2,
            "other": 15.0 - 11.2,
        }
    )
    # On CUDA a batch's inference latency spans its copies: compute comes from the phase histogram.
    cuda = ServerMetrics()
    cuda.batch_done(MODEL, 10, 0.006)
    cuda.batch_phases(MODEL, {"h2d": 0.001, "compute": 0.004, "d2h": 0.001})
    cuda_split = bench_server.time_split_ms(
        before, bench_server.stage_totals(cuda.render().decode(), MODEL), 0.010
    )
    assert cuda_split["compute"] == pytest.approx(4.0) and cuda_split["other"] == pytest.approx(4.0)
    assert bench_server.time_split_ms(before, before, None) == dict.fromkeys(
        [*bench_server.STAGE_METRICS, "other"]
    )


def _fake_nvidia_smi(folder: Path, lines: str) -> None:
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{lines}'\nexec sleep 30\n")
    script.chmod(0o755)


def test_gpu_utilisation_is_the_mean_of_nvidia_smi_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_nvidia_smi(tmp_path / "bin", "30\\n[N/A]\\n50\\n40\\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    sampler = bench_server.GpuSampler()
    sampler.start()
    time.sleep(0.3)
    assert sampler.stop() == 40.0  # "[N/A]" skipped, not read as idle


def test_no_nvidia_smi_means_no_gpu_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    sampler = bench_server.GpuSampler()
    sampler.start()
    assert sampler.stop() is None
    _fake_nvidia_smi(tmp_path / "bin", "")  # a GPU tool that prints nothing: still no number
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    sampler = bench_server.GpuSampler()
    sampler.start()
    assert sampler.stop() is None


def test_bench_rejects_a_remote_url_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audio = kit.write_tones(tmp_path / "a.wav", [1])
    code = bench.main(["server", "http://example.com", "--model", MODEL, "--audio", str(audio)])
    assert code == 2 and "only loopback" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.LiveServer]:
    base = tmp_path_factory.mktemp("serving_bench")
    kit.build_model(base / "models" / MODEL)
    for i in range(4):
        kit.write_tones(base / "data" / f"b{i}.wav", kit.label_set(i))
    running = kit.LiveServer(base)
    try:
        yield running
    finally:
        assert running.stop() in (0, -signal.SIGTERM)


def test_a_short_run_reports_every_level(
    server: kit.LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    audio = server.log.parent / "data"
    argv = ["server", server.url, "--model", MODEL, "--audio", str(audio), "--concurrency", "1,4"]
    argv += ["--duration", "1", "--warmup", "0.2", "--json", str(out)]
    assert bench.main(argv) == 0
    document = json.loads(out.read_text())
    assert document["model"] == MODEL and document["files"] == 4
    levels = document["levels"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["requests"] > 0 and level["errors"] == 0
        assert level["audio_seconds_per_s"] == pytest.approx(level["requests_per_s"] * 0.6, rel=0.05)
        assert level["latency_ms_p50"] <= level["latency_ms_p90"] <= level["latency_ms_p99"]
        assert level["mean_batch_size"] >= 5  # every file is 5 windows
        split = level["split_ms"]
        assert (
            split["decode"] > 0 and split["decode_wait"] >= 0 and split["queue"] >= 0 and split["compute"] > 0
        )
        assert split["h2d"] is None and split["d2h"] is None  # CPU EP: ORT copies nothing separately
        # The stages are parts of the client's latency, so the rest ("other") cannot be negative.
        mean_ms = split["decode_wait"] + split["decode"] + split["queue"] + split["compute"] + split["other"]
        assert split["other"] > 0 and mean_ms <= level["latency_ms_p99"]
        assert level["gpu_utilization_pct"] is None  # no nvidia-smi here
    table = capsys.readouterr().out
    assert "req/s" in table and "p99 ms" in table
    assert "decode ms" in table and "other ms" in table and "GPU %" in table


def test_an_unknown_model_counts_as_errors(server: kit.LiveServer) -> None:
    audio = server.log.parent / "data" / "b0.wav"
    argv = ["server", server.url, "--model", "nope.onnx", "--audio", str(audio), "--concurrency", "1"]
    assert bench.main([*argv, "--duration", "0.3", "--warmup", "0"]) == 1


def test_raw_upload_requests_carry_the_file_as_the_whole_body() -> None:
    audio = bench_server.AudioFile(name="a b.wav", data=b"RIFF-and-some-bytes", seconds=1.0)
    request = bench_server.predict_request("http://localhost:8090", "m.onnx", audio, "raw")
    head, body = request.split(b"\r\n\r\n", 1)
    assert body == audio.data
    assert b"Content-Type: application/octet-stream" in head and b"filename=a+b.wav" in head
    assert f"Content-Length: {len(audio.data)}".encode() in head
    multipart = bench_server.predict_request("http://localhost:8090", "m.onnx", audio)
    assert b"multipart/form-data" in multipart and audio.data in multipart


HEY_REPORT = """
Summary:
  Total:	8.0031 secs
  Requests/sec:	405.8637

Response time histogram:
Latency distribution:
  10%% in 0.0301 secs
  50%% in 0.0393 secs
  90%% in 0.0482 secs
  99%% in 0.0611 secs

Details (average, fastest, slowest):
  Average:	0.0394 secs

Status code distribution:
  [200]	3240 responses
  [503]	7 responses
"""


def test_the_hey_driver_reads_heys_report_and_builds_the_same_request(tmp_path: Path) -> None:
    module = benchmark_scripts.load("bench_server_split")
    parsed = module.parse_hey(HEY_REPORT)
    assert parsed == pytest.approx(
        {
            "requests_per_s": 405.8637,
            "mean_ms": 39.4,
            "p50_ms": 39.3,
            "p90_ms": 48.2,
            "p99_ms": 61.1,
            "ok": 3240,
            "failed": 7,
        }
    )
    audio = kit.write_tones(tmp_path / "a.wav", [1])
    url, content_type, body = module.request_parts("http://127.0.0.1:1", MODEL, audio, "raw")
    assert url.startswith("http://127.0.0.1:1/model/predict?") and content_type == "application/octet-stream"
    assert body == audio.read_bytes()
    url, content_type, body = module.request_parts("http://127.0.0.1:1", MODEL, audio, "multipart")
    assert content_type.startswith("multipart/form-data; boundary=") and audio.read_bytes() in body

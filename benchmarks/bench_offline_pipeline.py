"""The offline reference a served request is compared with: decode + ONNX Runtime, no HTTP.

Issue 16's serving targets are relative to what the same cores do without a server:

- *batch 1*: one request's work, in series: decode the uploaded bytes exactly as the server does
  (``serving.pipeline.decode_windows``: decode, downmix, resample, normalise, window) and run the
  windows through ORT. The served concurrency-1 p50 should be within 1.2x of this p50.
- *throughput*: ``--decode-workers`` threads decode clips while the main thread runs ORT on batches
  of ``--batch-size`` windows, the way the server overlaps the two. The served rate at concurrency
  16 should reach 0.95x of these clips/s.

ORT gets the server's session options (``serving.runtime.session_options``) and the same thread
count the server's budget gives it on this machine (``serving.cpu_budget``), so the two differ only
by what serving adds: HTTP, multipart parsing, the event loop, batching.

    python benchmarks/bench_offline_pipeline.py models/demo/lumen-demo.onnx clip3s.wav --json out.json
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common.artifact import metadata_from_props
from common.audio import DecodeLimits
from serving.cpu_budget import cpu_limit, split_budget
from serving.pipeline import decode_windows
from serving.runtime import session_options


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def batch_one(session: ort.InferenceSession, data: bytes, meta, runs: int) -> dict[str, float]:  # noqa: ANN001
    decode_ms, infer_ms, total_ms = [], [], []
    for i in range(runs + 5):
        t0 = time.perf_counter()
        windows = decode_windows(data, "clip", meta, DecodeLimits())
        t1 = time.perf_counter()
        session.run(["probs"], {"waveform": windows.audio})
        t2 = time.perf_counter()
        if i >= 5:  # warm-up
            decode_ms.append(1e3 * (t1 - t0))
            infer_ms.append(1e3 * (t2 - t1))
            total_ms.append(1e3 * (t2 - t0))
    return {
        "runs": runs,
        "decode_p50_ms": statistics.median(decode_ms),
        "inference_p50_ms": statistics.median(infer_ms),
        "total_p50_ms": statistics.median(total_ms),
        "total_p90_ms": percentile(total_ms, 90),
        "total_p99_ms": percentile(total_ms, 99),
    }


def throughput(
    session: ort.InferenceSession,
    data: bytes,
    meta,  # noqa: ANN001
    clips: int,
    batch_size: int,
    decode_workers: int,
) -> dict[str, float]:
    ready: queue.Queue[np.ndarray] = queue.Queue(maxsize=4 * batch_size)
    windows_total = 0

    def produce(_: int) -> None:
        ready.put(decode_windows(data, "clip", meta, DecodeLimits()).audio)

    start = time.perf_counter()
    with ThreadPoolExecutor(decode_workers) as pool:
        feeder = threading.Thread(target=lambda: list(pool.map(produce, range(clips))), daemon=True)
        feeder.start()
        pending: list[np.ndarray] = []
        done = 0
        while done < clips:
            pending.append(ready.get())
            done += 1
            if sum(len(p) for p in pending) >= batch_size or done == clips:
                batch = np.concatenate(pending)
                session.run(["probs"], {"waveform": batch})
                windows_total += len(batch)
                pending = []
        feeder.join()
    seconds = time.perf_counter() - start
    return {
        "clips": clips,
        "batch_size": batch_size,
        "decode_workers": decode_workers,
        "seconds": seconds,
        "clips_per_s": clips / seconds,
        "windows_per_s": windows_total / seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an exported .onnx artifact")
    parser.add_argument("audio", type=Path, help="the clip every request sends")
    parser.add_argument("--runs", type=int, default=200, help="batch-1 repetitions")
    parser.add_argument("--clips", type=int, default=1000, help="clips for the throughput run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (best and median reported)")
    parser.add_argument("--intra-op-threads", type=int, default=None, help="default: the server's budget")
    parser.add_argument("--decode-workers", type=int, default=None, help="default: the server's budget")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    limit = cpu_limit()
    split = split_budget(limit.cpus, instances=1)
    intra = args.intra_op_threads or split.intra_op_threads
    workers = args.decode_workers or split.decode_workers
    session = ort.InferenceSession(
        str(args.model), session_options(intra), providers=["CPUExecutionProvider"]
    )
    meta = metadata_from_props(dict(session.get_modelmeta().custom_metadata_map), source=str(args.model))
    data = args.audio.read_bytes()
    one = batch_one(session, data, meta, args.runs)
    rounds = [
        throughput(session, data, meta, args.clips, args.batch_size, workers) for _ in range(args.rounds)
    ]
    rates = [r["clips_per_s"] for r in rounds]
    result = {
        "model": str(args.model),
        "audio": str(args.audio),
        "audio_bytes": len(data),
        "cpus": limit.cpus,
        "intra_op_threads": intra,
        "decode_workers": workers,
        "batch_1": one,
        "throughput_rounds": rounds,
        "clips_per_s_median": statistics.median(rates),
        "clips_per_s_best": max(rates),
    }
    print(
        f"batch 1: decode {one['decode_p50_ms']:.2f} ms + inference {one['inference_p50_ms']:.2f} ms "
        f"= p50 {one['total_p50_ms']:.2f} ms (p90 {one['total_p90_ms']:.2f})"
    )
    print(
        f"throughput (batch {args.batch_size}, {workers} decode threads, ORT {intra} threads): "
        f"median {result['clips_per_s_median']:.1f} clips/s, best {result['clips_per_s_best']:.1f} "
        f"over {args.rounds} rounds of {args.clips}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

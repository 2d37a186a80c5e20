"""Model instances on the CPU: one session run from N threads vs N sessions, and 1 vs 2 instances.

Every configuration uses the server's session options (``serving.runtime.session_options``: spinning
off, one inter-op thread) and runs ``--batches`` batches of ``--batch-size`` windows split over its
calling threads; configurations alternate for ``--rounds`` rounds and the median windows/s is
reported, because this machine is shared and its speed drifts between minutes.

    nice -n 10 python benchmarks/bench_instances.py models/demo/lumen-demo.onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort

from serving.runtime import session_options


@dataclass(frozen=True)
class Config:
    name: str
    sessions: int  # 1 = shared by every calling thread
    intra_op_threads: int
    callers: int


def configs(cores: int) -> list[Config]:
    half = max(1, cores // 2)
    return [
        Config("1 instance, 1 session x all cores", 1, cores, 1),
        Config("2 instances, 1 shared session x all cores", 1, cores, 2),
        Config("2 instances, 1 shared session x half the cores", 1, half, 2),
        Config("2 instances, own sessions x half the cores", 2, half, 2),
        Config("2 instances, own sessions x all cores", 2, cores, 2),
    ]


def measure(path: str, config: Config, batch: np.ndarray, batches: int) -> tuple[float, float]:
    """(windows per wall second, CPU milliseconds per window): the second barely depends on what
    else the machine runs, so it still ranks the configurations when wall time is noise."""
    sessions = [
        ort.InferenceSession(
            path, session_options(config.intra_op_threads), providers=["CPUExecutionProvider"]
        )
        for _ in range(config.sessions)
    ]
    for session in sessions:
        session.run(["probs"], {"waveform": batch})
    per_caller = batches // config.callers
    barrier = threading.Barrier(config.callers + 1)

    def caller(index: int) -> None:
        session = sessions[index % len(sessions)]
        barrier.wait()
        for _ in range(per_caller):
            session.run(["probs"], {"waveform": batch})

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(config.callers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.join()
    windows = per_caller * config.callers * len(batch)
    return windows / (time.perf_counter() - started), 1000 * (time.process_time() - cpu_started) / windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    session = ort.InferenceSession(args.artifact, providers=["CPUExecutionProvider"])
    window = int(session.get_inputs()[0].shape[1])
    batch = np.random.default_rng(0).standard_normal((args.batch_size, window)).astype(np.float32) * 0.1
    rates: dict[str, list[float]] = {c.name: [] for c in configs(args.cores)}
    costs: dict[str, list[float]] = {c.name: [] for c in configs(args.cores)}
    for _ in range(args.rounds):
        for config in configs(args.cores):
            rate, cost = measure(args.artifact, config, batch, args.batches)
            rates[config.name].append(rate)
            costs[config.name].append(cost)
    rows = []
    for config in configs(args.cores):
        rate, cost = statistics.median(rates[config.name]), statistics.median(costs[config.name])
        runs = [round(r, 1) for r in rates[config.name]]
        rows.append(
            {
                **asdict(config),
                "windows_per_s": round(rate, 1),
                "cpu_ms_per_window": round(cost, 3),
                "runs": runs,
            }
        )
        print(
            f"{config.name:50s} {rate:7.1f} windows/s {cost:6.2f} CPU ms/window (runs: {', '.join(f'{r:.0f}' for r in runs)})"
        )
    if args.json:
        document = {
            "artifact": args.artifact,
            "batch_size": args.batch_size,
            "cores": args.cores,
            "results": rows,
        }
        with open(args.json, "w") as out:
            json.dump(document, out, indent=2)


if __name__ == "__main__":
    main()

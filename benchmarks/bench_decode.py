"""How fast ``common.audio.load_audio`` turns a file into 16 kHz mono, on one CPU core.

Every served request and every evaluated file goes through decode -> mono -> soxr resample before
the model sees it, so this path must stay far cheaper than inference: the goal is >= 300x real time
per core (a 60 s file in <= 0.2 s). The benchmark writes a 60 s 44.1 kHz stereo file per format to a
temporary folder, times ``load_audio(path, 16000)`` several times, and reports the median.

One core: the BLAS/OpenMP thread pools are limited to one thread *before* numpy is imported, and the
process is pinned to a single CPU where the OS allows it (soxr itself is single-threaded).

    python benchmarks/bench_decode.py [--repeats 7] [--formats wav flac ogg mp3] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from common.audio import decode, load_audio  # noqa: E402

GOAL_X_REALTIME = 300.0
SOURCE_RATE = 44100
TARGET_RATE = 16000
SECONDS = 60.0
WRITERS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def pin_to_one_cpu() -> int | None:
    """Restrict this process to its first allowed CPU; returns it, or None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def music_like_signal(seconds: float, sr: int) -> np.ndarray:
    """Stereo chords plus a little noise: compresses like music, unlike silence or white noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    chord = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, np.pi)) for f in (220.0, 277.2, 329.6, 440.0))
    left = 0.15 * chord * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) + 0.01 * rng.standard_normal(t.size)
    right = 0.15 * chord + 0.01 * rng.standard_normal(t.size)
    return np.stack([left, right], axis=1).astype(np.float32)


def write_in_blocks(path: Path, signal: np.ndarray, container: str, subtype: str) -> None:
    """Write one second at a time: libsndfile 1.2's Vorbis encoder crashes (SIGSEGV) when handed a
    whole minute in a single write call."""
    with sf.SoundFile(path, "w", SOURCE_RATE, signal.shape[1], subtype, format=container) as out:
        for start in range(0, signal.shape[0], SOURCE_RATE):
            out.write(signal[start : start + SOURCE_RATE])


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_format(fmt: str, folder: Path, signal: np.ndarray, repeats: int) -> dict[str, object]:
    container, subtype = WRITERS[fmt]
    path = folder / f"bench.{fmt}"
    write_in_blocks(path, signal, container, subtype)
    total = median_seconds(lambda: load_audio(path, TARGET_RATE), repeats)
    decode_only = median_seconds(lambda: decode(path), repeats)
    x_realtime = SECONDS / total
    return {
        "format": fmt,
        "file_mb": round(path.stat().st_size / 1e6, 2),
        "median_s": round(total, 4),
        "decode_s": round(decode_only, 4),
        "resample_and_mix_s": round(total - decode_only, 4),
        "x_realtime": round(x_realtime, 1),
        "meets_goal": x_realtime >= GOAL_X_REALTIME,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per format (median reported)")
    parser.add_argument("--formats", nargs="+", choices=sorted(WRITERS), default=["wav", "flac"])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    cpu = pin_to_one_cpu()
    signal = music_like_signal(SECONDS, SOURCE_RATE)
    with tempfile.TemporaryDirectory(prefix="lumen-bench-decode-") as tmp:
        results = [bench_format(fmt, Path(tmp), signal, args.repeats) for fmt in args.formats]
    report = {
        "audio": f"{SECONDS:g} s, {SOURCE_RATE} Hz stereo -> {TARGET_RATE} Hz mono",
        "cpu": cpu,
        "repeats": args.repeats,
        "goal_x_realtime": GOAL_X_REALTIME,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"load_audio: {report['audio']}, one core (cpu {cpu}), median of {args.repeats} runs")
    print(
        f"{'format':<7}{'MB':>7}{'total s':>10}{'decode s':>10}{'x real time':>13}  goal >= {GOAL_X_REALTIME:g}x"
    )
    for r in results:
        verdict = "ok" if r["meets_goal"] else "MISSED"
        print(
            f"{r['format']:<7}{r['file_mb']:>7}{r['median_s']:>10}{r['decode_s']:>10}{r['x_realtime']:>12}x  {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

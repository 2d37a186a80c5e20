"""How should a file's window probabilities be combined? Compare aggregations on one artifact.

    PYTHONPATH=. .venv/bin/python benchmarks/aggregation_study.py MODEL.onnx OUT.json \\
        --val irmastest:data/x/val irmastrain:data/x/val-isolated \\
        --eval heldout=irmastest:data/x/heldout-soundfont real=irmastest:data/x/real

Every file goes through the served path (``load_audio`` at the artifact's rate, ``split_windows`` with
its window and hop, ONNX Runtime); only the last step, window -> file, varies:

- ``mean``: the served default, each window weighted by its real (unpadded) samples;
- ``max``: the most confident window per instrument;
- ``energy``: windows weighted by real samples x RMS of those samples, so near-silent windows (the
  release tail of a sampled note, the gap between two takes) hardly vote;
- ``loud``: plain mean over the windows within 10 dB of the file's loudest window.

For a fair comparison each method gets its own per-instrument thresholds, tuned on the validation
sets only (``common.metrics.tune_thresholds``); evaluation sets never tune. Reports macro/micro-F1,
LRAP (threshold-free) and top-1 (the highest-probability instrument is one of the file's labels).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from common.artifact import OUTPUT_NAME, metadata_from_props
from common.audio import aggregate, load_audio, split_windows
from common.datasets import scan_dataset
from common.metrics import compute_metrics, tune_thresholds

METHODS = ("mean", "max", "energy", "loud")
LOUD_DB = 10.0


def combine(probs: np.ndarray, rms: np.ndarray, valid: np.ndarray, method: str) -> np.ndarray:
    if method in ("mean", "max"):
        return aggregate(probs, method, valid=valid)  # type: ignore[arg-type]
    if method == "energy":  # the served weighted mean, with loudness in the weights
        return aggregate(probs, "mean", valid=valid.astype(np.float64) * np.maximum(rms, 1e-9))
    if method == "loud":
        level = 20 * np.log10(np.maximum(rms, 1e-9))
        keep = level >= level.max() - LOUD_DB
        return probs[keep].mean(axis=0)
    raise ValueError(method)


def window_outputs(session: ort.InferenceSession, meta, spec: str, normalize: bool):
    items, issues = scan_dataset(spec)
    if issues:
        print(f"  {spec}: skipping {len(issues)} unreadable file(s)")
    out = []
    for item in items:
        audio = load_audio(item.path, meta.sample_rate, normalize=normalize)
        win = split_windows(audio, meta.window_samples, meta.hop_samples)
        probs = session.run([OUTPUT_NAME], {"waveform": win.audio})[0]
        rms = np.array(
            [np.sqrt(np.mean(np.square(w[:n]))) for w, n in zip(win.audio, win.valid, strict=True)]
        )
        out.append((np.asarray(item.labels, dtype=np.float32), probs, rms, win.valid))
    return out


def file_level(rows, method: str) -> tuple[np.ndarray, np.ndarray]:
    truth = np.stack([r[0] for r in rows])
    probs = np.stack([combine(r[1], r[2], r[3], method) for r in rows])
    return truth, probs


def scores(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    m = compute_metrics(truth, probs, thresholds)
    top1 = truth[np.arange(len(truth)), probs.argmax(axis=1)] > 0
    return {
        "f1_macro": round(m["f1_macro"], 4),
        "f1_micro": round(m["f1_micro"], 4),
        "lrap": round(m["lrap"], 4),
        "top1": int(top1.sum()),
        "n_files": int(len(truth)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--val", nargs="+", required=True, help="dataset specs that tune the thresholds")
    ap.add_argument("--eval", nargs="*", default=[], help="NAME=SPEC evaluation sets (never tune)")
    args = ap.parse_args()

    meta = metadata_from_props({p.key: p.value for p in onnx.load(args.model).metadata_props})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    normalize = meta.normalize_audio
    t0 = time.perf_counter()
    val_rows = [row for spec in args.val for row in window_outputs(session, meta, spec, normalize)]
    evals = {}
    for entry in args.eval:
        name, _, spec = entry.partition("=")
        evals[name] = window_outputs(session, meta, spec, normalize)
    multi = {name: sum(len(r[1]) > 1 for r in rows) for name, rows in [("val", val_rows), *evals.items()]}

    report: dict[str, object] = {"model": Path(args.model).name, "multi_window_files": multi, "methods": {}}
    for method in METHODS:
        truth, probs = file_level(val_rows, method)
        thresholds = tune_thresholds(truth, probs)
        row = {"val": scores(truth, probs, thresholds)}
        for name, rows in evals.items():
            row[name] = scores(*file_level(rows, method), thresholds)
        report["methods"][method] = row  # type: ignore[index]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"files with more than one window: {multi}")
    header = ["set", *METHODS]
    print(" | ".join(header))
    for name in ["val", *evals]:
        cells = []
        for method in METHODS:
            s = report["methods"][method][name]  # type: ignore[index]
            cells.append(f"F1 {s['f1_macro']:.3f} LRAP {s['lrap']:.3f} top1 {s['top1']}/{s['n_files']}")
        print(" | ".join([name, *cells]))


if __name__ == "__main__":
    main()

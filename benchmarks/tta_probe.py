"""Does test-time augmentation (averaging the model over perturbed copies of each window) help on recordings?

    PYTHONPATH=. .venv/bin/python benchmarks/tta_probe.py OUT.json MODEL.onnx \\
        --val irmastest:data/demo-synth/fp-tune irmastrain:data/demo-synth/fp-tune-isolated \\
        --check irmastest:data/demo-synth/fp-check irmastrain:data/demo-synth/fp-check-isolated \\
        --eval heldout=irmastest:data/demo-synth/heldout-soundfont real=irmastest:data/real-samples ...

Each served window (cut and normalised as the server does) is also run as perturbed copies: played
``2**(s/12)`` faster or slower (pitch, formants and tempo together, as the SPEED augmentation does; the
window stays 3 s, the tail zero-padded) and re-equalised with a spectral tilt of ``t`` dB per octave
around 1 kHz (the window's peak kept). A TTA set is the identity plus a symmetric pair of one kind;
window probabilities are the mean over the set, then aggregated per file like served probabilities.
Every candidate set is scored on ``--val``; the one with the best LRAP is chosen (the identity alone
if none is better), thresholds tuned there. Rule, written before any ``--check`` or ``--eval`` number
was seen: worth building into an artifact only if, on ``--check``, a paired bootstrap (1 000
resamples over files) puts its LRAP ahead of the identity in >= 90 % of resamples and its macro-F1
in >= 50 %. The evaluation sets are reported, none decides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from serving.evaluation import OnnxPredictor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_predictions import compare  # noqa: E402  (sibling scripts, not a package)
from musicnn_tag_prior import file_scores, metrics, stacked, write_report  # noqa: E402

from common.metrics import label_ranking_average_precision, tune_thresholds  # noqa: E402

# name -> the perturbations averaged with the identity: ("speed", semitones) / ("tilt", dB per octave)
CANDIDATES: dict[str, list[tuple[str, float]]] = {
    "identity": [],
    "speed±0.5": [("speed", 0.5), ("speed", -0.5)],
    "speed±1": [("speed", 1.0), ("speed", -1.0)],
    "tilt±2": [("tilt", 2.0), ("tilt", -2.0)],
    "tilt±4": [("tilt", 4.0), ("tilt", -4.0)],
}


def speed(windows: np.ndarray, semitones: float) -> np.ndarray:
    """Each window played ``2**(semitones/12)`` times as fast, same length (zero past the end)."""
    n = windows.shape[1]
    src = np.arange(n) * 2.0 ** (semitones / 12.0)
    out = np.zeros_like(windows)
    inside = src <= n - 1
    for i, w in enumerate(windows):
        out[i, inside] = np.interp(src[inside], np.arange(n), w)
    return out


def tilt(windows: np.ndarray, db_per_octave: float, sample_rate: int) -> np.ndarray:
    """A spectral tilt of ``db_per_octave`` around 1 kHz (flat below 50 Hz), each window's peak kept."""
    n = windows.shape[1]
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    gain = 10.0 ** (db_per_octave * np.log2(np.maximum(freqs, 50.0) / 1000.0) / 20.0)
    out = np.fft.irfft(np.fft.rfft(windows, axis=1) * gain[None, :], n=n, axis=1).astype(np.float32)
    peak_in = np.abs(windows).max(axis=1, keepdims=True)
    peak_out = np.maximum(np.abs(out).max(axis=1, keepdims=True), 1e-9)
    return out * (peak_in / peak_out)


class TtaPredictor:
    """The model averaged over the identity and the perturbed copies of each window."""

    def __init__(self, base: OnnxPredictor, perturbations: list[tuple[str, float]]) -> None:
        self.base, self.perturbations = base, perturbations
        self.source, self.metadata = base.source, base.metadata

    def predict(self, windows: np.ndarray) -> np.ndarray:
        probs = [self.base.predict(windows)]
        for kind, amount in self.perturbations:
            if kind == "speed":
                probs.append(self.base.predict(speed(windows, amount)))
            else:
                probs.append(self.base.predict(tilt(windows, amount, self.metadata.sample_rate)))
        return np.mean(probs, axis=0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--val", nargs="+", required=True)
    parser.add_argument("--check", nargs="+", required=True)
    parser.add_argument("--eval", nargs="*", default=[], metavar="NAME=SPEC")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    base = OnnxPredictor(args.model)
    labels = list(base.metadata.labels)
    predictors = {name: TtaPredictor(base, perts) for name, perts in CANDIDATES.items()}

    def run(name: str, specs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return stacked([file_scores(predictors[name], s, labels) for s in specs])

    val = {name: run(name, args.val) for name in CANDIDATES}
    y_val = val["identity"][1]
    val_lrap = {name: float(label_ranking_average_precision(y_val, p)) for name, (p, _) in val.items()}
    chosen = max(val_lrap, key=lambda n: (round(val_lrap[n], 6), n == "identity"))
    print(
        f"validation LRAP: {json.dumps({k: round(v, 4) for k, v in val_lrap.items()})}; chosen {chosen}",
        flush=True,
    )
    th = {name: tune_thresholds(y_val, val[name][0]) for name in ("identity", chosen)}
    report: dict = {
        "model": str(args.model),
        "candidates": CANDIDATES,
        "val_lrap": val_lrap,
        "chosen": chosen,
        "sets": {},
    }
    named = [("val", args.val), ("check", args.check)] + [tuple(e.split("=", 1)) for e in args.eval]
    for name, specs in named:
        specs = [specs] if isinstance(specs, str) else specs
        p_id, y = val["identity"] if name == "val" else run("identity", specs)
        p_tta = val[chosen][0] if name == "val" else (p_id if chosen == "identity" else run(chosen, specs)[0])
        entry = {
            "identity": metrics(y, p_id, th["identity"], labels),
            chosen: metrics(y, p_tta, th[chosen], labels),
        }
        if name != "val" and chosen != "identity":
            entry["bootstrap_tta_minus_identity"] = compare(
                y,
                ((p_id >= th["identity"]).astype(float), p_id),
                ((p_tta >= th[chosen]).astype(float), p_tta),
            )
        report["sets"][name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if not k.startswith("bootstrap")}), flush=True)
    write_report(report, report["sets"]["check"].get("bootstrap_tta_minus_identity"), started, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

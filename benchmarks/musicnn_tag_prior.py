"""Does MUSICNN's zero-shot MagnaTagATune tagging, unfitted, fix the bundled model's rankings on recordings?

    PYTHONPATH=. .venv/bin/python benchmarks/musicnn_tag_prior.py OUT.json MODEL.onnx \\
        --val irmastest:data/demo-synth/fp-tune irmastrain:data/demo-synth/fp-tune-isolated \\
        --check irmastest:data/demo-synth/fp-check irmastrain:data/demo-synth/fp-check-isolated \\
        --eval heldout=irmastest:data/demo-synth/heldout-soundfont real=irmastest:data/real-samples ...

The earlier late-fusion probe (``musicnn_fusion_probe.py``) *fitted* a stacker on MUSICNN's embedding
with synthetic clips and lost. Here nothing is fitted on synthetic audio: seven of the eleven
instruments have a MagnaTagATune tag of their own, and the pretrained 50-tag network (trained on real
music) says how much each window sounds like one. Per window, as the server cuts and normalises it:

- ``q[c]`` = the tag probability mapped to instrument ``c`` (:data:`TAG_MAP`; the vocal tags by their
  maximum; ``guitar`` feeds both gac and gel); cla, org, sax and tru have no tag and keep the model's;
- ``odds`` fusion: ``logit(s) = logit(p) + w * (logit(q) - logit(q_bar))``, where ``q_bar[c]`` is the
  tag's mean over the validation files (evidence measured against the tag's usual level);
- ``linear`` fusion: ``s = p + w * (q - p)`` on the mapped instruments.

Window scores are aggregated per file like served probabilities. The fusion and ``w`` (0-1.5 in
steps of 0.05) are chosen on ``--val`` alone by LRAP (ranking is what the real-recording goal
measures), thresholds tuned there too; the rule written down before any ``--check`` or ``--eval``
number was looked at: the fusion is worth building into an artifact only if, on ``--check``, a paired
bootstrap (1 000 resamples over files) puts its LRAP ahead of the bundled model's in >= 90 % of
resamples and its macro-F1 ahead in >= 50 %. Every evaluation set is reported, none decides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.artifact import ArtifactMetadata
from common.datasets import scan_dataset
from common.metrics import compute_metrics, label_ranking_average_precision, top1, tune_thresholds
from serving.evaluation import OnnxPredictor, Predictions, collect, predict_files
from training.config import FrontendConfig
from training.musicnn import MTT_TAGS, SAMPLE_RATE, MusicnnLogMel, load_tagger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_predictions import compare  # noqa: E402  (a sibling script, not a package)

VOCAL_TAGS = (
    "vocal", "vocals", "singing", "voice", "choir", "choral", "opera", "female vocal", "male vocal",
    "female voice", "male voice", "female", "male", "woman", "man",
)  # fmt: skip
# Instrument -> the MagnaTagATune tags that name it (max over them). cla, org, sax, tru have none.
TAG_MAP: dict[str, tuple[str, ...]] = {
    "cel": ("cello",),
    "flu": ("flute",),
    "gac": ("guitar",),
    "gel": ("guitar",),
    "pia": ("piano", "harpsichord"),
    "vio": ("violin",),
    "voi": VOCAL_TAGS,
}
WEIGHTS = np.round(np.arange(0.0, 1.5001, 0.05), 2)
FUSIONS = ("odds", "linear")
EPS = 1e-6


def tag_columns(labels: list[str]) -> list[list[int]]:
    """Per label (in ``labels`` order), the indices into :data:`MTT_TAGS` that feed it ([] = none)."""
    return [[MTT_TAGS.index(t) for t in TAG_MAP.get(code, ())] for code in labels]


def mapped_mask(labels: list[str]) -> np.ndarray:
    return np.array([bool(cols) for cols in tag_columns(labels)])


def tags_to_instruments(tag_probs: np.ndarray, labels: list[str]) -> np.ndarray:
    """``[B, 50]`` tag probabilities -> ``[B, len(labels)]``: each instrument's tags' maximum, 0.5 where none."""
    out = np.full((tag_probs.shape[0], len(labels)), 0.5, dtype=np.float32)
    for j, cols in enumerate(tag_columns(labels)):
        if cols:
            out[:, j] = tag_probs[:, cols].max(axis=1)
    return out


class TagPredictor:
    """The pretrained 50-tag MUSICNN as a :class:`serving.evaluation.Predictor` of the bundled contract:
    the same windows (rate, length, hop, normalisation) in, mapped tag probabilities out."""

    def __init__(self, metadata: ArtifactMetadata) -> None:
        if metadata.sample_rate != SAMPLE_RATE:
            raise SystemExit(
                f"the model runs at {metadata.sample_rate} Hz; MUSICNN's tags need {SAMPLE_RATE}"
            )
        self.source = "musicnn-mtt-tags"
        self.metadata = metadata
        self.frontend = MusicnnLogMel(
            FrontendConfig(audio_transform="MUSICNN", sample_rate=SAMPLE_RATE)
        ).eval()
        self.tagger = load_tagger()

    @torch.no_grad()
    def predict(self, windows: np.ndarray) -> np.ndarray:
        logits = self.tagger(self.frontend(torch.from_numpy(np.ascontiguousarray(windows))))
        return tags_to_instruments(torch.sigmoid(logits).numpy(), list(self.metadata.labels))


def _logit(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, EPS, 1 - EPS)
    return np.log(x) - np.log1p(-x)


def fuse(
    p: np.ndarray, q: np.ndarray, mask: np.ndarray, fusion: str, w: float, q_bar: np.ndarray
) -> np.ndarray:
    """File-level fused scores; instruments outside ``mask`` keep ``p``; ``w`` = 0 gives ``p`` back."""
    if fusion == "linear":
        fused = p + w * (q - p)
    elif fusion == "odds":
        z = _logit(p) + w * (_logit(q) - _logit(q_bar)[None, :])
        fused = 1.0 / (1.0 + np.exp(-z))
    else:
        raise ValueError(f"unknown fusion {fusion!r}")
    return np.where(mask[None, :], fused, p).astype(np.float32)


def file_scores(predictor, spec: str, labels: list[str]) -> Predictions:
    items, issues = scan_dataset(spec)
    if issues:
        raise SystemExit(f"{spec}: {issues[0]}")
    result = collect(predict_files(predictor, items, num_workers=1), labels)
    if result.errors or result.targets is None:
        raise SystemExit(f"{spec}: unreadable or unlabelled files: {list(result.errors.items())[:2]}")
    return result


def stacked(parts: list[Predictions]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p.probs for p in parts]), np.concatenate([p.targets for p in parts])


def metrics(truth: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> dict:
    m = compute_metrics(truth, probs, thresholds, labels=labels)
    return {
        "files": len(truth),
        "top1": round(float(top1(truth, probs)), 4),
        "top1_files": int(round(top1(truth, probs) * len(truth))),
        "f1_macro": round(float(m["f1_macro"]), 4),
        "f1_micro": round(float(m["f1_micro"]), 4),
        "lrap": round(float(label_ranking_average_precision(truth, probs)), 4),
    }


def tags_alone_top1(y: np.ndarray, q: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    """Zero-shot: on files with a tagged instrument, how often the best mapped tag names a true one."""
    rows = y[:, mask].any(axis=1)
    hits = top1(y[rows][:, mask], q[rows][:, mask])
    return {"files": int(rows.sum()), "first": int(round((hits or 0.0) * rows.sum()))}


def choose(
    p: np.ndarray, q: np.ndarray, y: np.ndarray, mask: np.ndarray, q_bar: np.ndarray
) -> tuple[str, float, list]:
    """(fusion, w) with the best validation LRAP (ties: the smaller w), and the whole grid."""
    grid = []
    for fusion in FUSIONS:
        for w in WEIGHTS:
            grid.append(
                (
                    fusion,
                    float(w),
                    float(label_ranking_average_precision(y, fuse(p, q, mask, fusion, w, q_bar))),
                )
            )
    best = max(grid, key=lambda g: (round(g[2], 6), -g[1]))
    return best[0], best[1], grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="JSON written here")
    parser.add_argument("model", type=Path, help="the bundled artifact")
    parser.add_argument(
        "--val", nargs="+", required=True, help="specs that choose the fusion, w and thresholds"
    )
    parser.add_argument("--check", nargs="+", required=True, help="specs the adoption rule reads")
    parser.add_argument("--eval", nargs="*", default=[], metavar="NAME=SPEC", help="sets reported only")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    bundled = OnnxPredictor(args.model)
    labels = list(bundled.metadata.labels)
    mask = mapped_mask(labels)
    tags = TagPredictor(bundled.metadata)

    def both(specs: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, y = stacked([file_scores(bundled, s, labels) for s in specs])
        q, _ = stacked([file_scores(tags, s, labels) for s in specs])
        return p, q, y

    p_val, q_val, y_val = both(args.val)
    q_bar = np.clip(q_val.mean(axis=0), EPS, 1 - EPS)
    fusion, w, grid = choose(p_val, q_val, y_val, mask, q_bar)
    fused_val = fuse(p_val, q_val, mask, fusion, w, q_bar)
    th_bundled, th_fused = tune_thresholds(y_val, p_val), tune_thresholds(y_val, fused_val)
    print(f"chosen on validation ({len(y_val)} files): {fusion} w={w}", flush=True)

    report: dict = {
        "model": str(args.model),
        "val": args.val,
        "check": args.check,
        "tag_map": {c: list(t) for c, t in TAG_MAP.items()},
        "chosen": {
            "fusion": fusion,
            "w": w,
            "q_bar": dict(zip(labels, np.round(q_bar, 4).tolist(), strict=True)),
        },
        "val_grid_lrap": [{"fusion": f, "w": ww, "lrap": round(v, 4)} for f, ww, v in grid],
        "sets": {},
    }
    stored = np.asarray(bundled.metadata.thresholds)
    named = [("val", args.val), ("check", args.check)] + [tuple(e.split("=", 1)) for e in args.eval]
    for name, specs in named:
        specs = [specs] if isinstance(specs, str) else specs
        p, q, y = (p_val, q_val, y_val) if name == "val" else both(specs)
        s = fuse(p, q, mask, fusion, w, q_bar)
        entry = {
            "bundled_stored_thresholds": metrics(y, p, stored, labels),
            "bundled": metrics(y, p, th_bundled, labels),
            "fused": metrics(y, s, th_fused, labels),
            "tags_alone_top1_among_mapped": tags_alone_top1(y, q, mask),
        }
        if name != "val":
            entry["bootstrap_fused_minus_bundled"] = compare(
                y, ((p >= th_bundled).astype(float), p), ((s >= th_fused).astype(float), s)
            )
        report["sets"][name] = entry
        print(
            name,
            json.dumps({k: v for k, v in entry.items() if k != "bootstrap_fused_minus_bundled"}),
            flush=True,
        )
    write_report(report, report["sets"]["check"]["bootstrap_fused_minus_bundled"], started, args.out)
    return 0


def write_report(report: dict, boot: dict | None, started: float, out: Path) -> None:
    """The adoption rule on the check half's bootstrap (LRAP ahead in >= 90 % of resamples, macro-F1
    in >= 50 %; no candidate: not passed), the run time, and the JSON."""
    report["rule_passed"] = bool(
        boot and boot["lrap"]["share_b_ahead"] >= 0.9 and boot["f1_macro"]["share_b_ahead"] >= 0.5
    )
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"rule passed on --check: {report['rule_passed']} ({report['seconds']} s) -> {out}")


if __name__ == "__main__":
    raise SystemExit(main())

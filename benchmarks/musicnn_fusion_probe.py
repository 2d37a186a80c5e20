"""Does MUSICNN's real-music embedding add to the bundled SMALL_CNN? A late-fusion probe.

    PYTHONPATH=. .venv/bin/python benchmarks/musicnn_fusion_probe.py OUT_DIR MODEL.onnx FUSION_SPEC \\
        --val irmastest:data/x/val irmastrain:data/x/val-isolated \\
        --eval heldout=irmastest:data/x/heldout-soundfont real=irmastest:data/x/real

Per 3 s window: the bundled model's 11 logits and the MagnaTagATune-pretrained MUSICNN's 200-d
penultimate embedding (frozen, shipped weights, run through ONNX Runtime). A logistic-regression
stacker is trained on FUSION_SPEC — clips of the three training soundfonts that neither model has
seen — plus mixtures of 2-4 of them (labels OR-ed, as SUM_N_SAMPLES does), in three variants:
``logits`` (SMALL_CNN logits only: what re-calibration alone buys), ``embedding`` (MUSICNN only) and
``both``. Window probabilities are averaged per file like the server does; each variant's
thresholds and its training length are chosen on the validation sets only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.audio import aggregate, load_audio, split_windows
from common.datasets import scan_dataset
from common.metrics import compute_metrics, tune_thresholds
from training.config import FrontendConfig, ModelConfig, TrainConfig
from training.models import build_model
from training.musicnn import export_embedder

SR, WIN, HOP = 16000, 48000, 24000
VARIANTS = ("logits", "embedding", "both")


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def musicnn_embedder(out_dir: Path) -> ort.InferenceSession:
    path = out_dir / "musicnn_embed.onnx"
    if not path.exists():
        config = TrainConfig(
            train_paths=["irmastrain:unused"],
            val_paths=["irmastest:unused"],
            frontend=FrontendConfig(audio_transform="MUSICNN"),
            model=ModelConfig(model="MUSICNN", pretrained=True, head="LINEAR"),
            window_seconds=3.0,
            hop_seconds=1.5,
        )
        export_embedder(build_model(config), path, WIN)
    return session(path)


def features(cnn: ort.InferenceSession, emb: ort.InferenceSession, windows: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(windows), 16):
        chunk = windows[i : i + 16]
        logits = cnn.run(["logits"], {"waveform": chunk})[0]
        out.append(np.concatenate([logits, emb.run(None, {"waveform": chunk})[0]], axis=1))
    return np.concatenate(out).astype(np.float32)


def file_features(cnn, emb, spec: str):
    items, issues = scan_dataset(spec)
    assert not issues, issues[:3]
    rows = []
    for item in items:
        w = split_windows(load_audio(item.path, SR), WIN, HOP)
        rows.append((features(cnn, emb, w.audio), w.valid))
    return np.stack([np.asarray(i.labels, dtype=np.float32) for i in items]), rows


def columns(variant: str) -> slice:
    return {"logits": slice(0, 11), "embedding": slice(11, None), "both": slice(0, None)}[variant]


def file_probs(head: torch.nn.Linear, rows, cols: slice, mu, sd) -> np.ndarray:
    with torch.no_grad():
        out = []
        for x, valid in rows:
            z = torch.from_numpy((x[:, cols] - mu) / sd)
            out.append(aggregate(torch.sigmoid(head(z)).numpy(), "mean", valid))
    return np.stack(out)


def top1(truth: np.ndarray, probs: np.ndarray) -> int:
    return int((truth[np.arange(len(truth)), probs.argmax(axis=1)] > 0).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("fusion_spec")
    ap.add_argument("--val", nargs="+", required=True)
    ap.add_argument("--eval", nargs="*", default=[])
    ap.add_argument("--mixes", type=int, default=1500)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    cnn, emb = session(args.model), musicnn_embedder(args.out_dir)

    items, issues = scan_dataset(args.fusion_spec)
    assert not issues, issues[:3]
    clips = np.stack([split_windows(load_audio(i.path, SR), WIN, HOP).audio[0] for i in items])
    y_clip = np.stack([np.asarray(i.labels, dtype=np.float32) for i in items])
    mixes, y_mix = [], []
    for _ in range(args.mixes):
        k = int(rng.integers(2, 5))
        idx = rng.choice(len(clips), k, replace=False)
        mix = (clips[idx] * rng.uniform(0.4, 1.0, k)[:, None]).sum(0)
        mixes.append(mix * (np.abs(clips[idx]).max() / (np.abs(mix).max() + 1e-9)))
        y_mix.append(y_clip[idx].max(0))
    x_fit = features(cnn, emb, np.concatenate([clips, np.stack(mixes).astype(np.float32)]))
    y_fit = np.concatenate([y_clip, np.stack(y_mix)])
    val = [file_features(cnn, emb, spec) for spec in args.val]
    y_val = np.concatenate([v[0] for v in val])
    val_rows = [r for v in val for r in v[1]]
    evals = {}
    for entry in args.eval:
        name, _, spec = entry.partition("=")
        evals[name] = file_features(cnn, emb, spec)
    print(
        f"features for {len(x_fit)} fit windows and all sets in {time.perf_counter() - t0:.0f} s", flush=True
    )

    report: dict[str, object] = {"fit_windows": int(len(x_fit)), "variants": {}}
    for variant in VARIANTS:
        cols = columns(variant)
        mu, sd = x_fit[:, cols].mean(0), x_fit[:, cols].std(0) + 1e-6
        xt = torch.from_numpy((x_fit[:, cols] - mu) / sd)
        yt = torch.from_numpy(y_fit)
        head = torch.nn.Linear(xt.shape[1], 11)
        opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-2)
        best: tuple[float, dict, np.ndarray, int] = (-1.0, {}, np.zeros(11), -1)
        for epoch in range(200):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 128):
                b = perm[i : i + 128]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch % 10 == 9:
                probs = file_probs(head, val_rows, cols, mu, sd)
                thr = tune_thresholds(y_val, probs)
                f1 = compute_metrics(y_val, probs, thr)["f1_macro"]
                if f1 > best[0]:
                    best = (f1, {k: v.clone() for k, v in head.state_dict().items()}, thr, epoch + 1)
        f1, state, thr, epoch = best
        head.load_state_dict(state)
        row = {"epochs": epoch}
        for name, (truth, rows) in [("val", (y_val, val_rows)), *evals.items()]:
            probs = file_probs(head, rows, cols, mu, sd)
            m = compute_metrics(truth, probs, thr)
            row[name] = {
                "f1_macro": round(m["f1_macro"], 4),
                "f1_micro": round(m["f1_micro"], 4),
                "lrap": round(m["lrap"], 4),
                "top1": top1(truth, probs),
                "n_files": int(len(truth)),
            }
        report["variants"][variant] = row  # type: ignore[index]
        print(variant, json.dumps(row), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out_dir / "fusion_probe.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""MUSICNN with a frozen pretrained backbone and a LINEAR head trained on cached embeddings.

    PYTHONPATH=. .venv/bin/python benchmarks/musicnn_linear_probe.py OUT_DIR TRAIN_SPEC VAL_SPEC [N_MIXES]
    .venv/bin/lumen-export OUT_DIR/best.ckpt --out OUT_DIR/musicnn.onnx

CPU-budget variant of fine-tuning: MUSICNN costs ~1.4 GMAC per 3 s window, too much for epochs of
lumen-train on a shared 2-core CPU, so each window's 200-d penultimate embedding is computed once
(ONNX Runtime) and only the head is trained. Training windows: every 3 s clip, plus mixtures of 2-4
clips (labels OR-ed, as SUM_N_SAMPLES does). Thresholds tuned on the validation files. Writes a
lumen-train-format checkpoint (backbone = shipped MTT weights, head = trained) for lumen-export.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.audio import aggregate, load_audio, split_windows
from common.datasets import scan_dataset
from common.labels import LABELS
from common.metrics import compute_metrics, tune_thresholds
from training.checkpoint import MODEL_PREFIX, build_hparams
from training.config import FrontendConfig, ModelConfig, TrainConfig
from training.models import build_model
from training.musicnn import export_embedder

SR, WIN, HOP = 16000, 48000, 24000
out_dir = Path(sys.argv[1])
train_spec, val_spec = sys.argv[2], sys.argv[3]
n_mix = int(sys.argv[4]) if len(sys.argv) > 4 else 800
out_dir.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
rng = np.random.default_rng(0)

config = TrainConfig(
    train_paths=[train_spec],
    val_paths=[val_spec],
    frontend=FrontendConfig(audio_transform="MUSICNN"),
    model=ModelConfig(model="MUSICNN", pretrained=True, head="LINEAR"),
    window_seconds=3.0,
    hop_seconds=1.5,
    experiment_suffix="frozen-backbone-linear-probe",
).validate()
model = build_model(config).eval()


emb_path = out_dir / "embed.onnx"
if not emb_path.exists():
    export_embedder(model, emb_path, WIN)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
session = ort.InferenceSession(str(emb_path), opts, providers=["CPUExecutionProvider"])


def embed(windows: np.ndarray) -> np.ndarray:
    outs = [session.run(None, {"waveform": windows[i : i + 16]})[0] for i in range(0, len(windows), 16)]
    return np.concatenate(outs)


def labels_of(item) -> np.ndarray:
    return np.array([c in item.codes for c in LABELS], dtype=np.float32)


t0 = time.time()
train_items, issues = scan_dataset(train_spec)
assert not issues, issues[:3]
clips = np.stack(
    [split_windows(load_audio(i.path, SR, normalize=True), WIN, HOP).audio[0] for i in train_items]
)
y_single = np.stack([labels_of(i) for i in train_items])
mixes, y_mix = [], []
for _ in range(n_mix):
    k = int(rng.integers(2, 5))
    idx = rng.choice(len(clips), k, replace=False)
    gains = rng.uniform(0.3, 1.0, k)
    mix = (clips[idx] * gains[:, None]).sum(0)
    mixes.append(mix / (np.abs(mix).max() + 1e-9) * 0.99)
    y_mix.append(y_single[idx].max(0))
x_train = np.concatenate([clips, np.stack(mixes).astype(np.float32)])
y_train = np.concatenate([y_single, np.stack(y_mix)])
e_train = embed(x_train)
print(f"train embeddings {e_train.shape} in {time.time() - t0:.0f} s", flush=True)


def file_embeddings(spec: str):
    items, issues = scan_dataset(spec)
    assert not issues, issues[:3]
    per_file = []
    for item in items:
        w = split_windows(load_audio(item.path, SR, normalize=True), WIN, HOP)
        per_file.append((embed(w.audio), w.valid))
    return items, per_file


val_items, val_emb = file_embeddings(val_spec)
y_val = np.stack([labels_of(i) for i in val_items])
print(f"val embeddings in {time.time() - t0:.0f} s", flush=True)

head = model.head
opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-2)
xt, yt = torch.from_numpy(e_train).unsqueeze(2), torch.from_numpy(y_train)
best = (-1.0, None, None, -1)
for epoch in range(400):
    head.train()
    perm = torch.randperm(len(xt))
    for i in range(0, len(xt), 64):
        b = perm[i : i + 64]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[b]), yt[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if epoch % 20 == 19:
        head.eval()
        with torch.no_grad():
            probs = np.stack(
                [
                    aggregate(torch.sigmoid(head(torch.from_numpy(e).unsqueeze(2))).numpy(), "mean", v)
                    for e, v in val_emb
                ]
            )
        thr = tune_thresholds(y_val, probs)
        f1 = compute_metrics(y_val, probs, thr)["f1_macro"]
        if f1 > best[0]:
            best = (f1, {k: v.clone() for k, v in head.state_dict().items()}, thr, epoch)
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} val macro-F1 {f1:.3f}", flush=True)
f1, state, thr, epoch = best
head.load_state_dict(state)
print(f"best val macro-F1 {f1:.3f} at epoch {epoch + 1}; thresholds {np.round(thr, 2).tolist()}")
full = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
torch.save(
    {"state_dict": full, "hyper_parameters": build_hparams(config, [float(t) for t in thr])},
    out_dir / "best.ckpt",
)
print(f"wrote {out_dir / 'best.ckpt'} in {time.time() - t0:.0f} s")

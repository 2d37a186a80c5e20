"""MUSICNN: the PyTorch port equals musicnn's TF graph, loads offline, trains as a backbone, exports to ONNX.

The parity fixture (``tests/fixtures/musicnn_mtt_parity.npz``) is what ``training/musicnn_convert.py``
got from running musicnn's original TF1 inference graph, so TensorFlow is not needed here.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file

from common.labels import LABELS
from export.cli import main as export_main
from export.onnx import graph_problems
from training import musicnn
from training.checkpoint import MODEL_PREFIX, build_hparams
from training.config import ConfigError, FrontendConfig, ModelConfig, TrainConfig
from training.models import ModelLoadError, build_model

FIXTURE = Path(__file__).parent / "fixtures" / "musicnn_mtt_parity.npz"
SR = musicnn.SAMPLE_RATE


def musicnn_config(
    pretrained: bool = True, source: str | None = None, window_seconds: float = 1.0
) -> TrainConfig:
    return TrainConfig(
        frontend=FrontendConfig(audio_transform="MUSICNN"),
        model=ModelConfig(model="MUSICNN", pretrained=pretrained, pretrained_source=source),
        window_seconds=window_seconds,
        hop_seconds=window_seconds / 2,
    ).validate()


def tones(seconds: float, batch: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    rows = []
    for _ in range(batch):
        f0 = rng.uniform(100, 800)
        x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6)) * np.exp(-t)
        rows.append(0.8 * x / np.abs(x).max() + 0.005 * rng.standard_normal(t.shape))
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def test_shipped_weights_match_the_tensorflow_graph() -> None:
    fixture = np.load(FIXTURE)
    tagger = musicnn.load_tagger()
    log_mel = torch.from_numpy(fixture["log_mel"]).transpose(1, 2).unsqueeze(1)  # [B, 1, 96, 187]
    with torch.inference_mode():
        logits = tagger(log_mel).numpy()
    assert logits.shape == fixture["logits"].shape == (2, musicnn.N_TAGS)
    assert np.abs(logits).max() > 1.0  # the fixture drives the network, it is not near zero
    np.testing.assert_allclose(logits, fixture["logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), fixture["probs"], rtol=0, atol=1e-4)


def test_frontend_is_librosa_style_log10_mel() -> None:
    waveform = tones(1.0)
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=SR, n_fft=512, hop_length=256, n_mels=96, norm="slaney", mel_scale="slaney"
    )(waveform)
    expected = torch.log10(10_000 * reference + 1)
    got = musicnn.MusicnnLogMel(FrontendConfig(audio_transform="MUSICNN"))(waveform)
    assert got.shape == (2, 1, 96, 1 + waveform.shape[1] // 256)
    torch.testing.assert_close(got.squeeze(1), expected, rtol=1e-4, atol=1e-4)


def test_pretrained_loads_offline_from_the_shipped_file() -> None:
    model = build_model(musicnn_config(pretrained=True))
    shipped = load_file(str(musicnn.PRETRAINED_FILE))
    for key, value in model.backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, shipped[f"backbone.{key}"], rtol=0, atol=0)
    random_init = build_model(musicnn_config(pretrained=False))
    assert not torch.equal(random_init.backbone.dense.weight, model.backbone.dense.weight)
    with torch.inference_mode():
        logits = model.eval()(tones(1.0))
    assert logits.shape == (2, len(LABELS)) and torch.isfinite(logits).all()


def test_missing_weights_file_fails_with_the_way_out(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found.*drop --pretrained"):
        build_model(musicnn_config(source=str(tmp_path / "missing.safetensors")))


def test_musicnn_needs_its_own_frontend_at_16_khz() -> None:
    config = musicnn_config()
    config.frontend.audio_transform = "MEL_SPECTROGRAM"
    with pytest.raises(ConfigError, match="--model MUSICNN needs --audio-transform MUSICNN"):
        build_model(config)
    config = musicnn_config()
    config.frontend.sample_rate = 22_050
    with pytest.raises(ConfigError, match="fixed at 16000 Hz"):
        build_model(config)


def test_trains_end_to_end() -> None:
    """Fine-tuning reaches every parameter and lowers the (dropout-free, eval-mode) loss."""
    torch.manual_seed(0)
    model = build_model(musicnn_config())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    waveform = tones(0.5, batch=4)
    target = torch.zeros(4, len(LABELS))
    target[torch.arange(4), torch.tensor([0, 5, 8, 10])] = 1.0

    def eval_loss() -> float:
        with torch.inference_mode():
            return float(F.binary_cross_entropy_with_logits(model.eval()(waveform), target))

    before = eval_loss()
    for _ in range(4):
        loss = F.binary_cross_entropy_with_logits(model.train()(waveform), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert eval_loss() < before


def test_exports_to_onnx_without_stft_and_matches_torch(tmp_path) -> None:
    config = musicnn_config()
    model = build_model(config).eval()
    ckpt = tmp_path / "best.ckpt"
    state = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": build_hparams(config, [0.5] * len(LABELS))}, ckpt)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = export_main([str(ckpt)])
    assert status == 0, out.getvalue()
    onnx_model = onnx.load(str(ckpt.with_suffix(".onnx")))
    assert graph_problems(onnx_model) == []
    ops = {n.op_type for n in onnx_model.graph.node}
    assert not ops & {"STFT", "DFT"} and {"Conv", "MatMul"} <= ops
    session = ort.InferenceSession(str(ckpt.with_suffix(".onnx")), providers=["CPUExecutionProvider"])
    waveform = tones(config.window_seconds, batch=3, seed=1)
    probs = session.run(["probs"], {"waveform": waveform.numpy()})[0]
    with torch.inference_mode():
        expected = torch.sigmoid(model(waveform)).numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-4)


def test_embedder_exports_the_penultimate_layer_with_a_dynamic_batch(tmp_path) -> None:
    config = musicnn_config()
    model = build_model(config)  # left in train mode: the export must switch dropout and batch-norm off
    path = musicnn.export_embedder(model, tmp_path / "embed.onnx", config.window_samples)
    assert model.training  # the caller's mode is restored
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    waveform = tones(config.window_seconds, batch=3, seed=2)
    emb = session.run(["emb"], {"waveform": waveform.numpy()})[0]
    assert emb.shape == (3, musicnn.BACKEND_UNITS)
    model.eval()
    with torch.inference_mode():
        expected = model.backbone.penultimate(model.frontend(waveform)).numpy()
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-4)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # different inputs, different embeddings

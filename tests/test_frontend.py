"""Front-ends: equal to the reference implementations, and exportable as plain Conv/MatMul/Log graphs.

References: ``torchaudio.transforms.MelSpectrogram``/``MFCC`` (Slaney mel, what the issue names),
``ASTFeatureExtractor`` (what a pretrained AST was trained on) and ``Wav2Vec2FeatureExtractor``.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchaudio

from export.onnx import graph_problems
from training.config import ConfigError, FrontendConfig
from training.frontend import (
    LOG_OFFSET,
    LOGMEL_SCALE,
    LOGMEL_SHIFT,
    MFCC,
    AstFbank,
    LogMelSpectrogram,
    MultiSpectrogram,
    Wav2VecNormalize,
    build_frontend,
    kaldi_mel_filterbank,
    slaney_mel_filterbank,
)

SR = 16_000


def _music(seconds: float = 1.0, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """Harmonic tones plus noise at a realistic level: peaks near 1, quiet passages, silence at the end."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    rows = []
    for _ in range(batch):
        f0 = rng.uniform(80, 900)
        x = sum((0.6 / h) * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.28)) for h in range(1, 8))
        x = x * np.exp(-2.0 * t) + 0.01 * rng.standard_normal(t.shape)
        x[-SR // 10 :] = 0.0
        rows.append(x / np.abs(x).max())
    return torch.tensor(np.stack(rows), dtype=torch.float32)


def _torchaudio_log_mel(cfg: FrontendConfig, waveform: torch.Tensor) -> torch.Tensor:
    reference = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        n_mels=cfg.n_mels,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.log(reference(waveform) + LOG_OFFSET)


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(FrontendConfig(), id="defaults-400-160-128"),
        pytest.param(
            FrontendConfig(n_fft=1024, hop_length=320, n_mels=64, f_min=30.0, f_max=7600.0),
            id="1024-320-64-band",
        ),
        pytest.param(FrontendConfig(sample_rate=22_050, n_fft=512, hop_length=256, n_mels=96), id="22k"),
    ],
)
def test_log_mel_matches_torchaudio_slaney_within_1e3(cfg: FrontendConfig) -> None:
    waveform = _music(seconds=1.0 if cfg.sample_rate == SR else 0.8)
    ours = LogMelSpectrogram(cfg).log_mel(waveform)
    reference = _torchaudio_log_mel(cfg, waveform)
    assert ours.shape == reference.shape == (2, cfg.n_mels, 1 + waveform.shape[1] // cfg.hop_length)
    assert float((ours - reference).abs().max()) <= 1e-3
    # Not vacuous: the spectrogram spans tens of nats (silence at the floor, harmonics far above it).
    assert float(reference.max() - reference.min()) > 10


def test_log_mel_forward_is_the_normalised_log_mel_with_a_channel_axis() -> None:
    frontend = LogMelSpectrogram(FrontendConfig())
    waveform = _music()
    expected = (frontend.log_mel(waveform) + LOGMEL_SHIFT) / LOGMEL_SCALE
    assert torch.equal(frontend(waveform), expected.unsqueeze(1))


def test_mel_filterbank_is_torchaudios() -> None:
    ours = slaney_mel_filterbank(201, 0.0, 8000.0, 128, SR)
    reference = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 128, SR, "slaney", "slaney")
    np.testing.assert_allclose(ours, reference.double().numpy(), atol=1e-6)


def test_digital_silence_gives_the_finite_log_floor() -> None:
    out = LogMelSpectrogram(FrontendConfig()).log_mel(torch.zeros(1, SR))
    assert torch.isfinite(out).all()
    assert float(out.max()) == pytest.approx(np.log(LOG_OFFSET), abs=1e-3)


def test_mfcc_coefficients_match_torchaudio() -> None:
    cfg = FrontendConfig(audio_transform="MFCC", n_mfcc=40)
    waveform = _music()
    reference = torchaudio.transforms.MFCC(
        sample_rate=SR,
        n_mfcc=40,
        norm="ortho",
        log_mels=True,
        melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 128, "norm": "slaney", "mel_scale": "slaney"},
    )(waveform)
    ours = MFCC(cfg).coefficients(waveform)
    assert ours.shape == reference.shape
    # MFCCs are sums over 128 log-mels, so compare relative to their scale (c0 reaches hundreds).
    assert float((ours - reference).abs().max()) <= 1e-3 * float(reference.abs().max())
    assert build_frontend(cfg)(waveform).shape == (2, 1, 40, reference.shape[-1])


def test_multi_spectrogram_stacks_aligned_log_mels() -> None:
    cfg = FrontendConfig(audio_transform="MULTI_SPECTROGRAM", multi_n_ffts=[256, 400, 1024])
    waveform = _music()
    out = MultiSpectrogram(cfg)(waveform)
    assert out.shape == (2, 3, 128, 1 + SR // 160)
    for channel, n_fft in enumerate(cfg.multi_n_ffts):
        reference = _torchaudio_log_mel(FrontendConfig(n_fft=n_fft), waveform)
        assert float((out[:, channel] * LOGMEL_SCALE - LOGMEL_SHIFT - reference).abs().max()) <= 1e-3
    # The resolutions really differ (otherwise the channels would be redundant).
    assert float((out[:, 0] - out[:, 2]).abs().mean()) > 0.05


def test_ast_fbank_matches_the_feature_extractor_ast_was_trained_with() -> None:
    transformers = pytest.importorskip("transformers")
    waveform = _music(seconds=2.0, batch=1)
    extractor = transformers.ASTFeatureExtractor(max_length=256)
    reference = extractor(waveform[0].numpy(), sampling_rate=SR, return_tensors="np")["input_values"][0]
    ours = AstFbank(SR, 128, 256)(waveform)[0, 0].T.numpy()  # [frames, n_mels] like the extractor
    assert ours.shape == reference.shape == (256, 128)
    assert float(np.abs(ours - reference).max()) <= 1e-3


def test_kaldi_mel_banks_match_torchaudio_compliance() -> None:
    from torchaudio.compliance.kaldi import get_mel_banks

    reference, _ = get_mel_banks(128, 512, float(SR), 20.0, 0.0, 100.0, -500.0, 1.0)
    # torchaudio builds the banks in float32, ours in float64: they agree to float32 rounding.
    np.testing.assert_allclose(kaldi_mel_filterbank(128, 512, SR), reference.double().numpy(), atol=5e-5)


def test_wav2vec_normalisation_matches_the_feature_extractor() -> None:
    transformers = pytest.importorskip("transformers")
    waveform = _music(batch=1) * 0.3 + 0.05
    reference = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)(
        waveform[0].numpy(), sampling_rate=SR, return_tensors="np"
    )["input_values"][0]
    ours = Wav2VecNormalize()(waveform)[0].numpy()
    assert float(np.abs(ours - reference).max()) <= 1e-4


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (FrontendConfig(f_min=9000.0), "f_min < f_max"),
        (FrontendConfig(f_max=9000.0), "f_max <= sample_rate/2"),
        (FrontendConfig(audio_transform="MFCC", n_mfcc=200), "--n-mfcc"),
        (FrontendConfig(audio_transform="MULTI_SPECTROGRAM", multi_n_ffts=[]), "--multi-n-ffts is empty"),
        (FrontendConfig(audio_transform="CQT"), "unknown"),
    ],
)
def test_bad_settings_are_config_errors(cfg: FrontendConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_frontend(cfg)


FRONTENDS = [
    pytest.param(FrontendConfig(), id="mel"),
    pytest.param(FrontendConfig(audio_transform="MFCC"), id="mfcc"),
    pytest.param(FrontendConfig(audio_transform="MULTI_SPECTROGRAM", multi_n_ffts=[256, 512]), id="multi"),
    pytest.param(FrontendConfig(audio_transform="AST"), id="ast"),
    pytest.param(FrontendConfig(audio_transform="WAV2VEC"), id="wav2vec"),
    pytest.param(FrontendConfig(audio_transform="WAVELET", n_scales=16, f_min=100.0), id="wavelet"),
]
# What the graph may contain: nothing spectral, nothing outside the default ONNX domain.
ALLOWED_OPS = {
    "Add", "Cast", "Concat", "Constant", "Conv", "Div", "Gather", "Identity", "Log", "Max", "MatMul",
    "Mul", "Pad", "Pow", "ReduceMean", "Reshape", "Shape", "Slice", "Split", "Sqrt", "Squeeze", "Sub",
    "Transpose", "Unsqueeze", "Clip", "Range", "Expand", "Where", "Equal", "ConstantOfShape", "Neg",
    "Greater", "Less", "Min", "ReduceSum", "ScatterND", "Softmax",
}  # fmt: skip


@pytest.mark.parametrize("cfg", FRONTENDS)
def test_front_end_exports_to_plain_ops_and_runs_in_onnx_runtime(cfg: FrontendConfig) -> None:
    frontend = build_frontend(cfg, ast_max_frames=128).eval()
    waveform = _music(seconds=1.0, batch=3)
    buffer = io.BytesIO()
    program = torch.onnx.export(
        frontend,
        (waveform,),
        dynamo=True,
        input_names=["waveform"],
        output_names=["features"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    program.save(buffer)
    model = onnx.load_from_string(buffer.getvalue())
    assert graph_problems(model) == []
    ops = {node.op_type for node in model.graph.node}
    assert ops <= ALLOWED_OPS, f"unexpected ops {sorted(ops - ALLOWED_OPS)}"
    assert not ops & {"STFT", "DFT", "MelWeightMatrix"}
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = frontend(waveform[:2]).numpy()
    (actual,) = session.run(None, {"waveform": waveform[:2].numpy()})  # another batch size than traced
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= 1e-3

"""WAVELET front-end: equal to PyWavelets' CWT (``pywt.cwt``, complex Morlet) and to the analytic answer.

Stated tolerance: for scales of >= 20 samples (centre frequency <= fs / 20) the scalogram magnitude is
within 1% of the scalogram's peak of ``|pywt.cwt| / sqrt(s)``. At smaller scales the two differ by
design: PyWavelets integrates the wavelet and differences the result, which averages it over one
sample (an attenuation of sinc(f / fs): 2.6% at fs / 8), while this front-end samples the wavelet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import ConfigError, FrontendConfig
from training.frontend import build_frontend
from training.wavelet import BANDWIDTH, CENTER, WaveletScalogram, morlet_bank, scales_for

SR = 8000
TOLERANCE = 0.01


def _signal(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (
        0.5 * np.sin(2 * np.pi * 220 * t)
        + 0.3 * np.sin(2 * np.pi * 330 * t)
        + 0.1 * rng.standard_normal(t.size)
    )


def test_scalogram_matches_pywavelets_cwt() -> None:
    pywt = pytest.importorskip("pywt")
    cfg = FrontendConfig(
        audio_transform="WAVELET", sample_rate=SR, hop_length=1, n_scales=6, f_min=100, f_max=400
    )
    frontend = WaveletScalogram(cfg)
    x = _signal()
    ours = frontend.magnitude(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()[:, : x.size]
    scales = scales_for(frontend.frequencies, SR)
    assert scales.min() >= 20
    coef, freqs = pywt.cwt(x, scales, f"cmor{BANDWIDTH}-{CENTER}", sampling_period=1 / SR, precision=18)
    assert np.allclose(freqs, frontend.frequencies)  # the same scales <-> frequencies mapping
    reference = np.abs(coef) / np.sqrt(scales)[:, None]  # pywt normalises by 1/sqrt(s), we by 1/s
    edge = int(8 * scales.max()) + 1  # pywt's support is [-8, 8] wavelet units; compare the interior
    error = np.abs(ours[:, edge:-edge] - reference[:, edge:-edge]).max()
    assert error <= TOLERANCE * reference[:, edge:-edge].max()


@pytest.mark.parametrize("frequency", [150.0, 600.0, 2000.0])
def test_a_sine_at_a_centre_frequency_has_magnitude_half_its_amplitude(frequency: float) -> None:
    """The analytic CWT of A sin(2 pi f t) at the scale centred on f is A/2 (1/s normalisation)."""
    cfg = FrontendConfig(
        audio_transform="WAVELET",
        sample_rate=SR,
        hop_length=50,
        n_scales=1,
        f_min=frequency,
        f_max=2 * frequency,
    )
    frontend = WaveletScalogram(cfg)
    assert frontend.frequencies.tolist() == [frequency]
    t = np.arange(SR) / SR
    wave = torch.tensor(0.8 * np.sin(2 * np.pi * frontend.frequencies[0] * t), dtype=torch.float32)
    magnitude = frontend.magnitude(wave[None])[0, 0].numpy()
    interior = magnitude[frontend.half // 50 + 1 : -(frontend.half // 50 + 1)]
    assert np.allclose(interior, 0.4, rtol=TOLERANCE)


def test_output_layout_frames_and_log_compression() -> None:
    cfg = FrontendConfig(audio_transform="WAVELET", sample_rate=SR, hop_length=80, n_scales=10, f_min=100)
    frontend = build_frontend(cfg)
    wave = torch.tensor(_signal(), dtype=torch.float32).repeat(3, 1)
    features = frontend(wave)
    assert features.shape == (3, 1, 10, 1 + wave.shape[1] // 80)  # frames as the mel front-end's
    assert frontend.frequencies[0] == 100 and frontend.frequencies[-1] == pytest.approx(0.4 * SR)
    # Low to high frequency: the 220/330 Hz tones are loudest in rows near those centre frequencies.
    loudest = int(features[0, 0].mean(dim=1).argmax())
    assert 150 < frontend.frequencies[loudest] < 500
    silence = frontend(torch.zeros(1, 800))
    assert torch.allclose(silence, torch.full_like(silence, (np.log(1e-6) + 7) / 4))


def test_filters_are_conjugated_morlets_with_l1_norm() -> None:
    basis, half = morlet_bank(np.array([40.0]))
    real, imag = basis[0, 0], basis[1, 0]
    assert real.size == 2 * half and np.argmax(real) == half  # tap `half` is the frame centre
    assert np.isclose(np.sum(np.sqrt(real**2 + imag**2)), 1.0, rtol=1e-3)  # envelope integrates to 1


def test_bad_wavelet_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--n-scales"):
        build_frontend(FrontendConfig(audio_transform="WAVELET", n_scales=0))
    with pytest.raises(ConfigError, match="f_min < f_max"):
        build_frontend(FrontendConfig(audio_transform="WAVELET", f_min=5000, f_max=1000))


def test_lumen_train_flags_build_a_cnn_on_the_scalogram() -> None:
    from training.cli import build_parser, config_from_args
    from training.models import build_model

    args = build_parser().parse_args(
        ["--train-paths", "irmastrain:x", "--val-paths", "irmastest:y", "--audio-transform", "WAVELET",
         "--n-scales", "12", "--f-min", "200", "--f-max", "3000", "--sample-rate", "8000", "--hop-length", "80"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.frontend.n_scales, config.frontend.f_min, config.frontend.f_max) == (12, 200.0, 3000.0)
    config.model.width = 0.25
    model = build_model(config)
    logits = model(torch.randn(2, 4000) * 0.3)
    assert logits.shape == (2, 11) and torch.isfinite(logits).all()

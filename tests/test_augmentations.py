"""Training augmentations: every augmentation does what its name says, leaves shapes/dtypes alone, is the
identity at p=0, and mixing ones OR exactly the labels of the examples they mixed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from common.audio import load_audio
from training.augmentations import (
    ORDER,
    PARAMS,
    AugmentationError,
    aug_kwargs_help,
    build_augmentations,
    parse_aug_kwargs,
    valid_keys,
)
from training.augmentations.params import COLOR_EXPONENTS, key_of
from training.augmentations.pipeline import MASKING_ORDER, MIXING_ORDER, SPECTROGRAM_ORDER, WAVEFORM_ORDER
from training.augmentations.spectrogram import shift_bins, spectral_envelope
from training.augmentations.time_domain import eq_centres
from training.config import AUGMENTATIONS

SR = 8000
T = SR  # one second: FFT bins fall on whole hertz
BATCH = 8
N_LABELS = 11
WAVEFORM_AUGS = (*MIXING_ORDER, *WAVEFORM_ORDER)
MIXING = set(MIXING_ORDER)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two noise recordings: one shorter than the window (tiled), one at another rate (resampled)."""
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(7)
    sf.write(folder / "hum.wav", 0.5 * rng.standard_normal(2400).astype(np.float32), SR)
    (folder / "street").mkdir()
    sf.write(folder / "street" / "cars.flac", 0.3 * rng.standard_normal(8000).astype(np.float32), 2 * SR)
    (folder / "notes.txt").write_text("not audio; ignored")
    return folder


def kwargs_for(name: str, noise_dir: Path, **params: object) -> dict[str, object]:
    kwargs = {key_of(name, k): v for k, v in params.items()}
    if name == "BACKGROUND_NOISE":
        kwargs[key_of(name, "dir")] = str(noise_dir)
    return kwargs


def make_batch(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise waves and one-hot labels, two examples per class (so disjoint partners always exist)."""
    gen = torch.Generator().manual_seed(1)
    wave = torch.randn(BATCH, T, generator=gen).to(dtype) * 0.3
    labels = torch.nn.functional.one_hot(torch.arange(BATCH) % 4, N_LABELS).float()
    return wave, labels


def tones(freqs: list[float], amplitude: float = 1.0) -> torch.Tensor:
    t = torch.arange(T, dtype=torch.float64) / SR
    return torch.stack([amplitude * torch.sin(2 * math.pi * f * t) for f in freqs]).float()


def amplitude_at(wave: torch.Tensor, freq: float) -> torch.Tensor:
    """Amplitude of the sine at ``freq`` Hz (exact for whole-hertz tones over one second)."""
    return torch.fft.rfft(wave.double()).abs()[..., int(round(freq))] * 2 / T


def test_order_covers_every_augmentation_once() -> None:
    assert sorted(ORDER) == sorted(AUGMENTATIONS)
    assert len(set(ORDER)) == len(ORDER)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", WAVEFORM_AUGS)
def test_waveform_aug_at_p1_keeps_shape_and_dtype_and_changes_every_example(
    name: str, dtype: torch.dtype, noise_dir: Path
) -> None:
    pipeline = build_augmentations([name], kwargs_for(name, noise_dir, p=1.0), SR)
    wave, labels = make_batch(dtype)
    torch.manual_seed(0)
    out, out_labels = pipeline.waveform(wave, labels)
    assert out.shape == wave.shape and out.dtype == dtype
    assert out_labels.shape == labels.shape and out_labels.dtype == labels.dtype
    assert torch.isfinite(out).all()
    assert all(not torch.equal(out[i], wave[i]) for i in range(BATCH))
    if name in MIXING:
        assert (out_labels >= labels).all() and (out_labels.sum(1) >= 2).all()
    else:
        assert torch.equal(out_labels, labels)


@pytest.mark.parametrize("name", [*WAVEFORM_AUGS, "NORM_AFTER_TIME_AUGS"])
def test_waveform_aug_at_p0_is_identity(name: str, noise_dir: Path) -> None:
    pipeline = build_augmentations([name], kwargs_for(name, noise_dir, p=0.0), SR)
    wave, labels = make_batch()
    out, out_labels = pipeline.waveform(wave, labels)
    assert torch.equal(out, wave) and torch.equal(out_labels, labels)


@pytest.mark.parametrize("name", MASKING_ORDER)
def test_spectrogram_aug_p1_changes_and_p0_is_identity(name: str) -> None:
    torch.manual_seed(0)
    spec = torch.randn(4, 2, 32, 50, dtype=torch.float64)
    out = build_augmentations([name], {key_of(name, "p"): 1.0}, SR).spectrogram(spec)
    assert out.shape == spec.shape and out.dtype == spec.dtype
    assert all(not torch.equal(out[i], spec[i]) for i in range(4))
    changed = out != spec
    means = spec.mean(dim=(1, 2, 3), keepdim=True).expand_as(spec)
    assert torch.equal(out[changed], means[changed]), "masked cells hold the example's mean"
    identity = build_augmentations([name], {key_of(name, "p"): 0.0}, SR).spectrogram(spec)
    assert torch.equal(identity, spec)


def is_one_run(flags: torch.Tensor) -> bool:
    hits = flags.nonzero().flatten()
    return len(hits) > 0 and int(hits[-1] - hits[0]) + 1 == len(hits)


@pytest.mark.parametrize(("name", "axis"), [("TIME_MASK", 3), ("FREQ_MASK", 2)])
def test_specaugment_masks_one_contiguous_block_across_the_other_axes(name: str, axis: int) -> None:
    torch.manual_seed(0)
    spec = torch.randn(6, 2, 40, 50, dtype=torch.float64)
    kwargs = {key_of(name, "p"): 1.0, key_of(name, "n_masks"): 1, key_of(name, "max_fraction"): 0.2}
    changed = build_augmentations([name], kwargs, SR).spectrogram(spec) != spec
    for example in changed:
        along = example.movedim(axis - 1, -1).reshape(-1, spec.shape[axis])
        block = along.any(dim=0)
        assert is_one_run(block) and int(block.sum()) <= 0.2 * spec.shape[axis]
        assert along[:, block].all(), "the block spans every channel and every row of the other axis"


def test_random_erase_is_a_rectangle_and_random_pixels_are_scattered() -> None:
    torch.manual_seed(0)
    spec = torch.randn(6, 1, 40, 50, dtype=torch.float64)
    kwargs = {"random_erase_p": 1.0, "random_erase_size_range": [0.1, 0.5]}
    erased = build_augmentations(["RANDOM_ERASE"], kwargs, SR).spectrogram(spec)[:, 0] != spec[:, 0]
    for cells in erased:
        rows, cols = cells.any(dim=1), cells.any(dim=0)
        assert is_one_run(rows) and is_one_run(cols)
        assert torch.equal(cells, rows[:, None] & cols[None, :])
        assert 4 <= int(rows.sum()) <= 20 and 5 <= int(cols.sum()) <= 25
    kwargs = {"random_pixels_p": 1.0, "random_pixels_rate_range": [0.05, 0.1]}
    dropped = build_augmentations(["RANDOM_PIXELS"], kwargs, SR).spectrogram(spec) != spec
    rates = dropped.double().mean(dim=(1, 2, 3))
    assert ((rates > 0.03) & (rates < 0.13)).all()
    assert all(not is_one_run(d.flatten()) for d in dropped)


def test_spectrogram_augs_accept_3d_maps_and_pass_gradients_through_unmasked_cells() -> None:
    torch.manual_seed(0)
    spec = torch.randn(3, 32, 40, requires_grad=True)
    pipeline = build_augmentations(list(MASKING_ORDER), {}, SR)
    assert build_augmentations(list(SPECTROGRAM_ORDER), {}, SR).has_spectrogram
    assert pipeline.has_spectrogram and not build_augmentations(["TIMEINV"], {}, SR).has_spectrogram
    out = pipeline.spectrogram(spec)
    assert out.shape == spec.shape
    out.sum().backward()
    kept = out.detach() == spec.detach()
    assert spec.grad is not None and (spec.grad[kept] == 1).all()


def envelope_and_harmonics(n_freq: int = 64, n_time: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth bump (a formant at bin 30) and a fast comb (harmonics every 4 bins), [1, 1, F, T] each."""
    bins = torch.arange(n_freq, dtype=torch.float64)
    envelope = 3.0 * torch.exp(-0.5 * ((bins - 30.0) / 6.0) ** 2)
    comb = 0.5 * torch.cos(2 * math.pi * bins / 4.0)
    return (
        envelope[None, None, :, None].expand(1, 1, n_freq, n_time).clone(),
        comb[None, None, :, None].expand(1, 1, n_freq, n_time).clone(),
    )


def test_envelope_shift_moves_the_formant_and_keeps_the_harmonics() -> None:
    envelope, comb = envelope_and_harmonics()
    spec = envelope + comb
    smooth = spectral_envelope(spec, 12)
    weights = torch.arange(64, dtype=torch.float64)
    before = float((smooth[0, 0, :, 0] * weights).sum() / smooth[0, 0, :, 0].sum())
    inner = slice(8, 56)  # the comb leaks into the envelope near the edges (no periodic extension)
    assert torch.allclose(smooth[:, :, inner], envelope[:, :, inner], atol=0.05), "bump kept, comb dropped"
    for shift in (3.0, -2.5):
        kwargs = {"envelope_shift_p": 1.0, "envelope_shift_shift_range": shift}
        out = build_augmentations(["ENVELOPE_SHIFT"], kwargs, SR).spectrogram(spec)
        moved = spectral_envelope(out, 12)[0, 0, :, 0]
        moved_by = float((moved * weights).sum() / moved.sum()) - before
        assert abs(moved_by - shift) < 0.25, f"formant moved {moved_by:.2f} bins, expected {shift}"
        fine = (out - spectral_envelope(out, 12))[0, 0, inner, 0]
        assert torch.allclose(fine, comb[0, 0, inner, 0], atol=0.05), "harmonics stay in their bins"


def test_envelope_shift_is_identity_at_zero_shift_or_p0_and_passes_gradients() -> None:
    torch.manual_seed(0)
    spec = torch.randn(4, 2, 40, 30, dtype=torch.float64)
    for kwargs in ({"envelope_shift_p": 1.0, "envelope_shift_shift_range": 0.0}, {"envelope_shift_p": 0.0}):
        out = build_augmentations(["ENVELOPE_SHIFT"], kwargs, SR).spectrogram(spec)
        assert torch.allclose(out, spec, atol=1e-12)
    out = build_augmentations(["ENVELOPE_SHIFT"], {"envelope_shift_p": 1.0}, SR).spectrogram(spec)
    assert out.shape == spec.shape and out.dtype == spec.dtype
    assert all(not torch.allclose(out[i], spec[i]) for i in range(4))
    leaf = torch.randn(3, 32, 20, requires_grad=True)
    build_augmentations(["ENVELOPE_SHIFT"], {"envelope_shift_p": 1.0}, SR).spectrogram(leaf).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


def test_shift_bins_moves_whole_and_fractional_bins_and_repeats_the_edge() -> None:
    spec = torch.arange(10, dtype=torch.float64).view(1, 1, 10, 1)
    up = shift_bins(spec, torch.tensor([2.0], dtype=torch.float64))[0, 0, :, 0]
    assert up.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    down = shift_bins(spec, torch.tensor([-0.5], dtype=torch.float64))[0, 0, :, 0]
    assert down.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9]


def test_envelope_shift_rejects_no_coefficients() -> None:
    with pytest.raises(AugmentationError, match="envelope_shift_n_coeffs"):
        build_augmentations(["ENVELOPE_SHIFT"], {"envelope_shift_n_coeffs": 0}, SR)


def test_timeinv_negates() -> None:
    wave, labels = make_batch()
    out, _ = build_augmentations(["TIMEINV"], {"timeinv_p": 1.0}, SR).waveform(wave, labels)
    assert torch.equal(out, -wave)


def test_probability_is_drawn_per_example() -> None:
    wave = torch.randn(64, 100, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out, _ = build_augmentations(["TIMEINV"], {"timeinv_p": 0.5}, SR).waveform(
        wave, torch.zeros(64, N_LABELS)
    )
    inverted = torch.tensor([torch.equal(o, -w) for o, w in zip(out, wave, strict=True)])
    untouched = torch.tensor([torch.equal(o, w) for o, w in zip(out, wave, strict=True)])
    assert torch.equal(inverted, ~untouched)
    assert 16 <= int(inverted.sum()) <= 48


@pytest.mark.parametrize("mode", ["wrap", "zeros"])
def test_time_shift_is_a_shift_within_the_limit(mode: str) -> None:
    wave, labels = make_batch()
    kwargs = {"time_shift_p": 1.0, "time_shift_max_fraction": 0.25, "time_shift_mode": mode}
    torch.manual_seed(0)
    out, _ = build_augmentations(["TIME_SHIFT"], kwargs, SR).waveform(wave, labels)
    limit = T // 4
    for i in range(BATCH):
        rolls = [k for k in range(-limit, limit + 1) if torch.equal(out[i], shifted(wave[i], k, mode))]
        assert len(rolls) == 1, f"example {i} is not a shift by at most {limit} samples"


def shifted(x: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    rolled = torch.roll(x, k)
    if mode == "zeros" and k > 0:
        rolled[:k] = 0
    elif mode == "zeros" and k < 0:
        rolled[k:] = 0
    return rolled


def test_time_stretch_moves_onsets_and_keeps_pitch() -> None:
    wave = tones([440.0] * 2)
    wave[:, : T // 4] = 0  # onset at 0.25 s
    kwargs = {"time_stretch_p": 1.0, "time_stretch_factor_range": 1.25}
    out, _ = build_augmentations(["TIME_STRETCH"], kwargs, SR).waveform(wave, torch.zeros(2, N_LABELS))
    assert out.shape == wave.shape
    spectrum = torch.fft.rfft(out[0]).abs()
    assert int(spectrum.argmax()) == 440
    level = out[0].abs().unfold(0, 80, 80).amax(dim=1)
    loud = (level > 0.5).nonzero().flatten() * 80
    # 1.25x faster: the tone spans 0.25 s .. 1 s of the input, i.e. 0.2 s .. 0.8 s of the output
    assert abs(int(loud[0]) - 0.2 * T) <= 0.02 * T and abs(int(loud[-1]) - 0.8 * T) <= 0.02 * T
    assert level[int(0.25 * T) // 80 : int(0.75 * T) // 80].min() > 0.9, "the tone keeps its level"


def test_time_stretch_by_one_reconstructs_the_input() -> None:
    """Guards the vocoder's phase arithmetic: float32 drift over 3 s would show as ~3e-3 error."""
    wave = torch.randn(2, 3 * 16_000, generator=torch.Generator().manual_seed(0)) * 0.3
    kwargs = {"time_stretch_p": 1.0, "time_stretch_factor_range": 1.0}
    out, _ = build_augmentations(["TIME_STRETCH"], kwargs, 16_000).waveform(wave, torch.zeros(2, N_LABELS))
    assert (out - wave).abs().max() < 5e-4


@pytest.mark.parametrize("semitones", [-2.0, 3.0])
def test_pitch_scales_frequency_and_keeps_duration(semitones: float) -> None:
    wave = tones([440.0, 600.0])
    kwargs = {"pitch_p": 1.0, "pitch_semitone_range": semitones}
    out, _ = build_augmentations(["PITCH"], kwargs, SR).waveform(wave, torch.zeros(2, N_LABELS))
    ratio = 2 ** (semitones / 12)
    for i, f in enumerate([440.0, 600.0]):
        peak_hz = int(torch.fft.rfft(out[i]).abs().argmax())
        assert abs(peak_hz - f * ratio) <= 2
    # the tone keeps its level over the whole window: no silent tail from the stretch/resample steps,
    # and the bins of each partial stay phase-coherent (without phase locking the level drops to ~0.5)
    assert out[:, T // 10 : -T // 10].abs().unfold(1, 200, 200).amax(dim=2).min() > 0.9


@pytest.mark.parametrize("semitones", [-2.0, 2.0])
def test_speed_scales_frequency_and_tempo(semitones: float) -> None:
    """Frequencies scale by the ratio; slower keeps sound to the end, faster ends in 1 - 1/ratio of zeros."""
    wave = tones([440.0, 600.0])
    kwargs = {"speed_p": 1.0, "speed_semitone_range": semitones}
    out, _ = build_augmentations(["SPEED"], kwargs, SR).waveform(wave, torch.zeros(2, N_LABELS))
    assert out.shape == wave.shape
    ratio = 2 ** (semitones / 12)
    played = min(T, int(T / ratio))
    for i, f in enumerate([440.0, 600.0]):
        spectrum = torch.fft.rfft(out[i, : played - 1]).abs()
        peak_hz = float(spectrum.argmax()) * SR / (played - 1)
        assert abs(peak_hz - f * ratio) <= 2
    assert out[:, played - 200 : played - 1].abs().amax() > 0.5  # sound up to where the source ends
    assert bool((out[:, played + 1 :] == 0).all())  # then zeros (none when slower: played == T)
    assert (played < T) == (semitones > 0)


def test_speed_at_zero_semitones_or_p0_is_the_identity() -> None:
    wave, labels = make_batch()
    for kwargs in ({"speed_p": 1.0, "speed_semitone_range": 0.0}, {"speed_p": 0.0}):
        out, _ = build_augmentations(["SPEED"], kwargs, SR).waveform(wave, labels)
        assert torch.allclose(out, wave, atol=1e-6)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_color_noise_snr_in_range_and_spectral_slope(color: str) -> None:
    wave, labels = make_batch()
    kwargs = {"color_noise_p": 1.0, "color_noise_colors": color, "color_noise_snr_db_range": [6.0, 12.0]}
    torch.manual_seed(0)
    out, _ = build_augmentations(["COLOR_NOISE"], kwargs, SR).waveform(wave, labels)
    noise = (out - wave).double()
    snr = 10 * torch.log10(wave.double().pow(2).mean(1) / noise.pow(2).mean(1))
    assert ((snr >= 6.0 - 1) & (snr <= 12.0 + 1)).all(), snr
    power = torch.fft.rfft(noise).abs().pow(2).mean(0)  # bin k is k Hz
    low, high = slice(50, 500), slice(2000, 3500)
    measured_db = 10 * torch.log10(power[low].mean() / power[high].mean())
    hz = np.arange(SR // 2 + 1, dtype=np.float64)
    exponent = COLOR_EXPONENTS[color]
    expected_db = 10 * np.log10((hz[low] ** exponent).mean() / (hz[high] ** exponent).mean())  # 0/11.4/24.5
    assert abs(float(measured_db) - expected_db) < 1.5


def test_seven_band_eq_changes_band_levels_within_the_gain_range() -> None:
    centres = [float(round(c)) for c in eq_centres(SR).tolist()]
    wave = tones(centres, amplitude=0.1).sum(0, keepdim=True).repeat(4, 1)
    kwargs = {"seven_band_eq_p": 1.0, "seven_band_eq_gain_db_range": [-6.0, 6.0]}
    torch.manual_seed(0)
    out, _ = build_augmentations(["SEVEN_BAND_EQ"], kwargs, SR).waveform(wave, torch.zeros(4, N_LABELS))
    gains_db = torch.stack(
        [20 * torch.log10(amplitude_at(out, f) / amplitude_at(wave, f)) for f in centres], 1
    )
    assert (gains_db.abs() <= 6.0 + 1e-3).all()
    assert (gains_db.amax(1) - gains_db.amin(1) > 1.0).all(), "bands get different gains"
    assert not torch.allclose(gains_db[0], gains_db[1]), "each example draws its own gains"


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_clipping_bounds_the_peak(mode: str) -> None:
    wave, labels = make_batch()
    kwargs = {"clipping_p": 1.0, "clipping_threshold_range": 0.5, "clipping_modes": mode}
    out, _ = build_augmentations(["CLIPPING"], kwargs, SR).waveform(wave, labels)
    limit = 0.5 * wave.abs().amax(dim=1)
    peaks = out.abs().amax(dim=1)
    assert (peaks <= limit + 1e-6).all()
    assert torch.equal(torch.sign(out), torch.sign(wave))
    if mode == "hard":
        assert torch.allclose(peaks, limit)
        quiet = wave.abs() < limit.unsqueeze(1)
        assert torch.equal(out[quiet], wave[quiet])
    else:
        assert (peaks < limit).all()


def test_norm_after_time_augs_restores_each_peak() -> None:
    wave, labels = make_batch()
    wave = wave * torch.linspace(0.2, 1.0, BATCH).unsqueeze(1)
    kwargs = {"color_noise_p": 1.0, "color_noise_snr_db_range": 0.0}
    torch.manual_seed(0)
    noisy, _ = build_augmentations(["COLOR_NOISE"], kwargs, SR).waveform(wave, labels)
    torch.manual_seed(0)
    out, _ = build_augmentations(["COLOR_NOISE", "NORM_AFTER_TIME_AUGS"], kwargs, SR).waveform(wave, labels)
    assert not torch.allclose(noisy.abs().amax(1), wave.abs().amax(1))
    assert torch.allclose(out.abs().amax(1), wave.abs().amax(1))
    assert torch.allclose(out / out.abs().amax(1, keepdim=True), noisy / noisy.abs().amax(1, keepdim=True))


def present_tones(out: torch.Tensor, freqs: list[float]) -> list[set[int]]:
    """Per output row, the indices of the input tones audible in it."""
    levels = torch.stack([amplitude_at(out, f) for f in freqs], dim=1)
    return [set((row > 0.1 * row.max()).nonzero().flatten().tolist()) for row in levels]


@pytest.mark.parametrize(("name", "n"), [("SUM_N_SAMPLES", 3), ("SUM_N_SAMPLES", 4), ("SUM_TWO_SAMPLES", 2)])
def test_sum_mixes_disjoint_examples_and_ors_exactly_their_labels(name: str, n: int) -> None:
    freqs = [100.0 * (i + 1) for i in range(BATCH)]
    wave = tones(freqs, amplitude=0.9)
    _, labels = make_batch()
    kwargs = {key_of(name, "p"): 1.0} | ({key_of(name, "n"): n} if name == "SUM_N_SAMPLES" else {})
    torch.manual_seed(0)
    out, out_labels = build_augmentations([name], kwargs, SR).waveform(wave, labels)
    sizes = set()
    for i, mixed in enumerate(present_tones(out, freqs)):
        assert i in mixed and 2 <= len(mixed) <= n
        sizes.add(len(mixed))
        assert labels[sorted(mixed)].sum(0).max() == 1, "mixed examples have disjoint labels"
        assert torch.equal(out_labels[i], labels[sorted(mixed)].amax(0))
        loudest_part = wave[sorted(mixed)].abs().amax()
        assert torch.isclose(out[i].abs().amax(), loudest_part), "mix rescaled to its loudest part's peak"
    assert sizes == set(range(2, n + 1)), "'up to n - 1' partners: every mix size occurs"


def test_sum_falls_back_to_overlapping_labels_when_no_disjoint_partner_exists() -> None:
    freqs = [100.0 * (i + 1) for i in range(4)]
    labels = torch.zeros(4, N_LABELS)
    labels[:, 3] = 1
    torch.manual_seed(0)
    out, out_labels = build_augmentations(["SUM_TWO_SAMPLES"], {"sum_two_samples_p": 1.0}, SR).waveform(
        tones(freqs), labels
    )
    assert all(len(m) == 2 for m in present_tones(out, freqs))
    assert torch.equal(out_labels, labels)


def test_concat_cuts_contiguous_segments_and_ors_their_labels() -> None:
    wave = (torch.arange(BATCH, dtype=torch.float32).unsqueeze(1) + 1).repeat(1, T)  # value = source + 1
    _, labels = make_batch()
    kwargs = {"concat_n_samples_p": 1.0, "concat_n_samples_n": 3}
    torch.manual_seed(0)
    out, out_labels = build_augmentations(["CONCAT_N_SAMPLES"], kwargs, SR).waveform(wave, labels)
    for i in range(BATCH):
        values, lengths = torch.unique_consecutive(out[i], return_counts=True)
        sources = values.long() - 1
        assert int(sources[0]) == i and 2 <= len(sources) <= 3
        assert len(set(sources.tolist())) == len(sources), "each source is one contiguous segment"
        assert labels[sources].sum(0).max() == 1, "concatenated examples have disjoint labels"
        assert torch.equal(out_labels[i], labels[sources].amax(0))
        assert int(lengths.min()) >= T // 12, "every segment is long enough to hear"


def test_background_noise_adds_a_crop_of_a_noise_file_at_the_snr(noise_dir: Path) -> None:
    wave, labels = make_batch()
    wave = wave[:4]
    kwargs = {"background_noise_dir": str(noise_dir), "background_noise_p": 1.0}
    kwargs["background_noise_snr_db_range"] = [3.0, 9.0]
    torch.manual_seed(3)
    pipeline = build_augmentations(["BACKGROUND_NOISE"], kwargs, SR)
    out, _ = pipeline.waveform(wave, labels[:4])
    bank = [load_audio(p, SR) for p in sorted([noise_dir / "hum.wav", noise_dir / "street" / "cars.flac"])]
    assert [len(b) for b in bank] == [2400, 4000], "recordings are resampled to the model rate"
    residual = (out - wave).double().numpy()
    snr = 10 * np.log10((wave.double().numpy() ** 2).mean(1) / (residual**2).mean(1))
    assert ((snr > 3.0 - 1e-6) & (snr < 9.0 + 1e-6)).all()
    for r in residual:
        assert any(is_scaled_tiled_crop(r, clip) for clip in bank)


def is_scaled_tiled_crop(residual: np.ndarray, clip: np.ndarray) -> bool:
    tiled = np.tile(clip, -(-(len(residual) + len(clip)) // len(clip))).astype(np.float64)
    scores = np.correlate(tiled[: len(residual) + len(clip) - 1], residual, mode="valid")
    crop = tiled[int(np.abs(scores).argmax()) :][: len(residual)]
    gain = residual @ crop / (crop @ crop)
    return gain > 0 and np.allclose(residual, gain * crop, atol=1e-5)


def test_background_noise_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(AugmentationError, match="background_noise_dir.*required"):
        build_augmentations(["BACKGROUND_NOISE"], {}, SR)
    with pytest.raises(AugmentationError, match="folder not found"):
        build_augmentations(["BACKGROUND_NOISE"], {"background_noise_dir": str(tmp_path / "nope")}, SR)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(AugmentationError, match="no audio files"):
        build_augmentations(["BACKGROUND_NOISE"], {"background_noise_dir": str(tmp_path)}, SR)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    with pytest.raises(AugmentationError, match="broken.wav"):
        build_augmentations(["BACKGROUND_NOISE"], {"background_noise_dir": str(tmp_path)}, SR)
    (tmp_path / "broken.wav").unlink()
    sf.write(tmp_path / "silence.wav", np.zeros(800, dtype=np.float32), SR)
    with pytest.raises(AugmentationError, match="silence.wav.*silence"):
        build_augmentations(["BACKGROUND_NOISE"], {"background_noise_dir": str(tmp_path)}, SR)


def test_pipeline_is_deterministic_given_the_seed_and_runs_in_fixed_order(noise_dir: Path) -> None:
    names = list(reversed(AUGMENTATIONS))
    pipeline = build_augmentations(names, {"background_noise_dir": str(noise_dir)}, SR)
    assert pipeline.names == ORDER
    wave, labels = make_batch()
    spec = torch.randn(BATCH, 1, 32, 50)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        results.append((*pipeline.waveform(wave, labels), pipeline.spectrogram(spec)))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    torch.manual_seed(124)
    assert not torch.equal(pipeline.waveform(wave, labels)[0], results[0][0])


def test_describe_lists_effective_params() -> None:
    pipeline = build_augmentations(["TIMEINV", "SUM_N_SAMPLES"], {"sum_n_samples_n": 4}, SR)
    lines = pipeline.describe().splitlines()
    assert lines[0].startswith("SUM_N_SAMPLES") and "n=4" in lines[0] and "gain_range=(0.4, 1.0)" in lines[0]
    assert lines[1].startswith("TIMEINV") and "p=0.5" in lines[1]
    assert build_augmentations([], {}, SR).describe() == "augmentations: none"


def test_aug_kwargs_help_lists_every_key_with_its_default() -> None:
    text = aug_kwargs_help()
    assert all(f"{key}=" in text for key in valid_keys(list(PARAMS)))
    assert "  time_stretch_factor_range=0.8,1.25  " in text and "background_noise_dir=none" in text
    assert aug_kwargs_help(["TIMEINV"]).splitlines()[0].startswith("TIMEINV: polarity inversion")
    assert "sum_n_samples" not in aug_kwargs_help(["TIMEINV"])


def test_parse_aug_kwargs_types() -> None:
    parsed = parse_aug_kwargs(
        [
            "sum_n_samples_n=4",
            "sum_n_samples_p=0.25",
            "time_stretch_factor_range=0.9,1.1",
            "color_noise_colors=pink,brown",
            "background_noise_dir=data/noise,v2",
            "time_shift_mode=zeros",
        ]
    )
    assert parsed == {
        "sum_n_samples_n": 4,
        "sum_n_samples_p": 0.25,
        "time_stretch_factor_range": [0.9, 1.1],
        "color_noise_colors": ["pink", "brown"],
        "background_noise_dir": "data/noise,v2",
        "time_shift_mode": "zeros",
    }
    names = ["SUM_N_SAMPLES", "TIME_STRETCH", "COLOR_NOISE", "TIME_SHIFT"]
    pipeline = build_augmentations(names, {k: v for k, v in parsed.items() if "background" not in k}, SR)
    assert pipeline.params["TIME_STRETCH"].factor_range == (0.9, 1.1)
    assert pipeline.params["COLOR_NOISE"].colors == ("pink", "brown")


def test_parse_aug_kwargs_booleans_and_none_reach_the_type_check() -> None:
    with pytest.raises(AugmentationError, match=r"timeinv_p=True: expected a number"):
        parse_aug_kwargs(["timeinv_p=true"], ["TIMEINV"])
    assert parse_aug_kwargs(["background_noise_dir=none"]) == {"background_noise_dir": None}


@pytest.mark.parametrize(
    ("items", "names", "message"),
    [
        (["sum_n_sampels_n=3"], ["SUM_N_SAMPLES"], r"valid keys: sum_n_samples_p, sum_n_samples_n, "),
        (["timeinv_p=1"], ["SUM_N_SAMPLES"], r"configures TIMEINV, which is not in --augmentations"),
        (["nonsense=1"], None, r"not a known key; valid keys: concat_n_samples_p"),
        (["timeinv_p"], None, r"not key=value"),
        (["timeinv_p=1", "timeinv_p=0"], None, r"given twice"),
        (["timeinv_p=1.5"], ["TIMEINV"], r"timeinv_p=1.5: must be a probability"),
        (["sum_n_samples_n=2.5"], ["SUM_N_SAMPLES"], r"sum_n_samples_n=2.5: expected an integer"),
        (["sum_n_samples_n=1"], ["SUM_N_SAMPLES"], r"must be >= 2"),
        (["pitch_semitone_range=1,2,3"], ["PITCH"], r"expected lo,hi"),
        (["pitch_semitone_range=2,-2"], ["PITCH"], r"lo must not exceed hi"),
        (["color_noise_colors=grey"], ["COLOR_NOISE"], r"must be among: white, pink, brown"),
        (["time_shift_mode=bounce"], ["TIME_SHIFT"], r"must be one of: wrap, zeros"),
        (["clipping_threshold_range=0,0.5"], ["CLIPPING"], r"fractions in \(0, 1\]"),
    ],
)
def test_parse_aug_kwargs_errors_name_the_key_and_the_fix(
    items: list[str], names: list[str] | None, message: str
) -> None:
    with pytest.raises(AugmentationError, match=message):
        parse_aug_kwargs(items, names)


def test_build_rejects_bad_names_and_unchosen_keys() -> None:
    with pytest.raises(AugmentationError, match="not known; choose from: CONCAT_N_SAMPLES"):
        build_augmentations(["REVERB"], {}, SR)
    with pytest.raises(AugmentationError, match="more than once"):
        build_augmentations(["TIMEINV", "TIMEINV"], {}, SR)
    with pytest.raises(AugmentationError, match="configures TIMEINV, which is not in --augmentations"):
        build_augmentations([], {"timeinv_p": 1.0}, SR)
    with pytest.raises(AugmentationError, match="valid keys: none"):
        build_augmentations([], {"timeinv_prob": 1.0}, SR)
    assert valid_keys(["TIMEINV", "CLIPPING"]) == [
        "timeinv_p",
        "clipping_p",
        "clipping_threshold_range",
        "clipping_modes",
    ]


def test_waveform_rejects_mismatched_shapes() -> None:
    pipeline = build_augmentations(["TIMEINV"], {}, SR)
    with pytest.raises(ValueError, match=r"same B"):
        pipeline.waveform(torch.zeros(2, T), torch.zeros(3, N_LABELS))

"""Decoding every supported format, failing with the file's name, windowing edges and aggregation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.audio import (
    AudioError,
    aggregate,
    decode,
    is_audio_path,
    load_audio,
    peak_normalize,
    resample,
    split_windows,
    to_mono,
    window_count,
)

SR = 44100
TONE_HZ = 440.0
MP3_WRITABLE = "MP3" in sf.available_formats() and "MPEG_LAYER_III" in sf.available_subtypes("MP3")

FORMATS = [
    pytest.param("wav", "WAV", "PCM_16", id="wav"),
    pytest.param("flac", "FLAC", "PCM_16", id="flac"),
    pytest.param("ogg", "OGG", "VORBIS", id="ogg"),
    pytest.param(
        "mp3",
        "MP3",
        "MPEG_LAYER_III",
        id="mp3",
        marks=pytest.mark.skipif(
            not MP3_WRITABLE, reason=f"libsndfile {sf.__libsndfile_version__} cannot write MP3 here"
        ),
    ),
]


def stereo_tone(seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    """440 Hz at 0.5 in the left channel and 0.3 in the right: the mono mix has amplitude 0.4."""
    t = np.arange(int(seconds * sr)) / sr
    tone = np.sin(2 * np.pi * TONE_HZ * t)
    return np.stack([0.5 * tone, 0.3 * tone], axis=1).astype(np.float32)


def dominant_hz(audio: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize(("ext", "fmt", "subtype"), FORMATS)
def test_every_format_decodes_to_mono_at_the_target_rate(
    tmp_path: Path, ext: str, fmt: str, subtype: str
) -> None:
    path = tmp_path / f"tone.{ext}"
    sf.write(path, stereo_tone(), SR, format=fmt, subtype=subtype)
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 8000) <= 1200  # lossy codecs add encoder delay / padding
    assert dominant_hz(audio, 16000) == pytest.approx(TONE_HZ, abs=4)
    assert np.percentile(np.abs(audio), 99.5) == pytest.approx(0.4, abs=0.05)


@pytest.mark.parametrize(("ext", "fmt", "subtype"), [p for p in FORMATS if p.id in ("wav", "flac")])
def test_lossless_formats_match_the_written_signal(tmp_path: Path, ext: str, fmt: str, subtype: str) -> None:
    path = tmp_path / f"tone.{ext.upper()}"
    source = stereo_tone()
    sf.write(path, source, SR, format=fmt, subtype=subtype)
    assert is_audio_path(path)
    data, sr = decode(path)
    assert sr == SR and data.shape == source.shape
    np.testing.assert_allclose(data, source, atol=1e-4)
    np.testing.assert_allclose(load_audio(path, SR), source.mean(axis=1), atol=1e-4)


@pytest.mark.parametrize(("ext", "fmt", "subtype"), FORMATS)
def test_bytes_input_equals_path_input(tmp_path: Path, ext: str, fmt: str, subtype: str) -> None:
    path = tmp_path / f"tone.{ext}"
    sf.write(path, stereo_tone(0.3), SR, format=fmt, subtype=subtype)
    np.testing.assert_array_equal(load_audio(path.read_bytes(), 16000), load_audio(path, 16000))


def write_broken(tmp_path: Path, kind: str) -> Path:
    good = tmp_path / "good.wav"
    sf.write(good, stereo_tone(0.2), SR, subtype="PCM_16")
    payload = {
        "empty": b"",
        "text": b"this is not audio\n" * 40,
        "random": np.random.default_rng(0).bytes(4096),
        "header_only": good.read_bytes()[:44],
        "cut_header": good.read_bytes()[:20],
    }[kind]
    path = tmp_path / f"broken_{kind}.wav"
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty file"),
        ("text", "not a recognised audio file"),
        ("random", "not a recognised audio file"),
        ("header_only", "no audio samples"),
        ("cut_header", "corrupt or truncated audio"),
    ],
)
def test_broken_files_raise_audio_error_with_the_name(tmp_path: Path, kind: str, reason: str) -> None:
    path = write_broken(tmp_path, kind)
    with pytest.raises(AudioError, match=reason) as err:
        load_audio(path, 16000)
    assert err.value.name == str(path) and str(err.value).startswith(f"{path}: ")
    with pytest.raises(AudioError, match=reason) as err:
        load_audio(path.read_bytes(), 16000, name="upload.wav")
    assert str(err.value).startswith("upload.wav: ")


@pytest.mark.parametrize(("ext", "fmt", "subtype"), [p for p in FORMATS if p.id in ("flac", "ogg", "mp3")])
def test_truncated_compressed_streams_raise_audio_error(
    tmp_path: Path, ext: str, fmt: str, subtype: str
) -> None:
    path = tmp_path / f"cut.{ext}"
    sf.write(path, stereo_tone(1.0), SR, format=fmt, subtype=subtype)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(AudioError, match="corrupt or truncated") as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)
    assert "Error opening" not in str(err.value)  # no second copy of the name from soundfile


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        decode(tmp_path / "nope.wav")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(AudioError, match="unsupported extension '.txt'"):
        decode(notes)


def test_non_finite_samples_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    data = np.zeros(100, dtype=np.float32)
    data[10] = np.nan
    sf.write(path, data, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode(path)


def test_too_long_input_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(8000 * 3, dtype=np.float32), 8000)
    with pytest.raises(AudioError, match="3.0 s long; the limit is 2 s"):
        load_audio(path, 8000, max_seconds=2)
    with pytest.raises(AudioError, match="the limit is 2.5 s"):
        load_audio(path.read_bytes(), 8000, max_seconds=2.5)
    assert load_audio(path, 8000, max_seconds=3).size == 8000 * 3


def test_a_file_too_short_to_survive_resampling_is_an_audio_error(tmp_path: Path) -> None:
    path = tmp_path / "click.wav"
    sf.write(path, np.ones(1, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="click.wav: too short: 1 frame"):
        load_audio(path, 16000)
    assert load_audio(path, SR).size == 1


def test_mono_resample_and_normalize() -> None:
    stereo = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(to_mono(stereo), [0.5, 0.5])
    np.testing.assert_array_equal(to_mono(stereo[:, :1]), [1.0, 0.5])
    x = np.linspace(-0.2, 0.1, 100, dtype=np.float32)
    assert resample(x, 16000, 16000) is x
    assert resample(x, 16000, 8000).size == 50
    assert float(np.max(np.abs(peak_normalize(x)))) == pytest.approx(0.99)
    silent = np.zeros(10, dtype=np.float32)
    assert peak_normalize(silent) is silent


def test_load_audio_normalize(tmp_path: Path) -> None:
    path = tmp_path / "quiet.wav"
    sf.write(path, 0.1 * stereo_tone(0.2), SR)
    assert float(np.max(np.abs(load_audio(path, SR, normalize=True)))) == pytest.approx(0.99, abs=1e-3)


# --- windows ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 0), (1, 1), (99, 1), (100, 1), (101, 2), (150, 2), (151, 3), (1000, 19)],
)
def test_window_count(n: int, expected: int) -> None:
    assert window_count(n, 100, 50) == expected


def test_shorter_than_one_window_repeat_and_zeros() -> None:
    audio = np.arange(1, 4, dtype=np.float32)
    rep = split_windows(audio, 8, 4)
    np.testing.assert_array_equal(rep.audio, [[1, 2, 3, 1, 2, 3, 1, 2]])
    assert rep.valid.tolist() == [3] and rep.starts.tolist() == [0] and rep.padded.tolist() == [True]
    zero = split_windows(audio, 8, 4, pad="zeros")
    np.testing.assert_array_equal(zero.audio, [[1, 2, 3, 0, 0, 0, 0, 0]])


def test_exact_multiple_of_hop_needs_no_padding() -> None:
    audio = np.arange(100 + 3 * 50, dtype=np.float32)
    w = split_windows(audio, 100, 50)
    assert len(w) == 4 and w.starts.tolist() == [0, 50, 100, 150]
    assert w.valid.tolist() == [100] * 4 and not w.padded.any()
    np.testing.assert_array_equal(w.audio[-1], audio[150:250])


def test_partial_last_window_repeat_vs_zeros() -> None:
    audio = np.arange(1, 131, dtype=np.float32)  # 130 samples: windows at 0 and 50, the last holds 80
    rep = split_windows(audio, 100, 50)
    assert rep.valid.tolist() == [100, 80] and rep.padded.tolist() == [False, True]
    np.testing.assert_array_equal(rep.audio[1, :80], audio[50:])
    np.testing.assert_array_equal(rep.audio[1, 80:], audio[50:70])
    zero = split_windows(audio, 100, 50, pad="zeros")
    np.testing.assert_array_equal(zero.audio[1, 80:], np.zeros(20))


def test_very_long_input_covers_every_sample() -> None:
    n, window, hop = 16000 * 600 + 123, 16000, 8000  # ten minutes at 16 kHz
    audio = np.arange(n, dtype=np.float32) % 9973
    w = split_windows(audio, window, hop)
    assert len(w) == window_count(n, window, hop) == 1200
    assert w.starts[-1] + w.valid[-1] == n and w.valid[:-1].min() == window
    np.testing.assert_array_equal(w.audio[777], audio[777 * hop : 777 * hop + window])


@pytest.mark.parametrize(
    ("audio", "window", "hop", "message"),
    [
        (np.zeros(10, np.float32), 0, 5, "must be positive"),
        (np.zeros(10, np.float32), 5, 0, "must be positive"),
        (np.zeros((2, 10), np.float32), 5, 5, "mono 1-D"),
        (np.zeros(0, np.float32), 5, 5, "empty audio"),
    ],
)
def test_split_windows_rejects_bad_arguments(audio: np.ndarray, window: int, hop: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_windows(audio, window, hop)


def test_aggregate_weighted_mean_and_max() -> None:
    probs = np.array([[0.2, 0.9], [0.6, 0.1], [1.0, 0.0]], dtype=np.float32)
    valid = np.array([100, 100, 50])
    np.testing.assert_allclose(
        aggregate(probs, "mean", valid), [(20 + 60 + 50) / 250, (90 + 10) / 250], rtol=1e-6
    )
    np.testing.assert_allclose(aggregate(probs, "mean"), [0.6, 1.0 / 3], rtol=1e-6)
    np.testing.assert_array_equal(aggregate(probs, "max"), np.array([1.0, 0.9], dtype=np.float32))
    assert aggregate(probs, "mean", valid).dtype == np.float32


def test_aggregate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        aggregate(np.zeros((2, 3)), "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_windows >= 1"):
        aggregate(np.zeros((0, 3)))

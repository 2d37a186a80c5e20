"""Audio in: decode -> mono -> resample -> (normalise) -> fixed windows, and windows back to files.

Every consumer (training data, validation, lumen-test, the server) goes through these functions, so a
file is cut into the same windows and aggregated the same way everywhere: validation metrics and
served answers agree by construction.

Padding rule for the last, partial window: the valid samples are *repeated* (tiled) to fill the
window (``PAD_MODE = "repeat"``). Models are trained on full windows of real audio; a window that is
mostly digital silence is out of distribution, while a tiled excerpt is not. ``pad="zeros"`` is
available for callers that want the other behaviour. Each window reports its valid length so that
mean aggregation weighs a padded window by how much real audio it holds.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")
PAD_MODE: Literal["repeat", "zeros"] = "repeat"
RESAMPLE_QUALITY = "HQ"
# libsndfile's names (``SoundFile.format``) of the containers behind SUPPORTED_EXTENSIONS.
ALLOWED_FORMATS: frozenset[str] = frozenset({"WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3"})
MAGIC_BYTES = 4
BLOCK_FRAMES = 65536
MIB = 1024 * 1024

AudioSource = str | os.PathLike[str] | bytes


class AudioError(ValueError):
    """A file that cannot be turned into audio; ``str()`` is ``"<name>: <reason>"``.

    ``kind`` sorts failures for metrics: ``format`` (not an accepted container), ``limit`` (a header
    beyond :class:`DecodeLimits`), ``invalid`` (missing, empty, corrupt, NaN/Inf, too short).
    """

    def __init__(self, name: str, reason: str, kind: str = "invalid") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.kind = kind


def is_audio_path(path: str | os.PathLike[str]) -> bool:
    """True for the extensions we decode, matched case-insensitively (``.WAV`` counts)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def _source_name(source: AudioSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, bytes):
        return "<bytes>"
    return os.fspath(source)


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may cost, checked from the header before any sample is read.

    ``max_decoded_bytes`` bounds ``frames x channels x 4`` (the float32 the file expands to at its own
    rate), so a tiny FLAC of silence at 655 kHz x 8 channels is refused, not decoded. The format
    allow-list keeps libsndfile's rarely used parsers (AIFF, CAF, W64, AU, PAF, ...) away from
    untrusted bytes; extend :data:`ALLOWED_FORMATS` only on purpose.
    """

    max_seconds: float | None = None
    max_channels: int = 64
    min_sample_rate: int = 1000
    max_sample_rate: int = 384_000
    max_decoded_bytes: int | None = None
    formats: frozenset[str] = field(default_factory=lambda: ALLOWED_FORMATS)


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class AudioInfo:
    """A file's header, as libsndfile reads it (no samples decoded)."""

    format: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def decoded_bytes(self) -> int:
        """float32 bytes of the whole file at its own rate and channel count."""
        return self.frames * self.channels * 4


def _open(source: AudioSource, label: str) -> io.BytesIO | str:
    """A handle for libsndfile after the cheap checks (exists, extension, not empty, magic bytes)."""
    if isinstance(source, bytes):
        if not source:
            raise AudioError(label, "empty file (0 bytes)")
        head = source[:MAGIC_BYTES]
        handle: io.BytesIO | str = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError(label, "file not found")
        if not is_audio_path(path):
            raise AudioError(
                label, f"unsupported extension {path.suffix!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
            )
        if path.stat().st_size == 0:
            raise AudioError(label, "empty file (0 bytes)")
        with open(path, "rb") as f:
            head = f.read(MAGIC_BYTES)
        handle = os.fspath(path)
    if not _looks_allowed(head):
        raise AudioError(
            label, f"not a recognised audio file (supported: {', '.join(SUPPORTED_EXTENSIONS)})", "format"
        )
    return handle


def _looks_allowed(head: bytes) -> bool:
    """Magic bytes of WAV (RIFF/RIFX/RF64), FLAC, Ogg and MP3 (ID3 tag or an MPEG frame sync)."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS") or head[:3] == b"ID3":
        return True
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _check_header(f: sf.SoundFile, label: str, limits: DecodeLimits) -> AudioInfo:
    info = AudioInfo(str(f.format), int(f.samplerate), int(f.channels), int(f.frames))
    if info.format not in limits.formats:
        raise AudioError(
            label,
            f"audio format {info.format} is not accepted (accepted: {', '.join(sorted(limits.formats))})",
            "format",
        )
    if not limits.min_sample_rate <= info.sample_rate <= limits.max_sample_rate:
        raise AudioError(
            label,
            f"sample rate {info.sample_rate} Hz is outside the accepted "
            f"{limits.min_sample_rate}..{limits.max_sample_rate} Hz",
            "limit",
        )
    if not 1 <= info.channels <= limits.max_channels:
        raise AudioError(
            label, f"{info.channels} channels; at most {limits.max_channels} are accepted", "limit"
        )
    if info.frames <= 0:
        raise AudioError(label, "no audio samples (0 frames; truncated or empty stream)")
    if limits.max_seconds is not None and info.frames > limits.max_seconds * info.sample_rate:
        raise AudioError(
            label, f"audio is {info.seconds:.1f} s long; the limit is {limits.max_seconds:g} s", "limit"
        )
    if limits.max_decoded_bytes is not None and info.decoded_bytes > limits.max_decoded_bytes:
        raise AudioError(
            label,
            f"decodes to {info.decoded_bytes / MIB:.1f} MiB ({info.channels} ch x {info.frames} frames); "
            f"the limit is {limits.max_decoded_bytes / MIB:.1f} MiB",
            "limit",
        )
    return info


def probe(
    source: AudioSource, *, name: str | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> AudioInfo:
    """The header of ``source`` checked against ``limits``; :class:`AudioError` if it fails any."""
    label = _source_name(source, name)
    handle = _open(source, label)
    try:
        with sf.SoundFile(handle) as f:
            return _check_header(f, label, limits)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise AudioError(label, _failure_reason(exc, handle)) from None


def decode(
    source: AudioSource,
    *,
    name: str | None = None,
    max_seconds: float | None = None,
    limits: DecodeLimits | None = None,
    mono: bool = False,
) -> tuple[np.ndarray, int]:
    """Decode to float32 ``[frames, channels]`` (or ``[frames]`` with ``mono``) and the file's rate.

    Raises :class:`AudioError` for missing, empty, non-audio, corrupt, silent-length (0 frames),
    too-long or over-budget input. Every limit is checked from the header before any sample is
    decoded; the samples are then read in blocks (downmixed block by block with ``mono``) into one
    buffer sized from the header, so a header that lies about its length cannot make the decode
    hold more than ``limits`` allow.
    """
    limits = limits or DEFAULT_LIMITS
    if max_seconds is not None:
        limits = replace(limits, max_seconds=max_seconds)
    label = _source_name(source, name)
    handle = _open(source, label)
    try:
        with sf.SoundFile(handle) as f:
            info = _check_header(f, label, limits)
            data = _read_blocks(f, info, label, limits, mono)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise AudioError(label, _failure_reason(exc, handle)) from None
    if data.shape[0] == 0:
        raise AudioError(label, "no audio samples (0 frames; truncated or empty stream)")
    return data, info.sample_rate


def _frame_limit(info: AudioInfo, limits: DecodeLimits) -> int | None:
    """The most frames a decode of this file may hold: ``max_seconds`` and the byte budget."""
    bounds = []
    if limits.max_seconds is not None:
        bounds.append(int(limits.max_seconds * info.sample_rate))
    if limits.max_decoded_bytes is not None:
        bounds.append(limits.max_decoded_bytes // (4 * info.channels))
    return min(bounds) if bounds else None


def _read_blocks(
    f: sf.SoundFile, info: AudioInfo, label: str, limits: DecodeLimits, mono: bool
) -> np.ndarray:
    """Samples in blocks of at most :data:`BLOCK_FRAMES` into one buffer of the header's length.

    Compressed streams may hold a little more than their header says; the buffer then grows, but
    the old and the new buffer together never hold more frames than :func:`_frame_limit` allows.
    """
    width = 1 if mono else info.channels
    limit = _frame_limit(info, limits)
    out = np.empty((info.frames if limit is None else min(info.frames, limit), width), dtype=np.float32)
    block_frames = max(1, min(BLOCK_FRAMES, info.frames))
    block = np.empty((block_frames, info.channels), dtype=np.float32)
    downmix = _downmix_weights(info.channels)
    filled = 0
    while n := f.read(block_frames, dtype="float32", always_2d=True, out=block).shape[0]:
        chunk = block[:n]
        if not np.isfinite(chunk).all():
            raise AudioError(label, "audio contains NaN or infinite samples")
        if filled + n > out.shape[0]:  # the header under-reported the length
            grown = max(filled + n, out.shape[0] + out.shape[0] // 4)
            if limit is not None and out.shape[0] + grown > limit:
                raise AudioError(
                    label, "the stream holds more audio than its header says and the limits allow", "limit"
                )
            bigger = np.empty((grown, width), dtype=np.float32)
            bigger[:filled] = out[:filled]
            out = bigger
        if mono and info.channels > 1:
            np.matmul(chunk, downmix, out=out[filled : filled + n, 0])
        else:
            out[filled : filled + n] = chunk[:, :width]
        filled += n
    return out[:filled, 0] if mono else out[:filled]


def _failure_reason(exc: Exception, handle: object) -> str:
    """libsndfile's complaint, reworded for a user who only knows the file they sent."""
    reason = str(exc).strip() or type(exc).__name__
    reason = reason.removeprefix(f"Error opening {handle!r}: ")  # soundfile repeats the name we add
    lowered = reason.lower()
    if "format not recognised" in lowered or "unknown format" in lowered:
        return f"not a recognised audio file (supported: {', '.join(SUPPORTED_EXTENSIONS)})"
    if "does not exist or is not a regular file" in lowered:
        # libsndfile's MPEG reader says this about an existing file whose stream it cannot parse.
        return "corrupt or truncated audio (no decodable stream found)"
    return f"corrupt or truncated audio ({reason})"


def _downmix_weights(channels: int) -> np.ndarray:
    return np.full(channels, 1.0 / channels, dtype=np.float32)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of ``[frames, channels]`` (or pass a 1-D array through).

    As a matrix-vector product: ``mean(axis=1)`` over 2 channels is a strided reduction ~50x
    slower than BLAS, and it was the largest CPU cost of serving a stereo upload.
    """
    if data.ndim == 1:
        return data.astype(np.float32, copy=False)
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0], dtype=np.float32)
    return np.ascontiguousarray(data, dtype=np.float32) @ _downmix_weights(data.shape[1])


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr resampling of a mono signal; a no-op when the rates match."""
    if orig_sr == target_sr:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, orig_sr, target_sr, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def peak_normalize(audio: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale so that max |x| == ``peak``; silent input is returned unchanged."""
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if top <= 1e-9:
        return audio
    return (audio * (peak / top)).astype(np.float32, copy=False)


def load_audio(
    source: AudioSource,
    sample_rate: int,
    *,
    name: str | None = None,
    normalize: bool = False,
    max_seconds: float | None = None,
    limits: DecodeLimits | None = None,
) -> np.ndarray:
    """Decode any supported file (path or bytes) to mono float32 at ``sample_rate``."""
    data, sr = decode(source, name=name, max_seconds=max_seconds, limits=limits, mono=True)
    audio = resample(data, sr, sample_rate)
    if audio.size == 0:  # e.g. one frame at 44.1 kHz resamples to nothing at 16 kHz
        raise AudioError(
            _source_name(source, name),
            f"too short: {data.shape[0]} frame(s) at {sr} Hz is no audio at {sample_rate} Hz",
        )
    return peak_normalize(audio) if normalize else audio


@dataclass(frozen=True)
class Windows:
    """Fixed-length windows cut from one file.

    ``audio``: float32 ``[n, window_samples]``; ``valid``: real samples in each window (the rest is
    padding); ``starts``: sample offset of each window in the file.
    """

    audio: np.ndarray
    valid: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return int(self.audio.shape[0])

    @property
    def padded(self) -> np.ndarray:
        """Boolean mask of windows that hold padding."""
        return self.valid < self.audio.shape[1]


def window_count(n_samples: int, window_samples: int, hop_samples: int) -> int:
    """How many windows :func:`split_windows` makes for ``n_samples`` (>= 1 for non-empty input)."""
    if n_samples <= 0:
        return 0
    if n_samples <= window_samples:
        return 1
    return 1 + -(-(n_samples - window_samples) // hop_samples)


def split_windows(
    audio: np.ndarray,
    window_samples: int,
    hop_samples: int,
    *,
    pad: Literal["repeat", "zeros"] = PAD_MODE,
) -> Windows:
    """Cut a mono signal into windows of ``window_samples`` every ``hop_samples``.

    The windows cover every sample; only the last may be partial, and it is padded by ``pad``.
    """
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError(f"window ({window_samples}) and hop ({hop_samples}) must be positive")
    if audio.ndim != 1:
        raise ValueError(f"expected mono 1-D audio, got shape {audio.shape}")
    n = window_count(audio.shape[0], window_samples, hop_samples)
    if n == 0:
        raise ValueError("cannot window empty audio")
    starts = np.arange(n, dtype=np.int64) * hop_samples
    valid = np.minimum(window_samples, audio.shape[0] - starts).astype(np.int64)
    out = np.zeros((n, window_samples), dtype=np.float32)
    for i, (start, length) in enumerate(zip(starts, valid, strict=True)):
        out[i, :length] = audio[start : start + length]
        if length < window_samples and pad == "repeat":
            reps = -(-window_samples // length)
            out[i] = np.tile(out[i, :length], reps)[:window_samples]
    return Windows(audio=out, valid=valid, starts=starts)


def aggregate(
    window_probs: np.ndarray,
    method: Literal["mean", "max"] = "mean",
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Window probabilities ``[n, labels]`` -> file probabilities ``[labels]``.

    ``mean`` weighs each window by its valid sample count when ``valid`` is given, so a mostly padded
    tail window counts for what it holds; ``max`` takes the most confident window.
    """
    probs = np.asarray(window_probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"expected [n_windows >= 1, n_labels] probabilities, got shape {probs.shape}")
    if method == "max":
        return probs.max(axis=0)
    if method != "mean":
        raise ValueError(f"unknown aggregation {method!r}; use 'mean' or 'max'")
    if valid is None:
        return probs.mean(axis=0)
    weights = np.asarray(valid, dtype=np.float64)
    return (weights[:, None] * probs).sum(axis=0).astype(np.float32) / np.float32(weights.sum())

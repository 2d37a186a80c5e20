"""Fuzzing the decoder with generated and mutated audio headers (hypothesis).

Every case must end as a correct decode within the limits or a typed :class:`AudioError`: no other
exception escapes, and the numpy memory the decode allocates (tracemalloc sees numpy's buffers)
never passes the byte budget plus one read block.
"""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.audio import BLOCK_FRAMES, MIB, AudioError, DecodeLimits, decode, load_audio, probe

LIMITS = DecodeLimits(
    max_seconds=5.0, max_channels=8, min_sample_rate=1000, max_sample_rate=192_000, max_decoded_bytes=2 * MIB
)
SLACK = BLOCK_FRAMES * LIMITS.max_channels * 4 + MIB  # one read block plus small temporaries

CONTAINERS = [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")]
if "MP3" in sf.available_formats() and "MPEG_LAYER_III" in sf.available_subtypes("MP3"):
    CONTAINERS.append(("MP3", "MPEG_LAYER_III"))
RATES = st.one_of(
    st.sampled_from([1, 7, 999, 1000, 8000, 44_100, 192_000, 192_001, 655_350, 10_000_000]),
    st.integers(1, 10_000_000),
)
MAGIC = [b"RIFF", b"RIFX", b"RF64", b"fLaC", b"OggS", b"ID3\x04", b"\xff\xfb", b"FORM", b""]


def encoded(fmt: str, subtype: str, channels: int, rate: int, frames: int, fill: str) -> bytes | None:
    if fill == "zeros":
        samples = np.zeros((frames, channels), dtype=np.float32)
    else:
        samples = np.random.default_rng(frames).uniform(-1, 1, (frames, channels)).astype(np.float32)
        if fill == "nonfinite" and frames:
            samples[frames // 2, 0] = np.nan
            samples[-1, -1] = np.inf
    buf = io.BytesIO()
    try:
        sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    except Exception:  # the writer refuses this combination (e.g. FLAC > 8 channels): use raw bytes
        return None
    return buf.getvalue()


@st.composite
def blobs(draw: st.DrawFn) -> bytes:
    fmt, subtype = draw(st.sampled_from(CONTAINERS))
    if fmt in ("OGG", "MP3"):
        # libsndfile's Vorbis/MPEG *writers* crash (SIGSEGV) on odd rates and channel counts; the odd
        # headers of these containers come from the byte mutations below instead.
        channels = draw(st.integers(1, 2))
        rate = draw(st.sampled_from([8000, 16_000, 22_050, 44_100, 48_000]))
    else:
        channels = draw(st.integers(1, 255))
        rate = draw(RATES)
    frames = draw(st.sampled_from([0, 1, 2, 17, 512, 4000]))
    # NaN/Inf only where the container stores them (float WAV); LAME aborts on NaN input
    fill = draw(
        st.sampled_from(["zeros", "noise", "nonfinite"] if subtype == "FLOAT" else ["zeros", "noise"])
    )
    blob = encoded(fmt, subtype, channels, rate, frames, fill)
    if blob is None:
        blob = draw(st.sampled_from(MAGIC)) + draw(st.binary(min_size=0, max_size=256))
    data = bytearray(blob)
    mutation = draw(st.sampled_from(["none", "truncate", "flip", "huge-wav-fields", "garbage-tail"]))
    if mutation == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif mutation == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, min(len(data), 96) - 1))
            data[i] = draw(st.integers(0, 255))
    elif mutation == "huge-wav-fields" and data[:4] == b"RIFF" and len(data) >= 44:
        struct.pack_into("<H", data, 22, draw(st.integers(1, 65535)))  # channels
        struct.pack_into("<I", data, 24, draw(st.integers(1, 2**32 - 1)))  # sample rate
        struct.pack_into("<I", data, 40, draw(st.sampled_from([0, 2**31 - 1, 2**32 - 1])))  # data size
    elif mutation == "garbage-tail":
        data += draw(st.binary(min_size=1, max_size=512))
    return bytes(data)


def check(blob: bytes) -> None:
    tracemalloc.start()
    try:
        try:
            data, sr = decode(blob, name="fuzz", limits=LIMITS)
        except AudioError:
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= LIMITS.max_decoded_bytes + SLACK, f"decode held {peak} bytes"
    assert data.dtype == np.float32 and data.ndim == 2 and 1 <= data.shape[1] <= LIMITS.max_channels
    assert data.shape[0] >= 1 and data.nbytes <= LIMITS.max_decoded_bytes
    assert LIMITS.min_sample_rate <= sr <= LIMITS.max_sample_rate
    assert np.isfinite(data).all()
    # the same bytes through the mono path and the header probe agree with the full decode
    info = probe(blob, name="fuzz", limits=LIMITS)
    assert (info.sample_rate, info.channels) == (sr, data.shape[1])
    try:
        mono = load_audio(blob, 8000, name="fuzz", limits=LIMITS)
    except AudioError as exc:  # e.g. one frame at 44.1 kHz is no audio at 8 kHz
        assert "too short" in exc.reason
        return
    assert mono.ndim == 1 and np.isfinite(mono).all()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blobs())
def test_generated_and_mutated_headers_decode_or_fail_typed_within_the_budget(blob: bytes) -> None:
    check(blob)


def test_a_header_claiming_more_than_the_budget_is_refused_before_any_sample() -> None:
    # 8 channels x 192 kHz x 2 s of silence: a few kB as FLAC, 12 MiB as float32
    buf = io.BytesIO()
    sf.write(buf, np.zeros((192_000 * 2, 8), dtype=np.float32), 192_000, format="FLAC")
    assert len(buf.getvalue()) < 100_000
    tracemalloc.start()
    try:
        try:
            decode(buf.getvalue(), name="bomb.flac", limits=LIMITS)
        except AudioError as exc:
            assert exc.kind == "limit" and "the limit is 2.0 MiB" in exc.reason
        else:
            raise AssertionError("the bomb decoded")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MIB  # refused from the header: no sample buffer was allocated

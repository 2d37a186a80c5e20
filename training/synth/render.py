"""FluidSynth rendering of a :class:`~training.synth.compose.Piece`, in-process, to a mono mix.

We drive ``fluidsynth.Synth`` directly instead of ``pretty_midi.PrettyMIDI.fluidsynth``: pretty_midi
loads the soundfont again for every call (25-50 ms, more than rendering a 3 s clip), renders a
second of release tail we would throw away, and reads 16-bit dithered samples; here one synth per
batch keeps its soundfonts loaded and ``fluid_synth_write_float`` gives undithered float output.

Each part is rendered alone and the stems are mixed by RMS, so every labelled instrument sits at a
chosen level relative to the lead whatever the soundfont's preset loudness: a quiet preset never
leaves a labelled instrument inaudible.

Determinism: FluidSynth's reused voices carry a little state (filter history) from one note to a
later one, so a render depends on what the same synth rendered before. Callers therefore render a
fixed, seed-determined batch of tracks per fresh :class:`FluidRenderer`, which makes the output
independent of how batches are spread over worker processes.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType, TracebackType

import numpy as np

from training.synth.compose import Part, Piece
from training.synth.programs import DRUM_BANK, DRUM_CHANNEL

INSTALL_HINT = "sudo apt-get install fluidsynth timgm6mb-soundfont"
SOUNDFONT_ENV = "LUMEN_SOUNDFONT"
# Searched in this order when no --soundfont is given; TimGM6mb first because it is small and fast.
SOUNDFONT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
)
MELODIC_CHANNEL = 0
FLUID_BLOCK = 64  # FluidSynth renders in blocks of 64 frames
BEND_RANGE_CENTS = 200.0  # GM default pitch-wheel sensitivity (system_reset restores it)


class SynthError(RuntimeError):
    """Synthesis cannot run as asked; the message says what to install or change."""


def find_soundfonts(given: Sequence[str | os.PathLike[str]] | None = None) -> tuple[Path, ...]:
    """The soundfonts to use: ``given`` (each must exist), else ``$LUMEN_SOUNDFONT``, else the first
    of :data:`SOUNDFONT_CANDIDATES` found."""
    if given:
        paths = tuple(Path(p).expanduser() for p in given)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SynthError(
                f"soundfont not found: {', '.join(missing)}; pass an existing .sf2 file or install one: "
                f"{INSTALL_HINT}"
            )
        return tuple(dict.fromkeys(paths))  # drop repeats, keep order
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise SynthError(f"${SOUNDFONT_ENV}={env} is not a file; point it at a .sf2 soundfont")
        return (path,)
    for candidate in SOUNDFONT_CANDIDATES:
        if candidate.is_file():
            return (candidate,)
    raise SynthError(
        f"no General-MIDI soundfont found (looked in ${SOUNDFONT_ENV} and "
        f"{', '.join(str(c) for c in SOUNDFONT_CANDIDATES)}); install one: {INSTALL_HINT}"
    )


def import_fluidsynth() -> ModuleType:
    """The ``fluidsynth`` module (pyfluidsynth), or a :class:`SynthError` saying what to install."""
    try:
        import fluidsynth
    except ModuleNotFoundError:
        raise SynthError(
            "pyfluidsynth is not installed; install the synth extra: pip install -e '.[synth]'"
        ) from None
    except ImportError as exc:  # the Python module is there but libfluidsynth is not
        raise SynthError(
            f"the FluidSynth library cannot be loaded ({exc}); install it: {INSTALL_HINT}"
        ) from None
    return fluidsynth


class FluidRenderer:
    """One FluidSynth instance with a set of soundfonts loaded, rendering parts to float arrays."""

    def __init__(self, sample_rate: int, soundfonts: Iterable[Path]) -> None:
        fluidsynth = import_fluidsynth()
        self.sample_rate = sample_rate
        self._synth = fluidsynth.Synth(gain=0.5, samplerate=float(sample_rate), channels=16)
        soundfonts = list(soundfonts)
        if any(path.suffix.lower() == ".sf3" for path in soundfonts):
            # Load sample data only for the presets played: a compressed .sf3 (MuseScore_General) is
            # otherwise decoded whole, ~30 s per load and batch. Not for .sf2: FluidSynth renders a
            # little differently with it, and .sf2 renders stay byte-identical to earlier versions.
            self._synth.setting("synth.dynamic-sample-loading", 1)
        self._write_float = fluidsynth.cfunc(
            "fluid_synth_write_float",
            ctypes.c_int,
            ("synth", ctypes.c_void_p, 1),
            ("len", ctypes.c_int, 1),
            ("lout", ctypes.c_void_p, 1),
            ("loff", ctypes.c_int, 1),
            ("lincr", ctypes.c_int, 1),
            ("rout", ctypes.c_void_p, 1),
            ("roff", ctypes.c_int, 1),
            ("rincr", ctypes.c_int, 1),
        )
        self._sfids: dict[Path, int] = {}
        try:
            if self._write_float is None:
                raise SynthError(f"this libfluidsynth has no fluid_synth_write_float; {INSTALL_HINT}")
            for path in soundfonts:
                sfid = self._synth.sfload(str(path))
                if sfid < 0:
                    raise SynthError(f"{path}: FluidSynth cannot load it; is it a valid .sf2 soundfont?")
                self._sfids[path] = sfid
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> FluidRenderer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._synth is not None:
            self._synth.delete()
            self._synth = None

    def render(self, piece: Piece, soundfont: Path) -> list[np.ndarray]:
        """One mono float32 stem per part, each ``round(piece.seconds * sample_rate)`` frames long."""
        return [self._render_part(part, soundfont, piece) for part in piece.parts]

    def _select(self, part: Part, soundfont: Path) -> int:
        """Program the channel for ``part``; a missing drum kit falls back to the Standard kit."""
        synth, sfid = self._synth, self._sfids[soundfont]
        if part.is_drum:
            kit = part.program if synth.sfpreset_name(sfid, DRUM_BANK, part.program) else 0
            if not synth.sfpreset_name(sfid, DRUM_BANK, kit):
                raise SynthError(f"{soundfont}: no drum kit (bank {DRUM_BANK}); use a General-MIDI soundfont")
            synth.program_select(DRUM_CHANNEL, sfid, DRUM_BANK, kit)
            return DRUM_CHANNEL
        if not synth.sfpreset_name(sfid, 0, part.program):
            raise SynthError(
                f"{soundfont}: no preset for GM program {part.program} ({part.code}); "
                "use a complete General-MIDI soundfont"
            )
        synth.program_select(MELODIC_CHANNEL, sfid, 0, part.program)
        return MELODIC_CHANNEL

    def _render_part(self, part: Part, soundfont: Path, piece: Piece) -> np.ndarray:
        synth, sr = self._synth, self.sample_rate
        synth.system_reset()
        synth.set_reverb(*piece.reverb[:2], 0.5, piece.reverb[2])
        channel = self._select(part, soundfont)
        n_frames = round(piece.seconds * sr)
        # Render whole blocks so every render starts at the same block phase.
        padded = -(-n_frames // FLUID_BLOCK) * FLUID_BLOCK
        # (frame, order, kind, a, b): controllers first, then note-offs before note-ons at one frame.
        events: list[tuple[int, int, str, int, int]] = [
            (min(round(c.time * sr), padded), 0, "cc", c.number, c.value) for c in part.controls
        ]
        events += [(min(round(b.time * sr), padded), 0, "bend", bend_value(b.cents), 0) for b in part.bends]
        for note in part.notes:
            events.append((min(round(note.end * sr), padded), 1, "off", note.pitch, 0))
            events.append((min(round(note.start * sr), padded), 2, "on", note.pitch, note.velocity))
        events.sort()
        out = np.zeros(2 * padded, dtype=np.float32)
        ptr = out.ctypes.data
        pos = 0
        for frame, _, kind, a, b in events:
            if frame > pos:
                self._write(ptr, pos, frame - pos)
                pos = frame
            if kind == "cc":
                synth.cc(channel, a, b)
            elif kind == "bend":
                synth.pitch_bend(channel, a)
            elif kind == "off":
                synth.noteoff(channel, a)
            else:
                synth.noteon(channel, a, b)
        if padded > pos:
            self._write(ptr, pos, padded - pos)
        synth.all_sounds_off(channel)
        return ((out[0 : 2 * n_frames : 2] + out[1 : 2 * n_frames : 2]) * 0.5).astype(np.float32, copy=False)

    def _write(self, ptr: int, start: int, frames: int) -> None:
        """Render ``frames`` stereo frames into the interleaved buffer at frame ``start``."""
        self._write_float(self._synth.synth, frames, ptr, 2 * start, 2, ptr, 2 * start + 1, 2)


def bend_value(cents: float) -> int:
    """Pitch-wheel value (-8192..8191, centre 0) for ``cents`` at GM's default range of +-2 semitones."""
    return int(np.clip(round(cents / BEND_RANGE_CENTS * 8192), -8192, 8191))


def mix(stems: Sequence[np.ndarray], levels_db: Sequence[float]) -> np.ndarray:
    """Sum stems after scaling each to ``levels_db`` relative to the first stem's RMS."""
    rms = [float(np.sqrt(np.mean(np.square(s, dtype=np.float64)))) for s in stems]
    if rms[0] <= 1e-9:
        return np.zeros_like(stems[0])
    out = np.zeros_like(stems[0], dtype=np.float64)
    for stem, level, r in zip(stems, levels_db, rms, strict=True):
        if r > 1e-9:
            out += stem * (rms[0] / r * 10 ** (level / 20))
    return out.astype(np.float32)

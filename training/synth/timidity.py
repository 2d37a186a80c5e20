"""TiMidity++ rendering from a GUS patch set (Debian ``freepats``): a sample source FluidSynth cannot read.

A TiMidity configuration file (``.cfg``) passed as ``--soundfont`` renders with this module instead of
FluidSynth. The reason is a fourth, independent sample source: FreePats is recorded instruments in
Gravis UltraSound patches, not one of the three GM soundfonts the demo model trains on, so a
validation split rendered with it shows how a model does on sounds it has never heard (see
``models/demo/MODEL_CARD.md``).

Isolation: ``timidity`` always reads the system configuration (``/etc/timidity/timidity.cfg``; on
Debian it maps every program to FluidR3_GM, a training soundfont) before the ``-c`` file. Each
render therefore goes through a wrapper configuration that first ``undef``s every program of
bank 0 and every drum set, then sources the given file, and any render that still loads a
SoundFont instrument is refused. Programs the patch set lacks are replaced by another GM program of
the same instrument (:data:`~training.synth.programs.VOICES`), drum kits it lacks by kit 0; an
instrument with no program in the set is a :class:`SynthError`.

Effects: TiMidity's own reverb and chorus are off; rooms, microphones and noise come from the
variation stage (:mod:`training.synth.acoustics`), the same for every sample source.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf

from training.synth.compose import Part, Piece
from training.synth.programs import VOICES
from training.synth.render import SynthError, bend_value

TIMIDITY_SUFFIX = ".cfg"
INSTALL_HINT = "sudo apt-get install timidity freepats"
MIDI_RESOLUTION = 960  # ticks per beat at 120 bpm: 0.52 ms per tick
TIMEOUT_SECONDS = 60.0
# Lines of timidity's verbose log that mean a SoundFont instrument was loaded.
SOUNDFONT_MARKERS = ("Loading SF", "Init soundfonts")


def is_timidity_config(path: Path) -> bool:
    return path.suffix.lower() == TIMIDITY_SUFFIX


def find_timidity() -> str:
    """The ``timidity`` executable, or a :class:`SynthError` saying what to install."""
    exe = shutil.which("timidity")
    if exe is None:
        raise SynthError(f"a TiMidity++ configuration needs the timidity program; install it: {INSTALL_HINT}")
    return exe


def parse_config(path: Path) -> tuple[frozenset[int], frozenset[int]]:
    """The bank-0 programs and the drum sets that ``path`` (and the files it ``source``s) define."""
    programs: set[int] = set()
    drumsets: set[int] = set()
    _parse(path, programs, drumsets, seen=set())
    return frozenset(programs), frozenset(drumsets)


def _parse(path: Path, programs: set[int], drumsets: set[int], seen: set[Path]) -> None:
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SynthError(f"{path}: cannot read the TiMidity configuration ({exc.strerror})") from None
    section: tuple[str, int] | None = None
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        head = words[0]
        if head == "source" and len(words) > 1:
            child = Path(words[1])
            _parse(child if child.is_absolute() else path.parent / child, programs, drumsets, seen)
        elif head in ("bank", "drumset") and len(words) > 1 and words[1].isdigit():
            section = (head, int(words[1]))
        elif head.isdigit() and len(words) > 1 and section is not None:
            kind, number = section
            if kind == "bank" and number == 0:
                programs.add(int(head))
            elif kind == "drumset":
                drumsets.add(number)


def program_for(part: Part, programs: frozenset[int]) -> int:
    """``part``'s GM program if the patch set has it, else the most common same-instrument one it has."""
    if part.program in programs:
        return part.program
    if part.code is not None:
        for voice in sorted(VOICES[part.code], key=lambda v: -v.weight):
            if voice.program in programs:
                return voice.program
    raise SynthError(
        f"the TiMidity patch set has no GM program for {part.code} "
        f"(needs one of {sorted(v.program for v in VOICES[part.code]) if part.code else [part.program]})"
    )


def wrapper_config(config: Path) -> str:
    """A configuration that forgets the system's mappings, then reads ``config``."""
    lines = ["bank 0", *(f"#extension undef {p}" for p in range(128))]
    for kit in range(128):
        lines += [f"drumset {kit}", *(f"#extension undef {p}" for p in range(128))]
    lines.append(f"source {config.resolve()}")
    return "\n".join(lines) + "\n"


class TimidityRenderer:
    """Renders parts with ``timidity`` from TiMidity++ configurations, one process per part."""

    def __init__(self, sample_rate: int, configs: Iterable[Path]) -> None:
        self.sample_rate = sample_rate
        self._exe = find_timidity()
        self._tmp = tempfile.TemporaryDirectory(prefix="lumen-timidity-")
        self._configs: dict[Path, tuple[Path, frozenset[int], frozenset[int]]] = {}
        try:
            for index, config in enumerate(configs):
                programs, drumsets = parse_config(config)
                if not programs:
                    raise SynthError(
                        f"{config}: defines no bank-0 program; is it a TiMidity++ patch configuration?"
                    )
                wrapper = Path(self._tmp.name) / f"source{index}.cfg"
                wrapper.write_text(wrapper_config(config), encoding="utf-8")
                self._configs[config] = (wrapper, programs, drumsets)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TimidityRenderer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def render(self, piece: Piece, config: Path) -> list[np.ndarray]:
        """One mono float32 stem per part, each ``round(piece.seconds * sample_rate)`` frames long."""
        return [self._render_part(part, config, piece) for part in piece.parts]

    def _render_part(self, part: Part, config: Path, piece: Piece) -> np.ndarray:
        import pretty_midi  # the synth extra; imported here so that parsing needs no MIDI library

        wrapper, programs, drumsets = self._configs[config]
        if part.is_drum:
            program = part.program if part.program in drumsets else 0
        else:
            program = program_for(part, programs)
        midi = pretty_midi.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=120.0)
        inst = pretty_midi.Instrument(program=program, is_drum=part.is_drum)
        inst.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in part.notes]
        inst.control_changes = [pretty_midi.ControlChange(c.number, c.value, c.time) for c in part.controls]
        inst.pitch_bends = [pretty_midi.PitchBend(bend_value(b.cents), b.time) for b in part.bends]
        midi.instruments.append(inst)
        mid, wav = Path(self._tmp.name) / "part.mid", Path(self._tmp.name) / "part.wav"
        midi.write(str(mid))
        command = [
            self._exe, "-c", str(wrapper), "-idvv", "-Ow", "--output-mono", "--output-24bit",
            "-s", str(self.sample_rate), "-EFreverb=0", "-EFchorus=0", "--preserve-silence",
            "-o", str(wav), str(mid),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise SynthError(
                f"timidity took over {TIMEOUT_SECONDS:.0f} s on one part with {config}"
            ) from None
        log = done.stdout + done.stderr
        if done.returncode != 0 or not wav.is_file():
            raise SynthError(f"timidity failed with {config} (exit {done.returncode}): {log.strip()[-300:]}")
        loaded = [line.strip() for line in log.splitlines() if line.strip().startswith(SOUNDFONT_MARKERS)]
        if loaded:
            raise SynthError(
                f"{config}: timidity loaded a SoundFont ({loaded[0]}); the TiMidity backend renders GUS "
                "patch sets only, pass .sf2/.sf3 files directly to use FluidSynth"
            )
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        if rate != self.sample_rate:
            raise SynthError(f"timidity wrote {rate} Hz, asked for {self.sample_rate} Hz")
        n_frames = round(piece.seconds * self.sample_rate)
        out = np.zeros(n_frames, dtype=np.float32)
        mono = audio.mean(axis=1)[:n_frames]
        out[: mono.size] = mono
        return out

"""Copy ``count`` recorded notes of one instrument, evenly spaced by pitch, into an irmastest folder.

    python benchmarks/pick_notes.py SRC OUT CODE PREFIX COUNT [GLOB]

SRC holds one file per note named by its pitch (``A2.mp3``, ``As2.mp3``, ``D#1v8.mp3``); files whose
name is not a pitch (recorded variants such as ``F2 v2.mp3``) are left out. The lowest and highest
notes are always picked. Each copy gets a ``.txt`` beside it holding CODE (irmastest labels).
Used by ``benchmarks/recorded_notes.sh``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_NOTE = re.compile(r"^([A-G])(s|#|b)?(-?\d)(?:v\d+)?$")


def midi_pitch(stem: str) -> int | None:
    """MIDI number of a note name (``C4`` = 60; ``s``/``#`` sharp, ``b`` flat), None if not a note."""
    match = _NOTE.match(stem)
    if match is None:
        return None
    letter, accidental, octave = match.groups()
    shift = {None: 0, "s": 1, "#": 1, "b": -1}[accidental]
    return 12 * (int(octave) + 1) + _SEMITONE[letter] + shift


def evenly_spaced(items: list, count: int) -> list:
    """``count`` items at evenly spaced positions, first and last included (all if fewer)."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[len(items) // 2]]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, out, code, prefix = Path(argv[0]), Path(argv[1]), argv[2], argv[3]
    count = int(argv[4]) if argv[4].isdigit() else 0
    if count < 1:
        print(f"COUNT {argv[4]!r}: expected a whole number >= 1", file=sys.stderr)
        return 2
    pattern = argv[5] if len(argv) == 6 else "*.mp3"
    notes = sorted(
        (pitch, path) for path in src.glob(pattern) if (pitch := midi_pitch(path.stem)) is not None
    )
    if not notes:
        print(f"{src}: no notes named by pitch ({pattern})", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for _, path in evenly_spaced(notes, count):
        name = f"{prefix}_{path.stem.replace('#', 's')}"
        shutil.copyfile(path, out / f"{name}{path.suffix}")
        (out / f"{name}.txt").write_text(code + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

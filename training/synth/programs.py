"""Which General-MIDI sounds stand for each IRMAS instrument, and where each can really play.

Only programs that a listener would accept as the IRMAS instrument are used: Contrabass is not a
cello and Pan Flute is not a concert flute, so labelling them as such would teach the model a wrong
boundary. Ranges are the instrument's practical range (not GM's full keyboard), so a rendered
cello never sounds in the violin register and vice versa; a model then has to learn timbre, not
"high notes mean violin" from impossible pitches alone. Weights say how often each variant is
drawn, the common sound being the most frequent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.labels import GENRES, LABELS

Texture = Literal["melodic", "keys", "guitar", "power"]


@dataclass(frozen=True)
class Voice:
    """One GM program standing for an IRMAS instrument.

    ``low``/``high``: MIDI pitch range; ``texture`` picks the note generator (``melodic`` =
    monophonic lines; ``keys`` = chords, bass and melody; ``guitar`` = strums and picking;
    ``power`` = distorted power chords and riffs); ``sustained`` instruments get vibrato and
    expression swells (bowed, blown, sung, organ) while struck/plucked ones decay by themselves.
    """

    code: str
    program: int
    name: str
    low: int
    high: int
    texture: Texture
    sustained: bool
    weight: float


VOICES: dict[str, tuple[Voice, ...]] = {
    "cel": (
        Voice("cel", 42, "cello", 36, 76, "melodic", True, 0.9),
        Voice("cel", 45, "pizzicato strings (cello register)", 36, 69, "melodic", False, 0.1),
    ),
    "cla": (Voice("cla", 71, "clarinet", 50, 89, "melodic", True, 1.0),),
    "flu": (
        Voice("flu", 73, "flute", 60, 93, "melodic", True, 0.9),
        Voice("flu", 72, "piccolo", 74, 100, "melodic", True, 0.1),
    ),
    "gac": (
        Voice("gac", 24, "nylon-string guitar", 40, 83, "guitar", False, 0.5),
        Voice("gac", 25, "steel-string guitar", 40, 83, "guitar", False, 0.5),
    ),
    "gel": (
        Voice("gel", 27, "clean electric guitar", 40, 86, "guitar", False, 0.35),
        Voice("gel", 26, "jazz guitar", 40, 84, "guitar", False, 0.25),
        Voice("gel", 29, "overdriven guitar", 40, 86, "power", False, 0.2),
        Voice("gel", 30, "distortion guitar", 40, 86, "power", False, 0.2),
    ),
    "org": (
        Voice("org", 16, "drawbar organ", 36, 96, "keys", True, 0.35),
        Voice("org", 17, "percussive organ", 36, 96, "keys", True, 0.2),
        Voice("org", 18, "rock organ", 36, 96, "keys", True, 0.25),
        Voice("org", 19, "church organ", 36, 96, "keys", True, 0.2),
    ),
    "pia": (
        Voice("pia", 0, "acoustic grand piano", 28, 100, "keys", False, 0.6),
        Voice("pia", 1, "bright acoustic piano", 28, 100, "keys", False, 0.25),
        Voice("pia", 2, "electric grand piano", 28, 96, "keys", False, 0.15),
    ),
    "sax": (
        Voice("sax", 64, "soprano sax", 56, 87, "melodic", True, 0.15),
        Voice("sax", 65, "alto sax", 49, 80, "melodic", True, 0.35),
        Voice("sax", 66, "tenor sax", 44, 75, "melodic", True, 0.35),
        Voice("sax", 67, "baritone sax", 37, 68, "melodic", True, 0.15),
    ),
    "tru": (
        Voice("tru", 56, "trumpet", 54, 84, "melodic", True, 0.8),
        Voice("tru", 59, "muted trumpet", 54, 82, "melodic", True, 0.2),
    ),
    "vio": (
        Voice("vio", 40, "violin", 55, 96, "melodic", True, 0.85),
        Voice("vio", 110, "fiddle", 55, 91, "melodic", True, 0.15),
    ),
    "voi": (
        Voice("voi", 52, "choir aahs", 48, 79, "melodic", True, 0.45),
        Voice("voi", 53, "voice oohs", 48, 79, "melodic", True, 0.45),
        Voice("voi", 54, "synth voice", 48, 79, "melodic", True, 0.1),
    ),
}

# How likely each genre tag is for a file led by each instrument, roughly as in IRMAS (strings and
# woodwinds mostly classical, electric guitar mostly pop-rock, sax mostly jazz).
GENRE_WEIGHTS: dict[str, dict[str, float]] = {
    "cel": {"cla": 0.7, "pop_roc": 0.1, "jaz_blu": 0.05, "lat_sou": 0.05, "cou_fol": 0.1},
    "cla": {"cla": 0.6, "jaz_blu": 0.25, "pop_roc": 0.05, "lat_sou": 0.05, "cou_fol": 0.05},
    "flu": {"cla": 0.5, "jaz_blu": 0.15, "lat_sou": 0.15, "pop_roc": 0.1, "cou_fol": 0.1},
    "gac": {"cou_fol": 0.4, "pop_roc": 0.3, "lat_sou": 0.15, "cla": 0.1, "jaz_blu": 0.05},
    "gel": {"pop_roc": 0.6, "jaz_blu": 0.2, "cou_fol": 0.1, "lat_sou": 0.1},
    "org": {"pop_roc": 0.35, "jaz_blu": 0.25, "cla": 0.2, "lat_sou": 0.2},
    "pia": {"cla": 0.3, "jaz_blu": 0.25, "pop_roc": 0.25, "lat_sou": 0.1, "cou_fol": 0.1},
    "sax": {"jaz_blu": 0.6, "pop_roc": 0.15, "lat_sou": 0.2, "cla": 0.05},
    "tru": {"jaz_blu": 0.45, "lat_sou": 0.25, "pop_roc": 0.15, "cla": 0.15},
    "vio": {"cla": 0.6, "cou_fol": 0.2, "pop_roc": 0.1, "lat_sou": 0.05, "jaz_blu": 0.05},
    "voi": {"pop_roc": 0.35, "jaz_blu": 0.2, "lat_sou": 0.15, "cou_fol": 0.15, "cla": 0.15},
}

# GM percussion kits (bank 128) per genre; a soundfont lacking one falls back to kit 0 (Standard).
DRUM_KITS: dict[str, tuple[int, ...]] = {
    "pop_roc": (0, 8, 16),
    "jaz_blu": (32, 40),
    "lat_sou": (0, 8),
    "cou_fol": (0, 8, 40),
}
# Classical pieces never get a drum track (IRMAS's [cla] genre files are almost all [nod]).
DRUMLESS_GENRES: frozenset[str] = frozenset({"cla"})
DRUM_BANK = 128
DRUM_CHANNEL = 9  # MIDI channel 10


def _check_tables() -> None:
    """Fail at import, not mid-render, if a table misses an instrument or genre."""
    problems: list[str] = []
    if tuple(VOICES) != LABELS or tuple(GENRE_WEIGHTS) != LABELS:
        problems.append("VOICES and GENRE_WEIGHTS must list every label in canonical order")
    for code, voices in VOICES.items():
        problems += [
            f"{code}: bad voice {v.name!r}"
            for v in voices
            if v.code != code or not 0 <= v.program < 128 or v.low + 12 > v.high
        ]
    problems += [f"{code}: unknown genre" for code, w in GENRE_WEIGHTS.items() if not set(w) <= set(GENRES)]
    if set(DRUM_KITS) | DRUMLESS_GENRES != set(GENRES):
        problems.append("every genre needs drum kits or must be drumless")
    if problems:
        raise RuntimeError("inconsistent synth tables: " + "; ".join(problems))


_check_tables()

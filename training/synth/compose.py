"""Note generation: a short piece of music for given instruments, genre and length, as plain data.

Everything here is a pure function of a numpy ``Generator``, so a track seed fixes every note. The
aim is not good music but *plausible* music: parts share one tempo, key and chord progression;
each instrument stays in its real range and plays what it physically can (wind and bowed
instruments one note at a time, keyboards and guitars chords); dynamics, articulation and timing
vary, so a model cannot tell instruments apart by a fixed velocity or a quantised grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.synth.programs import DRUM_KITS, VOICES, Voice

BEATS_PER_BAR = 4

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}


@dataclass(frozen=True)
class Style:
    """What a genre means for the generator: tempo range, modes, progressions, swing, drum groove."""

    tempo: tuple[float, float]
    modes: tuple[str, ...]
    progressions: tuple[tuple[int, ...], ...]  # chord roots as scale degrees (0 = tonic), one per bar
    sevenths: float  # probability of four-note chords
    swing: float  # delay of off-beat eighths in beats (0 = straight)


STYLES: dict[str, Style] = {
    "cla": Style((60, 132), ("major", "minor"), ((0, 3, 4, 0), (0, 5, 1, 4), (0, 4, 5, 2)), 0.1, 0.0),
    "pop_roc": Style(
        (80, 150), ("major", "minor", "mixolydian"), ((0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 4, 3)), 0.15, 0.0
    ),
    "jaz_blu": Style((70, 180), ("dorian", "mixolydian", "major"), ((1, 4, 0, 0), (0, 5, 1, 4)), 0.9, 0.17),
    "lat_sou": Style((85, 130), ("minor", "dorian", "major"), ((0, 3, 4, 0), (1, 4, 0, 5)), 0.5, 0.0),
    "cou_fol": Style((80, 140), ("major", "mixolydian"), ((0, 3, 0, 4), (0, 4, 3, 0)), 0.05, 0.0),
}


@dataclass(frozen=True)
class Note:
    start: float  # seconds
    end: float
    pitch: int
    velocity: int


@dataclass(frozen=True)
class Control:
    """A MIDI control change at ``time`` seconds."""

    time: float
    number: int
    value: int


@dataclass(frozen=True)
class Bend:
    """The channel's pitch-wheel position from ``time`` seconds on, in cents (GM range: +-200)."""

    time: float
    cents: float


@dataclass
class Part:
    """One instrument's line. ``code`` is ``None`` for the (unlabelled) drum track."""

    code: str | None
    program: int
    notes: list[Note]
    controls: list[Control] = field(default_factory=list)
    is_drum: bool = False
    level_db: float = 0.0  # loudness relative to the lead part when mixed
    bends: list[Bend] = field(default_factory=list)  # pitch-wheel curve (see training.synth.expression)


@dataclass
class Piece:
    seconds: float
    genre: str
    tempo: float
    parts: list[Part]
    reverb: tuple[float, float, float]  # room size, damping, level (FluidSynth's 0..1 scales)


@dataclass(frozen=True)
class Harmony:
    """Key, scale and the chord under every moment of the piece."""

    tonic: int  # pitch class
    scale: tuple[int, ...]
    beat: float  # seconds per beat
    swing: float  # beats
    chords: tuple[tuple[int, ...], ...]  # pitch classes per bar, root first

    def chord_at(self, t: float) -> tuple[int, ...]:
        bar = int(t / (self.beat * BEATS_PER_BAR))
        return self.chords[min(bar, len(self.chords) - 1)]

    def time_of(self, beats: float) -> float:
        """Seconds at ``beats``, delaying off-beat eighths by the swing amount."""
        frac = beats % 1.0
        swung = beats + (self.swing if abs(frac - 0.5) < 1e-6 else 0.0)
        return swung * self.beat

    def scale_pitches(self, low: int, high: int) -> list[int]:
        return [p for p in range(low, high + 1) if (p - self.tonic) % 12 in self.scale]


def choose_voice(rng: np.random.Generator, code: str) -> Voice:
    """One of the GM programs of ``code``, drawn by weight."""
    voices = VOICES[code]
    weights = np.array([v.weight for v in voices])
    return voices[int(rng.choice(len(voices), p=weights / weights.sum()))]


def make_harmony(rng: np.random.Generator, genre: str, seconds: float) -> tuple[Harmony, float]:
    """Random key, mode and tempo for ``genre`` and a chord per bar covering ``seconds``."""
    style = STYLES[genre]
    tempo = float(rng.uniform(*style.tempo))
    beat = 60.0 / tempo
    scale = SCALES[style.modes[int(rng.integers(len(style.modes)))]]
    tonic = int(rng.integers(12))
    progression = style.progressions[int(rng.integers(len(style.progressions)))]
    sevenths = rng.random() < style.sevenths
    n_bars = int(np.ceil(seconds / (beat * BEATS_PER_BAR))) + 1
    chords = []
    for bar in range(n_bars):
        degree = progression[bar % len(progression)]
        steps = (0, 2, 4, 6) if sevenths else (0, 2, 4)
        chords.append(tuple((tonic + scale[(degree + s) % 7]) % 12 for s in steps))
    return Harmony(tonic, scale, beat, style.swing, tuple(chords)), tempo


def _humanize(rng: np.random.Generator, t: float, spread: float = 0.008) -> float:
    return max(0.0, t + float(rng.normal(0.0, spread)))


def _velocity(rng: np.random.Generator, base: float, accent: bool) -> int:
    return int(np.clip(base + (10 if accent else 0) + rng.normal(0, 6), 15, 127))


def _tessitura(rng: np.random.Generator, low: int, high: int, width: int = 19) -> tuple[int, int]:
    """A window of ``width`` semitones inside the range: real lines stay in one register a while."""
    if high - low <= width:
        return low, high
    start = int(rng.integers(low, high - width + 1))
    return start, start + width


def melody(
    rng: np.random.Generator, h: Harmony, low: int, high: int, seconds: float, base_velocity: float
) -> list[Note]:
    """A monophonic line: stepwise random walk on the scale, chord tones on strong beats, phrases
    of 2-8 beats separated by short breaths, articulation (legato..staccato) chosen per phrase."""
    lo, hi = _tessitura(rng, low, high)
    pitches = h.scale_pitches(lo, hi)
    palette = [(0.25, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0, 1.5), (1.0, 1.0, 2.0, 1.5, 0.5)][
        int(rng.choice(3, p=[0.25, 0.5, 0.25]))
    ]
    idx = len(pitches) // 2 + int(rng.integers(-2, 3))
    notes: list[Note] = []
    beat_pos = -float(rng.choice([0.0, 0.5, 1.0]))  # start mid-phrase sometimes
    phrase_left = 0.0
    ratio = 0.9
    total_beats = seconds / h.beat
    while beat_pos < total_beats:
        if phrase_left <= 0:
            phrase_left = float(rng.integers(2, 9))
            ratio = float(rng.choice([0.98, 0.9, 0.75, 0.45], p=[0.35, 0.35, 0.2, 0.1]))
            if notes and rng.random() < 0.6:
                beat_pos += float(rng.choice([0.5, 1.0]))  # breath
                continue
        length = float(palette[int(rng.integers(len(palette)))])
        step = int(
            rng.choice([-3, -2, -1, 0, 1, 2, 3, 4], p=[0.05, 0.15, 0.27, 0.06, 0.27, 0.13, 0.05, 0.02])
        )
        idx = idx + step
        if idx < 0 or idx >= len(pitches):  # reflect off the range edge
            idx = int(np.clip(-idx if idx < 0 else 2 * (len(pitches) - 1) - idx, 0, len(pitches) - 1))
        start = h.time_of(beat_pos)
        strong = abs(beat_pos - round(beat_pos)) < 1e-6
        if strong:
            chord = h.chord_at(max(start, 0.0))
            tones = [i for i, p in enumerate(pitches) if p % 12 in chord]
            if tones:
                idx = min(tones, key=lambda i: (abs(i - idx), i))
        end = h.time_of(beat_pos + length * ratio) if ratio < 0.95 else h.time_of(beat_pos + length) + 0.02
        if end > 0:
            accent = strong and round(beat_pos) % BEATS_PER_BAR == 0
            notes.append(
                Note(
                    _humanize(rng, max(start, 0.0)), end, pitches[idx], _velocity(rng, base_velocity, accent)
                )
            )
        beat_pos += length
        phrase_left -= length
    return notes


def _voicing(chord: tuple[int, ...], low: int, high: int, center: int, size: int) -> list[int]:
    """``size`` chord tones closest to ``center`` inside [low, high] (close position)."""
    candidates = [p for p in range(low, high + 1) if p % 12 in chord]
    return sorted(sorted(candidates, key=lambda p: (abs(p - center), p))[:size])


def _bass_note(chord: tuple[int, ...], low: int, high: int) -> int:
    return next(p for p in range(low, high + 1) if p % 12 == chord[0])


def keys(
    rng: np.random.Generator, h: Harmony, voice: Voice, seconds: float, base_velocity: float, lead: bool
) -> list[Note]:
    """Piano/organ: left-hand bass + right-hand chords, arpeggios, or a melody over held chords."""
    n_beats = int(np.ceil(seconds / h.beat))
    bass_low, bass_high = max(voice.low, 31), max(voice.low, 31) + 18
    center = int(rng.integers(55, 72))
    pattern = rng.choice(["block", "arpeggio", "melody"], p=[0.35, 0.3, 0.35] if lead else [0.6, 0.4, 0.0])
    hold = 1.0 if voice.sustained else 0.9
    step = float(rng.choice([1.0, 2.0, 4.0])) if pattern != "arpeggio" else float(rng.choice([0.5, 0.25]))
    notes: list[Note] = []
    for bar_beat in range(0, n_beats, BEATS_PER_BAR):
        start = h.time_of(bar_beat)
        chord = h.chord_at(start)
        bass = _bass_note(chord, bass_low, bass_high)
        bar_end = h.time_of(bar_beat + BEATS_PER_BAR)
        bass_end = start + (bar_end - start) * hold
        notes.append(Note(_humanize(rng, start), bass_end, bass, _velocity(rng, base_velocity - 5, True)))
        chord_notes = _voicing(chord, voice.low, voice.high, center, int(rng.integers(3, 5)))
        if pattern == "arpeggio":
            order = chord_notes + chord_notes[-2:0:-1]
            for i, b in enumerate(np.arange(bar_beat, bar_beat + BEATS_PER_BAR, step)):
                t = h.time_of(float(b))
                notes.append(
                    Note(
                        _humanize(rng, t),
                        t + step * h.beat * 2.5,
                        order[i % len(order)],
                        _velocity(rng, base_velocity - 8, i == 0),
                    )
                )
            continue
        chord_step = 4.0 if pattern == "melody" else step
        for b in np.arange(bar_beat, bar_beat + BEATS_PER_BAR, chord_step):
            t = h.time_of(float(b))
            end = t + chord_step * h.beat * hold
            vel = base_velocity - (15 if pattern == "melody" else 5)
            notes += [
                Note(_humanize(rng, t, 0.004), end, p, _velocity(rng, vel, b == bar_beat))
                for p in chord_notes
            ]
    if pattern == "melody":
        notes += melody(rng, h, max(center + 5, voice.low), voice.high, seconds, base_velocity + 8)
    return notes


STRUM_PATTERNS: tuple[str, ...] = ("D.D.D.D.", "D.DU.UDU", "D..UD.DU", "D.DUDUDU", "D...D...")


def guitar(
    rng: np.random.Generator, h: Harmony, voice: Voice, seconds: float, base_velocity: float, lead: bool
) -> list[Note]:
    """Guitar: strummed chords (strings hit 8-25 ms apart), fingerpicking, or a single-note line."""
    style = rng.choice(["strum", "pick", "line"], p=[0.45, 0.3, 0.25] if lead else [0.6, 0.4, 0.0])
    if style == "line":
        return melody(rng, h, voice.low + 12, voice.high, seconds, base_velocity)
    n_beats = int(np.ceil(seconds / h.beat))
    pattern = STRUM_PATTERNS[int(rng.integers(len(STRUM_PATTERNS)))]
    spread = float(rng.uniform(0.008, 0.025))
    notes: list[Note] = []
    for bar_beat in range(0, n_beats, BEATS_PER_BAR):
        chord = h.chord_at(h.time_of(bar_beat))
        root = _bass_note(chord, voice.low, voice.low + 11)
        shape = _voicing(chord, root, root + 24, root + 10, int(rng.integers(4, 7)))
        bar_end = h.time_of(bar_beat + BEATS_PER_BAR)
        if style == "strum":
            for i, stroke in enumerate(pattern):
                if stroke == ".":
                    continue
                t = h.time_of(bar_beat + i * 0.5)
                strings = shape if stroke == "D" else shape[::-1][:4]
                vel = base_velocity + (6 if stroke == "D" else -8)
                for k, p in enumerate(strings):
                    notes.append(
                        Note(
                            _humanize(rng, t + k * spread, 0.004),
                            min(t + 1.2 * h.beat, bar_end),
                            p,
                            _velocity(rng, vel, i == 0),
                        )
                    )
        else:  # Travis-style: alternating bass on beats, chord tones on the off-beats
            upper = shape[1:] or shape
            for i in range(2 * BEATS_PER_BAR):
                t = h.time_of(bar_beat + i * 0.5)
                pitch = (
                    (root if i % 4 == 0 else shape[0]) if i % 2 == 0 else upper[int(rng.integers(len(upper)))]
                )
                notes.append(
                    Note(_humanize(rng, t), t + h.beat * 1.5, pitch, _velocity(rng, base_velocity, i == 0))
                )
    return notes


def power(
    rng: np.random.Generator, h: Harmony, voice: Voice, seconds: float, base_velocity: float, lead: bool
) -> list[Note]:
    """Distorted guitar: root-fifth-octave power chords (chugged or held), or a riff/solo line."""
    if lead and rng.random() < 0.35:
        return melody(rng, h, voice.low + 12, voice.high, seconds, base_velocity)
    n_beats = int(np.ceil(seconds / h.beat))
    step = float(rng.choice([0.5, 1.0, 2.0, 4.0], p=[0.4, 0.2, 0.2, 0.2]))
    notes: list[Note] = []
    for b in np.arange(0, n_beats, step):
        t = h.time_of(float(b))
        root = _bass_note(h.chord_at(t), voice.low, voice.low + 11)
        end = t + step * h.beat * (0.6 if step == 0.5 else 0.95)
        accent = float(b) % BEATS_PER_BAR == 0
        notes += [
            Note(_humanize(rng, t, 0.004), end, p, _velocity(rng, base_velocity, accent))
            for p in (root, root + 7, root + 12)
        ]
    return notes


LEGATO_OVERLAP = 0.02  # seconds a monophonic note may ring into the next one (legato)


def tidy(notes: list[Note], seconds: float, monophonic: bool = False, min_length: float = 0.03) -> list[Note]:
    """Sorted notes inside the piece, each cut where the same pitch is struck again.

    MIDI has one note-off per pitch and channel: an overlapping repeat would be silenced by the
    earlier note's note-off, so the earlier note is shortened instead. ``monophonic`` parts (winds,
    bowed strings, voice) also stop each note at most :data:`LEGATO_OVERLAP` after the next starts.
    """
    ordered = sorted((n for n in notes if n.start < seconds), key=lambda n: (n.start, n.pitch))
    next_start: dict[int, float] = {}
    following = float("inf")
    kept: list[Note] = []
    for note in reversed(ordered):
        end = min(note.end, next_start.get(note.pitch, note.end))
        if monophonic:
            end = min(end, following + LEGATO_OVERLAP)
            following = note.start
        next_start[note.pitch] = note.start
        if end - note.start >= min_length:
            kept.append(Note(note.start, end, note.pitch, note.velocity))
    return kept[::-1]


def instrument_part(
    rng: np.random.Generator, h: Harmony, code: str, seconds: float, lead: bool, level_db: float = 0.0
) -> Part:
    """The notes and controllers of one labelled instrument."""
    voice = choose_voice(rng, code)
    base_velocity = float(rng.uniform(55, 105))
    generators = {"keys": keys, "guitar": guitar, "power": power}
    if voice.texture == "melodic":
        low, high = voice.low, voice.high if lead else (voice.low + voice.high) // 2 + 6
        notes = melody(rng, h, low, high, seconds, base_velocity)
    else:
        notes = generators[voice.texture](rng, h, voice, seconds, base_velocity, lead)
    notes = tidy(notes, seconds, monophonic=voice.texture == "melodic")
    controls = [
        Control(0.0, 91, int(rng.integers(20, 90))),  # reverb send
        Control(0.0, 93, int(rng.integers(0, 40))),  # chorus send
    ]
    if voice.sustained:
        if voice.code != "org":
            controls.append(Control(0.0, 1, int(rng.integers(0, 60))))  # vibrato depth (mod wheel)
        # Expression swells: a smooth random curve, one point per beat.
        levels = np.clip(100 + np.cumsum(rng.normal(0, 6, int(seconds / h.beat) + 2)), 60, 127)
        controls += [Control(i * h.beat, 11, int(v)) for i, v in enumerate(levels)]
    return Part(code, voice.program, notes, controls, level_db=level_db)


DRUM_GROOVES: dict[str, dict[int, tuple[int, ...]]] = {
    # GM drum note -> 16th-note steps of one bar
    "pop_roc": {36: (0, 8, 10), 38: (4, 12), 42: (0, 2, 4, 6, 8, 10, 12, 14)},
    "jaz_blu": {51: (0, 4, 6, 8, 12, 14), 44: (4, 12), 36: (0,)},
    "lat_sou": {36: (0, 6, 8, 14), 37: (0, 6, 10, 12), 42: (0, 2, 4, 6, 8, 10, 12, 14), 70: tuple(range(16))},
    "cou_fol": {36: (0, 8), 38: (2, 4, 6, 10, 12, 14), 42: (0, 4, 8, 12)},
}
ACCENTED = {36, 38}


def drum_part(rng: np.random.Generator, h: Harmony, genre: str, seconds: float) -> Part:
    """A groove for ``genre`` with a crash on the first downbeat and an occasional tom fill."""
    kits = DRUM_KITS[genre]
    kit = kits[int(rng.integers(len(kits)))]
    groove = DRUM_GROOVES[genre]
    base = float(rng.uniform(60, 100))
    notes: list[Note] = []
    n_bars = int(np.ceil(seconds / (h.beat * BEATS_PER_BAR)))
    for bar in range(n_bars):
        fill = bar % 4 == 3 and rng.random() < 0.4
        for drum, steps in groove.items():
            for s in steps:
                if fill and s >= 12:
                    continue
                t = h.time_of(bar * BEATS_PER_BAR + s / 4)
                vel = base + (8 if drum in ACCENTED else -6) + (8 if s % 4 == 0 else 0)
                notes.append(Note(_humanize(rng, t, 0.004), t + 0.1, drum, _velocity(rng, vel, False)))
        if fill:
            for k, tom in enumerate((50, 48, 47, 45)):
                t = h.time_of(bar * BEATS_PER_BAR + 3 + k / 4)
                notes.append(Note(_humanize(rng, t, 0.004), t + 0.1, tom, _velocity(rng, base, False)))
    if rng.random() < 0.5:
        notes.append(Note(0.0, 0.5, 49, _velocity(rng, base, True)))
    return Part(None, kit, tidy(notes, seconds), [Control(0.0, 91, int(rng.integers(10, 60)))], is_drum=True)


def compose(
    rng: np.random.Generator, codes: tuple[str, ...], genre: str, drums: bool, seconds: float
) -> Piece:
    """A piece where ``codes[0]`` leads and the other labelled instruments accompany.

    Accompanying instruments are mixed 1-6 dB under the lead (every labelled instrument stays
    clearly audible); drums, when present, 3-10 dB under it.
    """
    h, tempo = make_harmony(rng, genre, seconds)
    parts = [instrument_part(rng, h, codes[0], seconds, lead=True)]
    parts += [
        instrument_part(rng, h, code, seconds, lead=False, level_db=float(rng.uniform(-6, -1)))
        for code in codes[1:]
    ]
    if drums:
        drum = drum_part(rng, h, genre, seconds)
        drum.level_db = float(rng.uniform(-10, -3))
        parts.append(drum)
    reverb = (float(rng.uniform(0.1, 0.8)), float(rng.uniform(0.1, 0.7)), float(rng.uniform(0.2, 0.9)))
    return Piece(seconds, genre, tempo, parts, reverb)


ISOLATED_NOTES_WEIGHTS = (0.5, 0.3, 0.2)  # one, two or three notes per clip
ISOLATED_SECONDS = (0.12, 2.6)  # note length, drawn log-uniformly: a pizzicato to a long sustain
CHORD_PROB = 0.4  # keyboards and guitars strike a chord instead of a single note this often


def voice_of(part: Part) -> Voice:
    """The :data:`VOICES` entry a labelled part was composed with."""
    return next(v for v in VOICES[part.code or ""] if v.program == part.program)


def isolated_notes(
    rng: np.random.Generator, voice: Voice, clip_starts: list[float], clip_seconds: float
) -> list[Note]:
    """A sample-library take: in every clip one to three notes (or chords, on keyboards and
    guitars), each struck once and left to ring or stop, with silence between them.

    Real instrument samples (and many uploads) are exactly this: one note, its attack and decay.
    Notes are drawn over the instrument's whole range, at any velocity, and the first one of each
    clip starts within 0.4 s so no clip is silent; a note is released by the end of its clip
    (its release tail may ring on).
    """
    notes: list[Note] = []
    polyphonic = voice.texture != "melodic"
    for clip_start in clip_starts:
        clip_end = clip_start + clip_seconds
        count = 1 + int(rng.choice(len(ISOLATED_NOTES_WEIGHTS), p=ISOLATED_NOTES_WEIGHTS))
        t = clip_start + float(rng.uniform(0.0, 0.4))
        for _ in range(count):
            if t > clip_end - 0.2:
                break
            length = min(float(np.exp(rng.uniform(*np.log(ISOLATED_SECONDS)))), clip_end - t)
            root = int(rng.integers(voice.low, voice.high + 1))
            pitches = [root]
            if polyphonic and rng.random() < CHORD_PROB:
                size = int(rng.integers(2, 5))
                third = root + int(rng.choice([3, 4]))
                pitches = [p for p in (root, third, root + 7, root + 12) if p <= voice.high][:size]
            velocity = int(rng.integers(30, 121))
            notes += [Note(t, t + length, p, velocity) for p in pitches]
            t += length + float(rng.uniform(0.05, 0.6))
    return notes


def isolate(rng: np.random.Generator, piece: Piece, clip_starts: list[float], clip_seconds: float) -> Piece:
    """``piece`` played as a sample-library take: the lead instrument alone (no accompaniment, no
    drums), :func:`isolated_notes` instead of its line. Labels are unchanged (the lead's code)."""
    lead = piece.parts[0]
    voice = voice_of(lead)
    notes = tidy(
        isolated_notes(rng, voice, clip_starts, clip_seconds), piece.seconds, voice.texture == "melodic"
    )
    controls = [c for c in lead.controls if c.number != 11]  # no expression swells across silences
    solo = Part(lead.code, lead.program, notes, controls, level_db=0.0)
    return Piece(piece.seconds, piece.genre, piece.tempo, [solo], piece.reverb)

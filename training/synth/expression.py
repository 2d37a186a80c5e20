"""Pitch expression a player adds: tuning offsets, scoops, falls, string bends and vibrato.

Written as pitch-wheel curves (:class:`~training.synth.compose.Bend`) on the composed parts, so
FluidSynth renders them; drawn from their own ``Generator`` so that the notes stay the same with or
without them. The pitch wheel moves the whole MIDI channel, so note-level gestures are only given to
monophonic lines (a strummed chord is not bent); every part gets the track's tuning offset.

Which gestures an instrument has (:data:`GESTURES`): winds, brass, voice and bowed strings scoop
into notes; saxophone, trumpet and voice also fall off them; guitars bend strings up a semitone or
a tone (and electric guitars further); keyboards have none. Vibrato (4.5-7 Hz, 8-40 cents, after a
short onset delay) goes to sustained melodic instruments, not to keyboards or guitars.
"""

from __future__ import annotations

import numpy as np

from training.synth.compose import Bend, Note, Piece
from training.synth.variation import Variation

CURVE_STEP = 0.02  # seconds between pitch-wheel points of a gesture or vibrato
MAX_BEND_CENTS = 190.0  # stay inside the +-200 cent wheel range with the detune on top
GESTURES: dict[str, tuple[str, ...]] = {
    "cel": ("scoop",),
    "vio": ("scoop",),
    "cla": ("scoop",),
    "flu": ("scoop",),
    "sax": ("scoop", "fall"),
    "tru": ("scoop", "fall"),
    "voi": ("scoop", "fall"),
    "gac": ("bend",),
    "gel": ("bend",),
}
VIBRATO_CODES = frozenset({"cel", "vio", "cla", "flu", "sax", "tru", "voi"})
MIN_VIBRATO_NOTE = 0.35  # seconds


def is_monophonic(notes: list[Note], overlap: float = 0.03) -> bool:
    """No note starts more than ``overlap`` seconds before the previous one ends."""
    return all(b.start >= a.end - overlap for a, b in zip(notes, notes[1:], strict=False))


def _glide(start: float, end: float, cents_from: float, cents_to: float) -> list[tuple[float, float]]:
    steps = max(1, int(round((end - start) / CURVE_STEP)))
    return [
        (start + (end - start) * k / steps, cents_from + (cents_to - cents_from) * k / steps)
        for k in range(steps + 1)
    ]


def _note_curve(
    rng: np.random.Generator, note: Note, code: str, variation: Variation, vibrato: tuple[float, float] | None
) -> list[tuple[float, float]]:
    """Pitch offsets (time, cents) over one note, relative to the part's tuning."""
    length = note.end - note.start
    points: list[tuple[float, float]] = [(note.start, 0.0)]
    gestures = GESTURES.get(code, ())
    draw = rng.random()  # always drawn, so the vibrato below sees the same stream either way
    if gestures and draw < variation.bend_prob and length > 0.12:
        gesture = gestures[int(rng.integers(len(gestures)))]
        if gesture == "scoop":
            depth = rng.uniform(20.0, 100.0)
            points = _glide(note.start, note.start + min(rng.uniform(0.04, 0.15), 0.5 * length), -depth, 0.0)
        elif gesture == "fall":
            depth = rng.uniform(50.0, MAX_BEND_CENTS)
            begin = note.end - min(rng.uniform(0.08, 0.25), 0.5 * length)
            points = [(note.start, 0.0), *_glide(begin, note.end, 0.0, -depth)]
        else:  # a guitar string bend: up a semitone or a tone, held, sometimes released
            depth = float(rng.choice([100.0, MAX_BEND_CENTS] if code == "gel" else [50.0, 100.0]))
            begin = note.start + length * rng.uniform(0.1, 0.4)
            top = min(begin + rng.uniform(0.06, 0.2), note.end)
            points = [(note.start, 0.0), *_glide(begin, top, 0.0, depth)]
            if rng.random() < 0.4 and note.end - top > 0.1:
                points += _glide(top + 0.5 * (note.end - top), note.end, depth, 0.0)
    if vibrato is not None and length >= MIN_VIBRATO_NOTE:
        rate, depth = vibrato
        onset = note.start + min(0.25, 0.4 * length)
        phase = rng.uniform(0, 2 * np.pi)
        base = dict(points)
        last = max(t for t, _ in points)
        held = points[-1][1] if last <= onset else 0.0
        times = np.arange(max(onset, last + CURVE_STEP), note.end, CURVE_STEP)
        ramp = np.clip((times - onset) / 0.3, 0.0, 1.0)  # vibrato fades in
        wobble = depth * ramp * np.sin(2 * np.pi * rate * (times - onset) + phase)
        points = sorted(base.items()) + [
            (float(t), held + float(w)) for t, w in zip(times, wobble, strict=True)
        ]
    return points


def add_pitch_expression(rng: np.random.Generator, piece: Piece, variation: Variation) -> None:
    """Give every part of ``piece`` its pitch-wheel curve (in place)."""
    tuning = rng.uniform(-variation.detune_cents, variation.detune_cents)
    for part in piece.parts:
        part_detune = rng.normal(0.0, variation.detune_cents / 4) if variation.detune_cents else 0.0
        wants_vibrato = rng.random() < variation.vibrato_prob
        if part.is_drum:
            continue
        offset = tuning + part_detune
        curve: list[tuple[float, float]] = [(0.0, 0.0)]
        if part.code is not None and is_monophonic(part.notes):
            vibrato = (
                (rng.uniform(4.5, 7.0), rng.uniform(8.0, 40.0))
                if wants_vibrato and part.code in VIBRATO_CODES
                else None
            )
            for i, note in enumerate(part.notes):
                # A legato note may ring into the next one: its curve stops where the next note starts.
                stop = part.notes[i + 1].start if i + 1 < len(part.notes) else np.inf
                curve += [p for p in _note_curve(rng, note, part.code, variation, vibrato) if p[0] < stop]
        part.bends = _compact([(t, offset + c) for t, c in curve])


def _compact(curve: list[tuple[float, float]]) -> list[Bend]:
    """Sorted bends without repeats of the same value; times clamped at 0."""
    out: list[Bend] = []
    for t, cents in sorted(curve, key=lambda p: p[0]):
        cents = float(np.clip(cents, -MAX_BEND_CENTS - 10, MAX_BEND_CENTS + 10))
        if out and abs(out[-1].cents - cents) < 0.5:
            continue
        out.append(Bend(max(0.0, float(t)), cents))
    return out

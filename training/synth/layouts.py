"""What to render and where it goes: the track plan of each dataset layout, and its label files.

A *track* is one rendered piece; it is cut into one or more clips (files). The plan is drawn from
the seed alone, before any audio is rendered, and every track carries its own seed, so a file's
content never depends on rendering order or on the number of worker processes.

Layouts (each readable by :func:`common.datasets.scan_dataset` with the spec in ``Layout.spec``):

- ``irmastrain``: ``DIR/<code>/[<code>][dru|nod][<genre>]<NNNN>__<k>.wav``, 3 s clips with one
  labelled instrument (plus unlabelled drums in ``[dru]`` files), ``--per-class`` clips per
  instrument. As in IRMAS, ``NNNN`` numbers the source track within its instrument and ``k`` the
  excerpt of that track (1-3 consecutive excerpts per track).
- ``irmastest``: ``DIR/synth_<NNNN>.wav`` + ``synth_<NNNN>.txt`` (one code per line), one excerpt per
  track of ``min_seconds..max_seconds`` with 1-4 labelled instruments.
- ``csv``: ``DIR/audio/synth_<NNNN>.wav`` and ``DIR/labels.csv`` (``file`` + the 11 code columns).

For the multi-instrument layouts the number of instruments per file is drawn with
:data:`CARDINALITY_WEIGHTS` (mean 2.15) until the label count reaches ``11 * per_class``, and each
file takes the instruments used least so far: every instrument appears exactly ``per_class`` times,
in about ``11 * per_class / 2.15`` files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.labels import LABELS
from training.synth.programs import DRUMLESS_GENRES, GENRE_WEIGHTS
from training.synth.variation import DRY, Variation

LAYOUTS: tuple[str, ...] = ("irmastrain", "irmastest", "csv")
TRAIN_CLIP_SECONDS = 3.0  # IRMAS training excerpts are 3 s long
MAX_CLIPS_PER_TRACK = 3
CARDINALITY_WEIGHTS: dict[int, float] = {1: 0.3, 2: 0.35, 3: 0.25, 4: 0.1}
CSV_NAME = "labels.csv"
_LAYOUT_IDS = {name: i for i, name in enumerate(LAYOUTS)}


@dataclass(frozen=True)
class Track:
    """One piece to render: its instruments (lead first), genre, drums, soundfont and output files."""

    index: int
    codes: tuple[str, ...]
    genre: str
    drums: bool
    soundfont: Path
    clip_seconds: float
    outputs: tuple[str, ...]  # one relative path per consecutive clip
    seed: tuple[int, ...]
    variation: Variation = DRY  # sound-source and recording variation (set by the pipeline)

    @property
    def seconds(self) -> float:
        return self.clip_seconds * len(self.outputs)


@dataclass(frozen=True)
class PlanOptions:
    per_class: int
    seed: int
    soundfonts: tuple[Path, ...]
    min_seconds: float = 5.0
    max_seconds: float = 20.0
    drums_prob: float = 0.4


def dataset_spec(layout: str, out_dir: Path) -> str:
    """The ``TYPE:PATH`` spec that reads a synthesized folder back."""
    return f"csv:{out_dir / CSV_NAME}" if layout == "csv" else f"{layout}:{out_dir}"


def plan(layout: str, options: PlanOptions) -> list[Track]:
    """Every track of the dataset, in output order."""
    rng = np.random.default_rng([options.seed, _LAYOUT_IDS[layout]])
    if layout == "irmastrain":
        return _plan_train(rng, options)
    return _plan_mixtures(rng, layout, options)


def _genre(rng: np.random.Generator, lead: str) -> str:
    weights = GENRE_WEIGHTS[lead]
    names = sorted(weights)
    p = np.array([weights[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _drums(rng: np.random.Generator, genre: str, prob: float) -> bool:
    draw = rng.random()  # drawn for every track so one genre's rule does not shift later tracks
    return genre not in DRUMLESS_GENRES and draw < prob


def _soundfont(rng: np.random.Generator, options: PlanOptions) -> Path:
    return options.soundfonts[int(rng.integers(len(options.soundfonts)))]


def _plan_train(rng: np.random.Generator, options: PlanOptions) -> list[Track]:
    tracks: list[Track] = []
    for code in LABELS:
        remaining, number = options.per_class, 0
        while remaining > 0:
            number += 1
            n_clips = min(int(rng.integers(1, MAX_CLIPS_PER_TRACK + 1)), remaining)
            remaining -= n_clips
            genre = _genre(rng, code)
            drums = _drums(rng, genre, options.drums_prob)
            stem = f"[{code}][{'dru' if drums else 'nod'}][{genre}]{number:04d}"
            outputs = tuple(f"{code}/{stem}__{k}.wav" for k in range(1, n_clips + 1))
            tracks.append(
                Track(
                    len(tracks),
                    (code,),
                    genre,
                    drums,
                    _soundfont(rng, options),
                    TRAIN_CLIP_SECONDS,
                    outputs,
                    (options.seed, _LAYOUT_IDS["irmastrain"], len(tracks)),
                )
            )
    return tracks


def balanced_label_sets(rng: np.random.Generator, per_class: int) -> list[tuple[str, ...]]:
    """Instrument sets (1-4 codes each, lead first) in which every code appears ``per_class`` times."""
    sizes = np.array(sorted(CARDINALITY_WEIGHTS))
    p = np.array([CARDINALITY_WEIGHTS[s] for s in sizes])
    counts = np.zeros(len(LABELS), dtype=np.int64)
    total, target = 0, per_class * len(LABELS)
    sets: list[tuple[str, ...]] = []
    while total < target:
        size = min(int(rng.choice(sizes, p=p / p.sum())), target - total)
        # Least-used codes first, random among ties: counts never differ by more than one.
        order = np.lexsort((rng.random(len(LABELS)), counts))
        chosen = [LABELS[i] for i in order[:size]]
        counts[order[:size]] += 1
        total += size
        sets.append(tuple(rng.permutation(chosen)))
    return sets


def _plan_mixtures(rng: np.random.Generator, layout: str, options: PlanOptions) -> list[Track]:
    tracks: list[Track] = []
    folder = "audio/" if layout == "csv" else ""
    for codes in balanced_label_sets(rng, options.per_class):
        index = len(tracks)
        genre = _genre(rng, codes[0])
        drums = _drums(rng, genre, options.drums_prob)
        seconds = round(float(rng.uniform(options.min_seconds, options.max_seconds)), 2)
        tracks.append(
            Track(
                index,
                codes,
                genre,
                drums,
                _soundfont(rng, options),
                seconds,
                (f"{folder}synth_{index + 1:04d}.wav",),
                (options.seed, _LAYOUT_IDS[layout], index),
            )
        )
    return tracks


def write_sidecar(out_dir: Path, track: Track) -> None:
    """irmastest label file next to the audio: one code per line, canonical order."""
    codes = [c for c in LABELS if c in track.codes]
    for rel in track.outputs:
        (out_dir / rel).with_suffix(".txt").write_text("".join(f"{c}\n" for c in codes), encoding="utf-8")


def write_csv(out_dir: Path, tracks: list[Track]) -> Path:
    """``labels.csv`` with a ``file`` column (relative to the CSV) and one 0/1 column per code."""
    path = out_dir / CSV_NAME
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *LABELS])
        for track in tracks:
            for rel in track.outputs:
                writer.writerow([rel, *(int(c in track.codes) for c in LABELS)])
    return path

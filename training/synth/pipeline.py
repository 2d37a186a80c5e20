"""``synthesize``: plan a dataset, render it in batches (optionally in worker processes), write it.

Tracks are rendered in fixed batches of :data:`BATCH_TRACKS`, each batch by a fresh FluidSynth
instance (see :mod:`training.synth.render` for why), so ``jobs`` changes speed, never bytes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from common.labels import LABELS
from training.synth.acoustics import record
from training.synth.compose import Piece, compose, isolate
from training.synth.effects import guitar_rig
from training.synth.expression import add_pitch_expression
from training.synth.layouts import LAYOUTS, PlanOptions, Track, dataset_spec, plan, write_csv, write_sidecar
from training.synth.render import FluidRenderer, SynthError, find_soundfonts, import_fluidsynth, mix
from training.synth.timidity import TimidityRenderer, find_timidity, is_timidity_config
from training.synth.variation import DRY, Variation

BATCH_TRACKS = 16
PREROLL_SECONDS = 0.5  # rendered then dropped: clips start mid-music, with notes and reverb already sounding
PEAK_MAX = 0.95  # each clip is peak-normalised to a random level in variation.min_peak..0.95 (never clips)
VARIATION_STREAM = 1
ISOLATED_STREAM = 2
AMP_STREAM = 3
AMP_CODES = frozenset({"gel"})  # the parts that go through a guitar rig when amp_prob > 0
SILENCE_PEAK = 1e-4
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 96000  # FluidSynth's accepted range


@dataclass(frozen=True)
class SynthReport:
    out_dir: Path
    layout: str
    spec: str  # dataset spec that reads the output back, e.g. "irmastrain:/data/synth"
    files: int
    audio_seconds: float
    wall_seconds: float
    per_class: dict[str, int] = field(default_factory=dict)  # files (clips) in which each code is labelled

    @property
    def x_realtime(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")


def _validate(
    layout: str,
    per_class: int,
    sample_rate: int,
    min_seconds: float,
    max_seconds: float,
    drums_prob: float,
    jobs: int,
) -> None:
    if layout not in LAYOUTS:
        raise SynthError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if per_class < 1:
        raise SynthError(f"--per-class must be at least 1, got {per_class}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise SynthError(f"--sample-rate must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {sample_rate}")
    if not 1.0 <= min_seconds <= max_seconds:
        raise SynthError(f"need 1 <= --min-seconds <= --max-seconds, got {min_seconds} and {max_seconds}")
    if not 0.0 <= drums_prob <= 1.0:
        raise SynthError(f"--drums-prob must be within 0..1, got {drums_prob}")
    if jobs < 1:
        raise SynthError(f"--jobs must be at least 1, got {jobs}")


def synthesize(
    out_dir: str | os.PathLike[str],
    layout: str,
    per_class: int,
    seed: int,
    *,
    sample_rate: int = 44100,
    soundfonts: Sequence[str | os.PathLike[str]] | None = None,
    min_seconds: float = 5.0,
    max_seconds: float = 20.0,
    drums_prob: float = 0.4,
    jobs: int = 1,
    progress: bool = True,
    variation: Variation = DRY,
) -> SynthReport:
    """Render a labelled dataset into ``out_dir`` (created; must be empty) and say what was written.

    ``min_seconds``/``max_seconds`` set the excerpt length of ``irmastest``/``csv`` files;
    ``irmastrain`` clips are always 3 s as in IRMAS. See :mod:`training.synth.layouts` for the file
    layouts and how ``per_class`` becomes a file count. ``variation`` sets the room, microphone,
    dynamics, noise, level and pitch variation (:mod:`training.synth.variation`); the default is dry.
    """
    try:
        variation.validate()
    except ValueError as exc:
        raise SynthError(str(exc)) from None
    _validate(layout, per_class, sample_rate, min_seconds, max_seconds, drums_prob, jobs)
    fonts = find_soundfonts(soundfonts)
    # Fail before creating any folder: FluidSynth for soundfonts, timidity for .cfg patch sets.
    if not all(is_timidity_config(f) for f in fonts):
        import_fluidsynth()
    if any(is_timidity_config(f) for f in fonts):
        find_timidity()
    root = Path(out_dir).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SynthError(f"{root}: output folder exists and is not empty; choose a new or empty folder")
    options = PlanOptions(per_class, seed, fonts, min_seconds, max_seconds, drums_prob)
    tracks = [dataclasses.replace(t, variation=variation) for t in plan(layout, options)]
    for folder in sorted({(root / rel).parent for t in tracks for rel in t.outputs}):
        folder.mkdir(parents=True, exist_ok=True)
    batches = [tracks[i : i + BATCH_TRACKS] for i in range(0, len(tracks), BATCH_TRACKS)]
    n_files = sum(len(t.outputs) for t in tracks)
    started = time.perf_counter()
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"{layout} -> {root}", total=n_files)

        def advance(files: int) -> None:
            bar.advance(task, files)

        if jobs == 1:
            for batch in batches:
                render_batch(root, sample_rate, batch, on_track=advance)
        else:
            # spawn, not fork: a forked child can inherit FluidSynth/GLib locks held by another thread.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(jobs, len(batches)), mp_context=context) as pool:
                futures = [pool.submit(render_batch, root, sample_rate, batch) for batch in batches]
                for future, batch in zip(futures, batches, strict=True):
                    future.result()
                    advance(sum(len(t.outputs) for t in batch))
    if layout == "irmastest":
        for track in tracks:
            write_sidecar(root, track)
    elif layout == "csv":
        write_csv(root, tracks)
    wall = time.perf_counter() - started
    return SynthReport(
        out_dir=root,
        layout=layout,
        spec=dataset_spec(layout, root),
        files=n_files,
        audio_seconds=sum(t.seconds for t in tracks),
        wall_seconds=wall,
        per_class={c: sum(len(t.outputs) for t in tracks if c in t.codes) for c in LABELS},
    )


def render_batch(
    root: Path, sample_rate: int, batch: list[Track], on_track: Callable[[int], None] | None = None
) -> None:
    """Render and write one batch of tracks with one fresh synth (runs in a worker when jobs > 1)."""
    fonts = sorted({t.soundfont for t in batch})
    with Renderers(sample_rate, fonts) as renderer:
        for track in batch:
            for rel, clip in zip(track.outputs, render_track(renderer, track), strict=True):
                sf.write(root / rel, clip, sample_rate, subtype="PCM_16")
            if on_track is not None:
                on_track(len(track.outputs))


def render_track(renderer: Renderers, track: Track) -> list[np.ndarray]:
    """The clips of one track: compose, render stems, mix, drop the pre-roll, cut, normalise."""
    rng = np.random.default_rng(track.seed)
    sr, variation = renderer.sample_rate, track.variation
    piece = compose(rng, track.codes, track.genre, track.drums, PREROLL_SECONDS + track.seconds)
    if variation.isolated_prob > 0 and len(track.codes) == 1:
        # Its own stream too: with isolated_prob 0 nothing is drawn and renders stay byte-identical.
        take_rng = np.random.default_rng([*track.seed, ISOLATED_STREAM])
        if take_rng.random() < variation.isolated_prob:
            starts = [PREROLL_SECONDS + k * track.clip_seconds for k in range(len(track.outputs))]
            piece = isolate(take_rng, piece, starts, track.clip_seconds)
    # Variation draws from its own stream: the notes (and a dry render) do not depend on it.
    variation_rng = np.random.default_rng([*track.seed, VARIATION_STREAM])
    if variation.changes_pitch:
        add_pitch_expression(variation_rng, piece, variation)
    stems = renderer.render(piece, track.soundfont)
    if variation.amp_prob > 0:
        # Its own stream as well, one coin per part always drawn: amp_prob 0 leaves renders byte-identical.
        amp_rng = np.random.default_rng([*track.seed, AMP_STREAM])
        stems = [
            guitar_rig(amp_rng, stem, sr)
            if amp_rng.random() < variation.amp_prob and part.code in AMP_CODES
            else stem
            for part, stem in zip(piece.parts, stems, strict=True)
        ]
    audio = mix(stems, [p.level_db for p in piece.parts])
    if variation.changes_sound:
        audio = record(variation_rng, audio, sr, variation)
    audio = audio[round(PREROLL_SECONDS * sr) :]
    clip_frames = round(track.clip_seconds * sr)
    clips = []
    for k, rel in enumerate(track.outputs):
        clip = audio[k * clip_frames : (k + 1) * clip_frames]
        peak = float(np.max(np.abs(clip))) if clip.size else 0.0
        if peak < SILENCE_PEAK:
            programs = ", ".join(f"{p.code or 'drums'}={p.program}" for p in piece.parts)
            raise SynthError(
                f"{rel}: rendered silence with {track.soundfont} ({programs}); is it a GM soundfont?"
            )
        clips.append((clip * (float(rng.uniform(variation.min_peak, PEAK_MAX)) / peak)).astype(np.float32))
    return clips


class Renderers:
    """One ``render(piece, source)`` over FluidSynth (``.sf2``/``.sf3``) and TiMidity++ (``.cfg``) sources."""

    def __init__(self, sample_rate: int, sources: Sequence[Path]) -> None:
        self.sample_rate = sample_rate
        fonts = [s for s in sources if not is_timidity_config(s)]
        configs = [s for s in sources if is_timidity_config(s)]
        self._fluid = FluidRenderer(sample_rate, fonts) if fonts else None
        try:
            self._timidity = TimidityRenderer(sample_rate, configs) if configs else None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Renderers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for renderer in (self._fluid, getattr(self, "_timidity", None)):
            if renderer is not None:
                renderer.close()

    def render(self, piece: Piece, source: Path) -> list[np.ndarray]:
        renderer = self._timidity if is_timidity_config(source) else self._fluid
        assert renderer is not None, f"{source} was not among the sources this renderer opened"
        return renderer.render(piece, source)


class _RateColumn(ProgressColumn):
    """Files per second so far."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} files/s" if speed else "- files/s", style="progress.data.speed")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )

"""lumen-data: make synthetic labelled audio (synth), look inside datasets (inspect), split them (split).

Torch-free on purpose: it runs in an environment with only the ``synth`` extra installed.
Exit codes: 0 success; 1 ``inspect`` found files that failed to parse or decode; 2 bad usage or
input (one-line message, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import soundfile as sf
from rich.console import Console
from rich.table import Table

from common.audio import AudioError, decode
from common.datasets import DatasetError, DatasetIssue, Item, describe_spec_types, parse_spec, scan_dataset
from common.labels import LABELS, NAMES
from common.splits import GROUPINGS, group_split, song_key, write_csv_dataset
from training.synth.layouts import CARDINALITY_WEIGHTS, LAYOUTS
from training.synth.pipeline import synthesize
from training.synth.render import SOUNDFONT_CANDIDATES, SOUNDFONT_ENV, SynthError
from training.synth.variation import PRESETS, Variation

MAX_PRINTED_ERRORS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lumen-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mean = sum(k * w for k, w in CARDINALITY_WEIGHTS.items())
    synth = sub.add_parser(
        "synth",
        help="render labelled General-MIDI audio with FluidSynth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Render a labelled dataset of synthetic music.\n"
            "  irmastrain: OUT/<code>/[<code>][dru|nod][<genre>]NNNN__k.wav, 3 s clips, one instrument,\n"
            "              --per-class clips per instrument\n"
            "  irmastest:  OUT/synth_NNNN.wav + .txt label file, 1-4 instruments per excerpt\n"
            "  csv:        OUT/audio/synth_NNNN.wav + OUT/labels.csv (file + 0/1 column per code)\n"
            f"For irmastest/csv every instrument is labelled in exactly --per-class files, in about\n"
            f"11 * per-class / {mean:.2f} files (mean instruments per file). The same arguments give the\n"
            f"same bytes whatever --jobs. Soundfont default: ${SOUNDFONT_ENV}, else the first of\n"
            f"{', '.join(str(p) for p in SOUNDFONT_CANDIDATES)}."
        ),
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    synth.add_argument("--layout", required=True, choices=LAYOUTS)
    synth.add_argument("--per-class", required=True, type=int, help="files in which each instrument appears")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--soundfont",
        action="append",
        help="a .sf2/.sf3 General-MIDI soundfont (FluidSynth) or a TiMidity++ .cfg patch set "
        "(/etc/timidity/freepats.cfg, rendered with timidity); repeat to draw one at random per track",
    )
    synth.add_argument("--sample-rate", type=int, default=44100, help="Hz (IRMAS: 44100)")
    synth.add_argument("--min-seconds", type=float, default=5.0, help="irmastest/csv excerpt length, minimum")
    synth.add_argument(
        "--max-seconds", type=float, default=20.0, help="irmastest/csv excerpt length, maximum"
    )
    synth.add_argument(
        "--drums-prob",
        type=float,
        default=0.4,
        help="chance of an (unlabelled) drum track; classical-genre tracks never get one",
    )
    synth.add_argument("--jobs", type=int, default=1, help="worker processes (output does not depend on it)")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_variation_arguments(synth)

    inspect = sub.add_parser(
        "inspect",
        help="count items, labels and seconds of datasets; list broken files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Dataset specs are TYPE:PATH with TYPE one of:\n" + describe_spec_types(),
    )
    inspect.add_argument("specs", nargs="+", metavar="SPEC")
    inspect.add_argument("--json", action="store_true", help="print items, errors and summary as JSON")
    inspect.add_argument(
        "--decode", action="store_true", help="decode every file fully (slower; headers are read either way)"
    )
    split = sub.add_parser(
        "split",
        help="split a labelled dataset into two csv datasets, keeping songs together",
        description=(
            "Split labelled specs into OUT_DIR/<first>.csv (about --fraction of the files) and "
            "OUT_DIR/<second>.csv. With --group-by song (default) all excerpts of a song, "
            "'<song>-<n>.wav' as in the IRMAS test set or '...<track>__<k>.wav' as in the IRMAS "
            "training set, land on the same side, so thresholds tuned on one part are not scored on "
            "the same songs."
        ),
    )
    split.add_argument("specs", nargs="+", metavar="SPEC")
    split.add_argument("--out-dir", required=True, type=Path)
    split.add_argument("--fraction", type=float, default=0.3, help="share of files in the first part (0.3)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--group-by", choices=GROUPINGS, default="song")
    split.add_argument("--names", nargs=2, default=["val", "test"], metavar=("FIRST", "SECOND"))
    return parser


def _add_variation_arguments(synth: argparse.ArgumentParser) -> None:
    """Sound-source and recording variation: a preset, then per-setting overrides."""
    group = synth.add_argument_group(
        "sound-source variation",
        "How each track is played and recorded. --variation picks a preset (dry: rendered as is, the "
        "default; varied: rooms, microphones, dynamics, noise, level and pitch as in real recordings); "
        "each flag below overrides one setting of it. *-prob flags are the chance per track (bends: per "
        "note; vibrato: per part).",
    )
    group.add_argument("--variation", choices=sorted(PRESETS), default="dry", help="preset (default: dry)")
    help_texts = {
        "room_prob": "synthetic room impulse response (varied size and RT60)",
        "rt60": "room reverberation time range, seconds",
        "eq_prob": "microphone/preamp colouring (high-pass, roll-off, resonances, tilt)",
        "dynamics_prob": "compressor with random threshold, ratio, attack, release",
        "noise_prob": "white/pink/brown noise (sometimes mains hum)",
        "snr_db": "signal-to-noise ratio range, dB",
        "detune_cents": "tuning offset per track, up to +- this many cents",
        "bend_prob": "scoops, falls and string bends where the instrument has them",
        "vibrato_prob": "pitch vibrato of random rate and depth on long notes",
        "min_peak": "clips are peak-normalised to a random level in MIN_PEAK..0.95",
        "isolated_prob": "solo tracks only: one to three isolated notes or chords per clip, left to decay, "
        "with silence between (a sample-library take) instead of a musical line",
        "amp_prob": "electric-guitar parts only: pedals and an amplifier (drive, cabinet, chorus/flanger/"
        "tremolo, echo)",
    }
    for f in fields(Variation):
        pair = f.name in ("rt60", "snr_db")
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=float,
            nargs=2 if pair else None,
            metavar=("MIN", "MAX") if pair else None,
            default=None,
            help=help_texts[f.name],
        )


def _variation(args: argparse.Namespace) -> Variation:
    overrides = {
        f.name: tuple(value) if isinstance(value, list) else value
        for f in fields(Variation)
        if (value := getattr(args, f.name)) is not None
    }
    return replace(PRESETS[args.variation], **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "synth":
            return _synth(args)
        if args.command == "split":
            return _split(args)
        return _inspect(args)
    except (SynthError, DatasetError) as exc:
        print(f"lumen-data {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _split(args: argparse.Namespace) -> int:
    items: list[Item] = []
    for text in args.specs:
        spec = parse_spec(text)
        found, issues = scan_dataset(spec)
        if issues:
            raise DatasetError(f"{spec}: {len(issues)} file(s) cannot be used, first: {issues[0]}")
        if any(item.labels is None for item in found):
            raise DatasetError(f"{spec}: split needs labelled data (irmastrain, irmastest, csv, openmic)")
        items.extend(found)
    key = song_key if args.group_by == "song" else (lambda path: str(path))
    parts = group_split(items, args.fraction, args.seed, key=key)
    for name, part in zip(args.names, parts, strict=True):
        out = args.out_dir / f"{name}.csv"
        write_csv_dataset(part, out)
        groups = len({key(item.path) for item in part})
        per = Counter(code for item in part for code in item.codes or ())
        counts = " ".join(f"{code}={per[code]}" for code in LABELS)
        print(f"{out}: {len(part)} files from {groups} group(s); {counts}; read it with csv:{out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    report = synthesize(
        args.out,
        args.layout,
        args.per_class,
        args.seed,
        sample_rate=args.sample_rate,
        soundfonts=args.soundfont,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        drums_prob=args.drums_prob,
        jobs=args.jobs,
        progress=not args.no_progress,
        variation=_variation(args),
    )
    print(
        f"wrote {report.files} files, {report.audio_seconds / 60:.1f} min of audio in "
        f"{report.wall_seconds:.1f} s ({report.x_realtime:.0f}x real time); read it with {report.spec}"
    )
    return 0


@dataclass
class DatasetSummary:
    """What ``inspect`` reports for one spec."""

    spec: str
    items: int = 0
    errors: int = 0
    seconds: float = 0.0
    per_instrument: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))
    cardinality: Counter[int] = field(default_factory=Counter)
    drums: Counter[str] = field(default_factory=Counter)
    genres: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "spec": self.spec,
            "items": self.items,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "per_instrument": self.per_instrument,
            "cardinality": {str(k): v for k, v in sorted(self.cardinality.items())},
        }
        if self.drums:
            out["drums"] = dict(sorted(self.drums.items()))
        if self.genres:
            out["genres"] = dict(sorted(self.genres.items()))
        return out


def _audio_problem(path: Path, full_decode: bool) -> tuple[float, str | None]:
    """Duration in seconds from the header (or a full decode), or the reason it cannot be read."""
    try:
        if full_decode:
            data, sr = decode(path)
            return data.shape[0] / sr, None
        info = sf.info(str(path))
    except AudioError as exc:
        return 0.0, exc.reason
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        return 0.0, f"cannot read audio header ({str(exc).strip() or type(exc).__name__})"
    if info.frames <= 0 or info.samplerate <= 0:
        return 0.0, "no audio samples (0 frames)"
    return info.frames / info.samplerate, None


def _inspect_one(text: str, full_decode: bool) -> tuple[DatasetSummary, list[Item], list[DatasetIssue]]:
    spec = parse_spec(text)
    items, issues = scan_dataset(spec)
    summary = DatasetSummary(str(spec))
    good: list[Item] = []
    for item in items:
        seconds, problem = _audio_problem(item.path, full_decode)
        if problem is not None:
            issues.append(DatasetIssue(str(item.path), problem))
            continue
        good.append(item)
        summary.seconds += seconds
        codes = item.codes
        if codes is not None:
            summary.cardinality[len(codes)] += 1
            for code in codes:
                summary.per_instrument[code] += 1
        if item.drums is not None:
            summary.drums["dru" if item.drums else "nod"] += 1
        if item.genre is not None:
            summary.genres[item.genre] += 1
    summary.items = len(good)
    summary.errors = len(issues)
    return summary, good, sorted(issues, key=lambda i: (i.path, i.error))


def _inspect(args: argparse.Namespace) -> int:
    results = [_inspect_one(text, args.decode) for text in args.specs]
    errors = [issue for _, _, issues in results for issue in issues]
    if args.json:
        payload = {
            "items": [
                {
                    "path": str(item.path),
                    "labels": list(item.codes) if item.codes is not None else None,
                    "drums": item.drums,
                    "genre": item.genre,
                }
                for _, items, _ in results
                for item in items
            ],
            "errors": [{"path": issue.path, "error": issue.error} for issue in errors],
            "summary": {
                "items": sum(s.items for s, _, _ in results),
                "errors": len(errors),
                "seconds": round(sum(s.seconds for s, _, _ in results), 3),
                "datasets": [s.to_dict() for s, _, _ in results],
            },
        }
        print(json.dumps(payload, indent=2))
    else:
        console = Console(soft_wrap=True)
        for summary, _, issues in results:
            _print_summary(console, summary, issues)
    return 1 if errors else 0


def _print_summary(console: Console, summary: DatasetSummary, issues: list[DatasetIssue]) -> None:
    console.print(
        f"[bold]{summary.spec}[/bold]: {summary.items} items, {summary.seconds / 60:.1f} min "
        f"({summary.seconds:.0f} s), {summary.errors} error(s)"
    )
    if summary.cardinality:
        table = Table("code", "instrument", "items", title="items per instrument", title_justify="left")
        for code in LABELS:
            table.add_row(code, NAMES[code], str(summary.per_instrument[code]))
        console.print(table)
        hist = ", ".join(f"{k}: {v}" for k, v in sorted(summary.cardinality.items()))
        console.print(f"instruments per item: {hist}")
    if summary.drums:
        console.print("drums: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.drums.items())))
    if summary.genres:
        console.print("genres: " + ", ".join(f"{k}: {v}" for k, v in sorted(summary.genres.items())))
    if issues:
        # One unwrapped line per file, so paths can be copied and grepped.
        console.print("[bold red]failed to parse or decode:[/bold red]")
        for issue in issues[:MAX_PRINTED_ERRORS]:
            console.print(f"  {issue}", markup=False, highlight=False)
        if len(issues) > MAX_PRINTED_ERRORS:
            console.print(f"... and {len(issues) - MAX_PRINTED_ERRORS} more (--json lists all)")
    console.print()


if __name__ == "__main__":
    sys.exit(main())

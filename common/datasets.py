"""Datasets named by ``TYPE:PATH`` specs, turned into sorted lists of :class:`Item`.

One spec string names a dataset everywhere (``lumen-train``, ``lumen-test``, the server's evaluation
endpoint), so a folder is read the same way by training and by evaluation. The formats:

- ``irmastrain:PATH`` -- IRMAS training layout ``PATH/<code>/*.wav``: one instrument per file, taken
  from the folder name. Filename tags as IRMAS writes them (``[cel][nod][cla]``: instrument, optional
  drums ``dru``/``nod``, optional genre) give ``drums`` and ``genre``; a tag instrument that disagrees
  with the folder is an error.
- ``irmastest:PATH`` -- IRMAS testing layout: every audio file under ``PATH`` (recursively) has a
  sidecar ``.txt`` with the same stem listing one instrument code per line.
- ``csv:FILE`` -- a CSV with a ``file`` column (relative to the CSV's folder, or absolute) and one 0/1
  column per instrument code (``cel`` ... ``voi``); other columns are ignored.
- ``inference:PATH`` -- unlabelled audio: a folder searched recursively, a CSV with a ``file``
  column, or a single audio file.
- ``openmic:PATH`` -- an OpenMIC-2018 folder (``openmic-2018-aggregated-labels.csv`` and
  ``audio/<key[:3]>/<key>.ogg``); the ten classes with an IRMAS counterpart become labels, an
  instrument counts as present when its aggregated relevance is >= 0.5 (``relevance_threshold``).
  OpenMIC's single ``guitar`` class does not say acoustic or electric, so clips whose guitar relevance
  reaches the threshold are left out of ``openmic:`` datasets rather than given a guessed gac/gel label;
  in the clips that remain, instruments OpenMIC did not annotate count as absent.

A bare path (no known ``TYPE:`` prefix) takes the caller's ``default_type``. The prefix is only split
off when it is one of the types above, so ``C:\\data\\x``, ``/a/b:c`` and other paths with colons stay
paths. Files and folders whose names start with ``.`` are skipped (macOS ``._x.wav`` resource forks are
not audio). A server passes ``confine`` (see :data:`Confine`): every path a scanner derives (class
folders, sidecar ``.txt`` files, CSV rows, walked files) is checked with it *before* it is opened or
stat'ed, so a symlink out of the data root yields an issue saying so and nothing about its target.
Every other problem with a single file is reported as a :class:`DatasetIssue`:
:func:`scan_dataset` returns them next to the good items, :func:`load_dataset` refuses to return a
dataset that has any, so a training run never quietly trains on a subset.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.audio import SUPPORTED_EXTENSIONS, is_audio_path
from common.labels import DRUM_TAGS, GENRES, LABELS, to_multi_hot

log = logging.getLogger(__name__)

DATASET_TYPES: tuple[str, ...] = ("irmastrain", "irmastest", "csv", "inference", "openmic")

SPEC_HELP: dict[str, str] = {
    "irmastrain": "IRMAS training folder PATH/<code>/*.wav; label = folder, filename tags give drums/genre",
    "irmastest": "IRMAS testing folder, searched recursively; each audio file has a same-stem .txt of codes",
    "csv": "CSV file with a 'file' column (relative to the CSV) and 0/1 columns cel ... voi",
    "inference": "unlabelled audio: a folder (recursive), a CSV with a 'file' column, or one audio file",
    "openmic": "OpenMIC-2018 folder (aggregated-labels CSV + audio/); guitar-positive clips are left out",
}

OPENMIC_LABELS_CSV = "openmic-2018-aggregated-labels.csv"
OPENMIC_CLASSES: tuple[str, ...] = (
    "accordion", "banjo", "bass", "cello", "clarinet", "cymbals", "drums", "flute", "guitar",
    "mallet_percussion", "mandolin", "organ", "piano", "saxophone", "synthesizer", "trombone",
    "trumpet", "ukulele", "violin", "voice",
)  # fmt: skip
OPENMIC_TO_IRMAS: dict[str, str] = {
    "cello": "cel",
    "clarinet": "cla",
    "flute": "flu",
    "organ": "org",
    "piano": "pia",
    "saxophone": "sax",
    "trumpet": "tru",
    "violin": "vio",
    "voice": "voi",
}
OPENMIC_AMBIGUOUS = "guitar"  # acoustic or electric: clips with it are left out (see module docstring)
DEFAULT_RELEVANCE_THRESHOLD = 0.5
MAX_LISTED_ISSUES = 5
OUTSIDE_ROOT = "resolves outside the data root; skipped"

Confine = Callable[[Path], bool]
"""True when a path (after resolving symlinks) may be read; must not raise."""


def _anywhere(_: Path) -> bool:
    return True


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the path and what was expected."""


@dataclass(frozen=True)
class DatasetSpec:
    type: str
    path: Path

    def __post_init__(self) -> None:
        if self.type not in DATASET_TYPES:
            raise DatasetError(f"unknown dataset type {self.type!r}; use one of {', '.join(DATASET_TYPES)}")

    def __str__(self) -> str:
        return f"{self.type}:{self.path}"


@dataclass(frozen=True, eq=False)
class Item:
    """One audio file of a dataset.

    ``labels`` is a float32 multi-hot vector in :data:`common.labels.LABELS` order, or ``None`` for
    unlabelled (inference) data. ``drums``/``genre`` are known only where the format records them.
    Compared by identity: the label array makes field-wise equality ambiguous; compare ``codes``.
    """

    path: Path
    labels: np.ndarray | None = None
    drums: bool | None = None
    genre: str | None = None

    @property
    def codes(self) -> tuple[str, ...] | None:
        """The instrument codes present, in canonical order (``None`` when unlabelled)."""
        if self.labels is None:
            return None
        return tuple(LABELS[i] for i in np.flatnonzero(self.labels >= 0.5))


@dataclass(frozen=True)
class DatasetIssue:
    """A problem with one file (or one row) that keeps it out of the dataset."""

    path: str
    error: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


class TrainTags(NamedTuple):
    """What an IRMAS training file name says: ``[instrument][dru|nod][genre]``, each optional."""

    instrument: str | None
    drums: bool | None
    genre: str | None


def describe_spec_types() -> str:
    """One line per dataset type, for ``--help`` texts and the README."""
    width = max(len(t) for t in DATASET_TYPES) + len(":PATH")
    return "\n".join(f"{(t + ':PATH').ljust(width)}  {SPEC_HELP[t]}" for t in DATASET_TYPES)


def parse_spec(text: str, default_type: str | None = None) -> DatasetSpec:
    """``"TYPE:PATH"`` -> :class:`DatasetSpec`; a bare path gets ``default_type``.

    Only a known type before the first colon is split off, so drive letters (``C:\\x``) and paths
    that contain colons are read as paths.
    """
    raw = text.strip()
    prefix, sep, rest = raw.partition(":")
    if sep and prefix.strip().lower() in DATASET_TYPES:
        kind, path_text = prefix.strip().lower(), rest.strip()
        if not path_text:
            raise DatasetError(f"dataset spec {text!r} has no path after '{kind}:'; write {kind}:PATH")
        return DatasetSpec(kind, Path(path_text).expanduser())
    if not raw:
        raise DatasetError("empty dataset spec; write TYPE:PATH with TYPE one of " + ", ".join(DATASET_TYPES))
    if default_type is None:
        raise DatasetError(
            f"dataset spec {text!r} has no type; write TYPE:PATH with TYPE one of {', '.join(DATASET_TYPES)}"
        )
    if default_type not in DATASET_TYPES:
        raise DatasetError(
            f"unknown default dataset type {default_type!r}; use one of {', '.join(DATASET_TYPES)}"
        )
    return DatasetSpec(default_type, Path(raw).expanduser())


def scan_dataset(
    spec: DatasetSpec | str,
    *,
    default_type: str | None = None,
    relevance_threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
    confine: Confine = _anywhere,
) -> tuple[list[Item], list[DatasetIssue]]:
    """Items sorted by path, plus every per-file problem found (also sorted by path).

    Raises :class:`DatasetError` only for problems with the dataset as a whole: a missing folder or
    file, a CSV without the required columns, or no audio at all. ``confine`` is asked about every
    derived path before it is touched (see the module docstring).
    """
    if isinstance(spec, str):
        spec = parse_spec(spec, default_type)
    if not 0.0 < relevance_threshold <= 1.0:
        raise DatasetError(f"relevance_threshold must be in (0, 1], got {relevance_threshold}")
    if spec.type == "openmic":
        items, issues = _scan_openmic(spec.path, relevance_threshold, confine)
    else:
        items, issues = _SCANNERS[spec.type](spec.path, confine)
    if not items and not issues:
        raise DatasetError(f"{spec}: no audio files found ({SPEC_HELP[spec.type]})")
    return sorted(items, key=lambda it: it.path), sorted(issues, key=lambda i: (i.path, i.error))


def load_dataset(
    spec: DatasetSpec | str,
    *,
    default_type: str | None = None,
    relevance_threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
) -> list[Item]:
    """Like :func:`scan_dataset`, but any per-file problem raises :class:`DatasetError` listing them."""
    if isinstance(spec, str):
        spec = parse_spec(spec, default_type)
    items, issues = scan_dataset(spec, relevance_threshold=relevance_threshold)
    if issues:
        raise DatasetError(format_issues(str(spec), issues))
    return items


def load_datasets(
    specs: Iterable[DatasetSpec | str],
    *,
    default_type: str | None = None,
    relevance_threshold: float = DEFAULT_RELEVANCE_THRESHOLD,
) -> list[Item]:
    """Concatenate several datasets in the order given; all problems of all specs are reported at once."""
    items: list[Item] = []
    messages: list[str] = []
    for spec in specs:
        parsed = parse_spec(spec, default_type) if isinstance(spec, str) else spec
        found, issues = scan_dataset(parsed, relevance_threshold=relevance_threshold)
        items.extend(found)
        if issues:
            messages.append(format_issues(str(parsed), issues))
    if messages:
        raise DatasetError("\n".join(messages))
    return items


def format_issues(source: str, issues: list[DatasetIssue], limit: int = MAX_LISTED_ISSUES) -> str:
    """``"<source>: N problem(s)"`` followed by the first ``limit`` issues, one per line."""
    lines = [f"{source}: {len(issues)} problem(s); fix or remove these files:"]
    lines += [f"  {issue}" for issue in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


# --- shared helpers ---------------------------------------------------------------------------------


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _walk_audio(root: Path) -> Iterator[Path]:
    """Audio files under ``root`` in sorted order, skipping hidden files and folders."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        for name in sorted(files):
            if _visible(name) and is_audio_path(name):
                yield Path(folder) / name


def _require_dir(path: Path, kind: str, expected: str) -> None:
    if not path.exists():
        raise DatasetError(f"{kind}:{path}: folder not found; expected {expected}")
    if not path.is_dir():
        raise DatasetError(f"{kind}:{path}: is not a folder; expected {expected}")


def _require_file(path: Path, kind: str, expected: str) -> None:
    if not path.exists():
        raise DatasetError(f"{kind}:{path}: file not found; expected {expected}")
    if not path.is_file():
        raise DatasetError(f"{kind}:{path}: is not a file; expected {expected}")


def _read_csv(
    path: Path, kind: str, required: Iterable[str]
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Normalised header (stripped, lower case) and ``(line number, cells)`` for each non-blank row.

    Raises :class:`DatasetError` naming every missing required column.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{kind}:{path}: cannot read CSV ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [cell.strip().lower() for cell in next(reader, [])]
    if not header:
        raise DatasetError(f"{kind}:{path}: empty CSV; expected a header row")
    dupes = sorted({h for h in header if h and header.count(h) > 1})
    if dupes:
        raise DatasetError(f"{kind}:{path}: duplicate column(s) {', '.join(dupes)} in the header")
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(
            f"{kind}:{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"the header has {', '.join(header)}"
        )

    def rows() -> Iterator[tuple[int, list[str]]]:
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, cells

    return header, rows()


def _csv_file_path(csv_path: Path, value: str) -> Path:
    """``value`` as written in the CSV, relative to the CSV's own folder unless absolute.

    Raises ``ValueError`` for a ``~user`` that names no user (``expanduser`` raises RuntimeError).
    """
    try:
        path = Path(value.strip()).expanduser()
    except RuntimeError as exc:
        raise ValueError(f"cannot expand {value.strip()!r}: {exc}") from None
    return path if path.is_absolute() else csv_path.parent / path


class _Listing(NamedTuple):
    """Audio paths listed by a CSV, each with its row, plus the problems with the rows themselves."""

    rows: list[tuple[int, Path, list[str]]]
    issues: list[DatasetIssue]


def _list_csv_files(
    csv_path: Path, kind: str, required: list[str], confine: Confine = _anywhere
) -> tuple[list[str], _Listing]:
    header, rows = _read_csv(csv_path, kind, ["file", *required])
    col = header.index("file")
    good: list[tuple[int, Path, list[str]]] = []
    issues: list[DatasetIssue] = []
    first_row: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != len(header):
            issues.append(
                DatasetIssue(str(csv_path), f"row {line}: {len(cells)} cells for {len(header)} columns")
            )
            continue
        if not cells[col].strip():
            issues.append(DatasetIssue(str(csv_path), f"row {line}: empty 'file' cell"))
            continue
        try:
            audio = _csv_file_path(csv_path, cells[col])
        except ValueError as exc:
            issues.append(DatasetIssue(str(csv_path), f"row {line}: {exc}"))
            continue
        key = os.path.normpath(audio)
        if key in first_row:
            issues.append(
                DatasetIssue(str(audio), f"listed twice in {csv_path} (rows {first_row[key]} and {line})")
            )
            continue
        first_row[key] = line
        if not confine(audio):  # before any stat: existence outside the root must not show
            issues.append(DatasetIssue(str(audio), f"{OUTSIDE_ROOT} (row {line} of {csv_path})"))
            continue
        problem = _audio_file_problem(audio)
        if problem:
            issues.append(DatasetIssue(str(audio), f"{problem} (row {line} of {csv_path})"))
            continue
        good.append((line, audio, cells))
    return header, _Listing(good, issues)


def _audio_file_problem(path: Path) -> str | None:
    if not is_audio_path(path):
        return f"unsupported audio extension {path.suffix!r} (supported: {', '.join(SUPPORTED_EXTENSIONS)})"
    if not path.is_file():
        return "audio file not found"
    return None


# --- irmastrain ---------------------------------------------------------------------------------------


def parse_train_filename(name: str) -> TrainTags:
    """Read the ``[...]`` tags of an IRMAS training file name, by position.

    ``008__[cel][nod][cla]0058__1.wav`` -> ``("cel", False, "cla")``; ``[pia][cla]1308__3.wav`` ->
    ``("pia", None, "cla")``. Position matters because ``cla`` is both clarinet and the classical
    genre: the first tag is the instrument, then an optional drums tag, then an optional genre.
    A name without tags gives all ``None``; malformed tags raise ``ValueError`` with the reason.
    """
    tags = [tag.strip().lower() for tag in _tags_of(Path(name).stem)]
    if not tags:
        return TrainTags(None, None, None)
    instrument, rest = tags[0], tags[1:]
    if instrument not in LABELS:
        raise ValueError(f"first tag [{instrument}] is not an instrument code ({', '.join(LABELS)})")
    drums = DRUM_TAGS[rest.pop(0)] if rest and rest[0] in DRUM_TAGS else None
    genre = rest.pop(0) if rest and rest[0] in GENRES else None
    if rest:
        raise ValueError(
            f"unexpected tag(s) {''.join(f'[{t}]' for t in rest)}; IRMAS names read "
            f"[instrument][{'|'.join(DRUM_TAGS)}][genre: {'|'.join(GENRES)}]"
        )
    return TrainTags(instrument, drums, genre)


def _tags_of(stem: str) -> list[str]:
    tags: list[str] = []
    pos = stem.find("[")
    while pos != -1:
        end = stem.find("]", pos)
        if end == -1:
            raise ValueError(f"unclosed '[' in {stem!r}")
        tags.append(stem[pos + 1 : end])
        pos = stem.find("[", end)
    return tags


def _scan_irmastrain(root: Path, confine: Confine = _anywhere) -> tuple[list[Item], list[DatasetIssue]]:
    expected = "PATH/<code>/*.wav with <code> one of " + ", ".join(LABELS)
    _require_dir(root, "irmastrain", expected)
    items: list[Item] = []
    issues: list[DatasetIssue] = []
    found_folder = False
    for entry in sorted(root.iterdir()):
        if not _visible(entry.name):
            continue
        if not confine(entry):
            issues.append(DatasetIssue(str(entry), OUTSIDE_ROOT))
            continue
        if entry.is_file():
            if is_audio_path(entry):
                issues.append(
                    DatasetIssue(str(entry), f"audio file outside an instrument folder; expected {expected}")
                )
            continue
        code = entry.name.lower()
        if code not in LABELS:
            issues.append(
                DatasetIssue(str(entry), f"folder name is not an instrument code; expected {expected}")
            )
            continue
        found_folder = True
        for path in sorted(entry.iterdir()):
            if not _visible(path.name):
                continue
            if not confine(path):
                issues.append(DatasetIssue(str(path), OUTSIDE_ROOT))
                continue
            if path.is_dir():
                issues.append(
                    DatasetIssue(str(path), f"nested folder inside '{entry.name}'; expected {expected}")
                )
            elif is_audio_path(path):
                _add_train_item(path, code, items, issues)
    if not found_folder:
        raise DatasetError(f"irmastrain:{root}: no instrument folders; expected {expected}")
    return items, issues


def _add_train_item(path: Path, code: str, items: list[Item], issues: list[DatasetIssue]) -> None:
    try:
        tags = parse_train_filename(path.name)
    except ValueError as exc:
        issues.append(DatasetIssue(str(path), f"bad IRMAS file name: {exc}"))
        return
    if tags.instrument is not None and tags.instrument != code:
        issues.append(
            DatasetIssue(
                str(path),
                f"file name says [{tags.instrument}] but it is in folder '{path.parent.name}'; "
                "move the file or fix its name",
            )
        )
        return
    items.append(Item(path, to_multi_hot([code]), tags.drums, tags.genre))


# --- irmastest ----------------------------------------------------------------------------------------


def read_label_file(path: Path) -> list[str]:
    """Instrument codes of an IRMAS ``.txt`` sidecar, one per line, in file order without repeats.

    Tabs, trailing spaces, CRLF line ends, a UTF-8 BOM and blank lines are tolerated. Raises
    ``ValueError`` naming the line of every unknown code, or when the file lists no code at all.
    """
    text = path.read_text(encoding="utf-8-sig")
    codes: list[str] = []
    bad: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.strip().lower()
        if not code:
            continue
        if code not in LABELS:
            bad.append(f"line {number}: unknown instrument code {line.strip()!r}")
        elif code not in codes:
            codes.append(code)
    if bad:
        raise ValueError("; ".join(bad) + f" (expected one of {', '.join(LABELS)})")
    if not codes:
        raise ValueError("no instrument codes (the file is empty)")
    return codes


def _scan_irmastest(root: Path, confine: Confine = _anywhere) -> tuple[list[Item], list[DatasetIssue]]:
    _require_dir(root, "irmastest", "a folder of audio files, each with a same-stem .txt label file")
    items: list[Item] = []
    issues: list[DatasetIssue] = []
    for path in _walk_audio(root):
        sidecar = path.with_suffix(".txt")
        if not confine(path):
            issues.append(DatasetIssue(str(path), OUTSIDE_ROOT))
            continue
        if not confine(sidecar):  # its lines would be echoed in errors: never read it
            issues.append(DatasetIssue(str(path), f"label file {sidecar.name} {OUTSIDE_ROOT}"))
            continue
        if not sidecar.is_file():
            issues.append(DatasetIssue(str(path), f"label file {sidecar.name} not found next to it"))
            continue
        try:
            codes = read_label_file(sidecar)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            issues.append(DatasetIssue(str(sidecar), str(exc)))
            continue
        items.append(Item(path, to_multi_hot(codes)))
    return items, issues


# --- csv and inference ---------------------------------------------------------------------------------


def _scan_csv(csv_path: Path, confine: Confine = _anywhere) -> tuple[list[Item], list[DatasetIssue]]:
    _require_file(csv_path, "csv", "a CSV file with columns file, " + ", ".join(LABELS))
    header, listing = _list_csv_files(csv_path, "csv", list(LABELS), confine)
    columns = [header.index(code) for code in LABELS]
    items: list[Item] = []
    issues = list(listing.issues)
    for line, audio, cells in listing.rows:
        values = [cells[c].strip() for c in columns]
        bad = [
            f"{code}={value!r}" for code, value in zip(LABELS, values, strict=True) if value not in ("0", "1")
        ]
        if bad:
            issues.append(
                DatasetIssue(str(csv_path), f"row {line}: label values must be 0 or 1, got {', '.join(bad)}")
            )
            continue
        items.append(Item(audio, np.array([float(v) for v in values], dtype=np.float32)))
    return items, issues


def _scan_inference(path: Path, confine: Confine = _anywhere) -> tuple[list[Item], list[DatasetIssue]]:
    expected = "a folder of audio files, a CSV with a 'file' column, or one audio file"
    if not path.exists():
        raise DatasetError(f"inference:{path}: not found; expected {expected}")
    if path.is_dir():
        items, issues = [], []
        for p in _walk_audio(path):
            if confine(p):
                items.append(Item(p))
            else:
                issues.append(DatasetIssue(str(p), OUTSIDE_ROOT))
        return items, issues
    if path.suffix.lower() == ".csv":
        _, listing = _list_csv_files(path, "inference", [], confine)
        return [Item(audio) for _, audio, _ in listing.rows], listing.issues
    if is_audio_path(path):
        return [Item(path)], []
    raise DatasetError(f"inference:{path}: not a folder, .csv or audio file; expected {expected}")


# --- openmic -------------------------------------------------------------------------------------------


def openmic_audio_path(root: Path, sample_key: str) -> Path:
    """Where OpenMIC-2018 keeps a clip: ``audio/<first three characters of the key>/<key>.ogg``."""
    return root / "audio" / sample_key[:3] / f"{sample_key}.ogg"


def _scan_openmic(
    root: Path, threshold: float, confine: Confine = _anywhere
) -> tuple[list[Item], list[DatasetIssue]]:
    expected = f"the OpenMIC-2018 folder holding {OPENMIC_LABELS_CSV} and audio/"
    _require_dir(root, "openmic", expected)
    labels_csv = root / OPENMIC_LABELS_CSV
    _require_file(labels_csv, "openmic", expected)
    header, rows = _read_csv(labels_csv, "openmic", ["sample_key", "instrument", "relevance"])
    key_col, inst_col, rel_col = (header.index(c) for c in ("sample_key", "instrument", "relevance"))
    relevance: dict[str, dict[str, float]] = {}
    issues: list[DatasetIssue] = []
    for line, cells in rows:
        problem = _openmic_row_problem(cells, len(header), inst_col, rel_col)
        key = cells[key_col].strip() if len(cells) == len(header) else ""
        if problem is None and not key:
            problem = "empty sample_key"
        if problem is None and cells[inst_col].strip() in relevance.get(key, {}):
            problem = f"second row for {key} / {cells[inst_col].strip()}"
        if problem is not None:
            issues.append(DatasetIssue(str(labels_csv), f"row {line}: {problem}"))
            continue
        relevance.setdefault(key, {})[cells[inst_col].strip()] = float(cells[rel_col])
    items: list[Item] = []
    left_out = 0
    for key in sorted(relevance):
        audio = openmic_audio_path(root, key)
        if not confine(audio):
            issues.append(DatasetIssue(str(audio), OUTSIDE_ROOT))
            continue
        if not audio.is_file():
            issues.append(
                DatasetIssue(
                    str(audio), f"audio for sample_key {key} listed in {OPENMIC_LABELS_CSV} not found"
                )
            )
            continue
        rel = relevance[key]
        if rel.get(OPENMIC_AMBIGUOUS, 0.0) >= threshold:
            left_out += 1
            continue
        codes = [code for name, code in OPENMIC_TO_IRMAS.items() if rel.get(name, 0.0) >= threshold]
        drums = rel["drums"] >= threshold if "drums" in rel else None
        items.append(Item(audio, to_multi_hot(codes), drums, None))
    if left_out:
        log.info(
            "openmic:%s: left out %d guitar clips (OpenMIC does not split guitar into gac/gel)",
            root,
            left_out,
        )
    return items, issues


def _openmic_row_problem(cells: list[str], width: int, inst_col: int, rel_col: int) -> str | None:
    if len(cells) != width:
        return f"{len(cells)} cells for {width} columns"
    instrument = cells[inst_col].strip()
    if instrument not in OPENMIC_CLASSES:
        return f"unknown OpenMIC instrument {instrument!r}"
    try:
        value = float(cells[rel_col])
    except ValueError:
        return f"relevance {cells[rel_col]!r} is not a number"
    if not 0.0 <= value <= 1.0:
        return f"relevance {value} is outside [0, 1]"
    return None


# openmic is called directly by scan_dataset: it alone takes the relevance threshold.
_SCANNERS: dict[str, Callable[[Path, Confine], tuple[list[Item], list[DatasetIssue]]]] = {
    "irmastrain": _scan_irmastrain,
    "irmastest": _scan_irmastest,
    "csv": _scan_csv,
    "inference": _scan_inference,
}

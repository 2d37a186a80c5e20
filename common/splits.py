"""Group-aware dataset splits, written as ``csv:`` datasets.

IRMAS ships no validation set, and its test set holds several excerpts of each song
(``02 - Blood Red Skies-3.wav``). Tuning thresholds on excerpts whose siblings are then scored
leaks the song into the score, so a validation split must keep every song on one side. The IRMAS
training set does the same with its 3 s excerpts (``008__[cel][nod][cla]0058__1.wav``,
``…0058__2.wav``: one track), so the group of a file is its stem without the excerpt number of
either layout: the trailing ``__<k>`` of a training name, else the trailing ``-<n>`` of a test name.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from common.datasets import DatasetError, Item
from common.labels import LABELS

_EXCERPT_SUFFIX = re.compile(r"-\d+$")  # IRMAS test: "<song>-<n>"
_TRAIN_EXCERPT_SUFFIX = re.compile(r"__\d+$")  # IRMAS train: "[<code>]...<track>__<k>"
GROUPINGS: tuple[str, ...] = ("song", "file")


def song_key(path: Path) -> str:
    """The song (track) a file is an excerpt of, case-insensitive.

    ``.../02 - Blood Red Skies-3.wav`` -> ``02 - blood red skies``;
    ``cel/008__[cel][nod][cla]0058__2.wav`` -> ``008__[cel][nod][cla]0058``.
    """
    stem = path.stem
    trimmed = _TRAIN_EXCERPT_SUFFIX.sub("", stem)
    if trimmed == stem:
        trimmed = _EXCERPT_SUFFIX.sub("", stem)
    return trimmed.strip().lower()


def group_split(
    items: Sequence[Item], fraction: float, seed: int, key: Callable[[Path], str] = song_key
) -> tuple[list[Item], list[Item]]:
    """Split whole groups at random: the first part gets about ``fraction`` of the files.

    Groups are shuffled with ``seed`` and taken until the first part reaches the target file count,
    so the sizes are approximate when groups are large; both parts keep the input's order.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"--fraction must be between 0 and 1 (exclusive), got {fraction}")
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item.path), []).append(i)
    if len(groups) < 2:
        raise DatasetError(
            f"cannot split {len(items)} file(s) in {len(groups)} group(s); need at least 2 groups"
        )
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    target = max(1, round(fraction * len(items)))
    chosen: set[int] = set()
    for name in order[:-1]:  # the last group always stays in the second part
        if len(chosen) >= target:
            break
        chosen.update(groups[name])
    first = [item for i, item in enumerate(items) if i in chosen]
    second = [item for i, item in enumerate(items) if i not in chosen]
    return first, second


def write_csv_dataset(items: Sequence[Item], path: Path) -> None:
    """A ``csv:`` dataset (``file`` + one 0/1 column per code) with absolute audio paths."""
    if any(item.labels is None for item in items):
        raise DatasetError(f"{path}: only labelled items can be written as a csv dataset")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *LABELS])
        for item in items:
            assert item.labels is not None
            writer.writerow([str(item.path.resolve()), *(int(v >= 0.5) for v in item.labels)])
    tmp.replace(path)

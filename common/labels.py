"""The eleven IRMAS instruments: codes, names, families, and code <-> index helpers.

The canonical order below is the order of every label vector, model output and metric table in
the project. Changing it would silently permute every trained model's outputs, so it is fixed here
once and artifacts carry their own copy of it (``ArtifactMetadata.labels``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

LABELS: tuple[str, ...] = (
    "cel",
    "cla",
    "flu",
    "gac",
    "gel",
    "org",
    "pia",
    "sax",
    "tru",
    "vio",
    "voi",
)
N_LABELS = len(LABELS)

NAMES: dict[str, str] = {
    "cel": "cello",
    "cla": "clarinet",
    "flu": "flute",
    "gac": "acoustic guitar",
    "gel": "electric guitar",
    "org": "organ",
    "pia": "piano",
    "sax": "saxophone",
    "tru": "trumpet",
    "vio": "violin",
    "voi": "voice",
}

FAMILIES: dict[str, tuple[str, ...]] = {
    "strings": ("cel", "vio"),
    "woodwind": ("cla", "flu", "sax"),
    "brass": ("tru",),
    "guitars": ("gac", "gel"),
    "keyboards": ("org", "pia"),
    "voice": ("voi",),
}
FAMILY_OF: dict[str, str] = {code: fam for fam, codes in FAMILIES.items() for code in codes}

# IRMAS training-file tags that are not instruments.
DRUM_TAGS: dict[str, bool] = {"dru": True, "nod": False}
GENRES: dict[str, str] = {
    "cou_fol": "country-folk",
    "cla": "classical",
    "pop_roc": "pop-rock",
    "lat_sou": "latin-soul",
    "jaz_blu": "jazz-blues",
}

_INDEX: dict[str, int] = {code: i for i, code in enumerate(LABELS)}


class UnknownLabelError(ValueError):
    """A code that is not one of the eleven IRMAS instruments."""


def index_of(code: str) -> int:
    """Position of ``code`` in :data:`LABELS` (case and surrounding space ignored)."""
    key = code.strip().lower()
    try:
        return _INDEX[key]
    except KeyError:
        raise UnknownLabelError(
            f"unknown instrument code {code!r}; expected one of {', '.join(LABELS)}"
        ) from None


def code_of(index: int) -> str:
    if not 0 <= index < N_LABELS:
        raise IndexError(f"label index {index} out of range 0..{N_LABELS - 1}")
    return LABELS[index]


def to_multi_hot(codes: Iterable[str]) -> np.ndarray:
    """float32 vector of length 11 with 1.0 at every code given."""
    vec = np.zeros(N_LABELS, dtype=np.float32)
    for code in codes:
        vec[index_of(code)] = 1.0
    return vec


def from_multi_hot(vector: Sequence[float] | np.ndarray, threshold: float = 0.5) -> list[str]:
    """Codes whose entry is >= ``threshold``, in canonical order."""
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if arr.shape[0] != N_LABELS:
        raise ValueError(f"expected a vector of {N_LABELS} values, got {arr.shape[0]}")
    return [LABELS[i] for i in np.flatnonzero(arr >= threshold)]


def family_matrix(labels: Sequence[str] = LABELS) -> np.ndarray:
    """[n_families, n_labels] 0/1 matrix mapping instruments to families (order of FAMILIES)."""
    mat = np.zeros((len(FAMILIES), len(labels)), dtype=np.float32)
    for f, codes in enumerate(FAMILIES.values()):
        for code in codes:
            if code in labels:
                mat[f, list(labels).index(code)] = 1.0
    return mat

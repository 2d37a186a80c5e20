"""The fixed label order and the code <-> index <-> multi-hot helpers."""

from __future__ import annotations

import numpy as np
import pytest

from common.labels import (
    DRUM_TAGS,
    FAMILIES,
    FAMILY_OF,
    GENRES,
    LABELS,
    N_LABELS,
    NAMES,
    UnknownLabelError,
    code_of,
    family_matrix,
    from_multi_hot,
    index_of,
    to_multi_hot,
)


def test_canonical_order_is_fixed() -> None:
    # Every trained model's outputs depend on this order; changing it must fail a test.
    assert LABELS == ("cel", "cla", "flu", "gac", "gel", "org", "pia", "sax", "tru", "vio", "voi")
    assert N_LABELS == 11
    assert set(NAMES) == set(LABELS)


def test_families_partition_the_labels() -> None:
    grouped = [code for codes in FAMILIES.values() for code in codes]
    assert sorted(grouped) == sorted(LABELS)
    assert all(code in FAMILIES[FAMILY_OF[code]] for code in LABELS)


def test_tags_do_not_collide_with_drums() -> None:
    assert not set(DRUM_TAGS) & set(GENRES) and not set(DRUM_TAGS) & set(LABELS)
    assert DRUM_TAGS == {"dru": True, "nod": False}


@pytest.mark.parametrize("code", LABELS)
def test_index_and_code_round_trip(code: str) -> None:
    assert code_of(index_of(code)) == code
    assert index_of(f" {code.upper()} ") == index_of(code)


def test_unknown_codes_and_indices() -> None:
    with pytest.raises(UnknownLabelError, match="unknown instrument code 'guitar'; expected one of cel"):
        index_of("guitar")
    with pytest.raises(IndexError, match="out of range 0..10"):
        code_of(11)
    with pytest.raises(IndexError):
        code_of(-1)


def test_multi_hot_round_trip() -> None:
    vec = to_multi_hot(["voi", "cel", "voi"])
    assert vec.dtype == np.float32 and vec.shape == (11,)
    assert vec.sum() == 2 and vec[0] == 1 and vec[10] == 1
    assert from_multi_hot(vec) == ["cel", "voi"]
    assert to_multi_hot([]).sum() == 0
    probs = np.linspace(0, 1, 11)
    assert from_multi_hot(probs, threshold=0.75) == ["tru", "vio", "voi"]
    with pytest.raises(ValueError, match="expected a vector of 11 values, got 3"):
        from_multi_hot([1, 0, 1])
    with pytest.raises(UnknownLabelError):
        to_multi_hot(["cel", "drums"])


def test_family_matrix() -> None:
    mat = family_matrix()
    assert mat.shape == (len(FAMILIES), N_LABELS)
    assert (mat.sum(axis=0) == 1).all()
    guitars = list(FAMILIES).index("guitars")
    assert from_multi_hot(mat[guitars]) == ["gac", "gel"]
    subset = family_matrix(("pia", "voi"))
    assert subset.shape == (len(FAMILIES), 2) and subset.sum() == 2

"""benchmarks/musicnn_tag_prior.py: MagnaTagATune tags mapped to instruments and fused with the model's."""

from __future__ import annotations

import numpy as np
import pytest

from common.artifact import ArtifactMetadata
from common.labels import LABELS
from tests.benchmark_scripts import load

probe = load("musicnn_tag_prior")
LABEL_LIST = list(LABELS)


def test_tag_map_names_real_tags_and_leaves_four_instruments_untagged() -> None:
    cols = probe.tag_columns(LABEL_LIST)
    by_code = dict(zip(LABEL_LIST, cols, strict=True))
    assert by_code["gac"] == by_code["gel"] == [probe.MTT_TAGS.index("guitar")]
    assert [code for code, c in by_code.items() if not c] == ["cla", "org", "sax", "tru"]
    assert len(by_code["voi"]) == len(probe.VOCAL_TAGS)
    assert probe.mapped_mask(LABEL_LIST).tolist() == [bool(c) for c in cols]


def test_instrument_score_is_the_max_of_its_tags_and_untagged_get_one_half() -> None:
    tags = np.zeros((2, len(probe.MTT_TAGS)), dtype=np.float32)
    tags[0, probe.MTT_TAGS.index("harpsichord")] = 0.7
    tags[0, probe.MTT_TAGS.index("piano")] = 0.2
    tags[1, probe.MTT_TAGS.index("choir")] = 0.9
    tags[1, probe.MTT_TAGS.index("male vocal")] = 0.4
    out = probe.tags_to_instruments(tags, LABEL_LIST)
    col = {code: i for i, code in enumerate(LABEL_LIST)}
    assert out[0, col["pia"]] == pytest.approx(0.7) and out[1, col["voi"]] == pytest.approx(0.9)
    assert out[1, col["pia"]] == 0.0
    for code in ("cla", "org", "sax", "tru"):
        assert (out[:, col[code]] == 0.5).all()


@pytest.mark.parametrize("fusion", probe.FUSIONS)
def test_fusion_moves_only_tagged_instruments_and_is_the_identity_at_zero_weight(fusion: str) -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, (5, 11)).astype(np.float32)
    q = rng.uniform(0.01, 0.99, (5, 11)).astype(np.float32)
    mask = probe.mapped_mask(LABEL_LIST)
    q_bar = np.full(11, 0.2)
    np.testing.assert_allclose(probe.fuse(p, q, mask, fusion, 0.0, q_bar), p, atol=1e-6)
    fused = probe.fuse(p, q, mask, fusion, 0.8, q_bar)
    np.testing.assert_array_equal(fused[:, ~mask], p[:, ~mask])
    # A tag above its usual level (odds) or above the model's score (linear) raises the instrument.
    up = (q > q_bar) if fusion == "odds" else (q > p)
    assert (fused[:, mask][up[:, mask]] > p[:, mask][up[:, mask]]).all()
    assert (fused[:, mask][~up[:, mask]] <= p[:, mask][~up[:, mask]] + 1e-6).all()


def test_odds_fusion_at_the_tags_usual_level_changes_nothing_and_linear_reaches_q() -> None:
    p = np.full((1, 11), 0.3, dtype=np.float32)
    q = np.full((1, 11), 0.6, dtype=np.float32)
    mask = probe.mapped_mask(LABEL_LIST)
    np.testing.assert_allclose(probe.fuse(p, q, mask, "odds", 1.0, np.full(11, 0.6)), p, atol=1e-5)
    linear = probe.fuse(p, q, mask, "linear", 1.0, np.full(11, 0.6))
    np.testing.assert_allclose(linear[:, mask], 0.6, atol=1e-6)
    with pytest.raises(ValueError, match="unknown fusion"):
        probe.fuse(p, q, mask, "max", 1.0, np.full(11, 0.6))


def test_choice_prefers_the_smaller_weight_on_ties_and_reads_validation_lrap() -> None:
    # The model ranks every file's true instrument (flute) last; the flute tag ranks it first.
    mask = probe.mapped_mask(LABEL_LIST)
    flu = LABEL_LIST.index("flu")
    y = np.zeros((4, 11), dtype=np.int8)
    y[:, flu] = 1
    p = np.full((4, 11), 0.5, dtype=np.float32)
    p[:, flu] = 0.1
    q = np.full((4, 11), 0.1, dtype=np.float32)
    q[:, flu] = 0.99
    fusion, w, grid = probe.choose(p, q, y, mask, np.full(11, 0.1))
    assert w > 0 and len(grid) == len(probe.FUSIONS) * len(probe.WEIGHTS)
    best = max(v for _, _, v in grid)
    assert best == pytest.approx(1.0)
    # No evidence either way (q equal to p everywhere): every w ties and the smallest, 0, is chosen.
    _, w0, _ = probe.choose(p, p.copy(), y, mask, p.mean(axis=0))
    assert w0 == 0.0


def test_tag_predictor_scores_windows_of_the_bundled_contract() -> None:
    meta = ArtifactMetadata(
        labels=LABEL_LIST,
        sample_rate=16000,
        window_samples=48000,
        hop_samples=24000,
        thresholds=[0.5] * 11,
        aggregation="mean",
        architecture="SMALL_CNN",
    )
    predictor = probe.TagPredictor(meta)
    t = np.arange(48000) / 16000
    windows = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)]).astype(np.float32)
    out = predictor.predict(windows)
    assert out.shape == (2, 11) and out.dtype == np.float32
    assert ((out >= 0) & (out <= 1)).all()
    assert (out[:, ~probe.mapped_mask(LABEL_LIST)] == 0.5).all()
    assert not np.allclose(out[0], out[1])  # a tone and silence are tagged differently


@pytest.mark.parametrize(
    "lrap, f1, passed", [(0.95, 0.6, True), (0.874, 0.9, False), (0.95, 0.37, False), (None, None, False)]
)
def test_the_adoption_rule_needs_lrap_ahead_in_90_and_macro_f1_in_50_percent(
    tmp_path, lrap: float | None, f1: float | None, passed: bool
) -> None:
    import json
    import time

    boot = None if lrap is None else {"lrap": {"share_b_ahead": lrap}, "f1_macro": {"share_b_ahead": f1}}
    report: dict = {"sets": {}}
    probe.write_report(report, boot, time.perf_counter(), tmp_path / "r.json")
    assert report["rule_passed"] is passed
    assert json.loads((tmp_path / "r.json").read_text())["rule_passed"] is passed

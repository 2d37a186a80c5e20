"""Losses: focal reduces to BCE, pos_weight from counts, family loss on family max-logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.labels import LABELS, N_LABELS, index_of
from training.config import ConfigError
from training.losses import (
    BCELoss,
    FocalLoss,
    InstrumentFamilyLoss,
    build_loss,
    pos_weight_from_counts,
)


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, N_LABELS, generator=gen) * 3
    targets = (torch.rand(6, N_LABELS, generator=gen) > 0.7).float()
    return logits, targets


def test_focal_with_gamma_zero_is_bce(batch):
    logits, targets = batch
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, targets), expected, atol=1e-6)


def test_focal_downweights_easy_examples(batch):
    logits, targets = batch
    confident_right = torch.where(targets > 0, 8.0, -8.0)
    bce = F.binary_cross_entropy_with_logits(confident_right, targets)
    focal = FocalLoss(gamma=2.0)(confident_right, targets)
    assert focal < bce * 1e-3
    # A wrong prediction keeps most of its BCE weight.
    assert FocalLoss(gamma=2.0)(-confident_right, targets) > 0.9 * F.binary_cross_entropy_with_logits(
        -confident_right, targets
    )


def test_focal_alpha_weights_positives_and_negatives():
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    per_label = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    got = FocalLoss(gamma=0.0, alpha=0.25)(logits, targets)
    assert torch.isclose(got, (0.25 * per_label[0, 0] + 0.75 * per_label[0, 1]) / 2)


def test_pos_weight_is_negatives_over_positives():
    weights = pos_weight_from_counts([1, 4, 0, 10], n_items=10)
    assert torch.allclose(weights, torch.tensor([9.0, 1.5, 1.0, 0.0]))


def test_pos_weight_loss_matches_torch(batch):
    logits, targets = batch
    counts = np.arange(1, N_LABELS + 1)
    loss = build_loss("CROSS_ENTROPY_POS_WEIGHT", {}, LABELS, counts, n_items=20)
    expected = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight_from_counts(counts, 20)
    )
    assert torch.allclose(loss(logits, targets), expected)
    focal = build_loss("FOCAL_LOSS_POS_WEIGHT", {"gamma": 0}, LABELS, counts, n_items=20)
    assert torch.allclose(focal(logits, targets), expected, atol=1e-6)
    assert "pos_weight" not in loss.state_dict()  # recomputed from data, never stored in checkpoints


def test_family_loss_adds_bce_on_family_max_logits():
    loss = InstrumentFamilyLoss(LABELS, family_weight=0.5)
    logits = torch.full((1, N_LABELS), -4.0)
    logits[0, index_of("vio")] = 3.0
    targets = torch.zeros(1, N_LABELS)
    targets[0, index_of("cel")] = 1.0
    family_logits = loss.family_max(logits)
    family_targets = loss.family_max(targets)
    # strings = (cel, vio): family logit is the violin's 3.0 and the family is present.
    assert family_logits[0, 0] == 3.0 and family_targets[0, 0] == 1.0
    expected = F.binary_cross_entropy_with_logits(logits, targets) + 0.5 * F.binary_cross_entropy_with_logits(
        family_logits, family_targets
    )
    assert torch.isclose(loss(logits, targets), expected)
    # Right family, wrong instrument costs less than the wrong family.
    wrong_family = logits.clone()
    wrong_family[0, index_of("vio")] = -4.0
    wrong_family[0, index_of("tru")] = 3.0
    assert loss(logits, targets) < loss(wrong_family, targets)


def test_build_loss_rejects_bad_kwargs_and_missing_counts():
    with pytest.raises(ConfigError, match="gama"):
        build_loss("FOCAL_LOSS", {"gama": 2}, LABELS)
    with pytest.raises(ConfigError, match="train"):
        build_loss("CROSS_ENTROPY_POS_WEIGHT", {}, LABELS)
    assert isinstance(build_loss("CROSS_ENTROPY", {}, LABELS), BCELoss)

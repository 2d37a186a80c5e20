"""Multi-label losses, all on logits ``[B, L]`` against (possibly soft) targets ``[B, L]``.

``--loss-function`` picks one of :data:`training.config.LOSSES`; ``--loss-function-kwargs`` tunes it:

- ``CROSS_ENTROPY``: binary cross-entropy per label (``BCEWithLogits``), the baseline.
- ``CROSS_ENTROPY_POS_WEIGHT``: BCE whose positive term is weighted by ``negatives / positives`` of each
  label as the loss sees it in training (after the sampler and the mixing augmentations, see
  :mod:`training.label_stats`), so a rare instrument's misses cost as much in total as a common one's.
- ``FOCAL_LOSS`` (``gamma``, default 2; ``alpha``, default off): BCE scaled by ``(1 - p_t) ** gamma``,
  which down-weights the easy, confidently right labels that dominate an 11-way multi-hot target.
  With ``gamma=0`` and no ``alpha`` it *is* BCE (a test checks this).
- ``FOCAL_LOSS_POS_WEIGHT``: both of the above.
- ``INSTRUMENT_FAMILY_LOSS`` (``family_weight``, default 0.5): BCE plus ``family_weight`` times BCE on
  family logits (max over each family's instrument logits, see :data:`common.labels.FAMILIES`), which
  teaches "it is a string instrument" even when cello vs violin is unclear.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.labels import family_matrix
from training.config import LOSSES, ConfigError

DEFAULT_GAMMA = 2.0
DEFAULT_FAMILY_WEIGHT = 0.5
# Which --loss-function-kwargs keys each loss understands; anything else is a typo we refuse.
LOSS_KWARGS: dict[str, tuple[str, ...]] = {
    "CROSS_ENTROPY": (),
    "CROSS_ENTROPY_POS_WEIGHT": (),
    "FOCAL_LOSS": ("gamma", "alpha"),
    "FOCAL_LOSS_POS_WEIGHT": ("gamma", "alpha"),
    "INSTRUMENT_FAMILY_LOSS": ("family_weight",),
}


def pos_weight_from_counts(label_counts: Sequence[float] | np.ndarray, n_items: int) -> torch.Tensor:
    """``negatives / positives`` per label, the ``pos_weight`` of :class:`torch.nn.BCEWithLogitsLoss`.

    A label absent from the training set gets weight 1 (there is nothing to rebalance, and an infinite
    weight would only turn into NaNs if a mixed-in sample ever carried it).
    """
    counts = np.asarray(label_counts, dtype=np.float64)
    if n_items <= 0:
        raise ValueError("pos_weight needs at least one training item")
    if (counts < 0).any() or (counts > n_items).any():
        raise ValueError(f"label counts {counts.tolist()} are not within 0..{n_items}")
    weights = np.where(counts > 0, (n_items - counts) / np.maximum(counts, 1), 1.0)
    return torch.as_tensor(weights, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Binary focal loss on ``p_t`` (Lin et al. 2017), optionally with BCE-style ``pos_weight``."""

    def __init__(
        self, gamma: float = DEFAULT_GAMMA, alpha: float | None = None, pos_weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"--loss-function-kwargs gamma={gamma} must be >= 0")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--loss-function-kwargs alpha={alpha} must be in [0, 1]")
        self.gamma = float(gamma)
        self.alpha = alpha
        # Not persistent: it is recomputed from the training data, and keeping it out of the state dict
        # keeps checkpoints loadable into a bare model.
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(
            logits, targets, reduction="none", pos_weight=self.pos_weight
        )
        prob = torch.sigmoid(logits)
        p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
        loss = bce * (1.0 - p_t).pow(self.gamma) if self.gamma else bce
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1.0 - self.alpha) * (1.0 - targets))
        return loss.mean()


class BCELoss(nn.Module):
    """``BCEWithLogits`` whose ``pos_weight`` follows the module to its device without being saved."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


class InstrumentFamilyLoss(nn.Module):
    """BCE on instruments + ``family_weight`` x BCE on family logits (max of member logits)."""

    def __init__(self, labels: Sequence[str], family_weight: float = DEFAULT_FAMILY_WEIGHT) -> None:
        super().__init__()
        if family_weight < 0:
            raise ConfigError(f"--loss-function-kwargs family_weight={family_weight} must be >= 0")
        matrix = family_matrix(labels)
        matrix = matrix[matrix.sum(axis=1) > 0]  # families with no member among the trained labels
        self.family_weight = float(family_weight)
        self.register_buffer("members", torch.as_tensor(matrix, dtype=torch.bool), persistent=False)

    def family_max(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` -> ``[B, F]``: the max over each family's members."""
        expanded = values.unsqueeze(1).expand(-1, self.members.shape[0], -1)
        return expanded.masked_fill(~self.members, float("-inf")).amax(dim=-1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        instrument = F.binary_cross_entropy_with_logits(logits, targets)
        family = F.binary_cross_entropy_with_logits(self.family_max(logits), self.family_max(targets))
        return instrument + self.family_weight * family


def build_loss(
    name: str,
    kwargs: dict[str, Any],
    labels: Sequence[str],
    label_counts: Sequence[float] | np.ndarray | None = None,
    n_items: int | None = None,
) -> nn.Module:
    """The loss module for ``--loss-function name``; ``*_POS_WEIGHT`` losses need the training counts."""
    if name not in LOSSES:
        raise ConfigError(f"--loss-function {name!r} is not one of: {', '.join(LOSSES)}")
    unknown = sorted(set(kwargs) - set(LOSS_KWARGS[name]))
    if unknown:
        allowed = ", ".join(LOSS_KWARGS[name]) or "none"
        raise ConfigError(f"--loss-function-kwargs {unknown} not understood by {name} (allowed: {allowed})")
    pos_weight = None
    if name.endswith("_POS_WEIGHT"):
        if label_counts is None or n_items is None:
            raise ConfigError(f"--loss-function {name} needs training label counts (give --train-paths)")
        pos_weight = pos_weight_from_counts(label_counts, n_items)
    if name.startswith("FOCAL_LOSS"):
        alpha = kwargs.get("alpha")
        return FocalLoss(
            float(kwargs.get("gamma", DEFAULT_GAMMA)), None if alpha is None else float(alpha), pos_weight
        )
    if name == "INSTRUMENT_FAMILY_LOSS":
        return InstrumentFamilyLoss(labels, float(kwargs.get("family_weight", DEFAULT_FAMILY_WEIGHT)))
    return BCELoss(pos_weight)

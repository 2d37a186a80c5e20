"""Mixing augmentations: SUM_N_SAMPLES, SUM_TWO_SAMPLES and CONCAT_N_SAMPLES.

IRMAS training clips hold one predominant instrument; its test files hold several. Summing (or
chaining) examples of *different* instruments and OR-ing their labels turns single-label batches into
multi-label ones like the test set. Partners are other examples of the same batch, so the mix costs no
extra I/O; examples whose labels are disjoint from everything already in the mix are preferred, and
an overlapping partner is used only when the batch has no disjoint one left.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.augmentations._random import chosen, per_example, uniform

_EPS = 1e-9


def pick_partners(labels: Tensor, slots: int) -> Tensor:
    """``[B, slots]`` indices of distinct other examples for each example.

    Slot by slot, each example draws uniformly among the not-yet-taken examples whose labels are
    disjoint from the labels already in its mix, falling back to overlapping ones only if none is
    left. ``slots`` must be < B.
    """
    batch = labels.shape[0]
    hot = (labels > 0).to(torch.float32)
    union = hot.clone()
    taken = torch.eye(batch, dtype=torch.bool, device=labels.device)
    rows = torch.arange(batch, device=labels.device)
    partners = []
    for _ in range(slots):
        overlaps = (union @ hot.T) > 0
        # rand is in [0, 1): subtracting 1 ranks every overlapping candidate below every disjoint one.
        score = torch.rand(batch, batch, device=labels.device) - overlaps.to(torch.float32)
        pick = score.masked_fill(taken, float("-inf")).argmax(dim=1)
        partners.append(pick)
        taken[rows, pick] = True
        union = torch.maximum(union, hot[pick])
    return torch.stack(partners, dim=1)


def _partner_count(batch: int, slots: int, device: torch.device) -> Tensor:
    """``[B]`` number of partners, uniform in 1..slots ("up to n - 1 others")."""
    return torch.randint(1, slots + 1, (batch,), device=device)


def _merge_labels(labels: Tensor, sources: Tensor, used: Tensor) -> Tensor:
    """Element-wise max (OR for multi-hot) of the labels of the used ``sources`` ``[B, S]``."""
    gathered = labels[sources] * used.unsqueeze(-1).to(labels.dtype)
    return torch.maximum(labels, gathered.amax(dim=1))


def sum_samples(
    wave: Tensor, labels: Tensor, *, p: float, n: int, gain_range: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Mix each chosen example with 1..n-1 partners at random gains; labels are OR-ed.

    The mix is rescaled to the largest peak among the examples it holds: the summed window keeps the
    loudness the data pipeline gave its parts (peak-normalised data stays peak-normalised) and cannot
    clip.
    """
    batch = wave.shape[0]
    slots = min(n - 1, batch - 1)
    if slots < 1 or p <= 0:
        return wave, labels
    device = wave.device
    mask = chosen(batch, p, device)
    partners = pick_partners(labels, slots)
    used = torch.arange(slots, device=device) < _partner_count(batch, slots, device).unsqueeze(1)
    gains = uniform(*gain_range, (batch, slots + 1), device).to(wave.dtype)
    weights = gains[:, 1:] * used.to(wave.dtype)
    mix = gains[:, :1] * wave + torch.einsum("bs,bst->bt", weights, wave[partners])

    peaks = wave.abs().amax(dim=1)
    target = torch.maximum(peaks, (peaks[partners] * used.to(peaks.dtype)).amax(dim=1))
    mix = mix * (target / mix.abs().amax(dim=1).clamp_min(_EPS)).unsqueeze(1)
    return per_example(mask, mix, wave), per_example(mask, _merge_labels(labels, partners, used), labels)


def concat_samples(wave: Tensor, labels: Tensor, *, p: float, n: int) -> tuple[Tensor, Tensor]:
    """Cut each chosen window into 2..n consecutive segments taken from itself and its partners.

    Segment k keeps partner k's samples at the same time positions, so no example is resampled or
    shifted; every segment gets at least ~1/(4n) of the window so each listed label is audible.
    Labels are OR-ed over the examples that actually got samples. Boundaries are hard cuts (no
    cross-fade): a click at a boundary is the kind of artefact real edits have too.
    """
    batch, length = wave.shape
    slots = min(n - 1, batch - 1)
    if slots < 1 or p <= 0:
        return wave, labels
    device = wave.device
    mask = chosen(batch, p, device)
    sources = torch.cat(
        [torch.arange(batch, device=device).unsqueeze(1), pick_partners(labels, slots)], dim=1
    )
    active = torch.arange(slots + 1, device=device) <= _partner_count(batch, slots, device).unsqueeze(1)
    shares = uniform(0.25, 1.0, (batch, slots + 1), device) * active
    ends = shares.cumsum(dim=1) / shares.sum(dim=1, keepdim=True) * length
    times = torch.arange(length, device=device, dtype=ends.dtype).expand(batch, length).contiguous()
    segment = torch.searchsorted(ends, times, right=True).clamp_max(slots)
    mixed = wave.gather(0, sources.gather(1, segment))
    used = torch.zeros(batch, slots + 1, device=device).scatter_(1, segment, 1.0) > 0
    return per_example(mask, mixed, wave), per_example(mask, _merge_labels(labels, sources, used), labels)

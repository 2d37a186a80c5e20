"""Feature-map augmentations on the front-end output ``[B, C, F, T]`` (or ``[B, F, T]``).

Masked cells take the example's mean value rather than 0: the features are log-scaled, where 0 is a
loud, arbitrary level, while the mean is what a model sees on average. Each example draws its own
masks (SpecAugment's "iid masks"); the same mask covers every channel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.augmentations._random import chosen, per_example, uniform


def _as_4d(spec: Tensor) -> Tensor:
    if spec.dim() == 3:
        return spec.unsqueeze(1)
    if spec.dim() != 4:
        raise ValueError(
            f"spectrogram augmentations expect [B, C, F, T] or [B, F, T], got shape {tuple(spec.shape)}"
        )
    return spec


def _fill(spec: Tensor, cells: Tensor, mask: Tensor) -> Tensor:
    """Set ``cells`` (broadcastable bool) of the chosen examples (``mask`` ``[B]``) to each example's mean."""
    mean = spec.mean(dim=(1, 2, 3), keepdim=True).detach()  # a constant fill: no gradient through it
    return per_example(mask, torch.where(cells, mean, spec), spec)


def interval(size: int, width: Tensor) -> Tensor:
    """bool ``[B, size]``: one run of ``width`` ``[B]`` cells per example, at a uniform position."""
    start = (torch.rand(width.shape[0], device=width.device) * (size - width + 1)).long()
    index = torch.arange(size, device=width.device)
    return (index >= start[:, None]) & (index < (start + width)[:, None])


def _masked_axis(spec: Tensor, axis: int, *, p: float, n_masks: int, max_fraction: float) -> Tensor:
    x = _as_4d(spec)
    size = x.shape[axis]
    mask = chosen(x.shape[0], p, x.device)
    max_width = max(1, int(max_fraction * size))
    band = torch.zeros(x.shape[0], size, dtype=torch.bool, device=x.device)
    for _ in range(n_masks):
        band |= interval(size, torch.randint(1, max_width + 1, (x.shape[0],), device=x.device))
    cells = band[:, None, None, :] if axis == 3 else band[:, None, :, None]
    return _fill(x, cells, mask).view_as(spec)


def time_mask(spec: Tensor, *, p: float, n_masks: int, max_fraction: float) -> Tensor:
    return _masked_axis(spec, 3, p=p, n_masks=n_masks, max_fraction=max_fraction)


def freq_mask(spec: Tensor, *, p: float, n_masks: int, max_fraction: float) -> Tensor:
    return _masked_axis(spec, 2, p=p, n_masks=n_masks, max_fraction=max_fraction)


def random_erase(spec: Tensor, *, p: float, n_rects: int, size_range: tuple[float, float]) -> Tensor:
    """Rectangles whose height and width are drawn as fractions of the map (independently per side)."""
    x = _as_4d(spec)
    batch, _, n_freq, n_time = x.shape
    mask = chosen(batch, p, x.device)
    cells = torch.zeros(batch, n_freq, n_time, dtype=torch.bool, device=x.device)
    for _ in range(n_rects):
        height = (uniform(*size_range, (batch,), x.device) * n_freq).long().clamp_min(1)
        width = (uniform(*size_range, (batch,), x.device) * n_time).long().clamp_min(1)
        cells |= interval(n_freq, height)[:, :, None] & interval(n_time, width)[:, None, :]
    return _fill(x, cells[:, None], mask).view_as(spec)


def random_pixels(spec: Tensor, *, p: float, rate_range: tuple[float, float]) -> Tensor:
    """Each cell (every channel independently) is dropped with the example's rate."""
    x = _as_4d(spec)
    mask = chosen(x.shape[0], p, x.device)
    rate = uniform(*rate_range, (x.shape[0], 1, 1, 1), x.device)
    cells = torch.rand(x.shape, device=x.device) < rate
    return _fill(x, cells, mask).view_as(spec)

"""Feature-map augmentations on the front-end output ``[B, C, F, T]`` (or ``[B, F, T]``).

Masked cells take the example's mean value rather than 0: the features are log-scaled, where 0 is a
loud, arbitrary level, while the mean is what a model sees on average. Each example draws its own
masks (SpecAugment's "iid masks"); the same mask covers every channel.

ENVELOPE_SHIFT is not a mask: it splits each frame of the (log-scaled) map into a smooth envelope (the
first DCT coefficients along the bins, as cepstral liftering does) and the fine structure (harmonics),
moves the envelope by a fractional number of bins and adds the fine structure back. On a mel map that
moves formants and body resonances while the harmonics stay where the pitch put them: a cello body a
little larger or smaller, a trumpet bell brighter or darker, which resampling (SPEED) cannot do
without moving the pitch too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.augmentations._random import chosen, per_example, uniform
from training.frontend import dct_ortho_matrix


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


def lifter(n_freq: int, n_coeffs: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[F, F]``: a column of F bins -> its envelope (the part spanned by the first ``n_coeffs`` DCT-II bases)."""
    dct = torch.from_numpy(dct_ortho_matrix(min(n_coeffs, n_freq), n_freq))  # [F, n]: the MFCC front-end's
    return (dct @ dct.T).to(dtype=dtype, device=device)


def spectral_envelope(spec: Tensor, n_coeffs: int) -> Tensor:
    """The smooth part of each frame of ``[B, C, F, T]`` along F: its first ``n_coeffs`` DCT coefficients."""
    return lifter(spec.shape[2], n_coeffs, spec.dtype, spec.device) @ spec


def shift_matrix(n_freq: int, shift: Tensor) -> Tensor:
    """``[B, F, F]`` linear maps that move a column of F bins up by ``shift`` ``[B]`` bins (fractional:
    linear interpolation); the edge bins are repeated into the gap."""
    bins = torch.arange(n_freq, device=shift.device, dtype=shift.dtype)
    source = (bins[None, :] - shift[:, None]).clamp(0, n_freq - 1)
    low = source.floor().clamp(max=max(n_freq - 2, 0))
    weight = (source - low)[:, :, None]
    low_hot = torch.nn.functional.one_hot(low.long(), n_freq).to(shift.dtype)
    high_hot = torch.nn.functional.one_hot((low.long() + 1).clamp(max=n_freq - 1), n_freq).to(shift.dtype)
    return (1 - weight) * low_hot + weight * high_hot


def shift_bins(spec: Tensor, shift: Tensor) -> Tensor:
    """``spec`` ``[B, C, F, T]`` moved up by ``shift`` ``[B]`` bins (see :func:`shift_matrix`)."""
    return shift_matrix(spec.shape[2], shift)[:, None] @ spec


def envelope_shift(spec: Tensor, *, p: float, shift_range: tuple[float, float], n_coeffs: int) -> Tensor:
    """Move each chosen example's spectral envelope by a uniform number of bins, keep its fine structure."""
    x = _as_4d(spec)
    mask = chosen(x.shape[0], p, x.device)
    shift = uniform(*shift_range, (x.shape[0],), x.device).to(x.dtype)
    n_freq = x.shape[2]
    envelope = lifter(n_freq, n_coeffs, x.dtype, x.device)
    identity = torch.eye(n_freq, dtype=x.dtype, device=x.device)
    # x - envelope + shifted envelope, as one [B, F, F] map per example
    moved = (identity + (shift_matrix(n_freq, shift) - identity) @ envelope)[:, None] @ x
    return per_example(mask, moved, x).view_as(spec)

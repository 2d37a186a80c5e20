"""Batched random draws on the tensors' own device, all from torch's global generators.

Using the global generator (not a private one) is what makes a run reproducible from
``torch.manual_seed`` / Lightning's ``seed_everything`` alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def chosen(batch: int, p: float, device: torch.device) -> Tensor:
    """bool ``[batch]``: which examples an augmentation with probability ``p`` applies to."""
    return torch.rand(batch, device=device) < p


def uniform(low: float, high: float, shape: tuple[int, ...], device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(shape, device=device)


def log_uniform(low: float, high: float, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Log-uniform draws, so that a factor and its inverse (x0.8, x1.25) are equally likely."""
    return uniform(math.log(low), math.log(high), shape, device).exp()


def per_example(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``mask`` (``[B]``) is set, ``old`` elsewhere; unselected examples stay bit-identical."""
    return torch.where(mask.view(-1, *([1] * (old.dim() - 1))), new, old)

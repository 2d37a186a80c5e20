"""The label statistics the loss sees: what ``*_POS_WEIGHT`` losses balance.

Mixing augmentations OR the labels of the examples they combine (SUM_N_SAMPLES with p 0.8 and n 4
turns single-instrument clips into examples with 2.6 instruments on average), and the weighted
sampler changes how often each item is drawn, so raw file counts are not what the loss is trained
on. :func:`loss_label_counts` replays one epoch of exactly that: the training sampler's draws,
batched as the loader batches them, through the pipeline's mixing steps. Only label vectors move
(with a short silent stand-in waveform); no audio is decoded, so this costs milliseconds per epoch of
IRMAS. Its random draws come from a generator forked off the run's seed, so training's own random
stream is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.datasets import Item
from training.config import TrainConfig
from training.data import label_matrix, sampler_weights

# Stand-in waveform length: every CONCAT_N_SAMPLES segment gets >= 1/(4n) of the window, so any length
# well above 4n samples marks the same segments "used" as the real window does.
STAND_IN_SAMPLES = 1024


def loss_label_counts(items: Sequence[Item], config: TrainConfig) -> tuple[np.ndarray, int]:
    """(positives per label ``[L]``, examples) over one simulated training epoch (see module docstring).

    Without mixing augmentations and without the weighted sampler these are the files' own counts.
    """
    labels = torch.as_tensor(label_matrix(items))
    mixing = _mixing_pipeline(config)
    if mixing is None and not config.use_weighted_train_sampler:
        return (labels > 0.5).sum(dim=0).numpy().astype(np.float64), len(items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        n = len(items)
        if config.use_weighted_train_sampler:
            weights = torch.as_tensor(sampler_weights(labels.numpy()), dtype=torch.double)
            order = torch.multinomial(weights, n, replacement=True)
        else:
            order = torch.randperm(n)
        batch = config.batch_size
        usable = n - n % batch if n > batch else n  # the loader's drop_last
        counts, seen = torch.zeros(labels.shape[1], dtype=torch.float64), 0
        for start in range(0, usable, batch):
            targets = labels[order[start : start + batch]]
            if mixing is not None:
                wave = torch.zeros(targets.shape[0], STAND_IN_SAMPLES)
                _, targets = mixing.mix(wave, targets)
            counts += (targets > 0.5).sum(dim=0).double()
            seen += targets.shape[0]
    return counts.numpy(), seen


def _mixing_pipeline(config: TrainConfig):
    from training.augmentations import build_augmentations
    from training.augmentations.pipeline import MIXING_ORDER

    if not any(name in MIXING_ORDER for name in config.augmentations):
        return None
    return build_augmentations(config.augmentations, config.aug_kwargs, config.frontend.sample_rate)

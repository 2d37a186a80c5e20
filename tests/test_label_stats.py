"""Pos-weight from the labels the loss sees: mixing ORs labels, the weighted sampler re-draws items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.datasets import Item
from common.labels import LABELS, to_multi_hot
from training.augmentations import build_augmentations
from training.config import TrainConfig
from training.label_stats import loss_label_counts
from training.losses import pos_weight_from_counts

N_PER_LABEL = 40  # 440 single-instrument items, like IRMAS-train


def _items(per_label: dict[str, int] | None = None) -> list[Item]:
    per_label = per_label or dict.fromkeys(LABELS, N_PER_LABEL)
    return [
        Item(Path(f"/x/{code}/{k}.wav"), to_multi_hot([code]))
        for code, n in per_label.items()
        for k in range(n)
    ]


def _config(**overrides) -> TrainConfig:
    return TrainConfig(batch_size=16, **overrides)


def test_without_mixing_the_counts_are_the_files_own():
    items = _items({**dict.fromkeys(LABELS, 10), "voi": 50})
    counts, n = loss_label_counts(items, _config())
    assert n == len(items) and counts.tolist() == [10.0] * 10 + [50.0]


def test_sum_n_samples_counts_are_what_the_mixing_produces():
    """The recipe's p 0.8, n 4: 1 + 0.8 x E[1..3 partners] = 2.6 instruments per example, not 1."""
    config = _config(
        augmentations=["SUM_N_SAMPLES"], aug_kwargs={"sum_n_samples_p": 0.8, "sum_n_samples_n": 4}
    )
    items = _items()
    counts, n = loss_label_counts(items, config)
    assert n == len(items) - len(items) % config.batch_size  # the loader drops the last partial batch
    assert counts.sum() / n == pytest.approx(2.6, abs=0.15)
    raw = pos_weight_from_counts([N_PER_LABEL] * len(LABELS), len(items))
    mixed = pos_weight_from_counts(counts, n)
    assert raw[0] == pytest.approx(10.0) and mixed.max() < 0.6 * raw.min()  # ~ (11 - 2.6) / 2.6 = 3.2
    # The replay is the pipeline's own mixing: the same seed gives the same counts as batching by hand.
    torch.manual_seed(config.seed)
    order = torch.randperm(len(items))
    pipeline = build_augmentations(config.augmentations, config.aug_kwargs, 16_000)
    labels = torch.as_tensor(np.stack([i.labels for i in items]))
    by_hand = sum(
        pipeline.mix(torch.zeros(16, 1024), labels[order[s : s + 16]])[1].sum(dim=0) for s in range(0, n, 16)
    )
    assert np.allclose(counts, by_hand.numpy())


def test_the_replay_leaves_trainings_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    loss_label_counts(_items(), _config(augmentations=["SUM_TWO_SAMPLES"]))
    assert torch.equal(torch.rand(3), expected)


def test_weighted_sampler_counts_are_balanced():
    items = _items({**dict.fromkeys(LABELS, 5), "gel": 200})
    counts, n = loss_label_counts(items, _config(use_weighted_train_sampler=True))
    share = counts / n
    assert share.max() < 3 * share.min()  # raw counts differ 40x; the sampler draws every label alike


def test_lumen_train_gives_the_loss_the_mixed_counts(tmp_path, monkeypatch):
    from training import module as module_lib
    from training.cli import main
    from training.synth import synthesize

    synthesize(tmp_path / "train", "irmastrain", 2, 0, sample_rate=16_000, progress=False)
    synthesize(
        tmp_path / "val", "irmastest", 1, 1, sample_rate=16_000, min_seconds=2, max_seconds=3, progress=False
    )
    seen: dict[str, object] = {}

    class Spy(module_lib.LumenModule):
        def __init__(self, config, **kwargs):
            seen.update(kwargs)
            super().__init__(config, **kwargs)

    monkeypatch.setattr(module_lib, "LumenModule", Spy)
    flags = [
        "--train-paths", f"irmastrain:{tmp_path / 'train'}", "--val-paths", f"irmastest:{tmp_path / 'val'}",
        "--quick", "--epochs", "1", "--nofinetune-head", "--model", "SMALL_CNN", "--n-mels", "32",
        "--window-seconds", "1.0", "--hop-seconds", "0.5", "--num-workers", "0", "--batch-size", "4", "--output-dir", str(tmp_path / "o"),
        "--loss-function", "FOCAL_LOSS_POS_WEIGHT", "--augmentations", "SUM_N_SAMPLES",
        "--aug-kwargs", "sum_n_samples_p=1.0", "sum_n_samples_n=2",
    ]  # fmt: skip
    assert main(flags) == 0
    counts, n = np.asarray(seen["label_counts"]), seen["n_train_items"]
    assert counts.sum() == 2 * n  # every example became a two-instrument mix; raw counts would give n

"""LightningModule pieces: file-level aggregation, weight-decay groups, head finetuning, DDP strategy."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch

from common.audio import aggregate
from common.labels import LABELS, N_LABELS
from training.cli import trainer_strategy
from training.config import TrainConfig
from training.data import LumenDataModule
from training.module import FinetuneSchedule, LumenModule, parameter_groups

SR = 8000


def _config(**overrides) -> TrainConfig:
    config = TrainConfig(window_seconds=0.5, hop_seconds=0.25, num_workers=0, batch_size=4, **overrides)
    config.frontend.sample_rate = SR
    config.frontend.n_mels = 32
    config.frontend.n_fft = 256
    config.frontend.hop_length = 128
    return config


def test_file_predictions_deduplicate_and_aggregate_like_serving():
    module = LumenModule(_config(aggregation="mean"))
    rng = np.random.default_rng(0)
    probs = torch.as_tensor(rng.random((5, N_LABELS)), dtype=torch.float32)
    valid = torch.tensor([4000, 4000, 1000, 4000, 4000])
    starts = torch.tensor([0, 2000, 4000, 0, 0])
    file_index = torch.tensor([3, 3, 3, 1, 1])  # file 1's only window repeated (DistributedSampler padding)
    labels = torch.zeros(5, N_LABELS)
    labels[:3, 0] = 1
    labels[3:, 2] = 1
    module._eval_outputs.append((probs, valid, starts, file_index, labels))
    files, y_true, y_prob = module.file_predictions()
    assert files.tolist() == [1, 3]
    assert y_true[:, 0].tolist() == [0, 1] and y_true[:, 2].tolist() == [1, 0]
    assert np.allclose(y_prob[0], probs[3].numpy())
    assert np.allclose(y_prob[1], aggregate(probs[:3].numpy(), "mean", valid[:3].numpy()))


def test_norms_and_biases_get_no_weight_decay():
    module = LumenModule(_config())
    decay, no_decay = parameter_groups(module.model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim <= 1 for p in no_decay["params"])
    n_params = len(list(module.model.parameters()))
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


class _Recorder(pl.Callback):
    """Which parameters changed in each epoch, and the LR used."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.lrs = getattr(self, "lrs", [])
        self.changed = getattr(self, "changed", [])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.changed.append(
            {n for n, p in pl_module.model.named_parameters() if not torch.equal(p.detach(), self.before[n])}
        )


def _tone_data(root: Path) -> tuple[str, str]:
    t = np.arange(int(0.6 * SR)) / SR
    for i, code in enumerate(LABELS[:3]):
        tone = (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32)
        (root / "train" / code).mkdir(parents=True)
        for k in range(3):
            sf.write(root / "train" / code / f"{k}.wav", tone, SR)
        (root / "val").mkdir(exist_ok=True)
        sf.write(root / "val" / f"{code}.wav", tone, SR)
        (root / "val" / f"{code}.txt").write_text(code)
    return f"irmastrain:{root / 'train'}", f"irmastest:{root / 'val'}"


@pytest.mark.parametrize("scheduler", ["COSINEANNEALING", "NONE"])
def test_head_only_epoch_then_everything(tmp_path, scheduler):
    train, val = _tone_data(tmp_path)
    config = _config(
        train_paths=[train],
        val_paths=[val],
        epochs=2,
        finetune_head=True,
        finetune_head_epochs=1,
        lr_warmup=0.05,
        lr=1e-3,
        scheduler=scheduler,
    )
    datamodule = LumenDataModule(config)
    module = LumenModule(config)
    recorder = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        callbacks=[FinetuneSchedule(config), recorder],
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=datamodule)
    head = {f"head.{n}" for n, _ in module.model.head.named_parameters()}
    assert recorder.changed[0] == head  # epoch 0: only the head moved
    assert recorder.changed[1] - head  # epoch 1: the backbone trains too
    assert recorder.lrs[0] == pytest.approx(0.05)  # --lr-warmup during the head phase
    assert recorder.lrs[1] == pytest.approx(1e-3, rel=1e-3)  # then the schedule starts at --lr
    assert all(p.requires_grad for p in module.model.parameters())


def test_ddp_strategy_finds_unused_parameters_only_when_layers_are_frozen():
    assert (
        trainer_strategy(_config(strategy="ddp", finetune_head=True, finetune_head_epochs=1))
        == "ddp_find_unused_parameters_true"
    )
    assert trainer_strategy(_config(strategy="ddp", finetune_head=False)) == "ddp"
    assert trainer_strategy(_config(strategy="auto", finetune_head=True)) == "auto"

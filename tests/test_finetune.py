"""FinetuneSchedule: a resumed run follows the uninterrupted LR curve; the head phase freezes for real."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from common.labels import LABELS
from training.config import TrainConfig
from training.data import LumenDataModule
from training.module import FinetuneSchedule, LumenModule, _modules_before

SR = 8000
EPOCHS = 3  # 1 head-only epoch + 2 scheduled epochs
BATCHES = 2  # per epoch
WARMUP, LR = 5e-2, 1e-3  # the numbers: a resumed run kept 5e-2


def _tone_data(root: Path) -> tuple[str, str]:
    t = np.arange(int(0.6 * SR)) / SR
    for i, code in enumerate(LABELS[:3]):
        tone = (0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t)).astype(np.float32)
        (root / "train" / code).mkdir(parents=True)
        for k in range(3):
            sf.write(root / "train" / code / f"{k}.wav", tone * (1 + 0.1 * k), SR)
        (root / "val").mkdir(exist_ok=True)
        sf.write(root / "val" / f"{code}.wav", tone, SR)
        (root / "val" / f"{code}.txt").write_text(code)
    return f"irmastrain:{root / 'train'}", f"irmastest:{root / 'val'}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: thread start-up costs more than it saves on a shared 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tone_data(tmp_path_factory) -> tuple[str, str]:
    return _tone_data(tmp_path_factory.mktemp("tones"))


def _config(train: str, val: str, **overrides) -> TrainConfig:
    settings = {
        "window_seconds": 0.5,
        "hop_seconds": 0.25,
        "num_workers": 0,
        "batch_size": 4,
        "epochs": EPOCHS,
        "finetune_head": True,
        "finetune_head_epochs": 1,
        "lr_warmup": WARMUP,
        "lr": LR,
        "lr_onecycle_max": 1e-2,
    }
    config = TrainConfig(train_paths=[train], val_paths=[val], **{**settings, **overrides})
    config.frontend.sample_rate = SR
    config.frontend.n_mels = 32
    config.frontend.n_fft = 256
    config.frontend.hop_length = 128
    config.model.width = 0.25
    return config


class _LrRecorder(pl.Callback):
    """The LR each optimizer step actually used, keyed by (epoch, global step)."""

    def __init__(self) -> None:
        self.lrs: dict[tuple[int, int], float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs[(trainer.current_epoch, trainer.global_step)] = optimizer.param_groups[0]["lr"]


def _fit(config: TrainConfig, ckpt_dir: Path | None = None, ckpt_path: Path | None = None) -> dict:
    pl.seed_everything(0, verbose=False)
    recorder = _LrRecorder()
    callbacks: list[pl.Callback] = [FinetuneSchedule(config), recorder]
    if ckpt_dir is not None:
        callbacks += [  # mid-epoch (after every step) and end-of-epoch (after validation, like last.ckpt)
            ModelCheckpoint(ckpt_dir / "step", "{step}", every_n_train_steps=1, save_top_k=-1),
            ModelCheckpoint(ckpt_dir / "epoch", "{epoch}", save_top_k=-1),
        ]
    trainer = pl.Trainer(
        max_epochs=config.epochs,
        logger=False,
        enable_checkpointing=ckpt_dir is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=BATCHES,
        callbacks=callbacks,
        accelerator="cpu",
    )
    trainer.fit(LumenModule(config), datamodule=LumenDataModule(config), ckpt_path=ckpt_path)
    return recorder.lrs


@pytest.mark.parametrize("scheduler", ["PLATEAU", "COSINEANNEALING", "ONECYCLE", "AUTO_LR", "NONE"])
def test_resumed_run_follows_the_uninterrupted_lr_curve(tone_data, tmp_path, scheduler):
    config = _config(*tone_data, scheduler=scheduler)
    full = _fit(config, ckpt_dir=tmp_path)
    assert len(full) == EPOCHS * BATCHES
    assert [lr for (epoch, _), lr in sorted(full.items()) if epoch == 0] == [WARMUP] * BATCHES
    assert full[(1, BATCHES)] == pytest.approx(LR)  # the schedule starts at --lr after the head phase
    resume_points = {
        "mid head epoch": tmp_path / "step" / "step=1.ckpt",
        "end of the head epoch": tmp_path / "epoch" / "epoch=0.ckpt",
        "mid scheduled epoch": tmp_path / "step" / f"step={BATCHES + 1}.ckpt",
    }
    for where, ckpt in resume_points.items():
        resumed = _fit(_config(*tone_data, scheduler=scheduler), ckpt_path=ckpt)
        first_step = torch.load(ckpt, weights_only=True)["global_step"]
        expected = {key: lr for key, lr in full.items() if key[1] >= first_step}
        assert sorted(resumed) == sorted(expected), where
        for key, lr in expected.items():
            assert resumed[key] == pytest.approx(lr, rel=1e-6), f"{scheduler}, resumed {where}, at {key}"


def _is_bn_stat(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


class _BufferRecorder(pl.Callback):
    """Which BatchNorm running-stat buffers moved during epoch 0, and the module modes in its steps."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self.before = {n: b.clone() for n, b in pl_module.model.named_buffers() if _is_bn_stat(n)}
            self.modes: dict[int, list[dict[str, bool]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        modes = {n: m.training for n, m in pl_module.model.named_modules()}
        self.modes.setdefault(trainer.current_epoch, []).append(modes)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            buffers = dict(pl_module.model.named_buffers())
            self.changed = {n for n, b in self.before.items() if not torch.equal(b, buffers[n])}


def _bn_run(config: TrainConfig) -> tuple[_BufferRecorder, LumenModule]:
    recorder = _BufferRecorder()
    module = LumenModule(config)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=BATCHES,
        callbacks=[FinetuneSchedule(config), recorder],
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=LumenDataModule(config))
    return recorder, module


def test_head_phase_keeps_batchnorm_statistics_and_dropout_of_the_frozen_part(tone_data):
    config = _config(*tone_data, epochs=2, scheduler="NONE")
    config.model.head = "DEEP_HEAD"  # LayerNorm + Dropout in the head: these must stay in train mode
    config.model.head_hidden_dim = [16]
    recorder, module = _bn_run(config)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in module.model.backbone.modules())
    assert n_bn > 0 and len(recorder.before) == 3 * n_bn  # mean, var, num_batches_tracked
    assert recorder.changed == set()  # 0 of the backbone's BN buffers moved in the head-only epoch
    for modes in recorder.modes[0]:
        assert not any(on for name, on in modes.items() if name.startswith(("backbone", "frontend")))
        assert all(on for name, on in modes.items() if name.startswith("head"))
    for modes in recorder.modes[1]:  # after the head phase (and a validation run) everything trains
        assert all(modes.values())


def test_freeze_train_bn_lets_the_frozen_batchnorm_adapt(tone_data):
    config = _config(*tone_data, epochs=2, scheduler="NONE", freeze_train_bn=True)
    recorder, module = _bn_run(config)
    assert recorder.before and recorder.changed == set(recorder.before)  # every running stat moved
    bn = {n for n, m in module.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for modes in recorder.modes[0]:  # only the BatchNorm layers of the frozen part are in train mode
        assert {n for n, on in modes.items() if on and n.startswith("backbone.")} == bn


def test_head_after_freezes_only_the_modules_before_it(tone_data):
    module = LumenModule(_config(*tone_data))
    frozen = {id(m) for m in _modules_before(module.model, "backbone.stages.3")}
    names = {n for n, m in module.model.named_modules() if id(m) in frozen}
    assert "backbone.stages.2.1.pointwise.1" in names and "backbone.stem.1" in names
    assert not any(n.startswith(("backbone.stages.3", "head")) for n in names)
    assert "" not in names and "backbone" not in names and "backbone.stages" not in names  # ancestors

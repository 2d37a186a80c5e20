"""The LightningModule: augment on the device, train on windows, evaluate on whole files.

Validation and test are file-level: every window's probabilities are gathered from all DDP ranks,
de-duplicated (``DistributedSampler`` repeats files to even out ranks), aggregated per file with
:func:`common.audio.aggregate` and scored with :func:`common.metrics.compute_metrics`, i.e. the same
numbers ``lumen-test`` and the server would produce for those files.

Thresholds: after every validation epoch of a fit, per-instrument thresholds are tuned on the
validation files (:func:`common.metrics.tune_thresholds`) and written into every checkpoint saved from
then on, so ``best.ckpt`` carries the thresholds tuned for its own weights and ``last.ckpt`` those of the
last epoch. The logged ``val/*`` metrics use a fixed 0.5 (``val/f1_macro_tuned`` shows the optimistic,
tuned-on-itself value); test metrics use the checkpoint's tuned thresholds. Test data never tunes.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from common.audio import aggregate
from common.metrics import compute_metrics, tune_thresholds
from training.checkpoint import build_hparams
from training.config import ConfigError, TrainConfig
from training.data import EvalBatch
from training.losses import build_loss
from training.models import build_model

# --metric -> logged name, and the direction in which it improves.
METRIC_KEYS: dict[str, str] = {
    "VAL_F1": "val/f1_macro",
    "VAL_F1_MICRO": "val/f1_micro",
    "VAL_HAMMING": "val/hamming",
    "VAL_LOSS": "val/loss",
}
METRIC_DIRECTIONS: dict[str, str] = {
    "VAL_F1": "MAX",
    "VAL_F1_MICRO": "MAX",
    "VAL_HAMMING": "MIN",
    "VAL_LOSS": "MIN",
}
# compute_metrics key -> logged suffix (precision/recall are the macro averages).
LOGGED_METRICS: dict[str, str] = {
    "f1_macro": "f1_macro",
    "f1_micro": "f1_micro",
    "hamming_distance": "hamming",
    "precision_macro": "precision",
    "recall_macro": "recall",
    "precision_micro": "precision_micro",
    "recall_micro": "recall_micro",
    "exact_match": "exact_match",
    "map": "map",
    "lrap": "lrap",
    "top1": "top1",
    "roc_auc_macro": "roc_auc",
    "n_files": "n_files",
}
# Plateau scheduler: halve the LR after this many validation epochs without improvement.
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weights decay, biases and norm/scale vectors (1-D parameters) do not.

    Decaying a norm's gain or a bias toward zero only fights the normalisation, it does not regularise.
    Frozen parameters are included so that they train once unfrozen.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _params_from(model: nn.Module, prefix: str, flag: str) -> list[nn.Parameter]:
    """Parameters from the first one named ``prefix`` (a module path) to the end, in definition order."""
    named = list(model.named_parameters())
    for i, (name, _) in enumerate(named):
        if name == prefix or name.startswith(prefix + "."):
            return [p for _, p in named[i:]]
    tops = sorted({name.split(".")[0] for name, _ in named})
    raise ConfigError(f"{flag} {prefix!r} names no layer of the model; names start with: {', '.join(tops)}")


def set_trainable(model: nn.Module, params: list[nn.Parameter] | None) -> None:
    """Train exactly ``params`` (``None``: everything)."""
    keep = None if params is None else {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {
        "params/total": sum(p.numel() for p in model.parameters()),
        "params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


class LumenModule(pl.LightningModule):
    """Training/evaluation wrapper around :class:`training.models.LumenModel` (``self.model``)."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        label_counts: list[float] | None = None,
        n_train_items: int | None = None,
        thresholds: list[float] | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        # load_pretrained=False (a resumed run): the architecture only, the weights come from the ckpt.
        self.model = build_model(config, load_pretrained=load_pretrained)
        self.loss_fn = build_loss(
            config.loss_function, config.loss_function_kwargs, config.labels, label_counts, n_train_items
        )
        self.augment = self._build_augmentations(config)
        self.thresholds = list(thresholds) if thresholds is not None else [0.5] * len(config.labels)
        # Set by FinetuneSchedule: while True the LR is --lr-warmup and the scheduler does not step.
        self.head_phase = False
        self.test_report: dict[str, Any] | None = None
        self._eval_outputs: list[tuple[torch.Tensor, ...]] = []
        self.save_hyperparameters(build_hparams(config, self.thresholds))

    @staticmethod
    def _build_augmentations(config: TrainConfig):
        if not config.augmentations:
            return None
        from training.augmentations import build_augmentations

        return build_augmentations(config.augmentations, config.aug_kwargs, config.frontend.sample_rate)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(waveform)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        waves, labels = batch
        spec_augment = None
        if self.augment is not None:
            waves, labels = self.augment.waveform(waves, labels)
            spec_augment = self.augment.spectrogram
        logits = self.model(waves, spec_augment=spec_augment)
        loss = self.loss_fn(logits, labels)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            batch_size=waves.shape[0],
            on_step=True,
            on_epoch=True,
            sync_dist=True,
        )
        return loss

    def on_train_epoch_start(self) -> None:
        counts = count_parameters(self.model)  # "trainable" changes when FinetuneSchedule unfreezes
        for logger in self.loggers:
            logger.log_metrics(counts, step=self.global_step)

    # ---- evaluation -----------------------------------------------------------------------------
    def _eval_step(self, batch: EvalBatch, stage: str) -> None:
        logits = torch.cat([self.model(chunk) for chunk in batch.windows.split(self.config.batch_size)])
        loss = self.loss_fn(logits, batch.labels)
        self.log(f"{stage}/loss", loss, batch_size=len(batch), on_epoch=True, sync_dist=True)
        self._eval_outputs.append(
            (torch.sigmoid(logits.float()), batch.valid, batch.starts, batch.file_index, batch.labels)
        )

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs.clear()

    on_test_epoch_start = on_validation_epoch_start

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Concatenate a ``[n, ...]`` tensor over DDP ranks (``n`` may differ per rank)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return rows
        sizes = self.all_gather(torch.tensor([rows.shape[0]], device=rows.device)).flatten().tolist()
        padded = torch.cat([rows, rows.new_zeros((max(sizes) - rows.shape[0], *rows.shape[1:]))])
        gathered = self.all_gather(padded)  # [world, max, ...]
        return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])

    def file_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(file indices, labels ``[F, L]``, file probabilities ``[F, L]``) from this epoch's windows."""
        columns = [torch.cat(col) for col in zip(*self._eval_outputs, strict=True)]
        probs, valid, starts, file_index, labels = (self._gather_rows(c).cpu().numpy() for c in columns)
        # One row per (file, window start): drops DistributedSampler's repeated files, sorts by file.
        _, keep = np.unique(np.stack([file_index, starts], axis=1), axis=0, return_index=True)
        probs, valid, file_index, labels = probs[keep], valid[keep], file_index[keep], labels[keep]
        files, first = np.unique(file_index, return_index=True)
        bounds = list(first[1:])
        file_probs = np.stack(
            [
                aggregate(p, self.config.aggregation, v)
                for p, v in zip(np.split(probs, bounds), np.split(valid, bounds), strict=True)
            ]
        )
        return files, labels[first], file_probs

    def _log_file_metrics(self, stage: str, metrics: dict[str, Any]) -> None:
        values = {
            f"{stage}/{name}": metrics[key]
            for key, name in LOGGED_METRICS.items()
            if metrics.get(key) is not None
        }
        for code, row in metrics["per_instrument"].items():
            if row.get("f1") is not None:
                values[f"{stage}/f1_{code}"] = row["f1"]
        # Identical on every rank (computed from gathered windows); sync_dist keeps Lightning's DDP
        # bookkeeping consistent and averages equal numbers.
        self.log_dict({k: float(v) for k, v in values.items()}, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._eval_outputs:
            self._eval_outputs.clear()
            return
        _, y_true, y_prob = self.file_predictions()
        self._eval_outputs.clear()
        metrics = compute_metrics(y_true, y_prob, 0.5, labels=self.config.labels)
        self._log_file_metrics("val", metrics)
        if self.trainer.state.fn == "fit":
            self.thresholds = [float(t) for t in tune_thresholds(y_true, y_prob)]
            tuned = compute_metrics(y_true, y_prob, self.thresholds, labels=self.config.labels)
            self.log("val/f1_macro_tuned", float(tuned["f1_macro"]), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        if not self._eval_outputs:
            return
        _, y_true, y_prob = self.file_predictions()
        self._eval_outputs.clear()
        self.test_report = compute_metrics(y_true, y_prob, self.thresholds, labels=self.config.labels)
        self._log_file_metrics("test", self.test_report)

    # ---- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hyper_parameters"] = build_hparams(self.config, self.thresholds)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("hyper_parameters", {}).get("thresholds")
        if stored is not None:
            self.thresholds = [float(t) for t in stored]

    # ---- optimisation ---------------------------------------------------------------------------
    def _scheduled_epochs(self) -> int:
        head_epochs = self.config.finetune_head_epochs if self.config.finetune_head else 0
        return max(1, self.config.epochs - head_epochs)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.config
        groups = parameter_groups(self.model, cfg.weight_decay)
        optimizer_cls = torch.optim.AdamW if cfg.optimizer == "ADAMW" else torch.optim.Adam
        optimizer = optimizer_cls(groups, lr=cfg.lr)
        if cfg.scheduler == "NONE":
            return {"optimizer": optimizer}
        if cfg.scheduler == "PLATEAU":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=cfg.metric_mode.lower(), factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "interval": "epoch",
                    "monitor": METRIC_KEYS[cfg.metric],
                },
            }
        per_epoch = math.ceil(self.trainer.estimated_stepping_batches / max(1, self.trainer.max_epochs))
        total_steps = max(1, per_epoch * self._scheduled_epochs())
        if cfg.scheduler == "COSINEANNEALING":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        else:  # ONECYCLE, and AUTO_LR once the LR finder has set lr_onecycle_max
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=cfg.lr_onecycle_max,
                total_steps=total_steps,
                div_factor=cfg.lr_onecycle_max / cfg.lr,  # start at --lr
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if self.head_phase:
            return
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)


def _modules_before(model: nn.Module, prefix: str) -> list[nn.Module]:
    """The modules defined before the one named ``prefix`` (the frozen part while only the head trains).

    ``named_modules`` lists modules in the same definition order as ``named_parameters``, so these are
    exactly the modules whose parameters :func:`_params_from` leaves frozen; the ancestors of ``prefix``
    (the model itself, ``backbone`` for ``backbone.blocks.5``) are left out because the head is inside.
    """
    named = list(model.named_modules())
    for i, (name, _) in enumerate(named):
        if name == prefix or name.startswith(prefix + "."):
            return [m for n, m in named[:i] if not (n == "" or prefix.startswith(n + "."))]
    raise ConfigError(f"{prefix!r} names no module of the model")


def set_frozen_eval(modules: list[nn.Module]) -> None:
    """Eval mode for each of ``modules`` alone (BatchNorm uses and keeps its running stats, dropout is off).

    Each module's own flag is set, not ``module.eval()``'s recursion, so a frozen container never
    switches a trainable child off.
    """
    for module in modules:
        module.training = False


class FinetuneSchedule(pl.Callback):
    """``--finetune-head``: train only the head at ``--lr-warmup`` for ``--finetune-head-epochs``, then
    unfreeze from ``--backbone-after`` (default: everything) and hand the LR to the scheduler.

    The head is ``model.head`` unless ``--head-after NAME`` says it starts at layer ``NAME``. Layer names
    are module paths inside the model (``backbone.blocks.5``), as ``model.named_parameters()`` lists them.

    Frozen means frozen: while only the head trains, every module before it is in eval mode, so BatchNorm
    running statistics do not move and dropout is off there (``--freeze-train-bn`` lets those BatchNorm
    layers keep adapting their statistics, as the seed's flag did; dropout stays off).

    Resuming follows the uninterrupted LR curve: the scheduler does not step during the head phase, so
    its last LR (``get_last_lr()``, restored from the checkpoint with the scheduler) is the LR the first
    scheduled epoch starts at, whether the run was interrupted or not. Every scheduled epoch starts from
    it; nothing is kept in this callback that a checkpoint would lose.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.head_epochs = config.finetune_head_epochs if config.finetune_head else 0
        self._started_epoch: int | None = None

    def _head_prefix(self) -> str:
        return self.config.head_after or "head"

    def _head_params(self, model: nn.Module) -> list[nn.Parameter]:
        if self.config.head_after:
            return _params_from(model, self.config.head_after, "--head-after")
        return list(model.head.parameters())

    def _after_head_params(self, model: nn.Module) -> list[nn.Parameter] | None:
        if self.config.backbone_after:
            return _params_from(model, self.config.backbone_after, "--backbone-after")
        return None

    def check_layer_names(self, model: nn.Module) -> None:
        """Resolve --head-after/--backbone-after before training, so a typo fails at once (ConfigError)."""
        self._head_params(model)
        self._after_head_params(model)

    def scheduled_lrs(self, trainer: pl.Trainer) -> list[float]:
        """The LR of each param group that the schedule (not the head phase) says applies now."""
        groups = trainer.optimizers[0].param_groups
        if trainer.lr_scheduler_configs:
            return [float(lr) for lr in trainer.lr_scheduler_configs[0].scheduler.get_last_lr()]
        return [float(self.config.lr)] * len(groups)  # --scheduler NONE

    def _freeze_parts(self, pl_module: LumenModule) -> None:
        if not pl_module.head_phase:
            return
        frozen = _modules_before(pl_module.model, self._head_prefix())
        if self.config.freeze_train_bn:  # BatchNorm keeps adapting; dropout is still off
            frozen = [m for m in frozen if not isinstance(m, nn.modules.batchnorm._BatchNorm)]
        set_frozen_eval(frozen)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: LumenModule) -> None:
        self._start_epoch(trainer, pl_module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: LumenModule, batch: Any, batch_idx: int):
        # A run resumed from a mid-epoch checkpoint starts without on_train_epoch_start.
        if self._started_epoch != trainer.current_epoch:
            self._start_epoch(trainer, pl_module)
        # Lightning puts the whole module back in train mode after each validation run.
        self._freeze_parts(pl_module)

    def _start_epoch(self, trainer: pl.Trainer, pl_module: LumenModule) -> None:
        self._started_epoch = trainer.current_epoch
        model = pl_module.model
        optimizer = trainer.optimizers[0]
        if trainer.current_epoch < self.head_epochs:
            set_trainable(model, self._head_params(model))
            pl_module.head_phase = True
            for group in optimizer.param_groups:
                group["lr"] = self.config.lr_warmup
            self._freeze_parts(pl_module)
            return
        pl_module.head_phase = False
        model.train()  # Lightning's evaluation loop restores the modes it found, frozen ones included
        set_trainable(model, self._after_head_params(model))
        for group, lr in zip(optimizer.param_groups, self.scheduled_lrs(trainer), strict=True):
            group["lr"] = lr

"""``lumen-train``: fit a model on IRMAS-style data and write self-describing checkpoints.

Example::

    lumen-train --train-paths irmastrain:data/irmas/train --val-paths irmastest:data/irmas/test \\
        --model CONVNEXT_TINY --audio-transform MEL_SPECTROGRAM --nofinetune-head

A run writes ``<output-dir>/<MM-DD-HH-MM-SS>_<MODEL>_<TRANSFORM>[_<suffix>]/`` with
``checkpoints/best.ckpt`` (best ``--metric`` so far), ``checkpoints/last.ckpt`` (end of the last
epoch), ``config.yaml``, ``metrics.csv`` + ``hparams.yaml`` (CSV logger), ``tensorboard/`` events and,
with ``--test-paths``, ``test_metrics.json`` (file-level metrics of ``best.ckpt`` at its tuned thresholds).

Ctrl+C once stops after the current batch and still tests the best checkpoint; a second Ctrl+C
stops at once. Bad flag values exit with status 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from training.config import (
    AUDIO_TRANSFORMS,
    HEADS,
    LOSSES,
    METRICS,
    MODEL_NAMES,
    OPTIMIZERS,
    SCHEDULERS,
    ConfigError,
    TrainConfig,
)

PROG = "lumen-train"
QUICK_OUTPUT_DIR = "models_quick"
QUICK_BATCH_SIZE = 2
QUICK_BATCHES_PER_EPOCH = 2
# Set by the first process of a run so that DDP ranks started by Lightning's launcher (which re-run
# this command with the same environment) write into the same run directory.
RUN_DIR_ENV = "LUMEN_RUN_DIR"
# AUTO_LR's peak, found once by the first process and inherited by the DDP ranks it launches.
AUTO_LR_ENV = "LUMEN_AUTO_LR"
LOG_EVERY_N_STEPS = 10
STEP_SCHEDULERS = ("ONECYCLE", "AUTO_LR", "COSINEANNEALING")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``lumen-train: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_value(text: str) -> Any:
    """``--*-kwargs`` values: ``a,b`` is a list, then bool / None / int / float, else the string."""
    if "," in text:
        return [_parse_value(part) for part in text.split(",") if part]
    lower = text.lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_kwargs(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {pair!r} is not key=value")
        out[key.strip()] = _parse_value(value.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train an IRMAS instrument recogniser (multi-label, 11 instruments).")
    names = ", ".join
    data = p.add_argument_group("data")
    data.add_argument(
        "--train-paths", nargs="+", metavar="SPEC", help="TYPE:PATH specs (irmastrain:DIR, csv:FILE ...)"
    )
    data.add_argument(
        "--val-paths", nargs="+", metavar="SPEC", help="validation specs (metrics, best ckpt, thresholds)"
    )
    data.add_argument(
        "--test-paths", nargs="+", metavar="SPEC", help="tested with the best checkpoint after training"
    )
    data.add_argument("--sample-rate", type=int)
    data.add_argument("--window-seconds", type=float)
    data.add_argument("--hop-seconds", type=float, help="hop between validation/test windows")
    data.add_argument("--aggregation", help="mean | max of window probabilities per file")
    data.add_argument("--augmentations", nargs="+", metavar="AUG")
    data.add_argument("--aug-kwargs", nargs="+", metavar="K=V", help="augmentation settings, lists as v1,v2")
    data.add_argument(
        "--use-weighted-train-sampler",
        action="store_true",
        default=None,
        help="draw training items so every instrument is seen equally often",
    )
    data.add_argument("--cache-audio", action="store_true", default=None, help="keep decoded audio in memory")
    data.add_argument("--num-workers", type=int)

    model = p.add_argument_group("model")
    model.add_argument("--model", help=names(MODEL_NAMES))
    model.add_argument("--audio-transform", help=names(AUDIO_TRANSFORMS))
    model.add_argument("--n-mels", type=int)
    model.add_argument("--n-fft", type=int)
    model.add_argument("--hop-length", type=int)
    model.add_argument(
        "--f-min",
        type=float,
        help="lowest mel band edge, Hz (0); WAVELET: lowest centre frequency (0: 40 Hz)",
    )
    model.add_argument(
        "--f-max",
        type=float,
        help="highest mel band edge, Hz (sample_rate / 2); WAVELET: highest centre frequency (0.4 x sample_rate)",
    )
    model.add_argument(
        "--n-scales", type=int, help="WAVELET: complex-Morlet scales, log-spaced from --f-min to --f-max (64)"
    )
    model.add_argument("--n-mfcc", type=int, help="MFCC coefficients (40)")
    model.add_argument(
        "--multi-n-ffts", nargs="+", type=int, metavar="N", help="MULTI_SPECTROGRAM FFT sizes (400 800 1600)"
    )
    model.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    model.add_argument("--pretrained-source", help="hub id, timm name or local folder of pretrained weights")
    model.add_argument("--head", help=names(HEADS))
    model.add_argument("--head-hidden-dim", nargs="+", type=int, metavar="N")
    model.add_argument("--per-instrument-heads", action="store_true", default=None)

    opt = p.add_argument_group("optimisation")
    opt.add_argument(
        "--loss-function",
        help=names(LOSSES) + "; *_POS_WEIGHT: pos_weight = negatives/positives per label as the loss sees "
        "them, counted over one simulated epoch of the training sampler and the mixing augmentations "
        "(labels only, no audio decoded)",
    )
    opt.add_argument("--loss-function-kwargs", nargs="+", metavar="K=V", help="e.g. gamma=2 alpha=0.25")
    opt.add_argument("--optimizer", help=names(OPTIMIZERS))
    opt.add_argument("--lr", type=float)
    opt.add_argument("--lr-warmup", type=float, help="learning rate of the head-only phase (--finetune-head)")
    opt.add_argument("--lr-onecycle-max", type=float)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument(
        "--scheduler",
        help=names(SCHEDULERS) + "; AUTO_LR: ONECYCLE peaking at Lightning's LR-finder suggestion, found "
        "once (by the first process; DDP ranks share it; refused with --num-nodes > 1 or torchrun/SLURM "
        "ranks) and kept on resume",
    )
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--batch-size", type=int)
    opt.add_argument(
        "--finetune-head",
        dest="finetune_head",
        action="store_true",
        default=None,
        help="train only the head for --finetune-head-epochs first (default)",
    )
    opt.add_argument("--nofinetune-head", dest="finetune_head", action="store_false", help="train everything")
    opt.add_argument("--finetune-head-epochs", type=int)
    opt.add_argument(
        "--freeze-train-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="head-only phase: let the frozen layers' BatchNorm running statistics adapt, dropout there "
        "stays off (default: off, the frozen part is in eval mode: fixed BatchNorm statistics, no dropout)",
    )
    opt.add_argument(
        "--head-after", metavar="LAYER", help="the head starts at this layer (default: model.head)"
    )
    opt.add_argument(
        "--backbone-after", metavar="LAYER", help="after the head phase, train from this layer on"
    )
    opt.add_argument("--metric", help=names(METRICS))
    opt.add_argument("--metric-mode", help="MIN | MAX (default: the metric's natural direction)")
    opt.add_argument("--early-stopping-patience", type=int)

    run = p.add_argument_group("run")
    run.add_argument("--output-dir")
    run.add_argument("--experiment-suffix")
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--quick",
        action="store_true",
        default=None,
        help=f"smoke run: tiny subset, batch {QUICK_BATCH_SIZE}, {QUICK_BATCHES_PER_EPOCH} batches/epoch, "
        f"output in {QUICK_OUTPUT_DIR}/",
    )
    run.add_argument("--ckpt", help="resume training from this checkpoint")
    run.add_argument("--accelerator")
    run.add_argument("--devices", help="auto, a count, or a list like 0,1")
    run.add_argument("--num-nodes", type=int)
    run.add_argument("--strategy")
    run.add_argument("--precision")
    return p


# argparse dest -> (config section or None for top level, field)
_FIELDS: dict[str, tuple[str | None, str]] = {
    "train_paths": (None, "train_paths"),
    "val_paths": (None, "val_paths"),
    "test_paths": (None, "test_paths"),
    "sample_rate": ("frontend", "sample_rate"),
    "audio_transform": ("frontend", "audio_transform"),
    "n_mels": ("frontend", "n_mels"),
    "n_fft": ("frontend", "n_fft"),
    "hop_length": ("frontend", "hop_length"),
    "f_min": ("frontend", "f_min"),
    "f_max": ("frontend", "f_max"),
    "n_mfcc": ("frontend", "n_mfcc"),
    "n_scales": ("frontend", "n_scales"),
    "multi_n_ffts": ("frontend", "multi_n_ffts"),
    "model": ("model", "model"),
    "pretrained": ("model", "pretrained"),
    "pretrained_source": ("model", "pretrained_source"),
    "head": ("model", "head"),
    "head_hidden_dim": ("model", "head_hidden_dim"),
    "per_instrument_heads": ("model", "per_instrument_heads"),
    **{
        name: (None, name)
        for name in (
            "window_seconds",
            "hop_seconds",
            "aggregation",
            "augmentations",
            "use_weighted_train_sampler",
            "cache_audio",
            "num_workers",
            "loss_function",
            "optimizer",
            "lr",
            "lr_warmup",
            "lr_onecycle_max",
            "weight_decay",
            "scheduler",
            "epochs",
            "batch_size",
            "finetune_head",
            "finetune_head_epochs",
            "freeze_train_bn",
            "head_after",
            "backbone_after",
            "metric",
            "metric_mode",
            "early_stopping_patience",
            "output_dir",
            "experiment_suffix",
            "seed",
            "quick",
            "ckpt",
            "accelerator",
            "devices",
            "num_nodes",
            "strategy",
            "precision",
        )
    },
}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Flags given on the command line override :class:`TrainConfig` defaults; the rest stay default."""
    from training.module import METRIC_DIRECTIONS

    config = TrainConfig()
    for dest, (section, name) in _FIELDS.items():
        value = getattr(args, dest)
        if value is not None:
            setattr(config if section is None else getattr(config, section), name, value)
    config.loss_function_kwargs = parse_kwargs(args.loss_function_kwargs, "--loss-function-kwargs")
    if args.aug_kwargs:
        from training.augmentations import parse_aug_kwargs  # typed and checked against --augmentations

        config.aug_kwargs = parse_aug_kwargs(args.aug_kwargs, config.augmentations)
    if isinstance(config.devices, str) and config.devices.isdigit():
        config.devices = int(config.devices)
    if config.quick:
        config.batch_size = QUICK_BATCH_SIZE
        config.limit_train_batches = QUICK_BATCHES_PER_EPOCH
        if args.output_dir is None:
            config.output_dir = QUICK_OUTPUT_DIR
    config.metric = config.metric.upper()
    if args.metric_mode is None and config.metric in METRIC_DIRECTIONS:
        config.metric_mode = METRIC_DIRECTIONS[config.metric]
    config.metric_mode = config.metric_mode.upper()
    config.validate()
    check_training_config(config)
    return config


def check_training_config(config: TrainConfig) -> None:
    """What :meth:`TrainConfig.validate` cannot know: constraints of a training run."""
    from training.module import METRIC_DIRECTIONS

    if not config.train_paths:
        raise ConfigError("--train-paths is required")
    if not config.val_paths:
        raise ConfigError(
            "--val-paths is required (the monitored metric, best checkpoint and thresholds use it)"
        )
    natural = METRIC_DIRECTIONS[config.metric]
    if config.metric_mode != natural:
        raise ConfigError(f"--metric {config.metric} improves toward {natural}; use --metric-mode {natural}")
    positive = {
        "--epochs": config.epochs,
        "--batch-size": config.batch_size,
        "--lr": config.lr,
        "--lr-onecycle-max": config.lr_onecycle_max,
        "--sample-rate": config.frontend.sample_rate,
        "--num-nodes": config.num_nodes,
    }
    for flag, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
    if config.num_workers < 0 or config.weight_decay < 0:
        raise ConfigError("--num-workers and --weight-decay must be >= 0")
    if config.scheduler in ("ONECYCLE", "AUTO_LR") and config.lr >= config.lr_onecycle_max:
        raise ConfigError(
            f"--lr ({config.lr:g}) is where ONECYCLE starts and must be < --lr-onecycle-max "
            f"({config.lr_onecycle_max:g})"
        )
    if config.finetune_head and not 0 <= config.finetune_head_epochs < config.epochs:
        raise ConfigError(
            f"--finetune-head-epochs ({config.finetune_head_epochs}) must be in 0..--epochs-1 "
            f"({config.epochs - 1}); or use --nofinetune-head"
        )
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        raise ConfigError("--early-stopping-patience must be >= 1")


def run_directory(config: TrainConfig) -> Path:
    """``<output-dir>/<MM-DD-HH-MM-SS>_<name>``, shared with DDP ranks through :data:`RUN_DIR_ENV`."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    name = f"{config.model.model}_{config.frontend.audio_transform}"
    if config.experiment_suffix:
        name += f"_{config.experiment_suffix}"
    base = Path(config.output_dir) / f"{datetime.now():%m-%d-%H-%M-%S}_{name}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    return run_dir


def _progress_bar():
    from lightning.pytorch.callbacks import RichProgressBar

    class ProgressBar(RichProgressBar):
        """Rich bar without Lightning's ``v_num`` (the logger version means nothing in our run folders)."""

        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            return metrics

    return ProgressBar()


class GracefulInterrupt:
    """First Ctrl+C: finish the current batch and end training normally; second: stop now.

    Lightning's own handler exits the process on the first KeyboardInterrupt, which would skip testing
    the best checkpoint, so SIGINT is handled here while fitting.
    """

    def __init__(self) -> None:
        self.trainer = None
        self.interrupted = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.interrupted or self.trainer is None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.interrupted = True
        self.trainer.should_stop = True
        print(
            f"\n{PROG}: Ctrl+C: stopping after this batch, then testing the best checkpoint "
            "(press Ctrl+C again to stop now)",
            file=sys.stderr,
            flush=True,
        )


def _check_resume(config: TrainConfig) -> dict[str, Any]:
    """Refuse a --ckpt this run cannot continue; returns the checkpoint's stored config."""
    from training.checkpoint import CheckpointError, checkpoint_hparams, read_checkpoint

    data = read_checkpoint(config.ckpt)
    stored = checkpoint_hparams(config.ckpt, data)["config"]
    current = config.to_dict()
    comparable = {**stored, "model": _flags_view(stored.get("model"), current["model"])}
    for key in ("model", "frontend", "labels"):
        if comparable.get(key) != current[key]:
            raise CheckpointError(
                f"--ckpt {config.ckpt}: its {key} config differs from this run's flags; "
                "resume with the flags it was trained with"
            )
    # Step-based schedules are sized by --epochs when created; the restored scheduler keeps that size.
    if config.scheduler in STEP_SCHEDULERS and (stored.get("epochs"), stored.get("scheduler")) != (
        config.epochs,
        config.scheduler,
    ):
        raise CheckpointError(
            f"--ckpt {config.ckpt} was trained with --scheduler {stored.get('scheduler')} --epochs "
            f"{stored.get('epochs')}; a resumed {config.scheduler} schedule cannot change length "
            "(resume with the same values, or use --scheduler PLATEAU/NONE to extend a run)"
        )
    return stored


def _flags_view(stored_model: Any, current_model: dict[str, Any]) -> Any:
    """The stored model config as flags would give it: ``--pretrained`` Hugging Face models write the
    loaded architecture into ``backbone_kwargs`` (so checkpoints rebuild offline), which no flag sets."""
    if (
        isinstance(stored_model, dict)
        and stored_model.get("pretrained")
        and not current_model["backbone_kwargs"]
    ):
        return {**stored_model, "backbone_kwargs": {}}
    return stored_model


def find_lr(config: TrainConfig, module, datamodule) -> float:
    """``AUTO_LR``: Lightning's LR range test on a throw-away trainer, suggestion -> ONECYCLE peak."""
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    with tempfile.TemporaryDirectory(prefix="lumen-lr-find-") as scratch:  # the finder's temporary ckpt
        trainer = pl.Trainer(
            accelerator=config.accelerator,
            devices=1,
            precision=config.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_train_batches=config.limit_train_batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=scratch,
        )
        finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:
        raise ConfigError(
            "--scheduler AUTO_LR: the LR finder found no suggestion (too few batches?); "
            "use --scheduler ONECYCLE with --lr-onecycle-max"
        )
    return float(suggestion)


def _launched_elsewhere() -> bool:
    """Ranks started by torchrun/SLURM/mpirun: each is its own ``lumen-train`` from the first line."""
    return any(
        int(os.environ.get(name) or 1) > 1 for name in ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    )


def auto_lr_peak(config: TrainConfig, module, datamodule) -> float:
    """``AUTO_LR``'s ONECYCLE peak, found once per run so that every DDP rank trains with the same LR.

    The LR finder runs in the first process only; the ranks that Lightning's launcher starts (which
    re-run this command with its environment, as for :data:`RUN_DIR_ENV`) read its result from
    :data:`AUTO_LR_ENV`. Ranks started by another launcher, or on other nodes, would each search on
    their own data shard and could disagree, so that combination is refused.
    """
    inherited = os.environ.get(AUTO_LR_ENV)
    if inherited:
        return float(inherited)
    if config.num_nodes > 1 or _launched_elsewhere():
        raise ConfigError(
            "--scheduler AUTO_LR with --num-nodes > 1 or ranks started by torchrun/SLURM/mpirun would run "
            "the LR finder on every rank separately (and could give ranks different LRs); run the finder "
            "in a single-node run (lumen-train --scheduler AUTO_LR ... prints its suggestion) and pass it "
            "as --scheduler ONECYCLE --lr-onecycle-max LR"
        )
    peak = find_lr(config, module, datamodule)
    os.environ[AUTO_LR_ENV] = repr(peak)
    return peak


def trainer_strategy(config: TrainConfig) -> str:
    """``--strategy``, switched to DDP's unused-parameter search when layers are frozen.

    DDP registers its gradient hooks when it wraps the model, before FinetuneSchedule freezes the
    backbone; frozen parameters then never get gradients and plain ``ddp`` would fail the step.
    """
    freezes = (config.finetune_head and config.finetune_head_epochs > 0) or config.backbone_after
    if config.strategy == "ddp" and freezes:
        return "ddp_find_unused_parameters_true"
    return config.strategy


def train(config: TrainConfig) -> int:
    """Fit (and test, with --test-paths); returns the exit status."""
    import lightning.pytorch as pl
    import yaml
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichModelSummary,
    )
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from training.data import LumenDataModule
    from training.label_stats import loss_label_counts
    from training.module import METRIC_KEYS, FinetuneSchedule, LumenModule

    # metrics.csv shares the run folder with config.yaml and tensorboard/ on purpose.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    pl.seed_everything(config.seed, workers=True, verbose=False)
    resumed = _check_resume(config) if config.ckpt else None
    if resumed is not None:
        # The checkpoint's architecture (a --pretrained model's resolved config included); its weights
        # replace the pretrained ones anyway, so the hub or --pretrained-source is not needed again.
        config.model.backbone_kwargs = dict(resumed["model"].get("backbone_kwargs") or {})
    datamodule = LumenDataModule(config)
    datamodule.load_items()
    counts, n_examples = (
        loss_label_counts(datamodule.train_items, config)
        if config.loss_function.endswith("_POS_WEIGHT")
        else (None, None)
    )
    module = LumenModule(
        config,
        label_counts=None if counts is None else counts.tolist(),
        n_train_items=n_examples,
        load_pretrained=resumed is None,
    )
    if config.scheduler == "AUTO_LR" and resumed is not None:
        # The restored ONECYCLE schedule carries the LRs; the finder is not run again.
        config.lr, config.lr_onecycle_max = float(resumed["lr"]), float(resumed["lr_onecycle_max"])
        print(f"{PROG}: AUTO_LR: resuming the checkpoint's ONECYCLE to {config.lr_onecycle_max:.3g}")
    elif config.scheduler == "AUTO_LR":
        source = (
            "the first process's LR finder suggested" if AUTO_LR_ENV in os.environ else "LR finder suggests"
        )
        peak = auto_lr_peak(config, module, datamodule)
        config.lr_onecycle_max, config.lr = peak, peak / 25.0  # OneCycle's default start ratio
        print(f"{PROG}: AUTO_LR: {source} {peak:.3g}; ONECYCLE from {config.lr:.3g} to {peak:.3g}")

    finetune = FinetuneSchedule(config)
    finetune.check_layer_names(module.model)
    run_dir = run_directory(config)
    monitor = METRIC_KEYS[config.metric]
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=config.metric_mode.lower(),
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    callbacks: list[pl.Callback] = [
        checkpoint,
        LearningRateMonitor(logging_interval="step"),
        finetune,
        _progress_bar(),
        RichModelSummary(max_depth=2),
    ]
    if config.early_stopping_patience:
        callbacks.append(
            EarlyStopping(
                monitor=monitor, mode=config.metric_mode.lower(), patience=config.early_stopping_patience
            )
        )
    loggers = [
        TensorBoardLogger(run_dir, name="", version="tensorboard", default_hp_metric=False),
        CSVLogger(run_dir, name="", version=""),
    ]
    try:
        trainer = pl.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=trainer_strategy(config),
            precision=config.precision,
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=run_dir,
            limit_train_batches=config.limit_train_batches,
            log_every_n_steps=1 if config.quick else LOG_EVERY_N_STEPS,
        )
    except (ValueError, RuntimeError, MisconfigurationException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"trainer flags (--accelerator/--devices/--strategy/--precision): {first}"
        ) from None
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    interrupt = GracefulInterrupt()
    interrupt.trainer = trainer
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=config.ckpt)
    finally:
        signal.signal(signal.SIGINT, previous)

    best = checkpoint.best_model_path
    if trainer.is_global_zero:
        score = checkpoint.best_model_score
        print(f"{PROG}: run directory {run_dir}")
        print(
            f"{PROG}: best checkpoint {best or '(none: no validation epoch finished)'}"
            + (f" ({monitor} = {float(score):.4f})" if score is not None else "")
        )
    if config.test_paths:
        if not best:
            print(f"{PROG}: no best checkpoint to test", file=sys.stderr)
            return 1
        trainer.test(module, datamodule=datamodule, ckpt_path=best)
        if trainer.is_global_zero and module.test_report is not None:
            report = {"checkpoint": str(best), "thresholds": module.thresholds, "metrics": module.test_report}
            (run_dir / "test_metrics.json").write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and malformed flags exit here, before torch loads
    from common.datasets import DatasetError
    from training.checkpoint import CheckpointError
    from training.models import ModelLoadError

    owns_run_dir = RUN_DIR_ENV not in os.environ  # False in DDP ranks started by Lightning's launcher
    try:
        return train(config_from_args(args))
    except (ConfigError, DatasetError, CheckpointError, ModelLoadError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if owns_run_dir:  # the next run in this process (tests, notebooks) gets its own folder and LR
            os.environ.pop(RUN_DIR_ENV, None)
            os.environ.pop(AUTO_LR_ENV, None)


if __name__ == "__main__":
    sys.exit(main())

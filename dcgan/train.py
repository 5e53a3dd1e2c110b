"""``train(cfg)``: build data, model, callbacks, loggers and Trainer from a Hydra config and fit."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from dcgan import loop
from dcgan.callbacks import ClassifierCallback, FIDCallback
from dcgan.cli import check_added_settings, check_sections, instantiate_node
from dcgan.datasets import ImageDataModule
from dcgan.errors import TrainingDiverged, TrainingInterrupted, UserInputError, require
from dcgan.files import atomic_path
from dcgan.module import DCGAN, OptimizerFactory
from dcgan.run import (
    AtomicCheckpointIO,
    InterruptCheckpoint,
    RandomState,
    ResumedRun,
    SaveResumedSettings,
    check_resumable,
    checkpoint_to_train_from,
    in_multirun,
    remove_stale_temporaries,
    resumed_run,
)
from dcgan.speed import auto_precision, device_name

log = logging.getLogger(__name__)

# Lightning 2.6 trips torch's own deprecation of LeafSpec on every run; harmless noise.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _not_lightnings_notice(record: logging.LogRecord) -> bool:
    # Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown" on Ctrl-C or SIGTERM:
    # train.py says itself what stopped it, what was saved and how to continue. And its advert
    # for a cloud logger ("Tip: ... litlogger") at every start.
    message = record.getMessage()
    return "Detected KeyboardInterrupt" not in message and "litlogger" not in message


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_not_lightnings_notice)


def build_optimizer(cfg: DictConfig, key: str) -> OptimizerFactory:
    """Instantiate ``optimizer.<key>`` (a ``_partial_`` optimizer) and try it on a dummy
    parameter, so a bad learning rate or beta fails now, with the key named, not after the
    dataset has loaded."""
    factory = instantiate_node(cfg.optimizer[key], f"optimizer.{key}", _convert_="all")
    lr = cfg.optimizer[key].get("lr")
    if isinstance(lr, (int, float)) and lr <= 0:  # torch takes 0, which trains nothing
        raise UserInputError(f"optimizer.{key}.lr={lr} must be > 0 (set by e.g. optimizer.lr_g / optimizer.lr_d)")
    try:
        factory([torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as e:
        raise UserInputError(
            f"optimizer.{key}: {e} (settings: {OmegaConf.to_container(cfg.optimizer[key], resolve=True)})"
        ) from e
    return factory


def fid_callback(cfg: DictConfig) -> FIDCallback:
    """The FID callback, from ``cfg.eval`` (see conf/fid.yaml) and the run directory."""
    settings = OmegaConf.to_container(cfg.eval, resolve=True)
    assert isinstance(settings, dict)
    for key in [k for k in settings if k == "fid" or k.startswith("classifier")]:
        settings.pop(key)
    output_dir = Path(cfg.paths.output_dir)
    return FIDCallback(
        checkpoint_dir=output_dir / "checkpoints",
        metrics_file=output_dir / "fid.jsonl",
        **settings,  # type: ignore[arg-type]
    )


def classifier_callback(cfg: DictConfig) -> ClassifierCallback:
    """The classifier callback, from ``cfg.eval`` and the run directory."""
    settings = cfg.eval
    return ClassifierCallback(
        metrics_file=Path(cfg.paths.output_dir) / "classes.jsonl",
        every_n_epochs=settings.classifier_every_n_epochs,
        num_samples=settings.classifier_num_samples,
        cache_dir=settings.cache_dir,
        reference_split=settings.reference_split,
        reference_samples=settings.reference_samples,
        seed=settings.seed,
        train_samples=settings.classifier_train_samples,
    )


def build(
    cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None
) -> tuple[L.LightningDataModule, DCGAN, L.Trainer]:
    """Instantiate everything a run needs, validating settings before any data is read."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserInputError(
            f"required setting(s) not given: {', '.join(missing)}; add them to the command, e.g. {missing[0]}=<value>"
        )
    seed, epochs = cfg.get("seed"), cfg.trainer.get("max_epochs")
    ok = seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32)
    require(ok, "seed", seed, "must be an integer in [0, 4294967295], or null for a random seed")
    # Lightning's max_epochs=-1 trains until stopped; runs here are bounded by epochs (the
    # learning-rate schedule and the final evaluation need an end).
    ok = isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1
    require(ok, "trainer.max_epochs", epochs, "must be an integer >= 1: the number of epochs to train")
    if seed is not None:
        L.seed_everything(seed, workers=True, verbose=False)
    g_opt, d_opt = build_optimizer(cfg, "generator"), build_optimizer(cfg, "discriminator")
    datamodule: L.LightningDataModule = instantiate_node(cfg.dataset, "dataset")
    speed = instantiate_node(cfg.speed, "speed")
    # A conditional model's classes are the dataset's (a folder's are found by listing it).
    num_classes = _dataset_classes(datamodule) if cfg.model.get("conditional") is True else None
    model: DCGAN = instantiate_node(
        cfg.model,
        "model",
        num_classes=num_classes,
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        speed=speed,
        lr_decay_start=cfg.optimizer.get("lr_decay_start"),
    )
    callbacks = [
        instantiate_node(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items() if c is not None
    ]
    if cfg.eval.fid:
        callbacks.append(fid_callback(cfg))
    require(cfg.eval.classifier in (True, False), "eval.classifier", cfg.eval.classifier, "must be true or false")
    if cfg.eval.classifier:
        callbacks.append(classifier_callback(cfg))
    callbacks += [RandomState(), InterruptCheckpoint(Path(cfg.paths.output_dir) / "checkpoints")]
    callbacks += extra_callbacks or []
    loggers = [instantiate_node(cfg.logger, "logger")] if cfg.get("logger") else []
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserInputError(
            f"trainer.accelerator={cfg.trainer.accelerator}, but torch sees no CUDA GPU here "
            f"(torch {torch.__version__}); use trainer=default (GPU if any, else CPU) or trainer=cpu"
        )
    if cfg.trainer.get("precision") == "auto":
        # Resolved into the config, so the loggers' hparams and metrics.json say which it was.
        precision, why = auto_precision(str(cfg.trainer.get("accelerator", "auto")))
        log.info(f"trainer.precision=auto: {precision}, as {why} (trainer.precision=32-true or bf16-mixed forces one)")
        cfg.trainer.precision = precision
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    if trainer.world_size > 1 and in_multirun() and not _processes_started_externally(trainer):
        raise UserInputError(
            f"a Hydra multirun (-m) cannot train with {trainer.world_size} processes on this machine: Lightning "
            "starts the extra processes by re-running train.py, which a sweep job cannot share. Run each "
            "setting as its own single run (without -m), sweep on one device per job, or submit the sweep "
            "to SLURM (hydra/launcher=slurm), where SLURM starts the processes"
        )
    return datamodule, model, trainer


# The DDP strategy for a GAN: each of its two updates (D's, then G's) leaves the other network's
# weights without gradients, which plain DDP refuses at the first batch ("parameters that were
# not used in producing the loss").
GAN_DDP = "ddp_find_unused_parameters_true"


def build_trainer(settings: DictConfig, **kwargs: Any) -> L.Trainer:
    """The Lightning Trainer of ``trainer:``. When several processes train (``trainer.devices=2``,
    ``num_nodes``) and the strategy is ``auto``, Lightning would pick plain DDP, which fails at
    the first batch; the Trainer is built again with ``GAN_DDP``. A DDP strategy named on the
    command line that cannot train a GAN is refused before any process starts."""
    trainer: L.Trainer = instantiate_node(settings, "trainer", **kwargs)
    if not isinstance(trainer.strategy, DDPStrategy):
        return trainer
    asked = settings.get("strategy", "auto")
    if asked == "auto":
        trainer = instantiate_node(settings, "trainer", strategy=GAN_DDP, **kwargs)
        if trainer.is_global_zero:
            log.info(
                f"{trainer.world_size} processes: strategy {GAN_DDP} (a GAN's two updates each leave one network "
                "without gradients, which plain DDP refuses)"
            )
        return trainer
    entry = StrategyRegistry[asked] if isinstance(asked, str) and asked in StrategyRegistry else None
    if (
        entry is not None
        and entry["strategy"] is DDPStrategy
        and not entry["init_params"].get("find_unused_parameters")
    ):
        base = asked.removesuffix("_find_unused_parameters_false")
        fix = GAN_DDP if base == "ddp" else f"{base}_find_unused_parameters_true"
        raise UserInputError(
            f"trainer.strategy={asked} cannot train a GAN: each of its two updates leaves one network without "
            f"gradients, which this DDP strategy refuses at the first batch. Use trainer.strategy={fix}, "
            f"or trainer.strategy=auto (several processes then get {GAN_DDP})"
        )
    return trainer


def _dataset_classes(datamodule: ImageDataModule) -> int:
    names = datamodule.classes()
    if not names:
        raise UserInputError(
            f"model.conditional=true needs labelled images, and {datamodule.source} has no classes: put each "
            "class's images in its own top-level subfolder (<folder>/<class>/<image>), or train unconditionally"
        )
    if len(names) < 2:
        raise UserInputError(f"model.conditional=true needs 2 or more classes; {datamodule.source} has one: {names[0]}")
    return len(names)


def _processes_started_externally(trainer: L.Trainer) -> bool:
    """Whether torchrun, SLURM or the like started the processes (Lightning then starts none)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return bool(environment is not None and environment.creates_processes_externally)


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config without Hydra's own node, for the loggers' hparams."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container  # type: ignore[return-value]


# Config nodes that say where things are or how they are logged, not what is trained.
_NOT_SETTINGS = ("paths", "logger", "callbacks", "resume", "ckpt_path", "trainer.default_root_dir")


def hparams_settings(container: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The run's settings as flat ``model.g_width``-style keys with TensorBoard's value types
    (lists and null as text), without paths and constructor names."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if key.startswith("_") or prefix + key in _NOT_SETTINGS:
                continue
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value if isinstance(value, str | int | float | bool) else str(value)

    walk(container, "")
    return flat


def log_hyperparameters(trainer: L.Trainer, cfg: DictConfig) -> None:
    """The config to every logger (TensorBoard's hparams.yaml, CSV's); for TensorBoard also the
    run's settings for the HPARAMS tab, so that ``tensorboard --logdir <sweep folder>`` compares
    the jobs there, each beside the latest value of every scalar it logged."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    container = hyperparameters(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(container)
        if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
            # The session's start and end, without the "experiment" summary: TensorBoard then
            # builds the experiment from all runs' sessions, lists the settings that differ
            # between them first (shown by default), and takes every scalar as a metric.
            _, session_start, session_end = hparams(hparams_settings(container), {})
            writer = logger.experiment._get_file_writer()
            for summary in (session_start, session_end):
                writer.add_summary(summary)


def hydra_job() -> dict[str, Any]:
    """The experiment and command-line overrides of the running Hydra job ({} outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    return {"experiment": hc.runtime.choices.get("experiment"), "overrides": list(hc.overrides.task)}


def write_run_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """``<run dir>/metrics.json``: what a sweep summary reads. Written atomically."""
    path = output_dir / "metrics.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a DCGAN as ``cfg`` says. Returns the run's record, also written to
    ``<run dir>/metrics.json``: status, final and best FID, epochs, batches, wall time, the
    overrides, and ``objective``, the value of ``cfg.optimized_metric`` that sweepers minimize.
    A run that fails writes its record with ``status: failed`` (or ``interrupted``) and the
    error, then re-raises. ``cfg.resume`` continues that run instead (see dcgan/run.py); a
    resume that fails before training starts leaves the run's files as they were."""
    check_added_settings(cfg)
    check_sections(cfg, ("paths", "dataset", "model", "optimizer", "speed", "eval", "callbacks", "trainer"))
    resumed: ResumedRun | None = None
    if cfg.get("resume") is not None:
        resumed = resumed_run(cfg)
        cfg = resumed.cfg
    output_dir = Path(cfg.paths.output_dir)
    start = time.perf_counter()
    base = {"run_dir": str(output_dir.resolve()), **hydra_job()}
    if resumed is not None:
        base |= resumed.job() | {"resumed_from": cfg.ckpt_path}
    try:
        record = _train(cfg, output_dir, resumed)
    except (Exception, KeyboardInterrupt) as e:  # Ctrl-C before training: entry_point's one line
        # A refused resume (a bad setting, other network settings, a finished run) keeps the
        # run's record: it still describes the run's last training.
        if rank_zero_only.rank == 0 and (resumed is None or resumed.started):
            status = "interrupted" if isinstance(e, TrainingInterrupted | KeyboardInterrupt) else "failed"
            error = "Ctrl-C before training began" if isinstance(e, KeyboardInterrupt) else e
            failed = {"status": status, "error": f"{type(e).__name__}: {error}"}
            write_run_record(output_dir, failed | base | {"wall_s": round(time.perf_counter() - start, 1)})
        raise
    record = {"status": "completed", **base, **record, "wall_s": round(time.perf_counter() - start, 1)}
    if rank_zero_only.rank == 0:
        write_run_record(output_dir, record)
    return record


def _interrupted(interrupt: InterruptCheckpoint, trainer: L.Trainer, output_dir: Path) -> TrainingInterrupted:
    code = 128 + int(interrupt.signal or 0)
    if interrupt.saved is None:
        name = "Ctrl-C" if interrupt.signal == signal.SIGINT else "SIGTERM"
        return TrainingInterrupted(f"{name} before training began; nothing to save", code)
    return TrainingInterrupted(
        f"{interrupt.describe(trainer)}: saved the training state to {interrupt.saved}. "
        f"Continue with: python train.py resume={output_dir}",
        code,
    )


def _last_good(output_dir: Path) -> str:
    """Where a diverged run can be continued from (checkpoints are written at epoch ends, so
    none of them holds the non-finite state)."""
    last = output_dir / "checkpoints" / "last.ckpt"
    advice = (
        "Lower the learning rates (optimizer.lr_g, optimizer.lr_d) or set "
        "model.nonfinite_loss=skip to skip such updates"
    )
    if not last.is_file():
        return f"Training stopped before its first epoch ended, so no checkpoint was saved. {advice}"
    return (
        f"Training stopped; the last good state is {last}. {advice}, then continue with: "
        f"python train.py resume={output_dir} <settings>"
    )


def objective(record: dict[str, Any]) -> float:
    """The number a sweeper minimizes: the run's ``optimized_metric``; +inf, the worst, when
    the run did not log it (e.g. ``eval.fid=false``)."""
    value = record.get("objective")
    if value is None or math.isnan(value):
        if in_multirun():
            log.warning("optimized_metric %s was not logged; the sweeper gets +inf", record.get("optimized_metric"))
        return math.inf
    return float(value)


def _train(cfg: DictConfig, output_dir: Path, resumed: ResumedRun | None) -> dict[str, Any]:
    datamodule, model, trainer = build(cfg, [SaveResumedSettings(resumed)] if resumed is not None else [])
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        ckpt = resumed.checkpoint if resumed is not None else checkpoint_to_train_from(ckpt_path)
        check_resumable(ckpt, dict(model.hparams), trainer.max_epochs)
        del ckpt  # Lightning reads the file itself
    if trainer.is_global_zero:
        log.info("Run directory: %s", output_dir.resolve())
        remove_stale_temporaries(output_dir / "checkpoints")
    log_hyperparameters(trainer, cfg)
    interrupt = next(c for c in trainer.callbacks if isinstance(c, InterruptCheckpoint))  # type: ignore[attr-defined]
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except (KeyboardInterrupt, SystemExit) as e:  # Lightning ends Ctrl-C in sys.exit; SIGTERMException is one
        if interrupt.signal is None:
            raise
        raise _interrupted(interrupt, trainer, output_dir) from e
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{e}. {_last_good(output_dir)}") from None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.world_size > 1:
        # DDP averages G's and D's gradients, so every replica ends with the same weights.
        checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
        log.info("rank %d of %d: weight checksum %.10e", trainer.global_rank, trainer.world_size, checksum)
    last = output_dir / "checkpoints" / "last.ckpt"
    if trainer.is_global_zero:
        log.info(
            f"Done: {trainer.current_epoch} epochs, {loop.batches_trained(trainer)} batches. "
            f"Last checkpoint: {last}. Samples: {output_dir / 'samples'}. "
            f"TensorBoard: tensorboard --logdir {output_dir}"
        )
    fid = next((c for c in trainer.callbacks if isinstance(c, FIDCallback)), None)  # type: ignore[attr-defined]
    record: dict[str, Any] = {
        "epochs": trainer.current_epoch,
        "batches": loop.batches_trained(trainer),
        "fid": metrics.get("val/fid"),
        "fid_best": fid.best_fid if fid is not None and math.isfinite(fid.best_fid) else None,
        "best_epoch": fid.best_epoch if fid is not None and fid.best_epoch else None,
        "fid_num_samples": getattr(fid, "num_samples", None),
        # best.ckpt's FID on the split it was not chosen by (eval.final_split), at eval.final_num_samples
        "fid_final": getattr(fid, "final_fid", None),
        "metrics": metrics,
        "device": device_name(trainer.strategy.root_device),  # what train_s figures were measured on
        "threads": torch.get_num_threads(),
        "precision": str(trainer.precision),  # trainer.precision=auto's choice
        "optimized_metric": cfg.get("optimized_metric"),
    }
    value = metrics.get(cfg.get("optimized_metric") or "")
    record["objective"] = value if value is not None and math.isfinite(value) else None  # JSON has no NaN
    return record

"""A run of train.py: its folder, its config and its checkpoints, found and read once; continuing
it (``resume=``); and checkpoints that survive faults (atomic writes, Ctrl-C and SIGTERM saves,
the random state for exact resumes).

A run folder holds ``.hydra/config.yaml`` (what it was trained with) and ``checkpoints/``:
``last.ckpt`` (every epoch), ``best.ckpt`` (lowest FID) and ``interrupted.ckpt`` (Ctrl-C or
SIGTERM mid-epoch).

``resume=<run dir or .ckpt>`` continues a run in its own folder, with its own config and its
checkpoint with the most training. Settings given beside it (e.g. ``trainer.max_epochs=40``)
are applied on top and written back once training has started, so the next resume keeps them
and a refused resume (a bad value, other network settings) leaves the run as it was. Config
groups (dataset, model, ...) cannot change: the checkpoint was trained with them.
"""

from __future__ import annotations

import logging
import signal
import threading
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dcgan import loop
from dcgan.errors import UserInputError
from dcgan.files import atomic_path
from dcgan.module import DCGAN

log = logging.getLogger(__name__)

INTERRUPTED_CKPT = "interrupted.ckpt"
# The checkpoints a resume may continue from; the one with the most training wins.
RESUMABLE = (INTERRUPTED_CKPT, "last.ckpt")
# Model settings added after version 0.1's checkpoints, with the value that reproduces them:
# older checkpoints load, resume and generate as they were trained.
ADDED_SETTINGS: dict[str, Any] = {
    "g_spectral": False,
    "fc_width": 0,
    "conditional": False,
    "num_classes": None,
    "r1_weight": 0.0,
    "r1_every": 1,
    "augment": [],
    "g_upsample": "transpose",
    "d_minibatch_std": 0,
    "start_grid": None,
    "skips": False,
}

# Hyperparameters that change the shape of a saved tensor: a checkpoint only loads into a
# model that agrees on all of them.
SHAPE_KEYS: tuple[str, ...] = (
    "image_size",
    "channels",
    "latent_dim",
    "g_width",
    "d_width",
    "max_width",
    "start_grid",
    "g_stem",
    "g_upsample",
    "fc_width",
    "d_norm",
    "d_minibatch_std",
    "skips",
    "g_spectral",
    "conditional",
    "num_classes",
    "num_fixed_samples",
)
_ABSENT = object()


# --------------------------------------------------------------------------------------------
# run folders and checkpoints


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by train.py onto the CPU, tensors and plain values only
    (``weights_only``: no pickled code runs). Any file that is not one (text, empty, truncated,
    another zip or pickle) is a ``UserInputError`` naming it: what torch.load raises for such a
    file depends on its first bytes (``IndexError`` for some text), so the file's format is
    checked first and any error of the load itself is the file's."""
    reason = _not_a_torch_archive(path)
    if reason is None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            reason = _one_line(e)
    if reason is not None:
        raise UserInputError(f"{path} is not a readable checkpoint ({reason}); it may be truncated or not a .ckpt file")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserInputError(f"{path} is not a DCGAN checkpoint written by train.py (no state_dict/hyper_parameters)")
    return ckpt


def _not_a_torch_archive(path: Path) -> str | None:
    """Why ``path`` cannot be a file of ``torch.save`` (a zip archive holding ``<name>/data.pkl``,
    the only format Lightning writes), or None if it may be one."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        if not zipfile.is_zipfile(path):
            return "not the zip archive torch.save writes"
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "a zip archive without torch's data.pkl"
    except (OSError, zipfile.BadZipFile) as e:
        return _one_line(e)
    return None


def _one_line(error: BaseException) -> str:
    """The cause of a failed torch.load in one line: for a weights-only unpickling error, its
    own reason, without torch's advice to retry with ``weights_only=False`` (which would run
    whatever code the file holds)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = marker + " " + text.split(marker, 1)[1].split("Check the documentation of torch.load", 1)[0]
    reason = " ".join(text.split())  # one line
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


@dataclass
class Checkpoint:
    """One checkpoint file, read once."""

    path: Path
    data: dict[str, Any] = field(repr=False)

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        return cls(path, read_checkpoint(path))

    @property
    def hparams(self) -> dict[str, Any]:
        """The model's settings; those added after the checkpoint was written take the value
        that trained it (``ADDED_SETTINGS``)."""
        return ADDED_SETTINGS | dict(self.data["hyper_parameters"])

    @property
    def epochs_trained(self) -> int:
        return loop.epochs_trained(self.data)

    @property
    def progress(self) -> tuple[int, int]:
        return self.epochs_trained, int(self.data["global_step"])

    def model(self, device: str | torch.device = "cpu") -> DCGAN:
        """The ``DCGAN`` it holds, rebuilt from its hyperparameters alone, in eval mode."""
        try:
            model = DCGAN(**self.hparams)
            model.load_state_dict(self.data["state_dict"])
            model.class_names = self.data.get("class_names")  # None in checkpoints from before them
        except (TypeError, RuntimeError) as e:
            raise UserInputError(f"{self.path} does not fit this version's DCGAN ({e})") from e
        return model.to(device).eval()


class Run:
    """A run folder of train.py: ``directory`` with ``.hydra/`` and ``checkpoints/``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def of(cls, source: str | Path, what: str = "checkpoint") -> Run:
        """The run of ``source``: a run folder, or a checkpoint file in its ``checkpoints/`` (a
        file elsewhere: its folder)."""
        path = Path(source).expanduser()
        if path.is_dir():
            return cls(path)
        if not path.exists():
            raise UserInputError(f"{what}={source} does not exist; give a run directory or a .ckpt file")
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    @property
    def checkpoints(self) -> Path:
        return self.directory / "checkpoints"

    def checkpoint(self, source: str | Path) -> Checkpoint:
        """The checkpoint ``source`` names: a file, or for this run's folder ``best.ckpt`` if
        present, else ``last.ckpt``."""
        path = Path(source).expanduser()
        if path.is_dir():
            found = [self.checkpoints / n for n in ("best.ckpt", "last.ckpt") if (self.checkpoints / n).is_file()]
            if not found:
                raise UserInputError(f"{path} is a folder without checkpoints/best.ckpt or checkpoints/last.ckpt")
            path = found[0]
        elif not path.is_file():
            raise UserInputError(f"checkpoint {path} does not exist; give a .ckpt file or a run directory")
        return Checkpoint.read(path)

    def newest_resumable(self) -> Checkpoint:
        """The checkpoint with the most training: ``interrupted.ckpt`` when Ctrl-C or SIGTERM
        stopped the run mid-epoch, else ``last.ckpt``."""
        found = [Checkpoint.read(self.checkpoints / n) for n in RESUMABLE if (self.checkpoints / n).is_file()]
        if not found:
            raise UserInputError(
                f"{self.checkpoints} holds no {' or '.join(RESUMABLE)}; the run stopped before its first epoch "
                "ended. Start it again instead"
            )
        return max(found, key=lambda c: c.progress)

    @cached_property
    def config(self) -> DictConfig:
        """The run's config (``.hydra/config.yaml``), with the settings added on resumes."""
        cfg = OmegaConf.load(self.directory / ".hydra" / "config.yaml")
        assert isinstance(cfg, DictConfig)
        return cfg

    def overrides(self) -> list[str]:
        """The command-line settings that, on top of conf/, make the run's config: those it was
        started with, then those added on resumes."""
        path = self.directory / ".hydra" / "overrides.yaml"
        return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []

    def choices(self) -> dict[str, Any]:
        """The config group choices the run was started with (from its ``.hydra/hydra.yaml``)."""
        hydra_file = self.directory / ".hydra" / "hydra.yaml"
        if not hydra_file.is_file():
            return {}
        choices = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices", default=None)
        return dict(choices) if choices is not None else {}


def check_resumable(ckpt: Checkpoint, hparams: dict[str, Any], max_epochs: int | None) -> None:
    """Refuse to train on from ``ckpt`` with other tensor shapes, or when it has already trained
    ``max_epochs`` epochs."""
    saved = ckpt.hparams
    mismatches = [
        f"model.{key}: checkpoint {saved.get(key)!r}, config {hparams.get(key)!r}"
        for key in SHAPE_KEYS
        if saved.get(key) != hparams.get(key)
    ]
    if (saved["ema_decay"] > 0) != (hparams["ema_decay"] > 0):  # the average's tensors come and go
        mismatches.append(f"model.ema_decay: checkpoint {saved['ema_decay']!r}, config {hparams['ema_decay']!r}")
    if mismatches:
        raise UserInputError(
            f"cannot resume from {ckpt.path}: it was trained with other network settings ("
            + "; ".join(mismatches)
            + "). Use the experiment and overrides it was trained with (see .hydra/config.yaml in its run directory)"
        )
    epoch = ckpt.epochs_trained
    if max_epochs is not None and max_epochs >= 0 and epoch >= max_epochs:
        raise UserInputError(
            f"{ckpt.path} has already trained {epoch} epochs; set trainer.max_epochs above {epoch} to train on"
        )


def checkpoint_to_train_from(ckpt_path: str | Path) -> Checkpoint:
    """The file of ``ckpt_path=``, checked to be a checkpoint."""
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        raise UserInputError(
            f"ckpt_path={path} is a folder; give a .ckpt file, or continue that run with resume={path}"
        )
    if not path.is_file():
        raise UserInputError(
            f"ckpt_path={path} does not exist; give a .ckpt file (e.g. <run dir>/checkpoints/last.ckpt)"
        )
    return Checkpoint.read(path)


# --------------------------------------------------------------------------------------------
# resume=


def in_multirun() -> bool:
    """Whether this run is a job of a Hydra multirun (-m, a sweep)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resume_run(resume: str | Path) -> Run:
    """The run ``resume=`` names (a run directory, or a checkpoint inside one)."""
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserInputError(
            f"resume={resume} does not exist; give a run directory (e.g. outputs/mnist28/<date>_<time>) "
            "or a .ckpt file in one"
        )
    run = Run.of(path)
    if not (run.directory / ".hydra" / "config.yaml").is_file():
        raise UserInputError(
            f"resume={resume}: {run.directory} has no .hydra/config.yaml, so it is not a run directory of train.py. "
            "To train on from a checkpoint with a config you give, use ckpt_path=<file> with the run's "
            "experiment and overrides"
        )
    return Run(run.directory.resolve())


@dataclass
class ResumedRun:
    """A run to continue: ``cfg`` is what to train with, from ``checkpoint``; ``run.config``
    holds the settings ``changed`` on the command line, to be written back by ``save_settings``."""

    cfg: DictConfig
    run: Run
    checkpoint: Checkpoint
    changed: list[str]
    started: bool = False

    def job(self) -> dict[str, Any]:
        """The experiment and overrides of the run, the new settings included, for metrics.json."""
        return {"experiment": self.run.choices().get("experiment"), "overrides": self.overrides()}

    def overrides(self) -> list[str]:
        return [*self.run.overrides(), *self.changed]

    def save_settings(self) -> None:
        """Write the changed settings into the run's ``.hydra/config.yaml`` and
        ``overrides.yaml``, so the next resume keeps them."""
        if not self.changed:
            return
        saved_file = self.run.directory / ".hydra" / "config.yaml"
        overrides = self.overrides()
        with atomic_path(saved_file) as tmp:
            tmp.write_text(OmegaConf.to_yaml(self.run.config))
        with atomic_path(self.run.directory / ".hydra" / "overrides.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
        log.info("Resumed with changed settings (saved to %s): %s", saved_file, ", ".join(self.changed))


class SaveResumedSettings(L.Callback):
    """Writes a resume's new settings into the run's config when training starts: after every
    check of the settings and the checkpoint has passed and the data has loaded."""

    def __init__(self, resumed: ResumedRun) -> None:
        self.resumed = resumed

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.resumed.started = True
        if trainer.is_global_zero:
            self.resumed.save_settings()


def resumed_run(cfg: DictConfig) -> ResumedRun:
    """The run ``cfg.resume`` names, to continue with its saved config, the command line's
    settings on top, ``ckpt_path`` set to the checkpoint to continue from. Writes nothing."""
    if cfg.get("ckpt_path") is not None:
        raise UserInputError("give resume=<run dir> or ckpt_path=<file>, not both")
    if in_multirun():
        raise UserInputError("resume= continues one run; it cannot be part of a multirun (-m)")
    run = resume_run(cfg.resume)
    path = Path(cfg.resume).expanduser()
    checkpoint = Checkpoint.read(path.resolve()) if path.is_file() else run.newest_resumable()
    changed = _apply_overrides(run)
    resumed = run.config.copy()
    resumed.resume = str(cfg.resume)
    resumed.ckpt_path = str(checkpoint.path)
    resumed.paths.output_dir = str(run.directory)
    OmegaConf.set_struct(resumed, True)
    position = loop.data_position(checkpoint.data)
    at = f", at epoch {position[0] + 1}, batch {position[1] + 1}" if position and position[1] else ""
    log.info("Resuming %s from %s%s", run.directory, checkpoint.path, at)
    if changed:
        log.info("Settings changed on resume: %s", ", ".join(changed))
    return ResumedRun(resumed, run, checkpoint, changed)


def _apply_overrides(run: Run) -> list[str]:
    """Apply the command line's ``key=value`` settings (not ``resume=`` or ``hydra.*``) to the
    run's config; refuse a changed config group. Returns the settings that changed it."""
    if not HydraConfig.initialized():
        return []
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    choices = run.choices()
    groups = set(HydraConfig.get().runtime.choices)
    applied = []
    for override in overrides:
        key = override.key_or_group
        if key in ("resume", "ckpt_path") or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        value = override.value()
        if key in groups:
            if choices.get(key) != value:
                raise UserInputError(
                    f"resume continues a run with the config groups it was trained with; {override.input_line} "
                    f"would change {key} from {choices.get(key)!r}. Only settings such as "
                    "trainer.max_epochs=40 can change on resume"
                )
            continue
        if override.is_delete():
            raise UserInputError(f"{override.input_line}: settings cannot be removed on resume")
        if _holds(run.config, key, value):
            continue  # the run has it already: nothing to add to its overrides
        OmegaConf.update(run.config, key, value)  # Hydra has checked the key against conf/
        applied.append(override.input_line)
    return applied


def _holds(cfg: DictConfig, key: str, value: Any) -> bool:
    try:
        return bool(OmegaConf.select(cfg, key, default=_ABSENT) == value)
    except OmegaConfBaseException:  # an interpolation that does not resolve here: a change
        return False


# --------------------------------------------------------------------------------------------
# checkpoints that survive faults


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, with every file written to a temporary file beside its
    target, flushed to disk, then renamed onto it: ``kill -9`` or a power cut during a save
    leaves the previous ``last.ckpt`` readable, and a full disk raises ``OutputError`` naming
    the file instead of leaving half of one. (Lightning's own writer streams the bytes into
    the target file.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files a killed process left beside its checkpoints (``atomic_path``
    names them ``.<name>.tmp<pid>...``); the checkpoints themselves are whole."""
    for tmp in sorted(folder.glob(".*.tmp*")) if folder.is_dir() else []:
        log.info("Removing %s, left by an interrupted checkpoint write", tmp)
        tmp.unlink(missing_ok=True)


class RandomState(L.Callback):
    """The random state (latents, instance noise, dropout) in every checkpoint: a run resumed on
    one device continues exactly as the uninterrupted run would have. Under DDP every process
    was seeded alike; each gets its own noise instead, or all would feed D the same fakes."""

    def __init__(self) -> None:
        self._device = torch.device("cpu")
        self._saved: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._device = trainer.strategy.root_device

    def state_dict(self) -> dict[str, Any]:
        cuda = self._device.type == "cuda"
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self._device) if cuda else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            step = loop.batches_trained(trainer)
            torch.manual_seed((torch.initial_seed() + 1_000_003 * trainer.global_rank + step) % 2**63)
        elif self._saved is not None:
            torch.set_rng_state(self._saved["torch"])
            if self._saved.get("cuda") is not None and self._device.type == "cuda":
                torch.cuda.set_rng_state(self._saved["cuda"], self._device)
        self._saved = None


class InterruptCheckpoint(L.Callback):
    """Ctrl-C or SIGTERM during training: finish the current batch, save the whole training
    state to ``<dirpath>/interrupted.ckpt`` and stop; ``resume=<run dir>`` continues from it.

    Both signals only set a flag while training runs (a second one stops at once, still
    saving); the stop happens before the next batch, so no optimizer step is cut in half. Under
    DDP the ranks agree on the flag by a collective at every batch start, so every rank stops
    at the same batch, whichever rank got the signal (``kill`` reaches one process, SLURM and a
    terminal's Ctrl-C all of them). Lightning's own SIGTERM handler is set aside meanwhile:
    it calls a collective from inside the signal handler, which under DDP can pair with
    another rank's gradient all-reduce and hang both (seen once in three runs). Divergence and
    other errors are not saved: the last good checkpoint stays the one to resume from.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, dirpath: str | Path) -> None:
        self.path = Path(dirpath) / INTERRUPTED_CKPT
        self.saved: Path | None = None
        self.signal: signal.Signals | None = None
        self._requested = False
        self._previous_handlers: dict[signal.Signals, Any] = {}
        # Whether training proper has begun: Lightning says "training" from the start of fit,
        # before the data and reference features load and before a resume's checkpoint is
        # restored, when there is no state of this run to save (and a resume's own
        # interrupted.ckpt must not be overwritten with fresh weights).
        self._training = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        self.signal = signal.Signals(signum)
        name = "Ctrl-C" if self.signal == signal.SIGINT else "SIGTERM"
        log.warning(f"{name}: stopping after this batch and saving a checkpoint ({name} again to stop at once)")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        # Stop before the next batch rather than at the end of this one: Lightning counts a
        # batch as completed only after its end hooks, and a resume must not repeat it.
        requested = self._requested
        if trainer.world_size > 1:  # a rank that missed the signal must stop at the same batch
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            raise KeyboardInterrupt

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if isinstance(exception, KeyboardInterrupt):
            # This rank's own signal; else, in training under DDP, another rank's (a stop from
            # outside: SIGTERM); else Python's Ctrl-C before training began.
            outside = self._training and trainer.world_size > 1
            self.signal = self.signal or (signal.SIGTERM if outside else signal.SIGINT)
        elif isinstance(exception, SIGTERMException):  # before training began: Lightning's handler
            self.signal = signal.SIGTERM
        else:
            return
        if not self._training:  # interrupted before training began: nothing to save
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state
        self.saved = self.path

    def describe(self, trainer: L.Trainer) -> str:
        """Where the signal stopped training, e.g. "SIGTERM at epoch 2, batch 44"."""
        name = "Ctrl-C" if self.signal == signal.SIGINT else "SIGTERM"
        batches = loop.batches_into_epoch(trainer)
        # After an epoch's last batch (in its end-of-epoch work) or before the next one's first.
        if batches == 0 or batches >= trainer.num_training_batches:
            done = loop.epochs_finished(trainer)
            return f"{name} at the end of epoch {done}" if done else f"{name} before the first batch"
        return f"{name} at epoch {trainer.current_epoch + 1}, batch {batches}"

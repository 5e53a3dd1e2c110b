"""``resume=<run dir or .ckpt>``: continue a run in its own directory, with its own config and
its newest checkpoint.

The run's ``.hydra/config.yaml`` is the config; settings given beside ``resume=`` (e.g.
``trainer.max_epochs=40``) are applied on top and written back once training has started, so
the next resume keeps them and a refused resume (a bad value, other network settings) leaves
the run as it was. Config groups (dataset, model, ...) cannot change: the checkpoint was
trained with them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dcgan.checkpoints import epochs_trained, read_checkpoint, run_dir_of
from dcgan.errors import UserInputError
from dcgan.faults import INTERRUPTED_CKPT
from dcgan.io import atomic_path

log = logging.getLogger(__name__)

_ABSENT = object()

# The checkpoints a resume may continue from; the one with the most training wins.
RESUMABLE = (INTERRUPTED_CKPT, "last.ckpt")


def resume_run_dir(resume: str | Path) -> Path:
    """The run directory that ``resume=`` names (a run directory, or a checkpoint inside one)."""
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserInputError(
            f"resume={resume} does not exist; give a run directory (e.g. outputs/mnist28/<date>_<time>) "
            "or a .ckpt file in one"
        )
    run_dir = run_dir_of(path)
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise UserInputError(
            f"resume={resume}: {run_dir} has no .hydra/config.yaml, so it is not a run directory of train.py. "
            "To train on from a checkpoint with a config you give, use ckpt_path=<file> with the run's "
            "experiment and overrides"
        )
    return run_dir.resolve()


def resume_checkpoint(resume: str | Path) -> Path:
    """The checkpoint to continue from: the file ``resume=`` names, or the run's checkpoint
    with the most training (``interrupted.ckpt`` when Ctrl-C or SIGTERM stopped the run
    mid-epoch, else ``last.ckpt``)."""
    path = Path(resume).expanduser()
    if path.is_file():
        return path.resolve()
    run_dir = resume_run_dir(path)
    candidates = [run_dir / "checkpoints" / name for name in RESUMABLE if (run_dir / "checkpoints" / name).is_file()]
    if not candidates:
        raise UserInputError(
            f"resume={resume}: {run_dir / 'checkpoints'} holds no {' or '.join(RESUMABLE)}; the run stopped "
            "before its first epoch ended. Start it again instead"
        )
    return max(candidates, key=lambda p: _progress(read_checkpoint(p)))


def _progress(ckpt: dict[str, Any]) -> tuple[int, int]:
    return epochs_trained(ckpt), int(ckpt.get("global_step", 0))


@dataclass
class ResumedRun:
    """A run to continue: ``cfg`` is what to train with; ``saved`` is the run's config with the
    settings ``changed`` on the command line, to be written back by ``save_settings``."""

    cfg: DictConfig
    run_dir: Path
    saved: DictConfig
    changed: list[str]
    started: bool = False

    def job(self) -> dict[str, Any]:
        """The experiment and overrides of the run, the new settings included, for metrics.json."""
        return {"experiment": saved_choices(self.run_dir).get("experiment"), "overrides": self.overrides()}

    def overrides(self) -> list[str]:
        return [*run_overrides(self.run_dir), *self.changed]

    def save_settings(self) -> None:
        """Write the changed settings into the run's ``.hydra/config.yaml`` and
        ``overrides.yaml``, so the next resume keeps them."""
        if not self.changed:
            return
        saved_file = self.run_dir / ".hydra" / "config.yaml"
        overrides = self.overrides()
        with atomic_path(saved_file) as tmp:
            tmp.write_text(OmegaConf.to_yaml(self.saved))
        with atomic_path(self.run_dir / ".hydra" / "overrides.yaml") as tmp:
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
    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        raise UserInputError("resume= continues one run; it cannot be part of a multirun (-m)")
    run_dir = resume_run_dir(cfg.resume)
    checkpoint = resume_checkpoint(cfg.resume)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert isinstance(saved, DictConfig)
    changed = _apply_overrides(saved, run_dir)
    resumed = saved.copy()
    resumed.resume = str(cfg.resume)
    resumed.ckpt_path = str(checkpoint)
    resumed.paths.output_dir = str(run_dir)
    OmegaConf.set_struct(resumed, True)
    log.info("Resuming %s from %s", run_dir, checkpoint)
    if changed:
        log.info("Settings changed on resume: %s", ", ".join(changed))
    return ResumedRun(resumed, run_dir, saved, changed)


def _apply_overrides(saved: DictConfig, run_dir: Path) -> list[str]:
    """Apply the command line's ``key=value`` settings (not ``resume=`` or ``hydra.*``) to the
    saved config; refuse a changed config group. Returns the settings that changed it."""
    if not HydraConfig.initialized():
        return []
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    choices = saved_choices(run_dir)
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
        if _holds(saved, key, value):
            continue  # the run has it already: nothing to add to its overrides
        # Hydra has checked the key against today's conf/; a run saved before the key existed
        # gets it added.
        OmegaConf.update(saved, key, value, force_add=True)
        applied.append(override.input_line)
    return applied


def _holds(cfg: DictConfig, key: str, value: Any) -> bool:
    try:
        return bool(OmegaConf.select(cfg, key, default=_ABSENT) == value)
    except OmegaConfBaseException:  # an interpolation that does not resolve here: a change
        return False


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line settings that, on top of conf/, make the run's config: those it was
    started with, then those added on resumes."""
    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def saved_choices(run_dir: Path) -> dict[str, Any]:
    """The config group choices the run was started with (from its ``.hydra/hydra.yaml``)."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices", default=None)
    return dict(choices) if choices is not None else {}

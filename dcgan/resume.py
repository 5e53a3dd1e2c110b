"""``resume=<run dir or .ckpt>``: continue a run in its own directory, with its own config and
its newest checkpoint.

The run's ``.hydra/config.yaml`` is the config; settings given beside ``resume=`` (e.g.
``trainer.max_epochs=40``) are applied on top and written back, so the next resume keeps them.
Config groups (dataset, model, ...) cannot change: the checkpoint was trained with them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from dcgan.checkpoints import epochs_trained, read_checkpoint, run_dir_of
from dcgan.errors import UserInputError
from dcgan.faults import INTERRUPTED_CKPT
from dcgan.io import atomic_path

log = logging.getLogger(__name__)

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


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config to continue ``cfg.resume`` with: the run's saved config, the command line's
    settings on top, ``ckpt_path`` set to the checkpoint to continue from. Also written back
    to the run's ``.hydra/config.yaml``."""
    if cfg.get("ckpt_path") is not None:
        raise UserInputError("give resume=<run dir> or ckpt_path=<file>, not both")
    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        raise UserInputError("resume= continues one run; it cannot be part of a multirun (-m)")
    run_dir = resume_run_dir(cfg.resume)
    checkpoint = resume_checkpoint(cfg.resume)
    saved_file = run_dir / ".hydra" / "config.yaml"
    saved = OmegaConf.load(saved_file)
    assert isinstance(saved, DictConfig)
    changed = _apply_overrides(saved, run_dir)
    if changed:
        # The run's config now includes them, so the next resume keeps them too.
        with atomic_path(saved_file) as tmp:
            tmp.write_text(OmegaConf.to_yaml(saved))
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        with atomic_path(overrides_file) as tmp:
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create([*run_overrides(run_dir), *changed])))
        log.info("Resuming with changed settings (saved to %s): %s", saved_file, ", ".join(changed))
    resumed = saved.copy()
    resumed.resume = str(cfg.resume)
    resumed.ckpt_path = str(checkpoint)
    resumed.paths.output_dir = str(run_dir)
    OmegaConf.set_struct(resumed, True)
    log.info("Resuming %s from %s", run_dir, checkpoint)
    return resumed


def _apply_overrides(saved: DictConfig, run_dir: Path) -> list[str]:
    """Apply the command line's ``key=value`` settings (not ``resume=`` or ``hydra.*``) to the
    saved config; refuse a changed config group. Returns the settings applied."""
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
        # Hydra has checked the key against today's conf/; a run saved before the key existed
        # gets it added.
        OmegaConf.update(saved, key, value, force_add=True)
        applied.append(override.input_line)
    return applied


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line settings that, on top of conf/, make the run's config: those it was
    started with, then those added on resumes."""
    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def resumed_job(run_dir: Path) -> dict[str, Any]:
    """The experiment and overrides of the run being resumed, for its metrics.json."""
    return {"experiment": saved_choices(run_dir).get("experiment"), "overrides": run_overrides(run_dir)}


def saved_choices(run_dir: Path) -> dict[str, Any]:
    """The config group choices the run was started with (from its ``.hydra/hydra.yaml``)."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return {}
    choices = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices", default=None)
    return dict(choices) if choices is not None else {}

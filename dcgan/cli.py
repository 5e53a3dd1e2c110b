"""Shared behaviour of the entry scripts: user errors end in one clear line, not a traceback."""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from dcgan.errors import ReportedError, TrainingInterrupted, UserInputError
from dcgan.run import in_multirun, resume_run

log = logging.getLogger(__name__)

T = TypeVar("T")


def run_name() -> str:
    """The name of a run's folder (conf/train.yaml): its start time, or under torchrun, whose
    processes each run Hydra and could start in different seconds, ``torchrun-<rendezvous
    id>``, the same in every process of the job."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id:
        return f"torchrun-{run_id}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def run_dir(resume: str | None, new_run_dir: str) -> str:
    """The run directory (conf/train.yaml ``hydra.run.dir``): that of ``resume=`` when given,
    so a resumed run goes on in its own folder, else ``new_run_dir``."""
    return new_run_dir if resume is None else str(resume_run(resume).directory)


def hydra_subdir(resume: str | None) -> str:
    """Where Hydra saves the job's config: ``.hydra``, or for a resume ``.hydra/resumed-<time>``,
    so the run's own ``.hydra/config.yaml``, which the resume reads, is not overwritten."""
    return ".hydra" if resume is None else f".hydra/resumed-{datetime.now():%Y-%m-%d_%H-%M-%S}"


for _name, _fn in (("dcgan.run_name", run_name), ("dcgan.run_dir", run_dir), ("dcgan.hydra_subdir", hydra_subdir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn, use_cache=True)


def run_or_exit(fn: Callable[[], T]) -> T | float:
    """Run ``fn``; on a ``ReportedError`` print ``<label>: <message>`` to stderr and exit with
    its code (2 for bad input, 128 + signal for an interruption, 1 otherwise).

    In a Hydra multirun a failing job must not end the sweep: its error (with the traceback
    for unexpected ones) goes to the job's log and it returns +inf, the worst value for a
    sweeper that minimizes (Optuna's sweeper cannot take NaN); its metrics.json, and so the
    sweep summary, mark it failed. An interruption (Ctrl-C, SIGTERM) ends the sweep too.
    """
    try:
        return fn()
    except TrainingInterrupted as e:
        exit_with(e)
    except ReportedError as e:
        if in_multirun():
            log.error("job %d failed: %s", HydraConfig.get().job.num, e)
            return math.inf
        exit_with(e)
    except Exception:
        if in_multirun():
            log.exception("job %d failed", HydraConfig.get().job.num)
            return math.inf
        raise


def check_added_settings(cfg: DictConfig) -> None:
    """Refuse a ``+key=value`` that adds a setting the config does not have, unless it adds an
    argument that the node's constructor (its ``_target_``) takes: ``+trainer.<a Lightning
    Trainer argument>``, a callback's arguments. Hydra appends any key, so a mistyped one
    (``+eval.num_sample=500``) would be ignored in silence."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    groups = set(hydra_cfg.runtime.choices)
    for override in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task)):
        key = override.key_or_group
        if not override.is_add() or key in groups:
            continue
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if (
            isinstance(node, DictConfig)
            and "_target_" in node
            and (name.startswith("_") or _takes(node._target_, name) is not False)
        ):
            continue
        raise UserInputError(
            unknown_setting(cfg, key, override.input_line)
            + ". Only a constructor's arguments can be added, e.g. +trainer.<Lightning Trainer argument>"
        )


def check_sections(cfg: DictConfig, names: tuple[str, ...]) -> None:
    """Refuse a section of settings replaced by a value on the command line (``model=dcgan``, as
    in templates where ``model`` is a config group): Hydra takes it, and the code would fail
    reading its settings."""
    for name in names:
        value = cfg.get(name)
        if value is not None and not isinstance(value, DictConfig):
            raise UserInputError(
                f"{name}={value}: {name} is a section of settings, not one setting or a config group; set its "
                f"settings one by one, e.g. {name}.<setting>=<value> (`--cfg job` lists them)"
            )


def closest_settings(cfg: DictConfig, key: str) -> list[str]:
    """The settings of ``cfg`` nearest to ``key`` (a mistyped one): the nearest, and any as near
    as it; Hydra's own settings only for a ``hydra.`` key."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(tree, dict)
    keys: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            elif not str(name).startswith("_") and f"{prefix}{name}" != key:
                keys.append(f"{prefix}{name}")

    walk({k: v for k, v in tree.items() if (k == "hydra") == key.startswith("hydra.")}, "")
    scores = {k: difflib.SequenceMatcher(None, key, k).ratio() for k in keys}
    best = max(scores.values(), default=0.0)
    return sorted((k for k, v in scores.items() if v >= max(0.6, best - 0.05)), key=lambda k: -scores[k])[:3]


def unknown_setting(cfg: DictConfig, key: str, input_line: str) -> str:
    """What to tell a user whose ``input_line`` names ``key``, which ``cfg`` does not have: the
    settings nearest to it, and ``+`` only where a constructor takes the key as an argument
    (``trainer.enable_progress_bar``: a Lightning Trainer argument the config does not list)."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else None
    if not input_line.startswith("+") and isinstance(node, DictConfig) and _takes(node.get("_target_"), name):
        return f"{input_line}: {key} is not in the config, but {node._target_} takes {name}: add it with +{input_line}"
    near = closest_settings(cfg, key)
    guess = f"did you mean {' or '.join(near)}?" if near else "mistyped?"
    script = Path(sys.argv[0]).name
    listed = f"; `python {script} --cfg job` lists them" if script in ("train.py", "generate.py") else ""
    return f"{input_line}: {key} is not a setting ({guess}){listed}"


def _takes(target: object, name: str) -> bool | None:
    """Whether the constructor ``target`` (a ``_target_`` path) takes an argument ``name`` (by
    name or through ``**kwargs``); None when its signature cannot be read."""
    if not isinstance(target, str):
        return None
    try:
        parameters = inspect.signature(get_object(target)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return (name in parameters and parameters[name].kind in keyword) or any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def describe_config_error(error: Exception) -> str:
    """One line for a config Hydra could not compose: a mistyped key with the settings nearest
    to it, an unknown option with the group's options, an override that does not parse."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    cause = error.__cause__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and cause.parent_node is not None:
        # Hydra's advice quotes the override: "To append to your config use +<override>"
        typed = re.search(r"use \+(\S+)\s*$", str(error))
        root = cause.parent_node._get_root()
        if typed and isinstance(root, DictConfig):
            input_line = typed.group(1)
            return unknown_setting(root, input_line.split("=", 1)[0], input_line)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not an option of {group}; choose one of {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        reason, _, link = str(error).partition("\nSee ")
        return (
            f"cannot read {error.override!r}: {' '.join(reason.split())}; settings are key=value, e.g. "
            f"trainer.max_epochs=40 ({link.removesuffix(' for details') or 'Hydra override grammar'})"
        )
    text = " ".join(str(error).split())
    where = getattr(error, "full_key", None)  # OmegaConf's errors name the setting apart
    text = f"{where}: {text}" if where and str(where) not in text else text
    return f"{text} ({' '.join(str(cause).split())})" if cause is not None else text


def exit_with(error: ReportedError) -> NoReturn:
    """Print ``<label>: <message>`` to stderr and exit with the error's code."""
    print(f"{error.label}: {error}", file=sys.stderr)
    raise SystemExit(error.exit_code) from None


def instantiate_node(node: DictConfig | dict[str, Any], key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, with our own constructors' ``UserInputError`` (and a
    ``TypeError`` or ``ValueError`` from a misspelled, missing or bad setting) surfacing as a
    ``UserInputError`` that names the config key, rather than Hydra's wrapped exception. The
    Trainer's constructor only checks its settings (``trainer.precision=foo``,
    ``trainer.accelerator=gpu`` without one), so any error from it is the config's."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserInputError):
            raise cause from None
        if isinstance(cause, TypeError | ValueError) or (key == "trainer" and isinstance(cause, Exception)):
            raise UserInputError(f"{key}: {cause}") from None
        raise


class CheckOutputDir(Callback):
    """A Hydra callback: make sure the run (or sweep) directory can be created and written
    before Hydra creates it, so a typo'd or read-only path, or a bad ``resume=``, ends in one
    ``error:`` line (exit 2) rather than a traceback from inside Hydra."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        # The hydra: resolver needs the Hydra config set; Hydra sets it again itself next.
        HydraConfig.instance().set_config(config)
        try:
            path = Path(str(OmegaConf.select(config, key, throw_on_resolution_failure=True)))
            check_writable_dir(path, f"{key}={path}")
        except Exception as e:
            cause: BaseException | None = e  # a resolver's error comes wrapped by OmegaConf
            while cause is not None and not isinstance(cause, UserInputError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            exit_with(cause)


def check_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and check that a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserInputError(
            f"cannot write to {what}: {e.strerror or e}; choose a writable folder (hydra.run.dir=<folder>, or "
            "run from a folder where outputs/ can be created)"
        ) from e

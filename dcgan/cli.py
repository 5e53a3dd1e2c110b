"""Shared behaviour of the entry scripts: user errors end in one clear line, not a traceback."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from dcgan.errors import UserInputError

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


if not OmegaConf.has_resolver("dcgan.run_name"):
    OmegaConf.register_new_resolver("dcgan.run_name", run_name, use_cache=True)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_or_exit(fn: Callable[[], T]) -> T | float:
    """Run ``fn``; on ``UserInputError`` print ``error: <message>`` to stderr and exit 2.

    In a Hydra multirun a failing job must not end the sweep: its error (with the traceback
    for unexpected ones) goes to the job's log and it returns +inf, the worst value for a
    sweeper that minimizes (Optuna's sweeper cannot take NaN); its metrics.json, and so the
    sweep summary, mark it failed.
    """
    try:
        return fn()
    except UserInputError as e:
        if in_multirun():
            log.error("job %d failed: %s", HydraConfig.get().job.num, e)
            return math.inf
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception:
        if in_multirun():
            log.exception("job %d failed", HydraConfig.get().job.num)
            return math.inf
        raise

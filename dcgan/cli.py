"""Shared behaviour of the entry scripts: user errors end in one clear line, not a traceback."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from dcgan.errors import UserInputError

log = logging.getLogger(__name__)

T = TypeVar("T")


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

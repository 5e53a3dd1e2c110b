"""Hyperparameter search with Optuna (conf/hparams_search/): the sampler of a study that can
be continued."""

from __future__ import annotations

import contextlib
from typing import Any

from hydra.core.hydra_config import HydraConfig


def tpe_sampler(seed: int | None = None, **settings: Any) -> Any:
    """Optuna's TPE sampler (``settings``: its arguments), seeded with ``seed`` plus the number
    of trials that the sweep's stored study (``hydra.sweeper.storage``, ``study_name``)
    already holds: a new search draws the same trials on every launch, and a continued one
    draws new ones. With one seed for every launch, a continued search would start its random
    draws over and repeat the first launch's trials, into the same job folders."""
    import optuna

    done = 0
    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    if seed is not None and sweeper is not None and sweeper.get("storage"):
        with contextlib.suppress(KeyError):  # KeyError: no such study yet
            done = len(optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage).trials)
    return optuna.samplers.TPESampler(seed=None if seed is None else seed + done, **settings)

"""Hyperparameter search with Optuna (conf/hparams_search/) in a stored study, which the same
command continues after its driver stopped: the sweeper (hydra_plugins/dcgan_search, where
Hydra looks for sweepers) runs the trials the study still lacks, numbering their jobs on, and
the seeded sampler does not repeat the earlier launches' draws."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig


def stored_trials(storage: str | None, study_name: str) -> list[Any]:
    """The trials of the stored study (optuna FrozenTrials); [] without storage or study."""
    import optuna

    if not storage:
        return []
    try:
        return optuna.load_study(study_name=study_name, storage=storage).trials
    except KeyError:  # no such study yet
        return []


def finished(trials: list[Any]) -> int:
    """Trials that ended (complete, failed or pruned). One that was running when its driver
    stopped never ends: it is not counted, and a new trial takes its place."""
    return sum(t.state.is_finished() for t in trials)


def tpe_sampler(seed: int | None = None, **settings: Any) -> Any:
    """Optuna's TPE sampler (``settings``: its arguments), seeded with ``seed`` plus the number
    of trials that the sweep's stored study (``hydra.sweeper.storage``, ``study_name``)
    already holds: a new search draws the same trials on every launch, and a continued one
    draws new ones. With one seed for every launch, a continued search would start its random
    draws over and repeat the first launch's trials."""
    import optuna

    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else None
    if seed is not None and sweeper is not None:
        seed += len(stored_trials(sweeper.get("storage"), sweeper.study_name))
    return optuna.samplers.TPESampler(seed=seed, **settings)

"""dcgan's Optuna sweeper: Hydra takes sweepers only from the ``hydra_plugins`` package. Used
by conf/hparams_search/optuna_fid.yaml; needs the sweep extra (hydra-optuna-sweeper)."""

from __future__ import annotations

import contextlib
import logging

with contextlib.suppress(ImportError):  # without the sweep extra there is nothing to define
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    from dcgan.search import finished, stored_trials

    class ContinuingOptunaSweeper(OptunaSweeper):
        """hydra-optuna-sweeper's sweeper, with ``n_trials`` the size of the whole study: a launch
        runs the trials that the stored study still lacks (none once it has them all), and numbers
        their jobs after the study's trials, so job folders do not repeat."""

        def sweep(self, arguments: list[str]) -> None:
            impl = self.sweeper
            trials = stored_trials(impl.storage, impl.study_name)
            if trials:
                done = finished(trials)
                impl.n_trials = max(0, impl.n_trials - done)
                impl.job_idx = len(trials)
                logging.getLogger(__name__).info(
                    "Study %r holds %d ended trials: running %d more", impl.study_name, done, impl.n_trials
                )
            return impl.sweep(arguments)

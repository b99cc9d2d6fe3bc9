"""In a trial's own process (a child, a Ray task, a Slurm job): each epoch's validation figure reported to the
contender's study, reopened from its journal file, which may stop the trial (Pruned). Nothing of the
orchestrator is imported here: the trial pays for Optuna and no more."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from bench.cell import Pruned, TrialSpec

# Optuna logs every trial at INFO; bench prints its own line per trial
optuna.logging.set_verbosity(optuna.logging.WARNING)

# a trial reports its validation metric after every epoch (step = epoch, from 1): warmup_epochs = 1 lets the
# median pruner stop a trial after its first epoch
PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "none": lambda warmup, startup: optuna.pruners.NopPruner(),
    "median": lambda warmup, startup: optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup),
    "halving": lambda warmup, startup: optuna.pruners.SuccessiveHalvingPruner(),
}


def journal(path: Path | str) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


class EpochReporter:
    """on_epoch of a trial with a pruner, in the trial's own process (a child, a Ray task, a Slurm job): the
    epoch's validation metric goes to the study, reopened from its journal file, and Pruned is raised when the
    pruner judges the trial hopeless. `seconds` is what that cost: tuning's time, not training's."""

    def __init__(self, spec: TrialSpec, train: Any):
        start = time.perf_counter()
        self.spec = spec
        # the figure of the weights that validation selects (with a weight EMA, the average's columns)
        self.column = spec.metric + ("_ema" if train.ema and train.ema_select == "ema" else "")
        study = optuna.load_study(study_name=spec.contender, storage=journal(spec.journal),
                                  sampler=optuna.samplers.RandomSampler(),  # samples nothing here
                                  pruner=PRUNERS[spec.pruner](spec.warmup_epochs, spec.startup_trials))
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, spec.number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.seconds = time.perf_counter() - start

    def __call__(self, row: dict[str, Any]) -> None:
        start = time.perf_counter()
        value = float(row[self.column])
        self.trial.report(value, row["epoch"])
        prune = self.trial.should_prune()
        self.seconds += time.perf_counter() - start
        if prune:
            raise Pruned(row["epoch"], f"pruned after epoch {row['epoch']} by the {self.spec.pruner} pruner "
                                       f"({self.spec.metric} {value:.4f})")

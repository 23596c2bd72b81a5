"""Reporting a training job's objective to its Optuna trial, and stopping when the pruner says so.

The job learns its study, storage, trial number and pruner from `cfg.optuna` (set by the sweeper),
so this works the same when the trial runs as a separate Slurm job. Optuna does not store the
pruner with the study: the job rebuilds it from its config before loading the trial (a job that
did not would silently get MedianPruner's defaults). Rank 0 reports and decides; the decision is
broadcast so that no rank is left waiting in a collective. The job never tells the trial's final
state: the sweeper does.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trlm.distributed import broadcast_from_main, is_main_process
from trlm.errors import TrlmError

log = logging.getLogger(__name__)


def reports_to_trial(cfg: DictConfig) -> bool:
    return cfg.optuna.storage is not None and cfg.optuna.number is not None and bool(cfg.optuna.pruner)


def check_prunable(cfg: DictConfig) -> None:
    metric = cfg.stage.objective.metric
    if reports_to_trial(cfg) and not metric.startswith("eval_"):
        raise TrlmError(
            f"pruning needs an objective measured during training (an eval_* metric); {metric} is only measured "
            f"at the end: choose an eval_* objective, or set hydra.sweeper.pruner=null"
        )


def load_trial(cfg: DictConfig) -> Any:
    import optuna

    from trlm.study import build_pruner, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(cfg.optuna.storage, None, parallel=True)
    study = optuna.load_study(study_name=cfg.optuna.study, storage=storage, pruner=build_pruner(cfg.optuna.pruner))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, cfg.optuna.number)
    return optuna.trial.Trial(study, trial_id)


class TrialReporter(TrainerCallback):
    """At each evaluation: report the objective to the trial; stop training if the pruner says so."""

    def __init__(self, cfg: DictConfig) -> None:
        self.metric = cfg.stage.objective.metric
        self.trial = load_trial(cfg) if is_main_process() else None
        self.pruned = False

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs: Any
    ):
        prune = False
        if self.trial is not None and metrics and self.metric in metrics:
            self.trial.report(float(metrics[self.metric]), state.global_step)
            prune = self.trial.should_prune()
        if broadcast_from_main(prune):
            log.info("pruned at step %d: %s = %s", state.global_step, self.metric, (metrics or {}).get(self.metric))
            self.pruned = True
            control.should_training_stop = True

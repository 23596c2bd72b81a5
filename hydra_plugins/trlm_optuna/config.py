"""`hydra/sweeper=trlm_optuna`: the keys people know from hydra-optuna-sweeper, plus trlm's.

Registered in Hydra's ConfigStore when Hydra discovers the plugin (it imports `hydra_plugins.*`).
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from trlm.config import COUNT, NON_NEGATIVE, POSITIVE, setting


@dataclass
class TrlmOptunaSweeperConf:
    _target_: str = "hydra_plugins.trlm_optuna.sweeper.TrlmOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself and hands the pruner's config to jobs
    # Any Optuna sampler, built by Hydra's instantiate (TPE gets constant_liar: trials in flight are not re-asked).
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    # Any Optuna pruner (MedianPruner, SuccessiveHalvingPruner, HyperbandPruner, PatientPruner…); null: none.
    pruner: Any = field(
        default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 0}
    )
    direction: str | None = None  # minimize | maximize; null: the stage's objective direction
    study_name: str | None = None  # null: run.sweep (the sweep config's name); the same name resumes the study
    storage: str | None = None  # null: a journal file in the sweep directory; or a journal path / RDB URL
    n_trials: int = setting(10, "trials in the study in all (any state): re-running resumes, a larger n extends it",
                            COUNT)  # fmt: skip
    n_jobs: int = setting(1, "trials in flight at once; a new one starts as soon as any finishes", COUNT)
    # false: wait for every trial of a batch before asking the next batch (hydra-optuna-sweeper's way;
    # kept to measure the difference, bench/sweep_bench.py)
    asynchronous: bool = True
    max_failures: int = setting(3, "failed trials (raised, NaN/inf, killed) this sweep tolerates before it stops",
                                NON_NEGATIVE)  # fmt: skip
    params: dict[str, str] = field(default_factory=dict)  # key: Hydra sweep expression
    custom_search_space: str | None = None  # "module.function(cfg, trial)" suggesting further params
    enqueue_trials: list[dict[str, Any]] = field(default_factory=list)  # params to try first (e.g. the report's)
    heartbeat_interval: int = setting(30, "seconds between the sweeper's heartbeats for each trial it runs (RDB: "
                                      "Optuna's own; journal: a lease)", COUNT)  # fmt: skip
    grace_period: int | None = setting(None, "seconds a trial may go without a heartbeat before it counts as "
                                       "dead and runs again; null: 4 x heartbeat_interval", COUNT)  # fmt: skip
    max_retry: int = setting(3, "times a dead trial runs again on an RDB storage (Optuna's retry callback)",
                             NON_NEGATIVE)  # fmt: skip
    report_every: float = setting(0.1, "evaluate and report to the pruner every N steps (< 1: share of the run)",
                                  POSITIVE)  # fmt: skip


ConfigStore.instance().store(group="hydra/sweeper", name="trlm_optuna", node=TrlmOptunaSweeperConf, provider="trlm")

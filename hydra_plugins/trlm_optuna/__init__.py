"""trlm's Hydra sweeper: Optuna (>= 4) through its ask/tell API, trials asynchronous, pruning in the job."""

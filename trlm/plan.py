"""`trlm plan [overrides]`: what a command would launch, before it launches anything.

Takes the overrides of `python train.py -m ...` and prints the stage, blend, hardware and launcher
it composes to, how many jobs a sweep makes and what each asks of the cluster, and for a Slurm
launcher the exact sbatch script submitit would submit for one job.
"""

from __future__ import annotations

import math

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from trlm.config import register_configs
from trlm.errors import TrlmError
from trlm.layout import register_resolvers
from trlm.paths import CONF_DIR

GPUS_PER_MI300X_NODE = 8


def compose_multirun(overrides: list[str]) -> DictConfig:
    """The config `python train.py -m <overrides>` composes, Hydra's own section included."""
    args = [arg for arg in overrides if arg not in ("-m", "--multirun")]
    register_configs()
    register_resolvers()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=args, return_hydra_config=True)
    except Exception as error:  # Hydra's composition errors name the key
        raise TrlmError(f"the command does not compose: {error}") from None
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} in the launcher resolves as in a job
    return cfg


def describe(cfg: DictConfig) -> list[str]:
    choices = cfg.hydra.runtime.choices
    launcher = choices.get("hydra/launcher")
    hardware = cfg.hardware
    lines = [
        f"stage {cfg.stage.name} of run {cfg.run.name}: data {cfg.data.name}, model {cfg.model.name}",
        f"hardware {hardware.name}: {hardware.num_nodes} node(s) x {hardware.devices_per_node} device(s), "
        f"{getattr(hardware.precision, 'name', hardware.precision)}",
    ]
    sweeper = cfg.hydra.sweeper
    if choices.get("hydra/sweeper") == "trlm_optuna":
        jobs, at_once = sweeper.n_trials, min(sweeper.n_jobs, sweeper.n_trials)
        lines.append(f"sweep {cfg.run.sweep}: {jobs} trial jobs, {at_once} at once")
    else:
        jobs = at_once = 1
        lines.append("one job (a basic-sweeper -m with list overrides makes one per combination)")
    if launcher == "submitit_slurm":
        gpus = hardware.num_nodes * hardware.devices_per_node
        nodes = max(hardware.num_nodes, math.ceil(at_once * gpus / GPUS_PER_MI300X_NODE))
        lines.append(
            f"Slurm, partition {cfg.hydra.launcher.partition}: each job {hardware.num_nodes} node(s) x "
            f"{cfg.hydra.launcher.tasks_per_node} task(s), {gpus} GPU(s); at most {at_once * gpus} GPUs on "
            f"{nodes} node(s) of {GPUS_PER_MI300X_NODE} at once"
        )
    else:
        lines.append(f"launcher {launcher}: jobs run on this machine")
    return lines


def print_plan(overrides: list[str]) -> int:
    cfg = compose_multirun(overrides)
    print("\n".join(describe(cfg)))
    if cfg.hydra.runtime.choices.get("hydra/launcher") == "submitit_slurm":
        from hydra_plugins.trlm_submitit.launcher import sbatch_script

        print("\nsbatch script of one job (submitit writes it beside the job's logs):\n")
        print(sbatch_script(OmegaConf.to_container(cfg.hydra.launcher, resolve=True)))
    return 0

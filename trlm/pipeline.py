"""`trlm pipeline [key=value ...]`: an experiment's stages in lineage order, each a `train.py` run.

Locally the stages run one after the other and the first failure stops the pipeline. With a
Slurm launcher preset (`launcher=mi300x`, `launcher=local_slurm`) they are submitted at once
through submitit as one job each, chained with `afterok` dependencies and `kill_on_invalid_dep`:
a failed stage cancels the ones after it. (Hydra's launcher blocks until its jobs end, so it
cannot chain: the pipeline submits through submitit directly, with the preset's settings.) Each
stage starts from the previous stage's final checkpoint (lineage); finished stages are skipped,
so re-running the pipeline picks up where it stopped.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from trlm import layout
from trlm.errors import TrlmError
from trlm.paths import CONF_DIR, PROJECT_ROOT

SLURM_LAUNCHER = "submitit_slurm"


def compose_stage(overrides: list[str], stage: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"stage={stage}"], return_hydra_config=True)


def stage_order(overrides: list[str]) -> list[str]:
    """The stages of conf/stage in lineage order: the one without `previous` first, then its successors."""
    previous = {
        path.stem: compose_stage(overrides, path.stem).stage.previous for path in (CONF_DIR / "stage").glob("*.yaml")
    }
    order = [name for name, before in previous.items() if before is None]
    while len(order) < len(previous):
        following = [name for name, before in previous.items() if before == order[-1]]
        if len(following) != 1:
            raise TrlmError(f"the stages do not form one chain after {order[-1]}: {previous}")
        order.append(following[0])
    return order


def stage_command(stage: str, overrides: list[str]) -> list[str]:
    stage_overrides = [o for o in overrides if not o.startswith("launcher=")]
    return [sys.executable, str(PROJECT_ROOT / "train.py"), f"stage={stage}", *stage_overrides]


def run_locally(stages: list[str], overrides: list[str]) -> int:
    for stage in stages:
        command = stage_command(stage, overrides)
        print(f"pipeline: {shlex.join(['python', 'train.py', *command[2:]])}", flush=True)
        if subprocess.run(command).returncode != 0:
            print(f"trlm: error: stage {stage} failed; the stages after it were not run", file=sys.stderr)
            return 2
    return 0


def slurm_parameters(cfg: DictConfig) -> dict:
    """The launcher preset's settings in submitit's AutoExecutor names (as hydra-submitit-launcher maps them)."""
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    common = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
              "stderr_to_stdout"}  # fmt: skip
    skip = {"_target_", "submitit_folder", "max_num_timeout", "array_parallelism"}
    params = {(key if key in common else f"slurm_{key}"): value for key, value in launcher.items() if key not in skip}
    params["name"] = f"trlm-{cfg.run.name}-{cfg.stage.name}"
    return {key: value for key, value in params.items() if value is not None}


def submit_to_slurm(stages: list[str], overrides: list[str]) -> int:
    import submitit

    first = compose_stage(overrides, stages[0])
    folder = layout.output_root(first.paths.output_root) / first.run.name / "pipeline" / ".submitit"
    previous_job: str | None = None
    submitted = []
    for stage in stages:
        cfg = compose_stage(overrides, stage)
        if stage_finished(cfg):
            print(f"pipeline: {stage} already finished, skipped")
            continue
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
        params = slurm_parameters(cfg)
        extra = dict(params.pop("slurm_additional_parameters", {}) or {})
        if previous_job:
            extra.update(dependency=f"afterok:{previous_job}", kill_on_invalid_dep="yes")
        executor.update_parameters(**params, slurm_additional_parameters=extra)
        try:
            job = executor.submit(submitit.helpers.CommandFunction(stage_command(stage, overrides), cwd=os.getcwd()))
        except submitit.core.utils.FailedJobError as error:  # sbatch refused: say what Slurm said
            raise TrlmError(f"Slurm refused the {stage} job: {str(error).strip().splitlines()[-1]}") from None
        submitted.append((stage, job.job_id))
        previous_job = job.job_id
        print(
            f"pipeline: {stage} submitted as Slurm job {job.job_id}"
            + (f" (after {submitted[-2][1]})" if len(submitted) > 1 else "")
        )
    if submitted:
        ids = ",".join(job_id for _, job_id in submitted)
        print(f"follow them: squeue -j {ids}   (afterwards: sacct -j {ids}); logs in {folder}")
    return 0


def stage_finished(cfg: DictConfig) -> bool:
    from trlm.run_dir import is_finished  # transformers: only where the Slurm path needs it

    return is_finished(layout.run_dir(cfg.paths.output_root, cfg.run.name, cfg.stage.name))


def check_pipeline_overrides(overrides: list[str]) -> None:
    chosen = [o for o in overrides if o.startswith("stage=")]
    if chosen:  # the pipeline runs every stage: one chosen here would be silently ignored
        raise TrlmError(f"trlm pipeline runs every stage in order, so {chosen[0]} does not apply; "
                        "one stage alone: trlm train stage=<name> ...")  # fmt: skip


def run_pipeline(overrides: list[str]) -> int:
    from trlm.layout import register_resolvers

    register_resolvers()
    check_pipeline_overrides(overrides)
    stages = stage_order(overrides)
    cfg = compose_stage(overrides, stages[0])
    if cfg.hydra.runtime.choices.get("hydra/launcher") == SLURM_LAUNCHER:
        return submit_to_slurm(stages, overrides)
    return run_locally(stages, overrides)

"""`trlm pipeline [stages=a,b,...] [key=value ...]`: an experiment's stages in lineage order, each a `train.py` run.

Every stage on the search path by default (sft, sft_think, dpo, then grpo: the report's three and its
future work); `stages=sft,sft_think,dpo` runs those alone, still in lineage order. A chosen stage whose
previous stage is not chosen starts from that stage's finished run.

Locally the stages run one after the other and the first failure stops the pipeline. With a
Slurm launcher preset (`launcher=mi300x`, `launcher=local_slurm`) they are submitted at once
through submitit as one job each, chained with `afterok` dependencies and `kill_on_invalid_dep`:
a failed stage cancels the ones after it. (Hydra's launcher blocks until its jobs end, so it
cannot chain: the pipeline submits through submitit directly, with the preset's settings.) Each
stage starts from the previous stage's final checkpoint (lineage); finished stages are skipped,
so re-running the pipeline picks up where it stopped. Every stage is planned before the first one
runs (`trlm/stage_plan.py`), so a mistake in the last stage's config stops the pipeline before any
training; the user's config folders (`--config-dir`) go to every stage.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Any

from trlm.compose import compose, group_options, split_command
from trlm.errors import Problem, Problems, TrlmError, report
from trlm.paths import PROJECT_ROOT
from trlm.stage_plan import StagePlan, plan_stage


def stage_args(args: list[str], stage: str) -> list[str]:
    return [*args, f"stage={stage}"]


def stage_order(args: list[str]) -> list[str]:
    """The stages on the search path in lineage order: the one without `previous` first, then its successors."""
    previous = {name: compose(stage_args(args, name)).stage.previous for name in group_options("stage", args)}
    order = [name for name, before in previous.items() if before is None]
    while len(order) < len(previous):
        following = [name for name, before in previous.items() if before == order[-1]]
        if len(following) != 1:
            raise TrlmError(f"the stages do not form one chain after {order[-1]}: {previous}")
        order.append(following[0])
    return order


STAGES = "stages="  # the pipeline's own argument; every other one goes to each stage


def split_stages(args: list[str]) -> tuple[list[str] | None, list[str]]:
    """The stages named by `stages=a,b` (None: all of them) and the arguments for every stage."""
    named = [a for a in args if a.startswith(STAGES)]
    rest = [a for a in args if not a.startswith(STAGES)]
    if not named:
        return None, rest
    return [s.strip() for s in named[-1].removeprefix(STAGES).split(",") if s.strip()], rest


def chosen_order(args: list[str]) -> list[str]:
    """The stages to run, in lineage order: `stages=` ones, or every stage of the chain."""
    chosen, rest = split_stages(args)
    order = stage_order(rest)
    if chosen is None:
        return order
    unknown = [name for name in chosen if name not in order]
    if unknown or not chosen:
        raise Problems([Problem(STAGES.rstrip("="), f"names no stage of the chain; choose among {', '.join(order)}",
                                ",".join(unknown) or "(empty)")])  # fmt: skip
    return [name for name in order if name in chosen]


def pipeline_plans(args: list[str]) -> list[StagePlan]:
    """Each chosen stage's plan, in lineage order (a stage after one not run yet: planned as it will start)."""
    check_pipeline_overrides(args)
    order, (_, rest) = chosen_order(args), split_stages(args)
    plans, found = [], []
    for stage in order:
        try:
            plans.append(plan_stage(compose(stage_args(rest, stage), hydra_section=True), lineage_pending=True))
        except Problems as problems:
            found += [Problem(p.key, f"{p.rule} (stage {stage})", p.value, p.hint) for p in problems.problems]
            continue
        previous = plans[-1].stage.previous
        if stage == order[0] and not plans[-1].start_ready:  # later stages start from the ones run before them
            rule = f"{stage} starts from {previous}, which is neither chosen nor finished"
            found.append(Problem(STAGES.rstrip("="), rule, ",".join(order), f"add {previous} (or run.init_from=DIR)"))
    if found:
        raise Problems(found)
    return plans


def stage_command(stage: str, args: list[str]) -> list[str]:
    command = split_command(split_stages(args)[1])
    overrides = [o for o in command.overrides if not o.startswith("launcher=")]
    return [sys.executable, str(PROJECT_ROOT / "train.py"), *command.flags, f"stage={stage}", *overrides]


def run_locally(plans: list[StagePlan], args: list[str]) -> int:
    for plan in plans:
        command = stage_command(plan.stage.name, args)
        print(f"pipeline: {shlex.join(['python', 'train.py', *command[2:]])}", flush=True)
        if subprocess.run(command).returncode != 0:
            return report(TrlmError(f"stage {plan.stage.name} failed; the stages after it were not run"))
    return 0


def submitit_names(launcher: dict[str, Any]) -> dict[str, Any]:
    """Launcher settings in submitit's AutoExecutor names (as hydra-submitit-launcher maps them)."""
    common = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
              "stderr_to_stdout"}  # fmt: skip
    skip = {"_target_", "submitit_folder", "max_num_timeout", "array_parallelism"}
    params = {(key if key in common else f"slurm_{key}"): value for key, value in launcher.items() if key not in skip}
    return {key: value for key, value in params.items() if value is not None}


def slurm_parameters(plan: StagePlan) -> dict[str, Any]:
    """The launcher preset's settings for one stage's job."""
    return submitit_names({**plan.launch.options, "name": f"trlm-{plan.run.name}-{plan.stage.name}"})


def submit_to_slurm(plans: list[StagePlan], args: list[str]) -> int:
    import submitit

    from trlm.run_dir import is_finished

    folder = plans[0].output_root / plans[0].run.name / "pipeline" / ".submitit"
    previous_job: str | None = None
    submitted = []
    for plan in plans:
        stage = plan.stage.name
        if is_finished(plan.run_dir):
            print(f"pipeline: {stage} already finished, skipped")
            continue
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
        params = slurm_parameters(plan)
        extra = dict(params.pop("slurm_additional_parameters", {}) or {})
        if previous_job:
            extra.update(dependency=f"afterok:{previous_job}", kill_on_invalid_dep="yes")
        executor.update_parameters(**params, slurm_additional_parameters=extra)
        try:
            job = executor.submit(submitit.helpers.CommandFunction(stage_command(stage, args), cwd=os.getcwd()))
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


def check_pipeline_overrides(args: list[str]) -> None:
    chosen = [o for o in args if o.startswith("stage=")]
    if chosen:  # the pipeline runs every stage: one chosen here would be silently ignored
        raise TrlmError(f"trlm pipeline runs every stage in order, so {chosen[0]} does not apply; "
                        "some stages: stages=a,b; one stage alone: trlm train stage=<name> ...")  # fmt: skip


def pipeline_command(args: list[str]) -> int:
    """`trlm pipeline [--config-dir DIR] [stages=a,b] [key=value ...]`: plans the stages, then runs or submits them
    in order."""
    plans = pipeline_plans(args)
    if plans[0].launch.slurm:
        return submit_to_slurm(plans, args)
    return run_locally(plans, args)

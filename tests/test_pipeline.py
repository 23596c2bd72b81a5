"""`trlm pipeline`: the stages in lineage order (stages= to choose), locally and as Slurm jobs chained afterok."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import QUICK, requires_cluster
from trlm.records import RunRecord, Summary


def test_a_chosen_stage_is_refused_rather_than_ignored():
    from trlm.errors import TrlmError
    from trlm.pipeline import pipeline_command

    with pytest.raises(TrlmError, match=r"runs every stage in order, so stage=dpo does not apply"):
        pipeline_command(["experiment=demo", "stage=dpo"])


def test_every_stage_of_the_chain_by_default_and_stages_chooses_some_in_lineage_order(tmp_path):
    from trlm.pipeline import chosen_order, pipeline_plans

    root = f"paths.output_root={tmp_path}"
    assert chosen_order(["experiment=demo"]) == ["sft", "sft_think", "dpo", "grpo"]
    assert chosen_order(["experiment=demo", "stages=dpo,sft,sft_think"]) == ["sft", "sft_think", "dpo"]
    assert [p.stage.name for p in pipeline_plans(["experiment=demo", root, "stages=sft,sft_think"])] == [
        "sft", "sft_think"]  # fmt: skip


def test_stages_that_name_no_stage_or_start_from_nothing_are_refused(tmp_path):
    from trlm.errors import Problems
    from trlm.pipeline import pipeline_plans

    root = f"paths.output_root={tmp_path}"
    with pytest.raises(Problems, match="names no stage of the chain; choose among sft, sft_think, dpo, grpo"):
        pipeline_plans(["experiment=demo", root, "stages=sft,rl"])
    with pytest.raises(Problems, match="grpo starts from dpo, which is neither chosen nor finished"):
        pipeline_plans(["experiment=demo", root, "stages=grpo"])


FAST = (*QUICK, "stage.recipe.max_steps=2", "stage.evaluation.generate=false")
FOUR = (*QUICK, "stage.recipe.max_steps=2")  # GRPO's objective is a figure of its replies: generation stays on


def pipeline(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "trlm.cli", "pipeline", f"paths.output_root={tmp_path / 'outputs'}", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_the_stages_run_in_lineage_order_and_a_rerun_skips_them(tmp_path):
    result = pipeline(tmp_path, *FOUR)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "outputs" / "demo"
    assert [line.split()[3] for line in result.stdout.splitlines() if line.startswith("pipeline: ")] == [
        "stage=sft", "stage=sft_think", "stage=dpo", "stage=grpo"]  # fmt: skip
    assert RunRecord.load(root / "dpo" / "run.json").start["stage"] == "sft_think"
    assert RunRecord.load(root / "grpo" / "run.json").start["stage"] == "dpo"
    again = pipeline(tmp_path, *FOUR, "stages=dpo,grpo")  # chosen stages, already finished: skipped
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already finished") == 2


@pytest.mark.slow
def test_every_stage_is_planned_before_the_first_one_runs(tmp_path):
    result = pipeline(tmp_path, *FAST, "stage.objective.metric=eval_rewards/accuracies")  # a DPO figure
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "(stage sft)" in result.stderr and "(stage sft_think)" in result.stderr and "(stage dpo)" not in result.stderr
    )
    assert not (tmp_path / "outputs" / "demo").exists()  # not a step trained


@pytest.mark.slow
def test_a_failing_stage_stops_the_local_pipeline(tmp_path):
    result = pipeline(tmp_path, *FOUR, "run.init_from=/no/such/model")
    assert result.returncode == 2 and "stage sft failed; the stages after it were not run" in result.stderr
    assert not (tmp_path / "outputs" / "demo").exists()


def sacct_states(job_ids: list[str]) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-j", ",".join(job_ids), "-o", "JobID,State"], capture_output=True,
                         text=True).stdout  # fmt: skip
    states = dict(line.split()[:2] for line in out.splitlines() if line.strip())
    return [states.get(job, "") for job in job_ids]


def wait_for(job_ids: list[str], timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = sacct_states(job_ids)
        if all(s and s not in ("PENDING", "RUNNING", "REQUEUED") for s in states):
            return states
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} did not end: {sacct_states(job_ids)}")


def job_ids(output: str) -> list[str]:
    return [line.split("Slurm job ")[1].split()[0] for line in output.splitlines() if "submitted as Slurm job" in line]


@requires_cluster
@pytest.mark.slow
def test_the_pipeline_as_slurm_jobs_chained_afterok(tmp_path):
    result = pipeline(tmp_path, *FAST, "launcher=local_slurm", "stages=sft,sft_think,dpo")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_ids(result.stdout)
    assert len(jobs) == 3 and f"squeue -j {','.join(jobs)}" in result.stdout
    assert wait_for(jobs) == ["COMPLETED"] * 3
    root = tmp_path / "outputs" / "demo"
    assert [RunRecord.load(root / s / "run.json").slurm_job_id for s in ("sft", "sft_think", "dpo")] == jobs
    assert Summary.load(root / "dpo" / "summary.json").global_step == 2
    again = pipeline(tmp_path, *FAST, "launcher=local_slurm", "stages=sft,sft_think,dpo")
    assert again.returncode == 0 and job_ids(again.stdout) == [] and again.stdout.count("already finished") == 3


@requires_cluster
@pytest.mark.slow
def test_a_failing_first_stage_leaves_the_others_never_run(tmp_path):
    result = pipeline(tmp_path, *FAST, "launcher=local_slurm", "stages=sft,sft_think", "run.init_from=/no/such/model")
    assert result.returncode == 0, result.stderr[-3000:]  # submitted; the failure happens on the cluster
    first, *rest = wait_for(job_ids(result.stdout))
    assert first == "FAILED" and all(state.startswith("CANCELLED") for state in rest)
    assert not (tmp_path / "outputs" / "demo" / "sft_think").exists()

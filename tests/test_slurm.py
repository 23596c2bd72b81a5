"""Jobs through a real Slurm cluster: the local dev cluster of scripts/slurm/up.sh (two MI300x-shaped
nodes of 8 fake GPUs on this machine; `.ci/run` brings it up). Skipped when no cluster answers."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import QUICK, requires_cluster
from trlm.records import RunRecord, Summary

pytestmark = pytest.mark.slow


def trial_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


@requires_cluster
def test_a_stage_through_slurm_matches_the_same_stage_run_here(run_cli, tmp_path):
    local = run_cli(*QUICK, "stage=sft", root=tmp_path / "local")
    assert local.returncode == 0, local.stderr[-2000:]
    slurm = run_cli("-m", *QUICK, "stage=sft", "launcher=local_slurm", root=tmp_path / "slurm")
    assert slurm.returncode == 0, slurm.stderr[-3000:]
    (trial,) = trial_dirs(tmp_path / "slurm" / "demo" / "sweeps" / "multirun" / "sft")
    assert RunRecord.load(trial / "run.json").slurm_job_id  # it ran as a Slurm job
    here = Summary.load(tmp_path / "local" / "demo" / "sft" / "summary.json").metrics
    there = Summary.load(trial / "summary.json").metrics
    for key in ("train_loss", "eval_loss", "answer_accuracy"):
        assert there[key] == pytest.approx(here[key], rel=1e-4), key


@requires_cluster
def test_two_ranks_as_two_slurm_tasks(run_cli, tmp_path):
    result = run_cli("-m", *QUICK, "stage=sft", "launcher=local_slurm", "hardware.devices_per_node=2",
                     "stage.recipe.per_device_train_batch_size=8")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = trial_dirs(tmp_path / "outputs" / "demo" / "sweeps" / "multirun" / "sft")
    record = RunRecord.load(trial / "run.json")
    assert record.world_size == 2 and record.global_batch == 16 and record.slurm_job_id
    logs = "".join(p.read_text() for p in trial.parent.glob(".submitit/*/*_log.*"))
    assert "rank 0/2" in logs and "rank 1/2" in logs  # ranks from Slurm through submitit
    assert logs.count("blend trlm-demo-sft: preparing") <= 1  # rank 0 prepared; rank 1 waited
    assert Summary.load(trial / "summary.json").global_step == 4


@requires_cluster
def test_optuna_trials_as_slurm_jobs(run_cli, tmp_path):
    result = run_cli("-m", "experiment=demo", "stage=sft", "sweep=lr", "launcher=local_slurm",
                     "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=null",
                     "stage.recipe.max_steps=4", "stage.recipe.save_steps=2",
                     "stage.evaluation.generate=false")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "lr" / "sft"
    job_ids = {RunRecord.load(sweep / n / "run.json").slurm_job_id for n in ("0", "1")}
    assert len(job_ids) == 2 and None not in job_ids  # each trial its own Slurm job
    assert (sweep / "optimization_results.yaml").exists()
    assert [line.split(",")[1] for line in (sweep / "trials.csv").read_text().splitlines()[1:]] == ["COMPLETE"] * 2


def test_a_cluster_launcher_without_multirun_is_refused(run_cli, tmp_path):
    result = run_cli("experiment=demo", "launcher=local_slurm")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "launcher=local_slurm submits jobs from a multirun only: run `python train.py -m" in result.stderr
    assert not (tmp_path / "outputs").exists()


@requires_cluster
def test_a_preempted_job_requeues_and_resumes_without_losing_or_repeating_a_step(tmp_path):
    """`scancel --signal=USR2` mid-training: a checkpoint at that step (the only one: save_steps is
    larger than the run), a requeue, a resume; every optimizer step logged exactly once."""
    import json
    import os
    import sys
    import time

    from trlm.paths import PROJECT_ROOT

    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", f"paths.output_root={tmp_path / 'outputs'}",
               *QUICK, "stage=sft", "launcher=local_slurm", "stage.recipe.max_steps=60",
               "stage.recipe.save_steps=1000", "stage.evaluation.generate=false"]  # fmt: skip
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "multirun" / "sft"
    sweeper = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip

    def logged_steps() -> int:
        files = list(sweep.glob("*/metrics.jsonl"))
        return len(files[0].read_text().splitlines()) if files else 0

    deadline = time.monotonic() + 300
    while logged_steps() < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    (job,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert sweeper.wait(timeout=600) == 0
    (trial,) = trial_dirs(sweep)
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 61))
    log = (trial / "train.log").read_text()
    assert "saving a checkpoint at the end of this step" in log and "resuming from" in log
    assert Summary.load(trial / "summary.json").global_step == 60
    states = subprocess.run(["sacct", "-j", job, "-X", "-n", "-D", "-o", "State"], capture_output=True, text=True)
    assert "REQUEUED" in states.stdout or "PREEMPTED" in states.stdout  # the same job id ran twice


def test_slurm_out_of_reach_is_one_line(run_cli, tmp_path):
    result = run_cli("-m", *QUICK, "launcher=local_slurm", env={"PATH": "/nonexistent"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "launcher=local_slurm submits to Slurm, but sbatch is not on this machine's PATH" in result.stderr


def test_a_launcher_that_disagrees_with_the_hardware_preset(run_cli):
    result = run_cli("-m", *QUICK, "launcher=local_slurm", "hydra.launcher.gpus_per_node=4")
    assert result.returncode == 2 and "gpus_per_node=4 disagrees with hardware=cpu (1 per node)" in result.stderr


@requires_cluster
def test_a_partition_slurm_does_not_have_is_slurms_own_refusal_in_one_line(run_cli, tmp_path):
    result = run_cli("-m", *QUICK, "launcher=local_slurm", "hydra.launcher.partition=nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "launcher=local_slurm: Slurm refuses this job: sbatch: error: invalid partition specified: nope"
        in result.stderr
    )
    assert not (tmp_path / "outputs").exists()  # refused before a job, a study or a folder

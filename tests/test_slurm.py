"""Jobs through a real Slurm cluster: the local dev cluster of scripts/slurm/up.sh (two MI300x-shaped
nodes of 8 fake GPUs on this machine; `.ci/run` brings it up). Skipped when no cluster answers."""

from __future__ import annotations

import subprocess

import pytest

from hydra_plugins.trlm_submitit.launcher import sbatch_script
from tests.helpers import QUICK, requires_cluster
from tests.test_distributed import final_weights
from trlm.plan import plan_for
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
    (submitted,) = trial.parent.glob(".submitit/*/*_submission.sh")
    plan = plan_for([f"paths.output_root={tmp_path / 'slurm'}", *QUICK, "stage=sft", "launcher=local_slurm"])
    planned = sbatch_script(plan.launch.options)
    assert planned == submitted.read_text()  # `trlm plan` prints the script Slurm got


@requires_cluster
@pytest.mark.parametrize("layout", ["hardware.devices_per_node=2", "hardware.num_nodes=2"], ids=["1x2", "2x1"])
def test_two_ranks_as_two_slurm_tasks_on_one_node_or_two(run_cli, tmp_path, layout):
    """DDP over gloo from Slurm's environment alone (submitit -> RANK, MASTER_ADDR of the job's first node)."""
    result = run_cli("-m", *QUICK, "stage=sft", "launcher=local_slurm", layout,
                     "stage.recipe.per_device_train_batch_size=8")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = trial_dirs(tmp_path / "outputs" / "demo" / "sweeps" / "multirun" / "sft")
    record = RunRecord.load(trial / "run.json")
    assert record.world_size == 2 and record.global_batch == 16 and record.slurm_job_id
    logs = "".join(p.read_text() for p in trial.parent.glob(".submitit/*/*_log.*"))
    # `job J: rank R/W on NODE (local rank ..., devices ...), master HOST:PORT`, one line per task;
    # which node Slurm picks depends on what the tests before left running: not asserted
    lines = [line.split("rank ", 1)[1] for line in logs.splitlines() if "), master " in line]
    ranks = {line.split(" on ")[0]: (line.split(" on ")[1].split()[0], line.rsplit("master ", 1)[1].split(":")[0])
             for line in lines}  # fmt: skip
    assert sorted(ranks) == ["0/2", "1/2"]  # each task found its rank
    assert len({node for node, _ in ranks.values()}) == (2 if "num_nodes" in layout else 1)
    assert {master for _, master in ranks.values()} == {ranks["0/2"][0]}  # both meet at rank 0's node
    assert logs.count("blend trlm-demo-sft: preparing") <= 1  # rank 0 prepared; rank 1 waited
    assert len(set(final_weights(logs).values())) == 1
    assert Summary.load(trial / "summary.json").global_step == 4


@requires_cluster
def test_a_sweep_on_the_mi300x_preset_packs_one_trial_per_gpu_eight_per_node(run_cli, tmp_path):
    """9 single-GPU trials on two 8-GPU nodes: all at once, each on its own GPU, at most 8 on a node.
    The production preset against the dev cluster (local_slurm = mi300x + what a 2-core box gives)."""
    trials = 9
    result = run_cli("-m", "experiment=demo", "stage=sft", "sweep=lr", "launcher=local_slurm", "hardware=mi300x",
                     "hardware.accelerator=cpu", "hardware.precision=fp32", "hardware.optim=adamw_torch",
                     "hardware.dataloader_num_workers=0", f"hydra.sweeper.n_trials={trials}",
                     f"hydra.sweeper.n_jobs={trials}", "hydra.sweeper.pruner=null", "stage.recipe.max_steps=1",
                     "stage.evaluation.generate=false")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "lr" / "sft"
    records = [RunRecord.load(sweep / str(n) / "run.json") for n in range(trials)]
    assert {r.hardware for r in records} == {"mi300x"}
    gpus = [(r.slurm_node, r.devices) for r in records]
    assert all(devices is not None and "," not in devices for _, devices in gpus)  # one GPU each
    assert len(set(gpus)) == trials  # all ran at once (below), so no two shared a GPU
    jobs = ",".join(r.slurm_job_id for r in records)
    accounting = subprocess.run(["sacct", "-j", jobs, "-X", "-n", "-P", "-o", "NodeList,Start,End"],
                                capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    spans = [(node, start, end) for node, start, end in (row.split("|") for row in accounting)]
    latest_start = max(start for _, start, _ in spans)
    assert all(end >= latest_start for _, _, end in spans)  # every trial was running when the last started
    per_node = {node: sum(1 for n, _, _ in spans if n == node) for node, _, _ in spans}
    assert max(per_node.values()) <= 8 and sum(per_node.values()) == trials and len(per_node) == 2


def test_a_cluster_launcher_without_multirun_is_refused(train_in_process, tmp_path):
    result = train_in_process("experiment=demo", "launcher=local_slurm")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "launcher=local_slurm submits jobs from a multirun only: run `python train.py -m" in result.stderr
    assert not (tmp_path / "outputs").exists()


def start_and_signal(tmp_path, run_dir_glob: str, *overrides: str, after_steps: int = 10):
    """Starts `python train.py -m ... launcher=local_slurm`, waits until its job logged `after_steps`
    optimizer steps, sends the job `scancel --signal=USR2` (as Slurm does before a time limit or a
    preemption); returns the command's exit code, stderr and the job id."""
    import os
    import sys
    import time

    from trlm.paths import PROJECT_ROOT

    outputs = tmp_path / "outputs"
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", f"paths.output_root={outputs}", *QUICK,
               "stage=sft", "launcher=local_slurm", "stage.recipe.max_steps=60", "stage.recipe.save_steps=1000",
               "stage.evaluation.generate=false", *overrides]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    sweeper = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def logged_steps() -> int:
        files = list(outputs.glob(run_dir_glob + "/metrics.jsonl"))
        return len(files[0].read_text().splitlines()) if files else 0

    deadline = time.monotonic() + 300
    while logged_steps() < after_steps and time.monotonic() < deadline:
        time.sleep(0.2)
    (job,) = [p.name for p in outputs.glob(run_dir_glob.rsplit("/", 1)[0] + "/.submitit/*") if p.name.isdigit()]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _, stderr = sweeper.communicate(timeout=600)
    return sweeper.returncode, stderr, job


@requires_cluster
def test_a_preempted_trial_requeues_and_resumes_as_the_same_trial_losing_and_repeating_no_step(tmp_path):
    """A sweep trial signalled mid-training: a checkpoint at that step (the only one: save_steps is
    larger than the run), a requeue of the same job, a resume in the same directory as the same Optuna
    trial and the same W&B run; every optimizer step logged exactly once, in W&B too."""
    import json

    from tests.wandb_offline import read_runs
    from trlm import tracking

    code, stderr, job = start_and_signal(tmp_path, "demo/sweeps/lr/sft/0", "sweep=lr", "hydra.sweeper.n_trials=1",
                                         "hydra.sweeper.pruner=null", "tracking=wandb")  # fmt: skip
    assert code == 0, stderr[-3000:]
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "lr" / "sft"
    trial = sweep / "0"
    rows = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == list(range(1, 61))
    log = (trial / "train.log").read_text()
    assert "saving a checkpoint at the end of this step" in log and "resuming from" in log
    assert Summary.load(trial / "summary.json").global_step == 60
    states = subprocess.run(["sacct", "-j", job, "-X", "-n", "-D", "-o", "State"], capture_output=True, text=True)
    assert "REQUEUED" in states.stdout or "PREEMPTED" in states.stdout  # the same job id ran twice
    assert [line.split(",")[:2] for line in (sweep / "trials.csv").read_text().splitlines()[1:]] == [["0", "COMPLETE"]]
    first, resumed = read_runs(trial)  # W&B offline writes a second local directory for the resumed run
    assert first.run_id == resumed.run_id == (trial / tracking.RUN_ID).read_text().strip()
    steps = [[row["train/global_step"] for row in run.history if "train/loss" in row] for run in (first, resumed)]
    assert steps[0] + steps[1] == list(range(1, 61)) and steps[1][0] == steps[0][-1] + 1  # continues, no repeat


@requires_cluster
def test_a_spent_requeue_budget_ends_the_job_in_one_line_naming_its_checkpoint(tmp_path):
    """With a one-minute limit every signal counts as a time-out (submitit's rule: past 80 % of the limit
    or within 10 minutes of it), and max_num_timeout=0 allows no requeue."""
    code, stderr, _ = start_and_signal(tmp_path, "demo/sweeps/multirun/sft/*", "hydra.launcher.timeout_min=1",
                                       "hydra.launcher.max_num_timeout=0", after_steps=3)  # fmt: skip
    assert code == 1 and "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "jobs failed" in line]
    assert "timed out once more than hydra.launcher.max_num_timeout allows" in line
    (trial,) = trial_dirs(tmp_path / "outputs" / "demo" / "sweeps" / "multirun" / "sft")
    checkpoint = line.split("; ")[1].split(" is complete")[0]
    assert (trial / "checkpoints") in __import__("pathlib").Path(checkpoint).parents
    assert not (trial / "summary.json").exists()


def test_slurm_out_of_reach_is_one_line(run_cli, tmp_path):
    result = run_cli("-m", *QUICK, "launcher=local_slurm", env={"PATH": "/nonexistent"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "launcher=local_slurm submits to Slurm, but sbatch is not on this machine's PATH" in result.stderr


def test_a_launcher_that_disagrees_with_the_hardware_preset(train_in_process):
    result = train_in_process("-m", *QUICK, "launcher=local_slurm", "hydra.launcher.gpus_per_node=4")
    assert result.returncode == 2 and "gpus_per_node=4 disagrees with hardware=cpu (1 per node)" in result.stderr


@requires_cluster
def test_a_partition_slurm_does_not_have_is_slurms_own_refusal_in_one_line(run_cli, tmp_path):
    result = run_cli("-m", *QUICK, "launcher=local_slurm", "hydra.launcher.partition=nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "launcher=local_slurm asks for a job Slurm refuses: sbatch: error: invalid partition specified: nope"
        in result.stderr
    )
    assert not (tmp_path / "outputs").exists()  # refused before a job, a study or a folder

"""`trlm sweep submit`: the sweep's driver as a requeueable Slurm job (the local dev cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import requires_cluster
from trlm.sweep_driver import driver_parameters

pytestmark = pytest.mark.slow


def test_the_driver_asks_one_cpu_on_the_trials_partition_and_keeps_their_time_limit():
    trials = {"partition": "mi300x", "account": "lab", "gpus_per_node": 1, "cpus_per_task": 16, "mem_per_gpu": "200G",
              "timeout_min": 1440, "signal_delay_s": 120, "tasks_per_node": 1}  # fmt: skip
    params = driver_parameters(trials, "trlm-demo-sweep-lr")
    assert params["slurm_partition"] == "mi300x" and params["slurm_account"] == "lab"
    assert params["timeout_min"] == 1440 and params["slurm_signal_delay_s"] == 120
    assert params["cpus_per_task"] == 1 and not any("gpu" in key for key in params)


def test_a_sweep_without_a_slurm_launcher_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "trlm.cli", "sweep", "submit", "-m", "experiment=demo", "sweep=lr",
                             f"paths.output_root={tmp_path}"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and "give a sweep (sweep=<name>) and a Slurm launcher" in result.stderr


def sacct_state(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True).stdout
    return out.split()[0] if out.split() else ""


@requires_cluster
def test_a_requeued_driver_resumes_its_sweep_and_every_trial_is_done_once(tmp_path):
    args = [f"paths.output_root={tmp_path}", "experiment=demo", "stage=sft", "stage.evaluation.generate=false",
            "sweep=lr", "launcher=local_slurm", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=null",
            "stage.recipe.max_steps=24", "stage.recipe.save_steps=4", "stage.recipe.logging_steps=1"]  # fmt: skip
    submitted = subprocess.run([sys.executable, "-m", "trlm.cli", "sweep", "submit", "-m", *args], capture_output=True,
                               text=True, timeout=120)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job = submitted.stdout.split("Slurm job ")[1].split()[0]
    sweep = tmp_path / "demo" / "sweeps" / "lr" / "sft"
    deadline = time.monotonic() + 300
    while not list((sweep / "0" / "checkpoints").glob("checkpoint-*/trlm_complete")) and time.monotonic() < deadline:
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], check=True)  # mid-sweep, trial 0 training: as a preemption does
    while sacct_state(job) != "COMPLETED" and time.monotonic() < deadline + 300:
        assert sacct_state(job) not in ("FAILED", "CANCELLED", "TIMEOUT"), sacct_state(job)
        time.sleep(1)
    log = "".join(path.read_text() for path in (sweep / ".driver" / job).glob("*_log.*"))
    assert "sweep driver (run 2 of this job)" in log and "trial 0 was running when its sweep stopped" in log
    rows = (sweep / "trials.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in rows] == [["0", "COMPLETE"], ["1", "COMPLETE"]]
    metrics = [json.loads(line) for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 25))  # trial 0 trained once, every step once

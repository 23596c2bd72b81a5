"""Slurm benchmark on the local dev cluster (scripts/slurm/up.sh): what going through Slurm costs a job.

1. Submission to start: N no-op jobs submitted through submitit one after another (one GPU each,
   as sweep trials are); for each, the seconds from submit to the job's first line, and from
   submit to its result back in the submitting process (submitit polls Slurm for the state).
2. Overhead per trial: the same 4-trial sweep (1 optimizer step each, one trial at a time) through
   `launcher=local_slurm` and through `launcher=local` (submitit's local processes): wall per trial
   and the difference, which is what Slurm adds to each trial.

Run: `make bench-slurm` (the cluster must be up: `make slurm-up`; ~2 minutes). Writes
docs/bench/slurm.json. Nothing else may use the cores meanwhile: the figures are wall times.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import record  # bench/record.py (this folder is on the path)

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 4


def started_at() -> float:
    return time.time()


def submission_latency(folder: Path, jobs: int = 8) -> dict:
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(slurm_partition="mi300x", gpus_per_node=1, tasks_per_node=1, cpus_per_task=1,
                               slurm_mem_per_gpu="1G", timeout_min=5)  # fmt: skip
    to_start, to_result = [], []
    for _ in range(jobs):
        submitted = time.time()
        job = executor.submit(started_at)
        start = job.result()
        to_start.append(start - submitted)
        to_result.append(time.time() - submitted)
    return {
        "jobs": jobs,
        "submit_to_start_s_median": round(statistics.median(to_start), 2),
        "submit_to_start_s_max": round(max(to_start), 2),
        "submit_to_result_s_median": round(statistics.median(to_result), 2),
    }


def sweep_wall(out: Path, launcher: str) -> float:
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"paths.output_root={out}", "experiment=demo",
               "stage=sft", "sweep=lr", f"launcher={launcher}", f"hydra.sweeper.n_trials={TRIALS}",
               "hydra.sweeper.pruner=null", "stage.recipe.max_steps=1", "stage.evaluation.generate=false"]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"sweep failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def overhead_per_trial(work: Path) -> dict:
    sweep_wall(work / "warm", "local")  # builds the tiny model and the blend once, outside the timing
    walls = {launcher: sweep_wall(work / launcher, launcher) / TRIALS for launcher in ("local", "local_slurm")}
    return {
        "trials": TRIALS,
        "wall_per_trial_local_s": round(walls["local"], 2),
        "wall_per_trial_slurm_s": round(walls["local_slurm"], 2),
        "slurm_overhead_per_trial_s": round(walls["local_slurm"] - walls["local"], 2),
        "slurm_over_local": round(walls["local_slurm"] / walls["local"], 3),
    }


def main() -> None:
    if subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode != 0:
        raise SystemExit("no Slurm controller answers: run `make slurm-up` first")
    with tempfile.TemporaryDirectory(dir=ROOT / "outputs") as tmp:  # the cluster's nodes see this folder
        work = Path(tmp)
        figures = {"machine": f"{os.cpu_count()} cores, local dev cluster (2 nodes x 8 fake GPUs)",
                   **submission_latency(work / "latency"), **overhead_per_trial(work)}  # fmt: skip
    record("slurm", figures)


if __name__ == "__main__":
    main()

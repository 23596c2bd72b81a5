"""`trlm sweep submit -m ARGS`: the sweep's driver as a small CPU job on the cluster, not a login-node process.

A sweep's driver (the Optuna sweeper: it asks trials, launches them as Slurm jobs and tells their results)
lives as long as the sweep, often days; on a login node a logout or a reboot ends it. Here it is a
one-CPU Slurm job running `python train.py -m ARGS`, submitted through submitit as a checkpointable
function: on a time-out or preemption (USR2) submitit requeues it, and a requeue from anywhere
(`scontrol requeue`) starts it again too. Started again, the driver resumes its study by name: finished
trials are kept, a trial its earlier run had in flight runs again in its own directory (its job, still
training, is waited for), and new trials are asked until `n_trials`. Its trials are its child jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from trlm.errors import TrlmError
from trlm.paths import PROJECT_ROOT

DRIVER = {"cpus_per_task": 1, "slurm_mem": "2G"}  # the driver asks, launches and tells: no GPU, one core


class SweepDriver:
    """The job's function: the sweep, as `python train.py -m ARGS` (pickled by submitit, run on the node)."""

    def __init__(self, args: list[str], cwd: str) -> None:
        self.args, self.cwd = args, cwd

    def __call__(self) -> int:
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"sweep driver (run {int(restart) + 1} of this job): train.py -m {' '.join(self.args)}", flush=True)
        # The trials are jobs of their own: the driver job's SLURM_* settings (its memory, its CPUs) must not
        # leak into their sbatch and srun, which would refuse them (SLURM_MEM_PER_NODE beside --mem-per-gpu).
        env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", *self.args]
        done = subprocess.run(command, cwd=self.cwd, env=env)
        if done.returncode != 0:
            raise TrlmError(f"the sweep ended with exit status {done.returncode} (its log is this job's)")
        return 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """A time-out or preemption: submitit requeues this same function (the study resumes by name)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def driver_parameters(options: dict[str, Any], name: str) -> dict[str, Any]:
    """The trials' Slurm launcher preset, cut down to a one-CPU job: partition, account, time and its requeues."""
    from trlm.pipeline import submitit_names

    keep = {"partition", "account", "qos", "timeout_min", "signal_delay_s", "setup"}
    return {**submitit_names({key: value for key, value in options.items() if key in keep}), **DRIVER, "name": name}


def submit_command(args: list[str]) -> int:
    """`trlm sweep submit -m ARGS`."""
    import submitit

    from trlm.plan import plan_for

    args = [a for a in args if a not in ("-m", "--multirun")]
    plan = plan_for(["-m", *args])
    sweep = plan.launch.sweep if plan.launch else None
    if sweep is None or not plan.launch.slurm:
        raise TrlmError("trlm sweep submit runs an Optuna sweep's driver on Slurm: give a sweep (sweep=<name>) and a "
                        "Slurm launcher (launcher=mi300x, launcher=local_slurm)")  # fmt: skip
    study = sweep.get("study_name") or plan.run.sweep
    folder = plan.output_root / plan.run.name / "sweeps" / study / plan.stage.name / ".driver"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm",
                                     slurm_max_num_timeout=plan.launch.options.get("max_num_timeout") or 3)  # fmt: skip
    executor.update_parameters(**driver_parameters(plan.launch.options, f"trlm-{plan.run.name}-sweep-{study}"))
    try:
        job = executor.submit(SweepDriver(args, os.getcwd()))
    except submitit.core.utils.FailedJobError as error:  # sbatch refused: what Slurm said
        raise TrlmError(f"Slurm refused the sweep's driver job: {str(error).strip().splitlines()[-1]}") from None
    print(f"sweep {study}: its driver is Slurm job {job.job_id} (1 CPU; requeued on time-out or preemption)")
    print(f"follow it: trlm sweep {folder.parent}   squeue -j {job.job_id}   its log: {folder / job.job_id}")
    return 0

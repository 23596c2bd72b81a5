"""Asking the Slurm cluster before submitting: is it there, and would it accept this job?

`python train.py -m ... launcher=<Slurm preset>` checks here before any job or study exists: sbatch on
the PATH, the controller answering, and Slurm's own judgement of the request (`sbatch --test-only`:
partition, account, nodes, GPUs, time). Light: subprocess calls only.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from trlm.errors import Problem


def sbatch_request(launcher: Any) -> list[str]:
    """The resource options of the launcher's sbatch script, for `sbatch --test-only`."""
    options = {
        "partition": launcher.get("partition"),
        "account": launcher.get("account"),
        "nodes": launcher.get("nodes"),
        "ntasks-per-node": launcher.get("tasks_per_node"),
        "gpus-per-node": launcher.get("gpus_per_node"),
        "cpus-per-task": launcher.get("cpus_per_task"),
        "mem-per-gpu": launcher.get("mem_per_gpu"),
        "time": launcher.get("timeout_min"),
    }
    return [f"--{key}={value}" for key, value in options.items() if value is not None]


def request_problems(preset: str | None, launcher: Any, hardware: Any) -> list[Problem]:
    """What stops the launcher's jobs from being accepted, asked of the preset and of Slurm itself."""
    key = "launcher"
    gpus = launcher.get("gpus_per_node")
    if gpus is not None and gpus != hardware.devices_per_node:
        return [Problem("hydra.launcher.gpus_per_node", f"disagrees with hardware={hardware.name} "
                        f"({hardware.devices_per_node} per node): the hardware preset decides, not the launcher",
                        str(gpus))]  # fmt: skip
    if not shutil.which("sbatch"):
        return [Problem(key, "submits to Slurm, but sbatch is not on this machine's PATH", preset)]
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = (ping.stdout or ping.stderr).strip()
        return [Problem(key, f"needs Slurm's controller, which does not answer ({said})", preset)]
    test = subprocess.run(["sbatch", "--test-only", *sbatch_request(launcher), "--wrap=true"], capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    if test.returncode != 0:
        refusal = "; ".join(line.strip() for line in test.stderr.splitlines() if line.strip())
        return [Problem(key, f"asks for a job Slurm refuses: {refusal}", preset)]
    return []

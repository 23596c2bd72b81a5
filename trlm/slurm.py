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


def shared_gpu_request(launcher: dict[str, Any], hardware: Any) -> dict[str, Any]:
    """The launcher's job as a share of one GPU when `hardware.trials_per_gpu` = k > 1: Slurm's gres `shard`
    (shards_per_gpu / k of the card's shards, so the scheduler packs up to k such jobs on a card and binds
    each to it), 1/k of the cores and host memory a whole-GPU job gets. Unchanged for k = 1."""
    k = hardware.trials_per_gpu
    if k <= 1 or launcher.get("gpus_per_node") is None:
        return launcher
    shared = {key: value for key, value in launcher.items() if key not in ("gpus_per_node", "mem_per_gpu")}
    shared["gres"] = f"shard:{hardware.shards_per_gpu // k}"
    shared["cpus_per_task"] = max(1, int(launcher.get("cpus_per_task") or 1) // k)
    if launcher.get("mem_per_gpu"):
        shared["additional_parameters"] = {**(launcher.get("additional_parameters") or {}),
                                           "mem": f"{megabytes(launcher['mem_per_gpu']) // k}M"}  # fmt: skip
    return shared


UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def megabytes(size: str | int) -> int:
    """Slurm's memory size ("200G", "512M", 4096 in MB) in MB."""
    text = str(size).strip().upper().removesuffix("B")
    unit = text[-1] if text and text[-1] in UNITS else "M"
    return int(float(text.rstrip("KMGT")) * UNITS[unit])


def sbatch_request(launcher: Any) -> list[str]:
    """The resource options of the launcher's sbatch script, for `sbatch --test-only`."""
    options = {
        "partition": launcher.get("partition"),
        "account": launcher.get("account"),
        "nodes": launcher.get("nodes"),
        "ntasks-per-node": launcher.get("tasks_per_node"),
        "gpus-per-node": launcher.get("gpus_per_node"),
        "gres": launcher.get("gres"),
        "cpus-per-task": launcher.get("cpus_per_task"),
        "mem-per-gpu": launcher.get("mem_per_gpu"),
        "mem": (launcher.get("additional_parameters") or {}).get("mem"),
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

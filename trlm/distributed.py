"""Which process this is in a multi-rank job: the one place trlm reads the rank.

torchrun and `submitit`'s `TorchDistributedEnvironment().export()` both set RANK / LOCAL_RANK /
WORLD_SIZE before trlm starts; accelerate (inside TRL) then joins the process group. Until the
group exists, these functions read the environment; collectives are no-ops in a single process.
"""

from __future__ import annotations

import logging
import os
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def broadcast_from_main(value: T) -> T:
    """Rank 0's `value` on every rank (pickled); the value itself in a single process."""
    if not _group_ready():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


SLURM_DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def bind_slurm_devices(keep: str | None) -> None:
    """In a Slurm job, leave the GPUs Slurm bound in the one variable the platform reads (`keep`).

    Slurm sets CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES and GPU_DEVICE_ORDINAL to the same physical
    ids. The runtimes filter in layers (ROCm: ROCR first, then HIP/CUDA indexes into what remains),
    so two of them set to ids other than 0..n-1 hide every device: only `keep` stays.
    """
    if keep is None or "SLURM_JOB_ID" not in os.environ or keep not in os.environ:
        return
    for name in SLURM_DEVICE_VARIABLES:
        if name != keep:
            os.environ.pop(name, None)


def visible_devices() -> str | None:
    return next((os.environ[v] for v in SLURM_DEVICE_VARIABLES if os.environ.get(v)), None)


def export_slurm_ranks() -> None:
    """In a multi-task Slurm job started by submitit, set torch.distributed's variables from Slurm's.

    accelerate (inside TRL) goes distributed only when LOCAL_RANK is set, and has no Slurm detection
    of its own: submitit's TorchDistributedEnvironment derives RANK, WORLD_SIZE, LOCAL_RANK and
    MASTER_ADDR / MASTER_PORT (first host of the job, a port from the job id). Every task sees the
    node's GPUs (the launcher asks gpus_per_node), so CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES
    are left as Slurm set them and LOCAL_RANK picks the device.
    """
    if "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup_slurm_task(visible_devices_env: str | None) -> None:
    """A submitit Slurm task: ranks from Slurm, GPUs in one variable, and the mapping said by every rank."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    export_slurm_ranks()
    bind_slurm_devices(visible_devices_env)
    log.warning("job %s: rank %d/%d on %s (local rank %d, devices %s), master %s:%s", os.environ.get("SLURM_JOB_ID"),
                rank(), world_size(), os.environ.get("SLURMD_NODENAME", "?"), local_rank(),
                visible_devices() or "none", os.environ.get("MASTER_ADDR", "-"),
                os.environ.get("MASTER_PORT", "-"))  # fmt: skip

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


def export_slurm_ranks() -> None:
    """In a multi-task Slurm job started by submitit, set torch.distributed's variables from Slurm's.

    accelerate (inside TRL) goes distributed only when LOCAL_RANK is set, and has no Slurm detection
    of its own: submitit's TorchDistributedEnvironment derives RANK, WORLD_SIZE, LOCAL_RANK and
    MASTER_ADDR / MASTER_PORT (first host of the job, a port from the job id). Every task sees the
    node's GPUs (the launcher asks gpus_per_node), so CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES
    are left as Slurm set them and LOCAL_RANK picks the device.
    """
    if "LOCAL_RANK" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    visible = os.environ.get("ROCR_VISIBLE_DEVICES") or os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu"
    log.warning("rank %d/%d on %s (local rank %d, devices %s), master %s:%d", env.rank, env.world_size,
                os.environ.get("SLURMD_NODENAME", "?"), env.local_rank, visible, env.master_addr,
                env.master_port)  # fmt: skip

"""Which process this is in a multi-rank job: the one place trlm reads the rank.

torchrun and `submitit`'s `TorchDistributedEnvironment().export()` both set RANK / LOCAL_RANK /
WORLD_SIZE before trlm starts; accelerate (inside TRL) then joins the process group. Until the
group exists, these functions read the environment; collectives are no-ops in a single process.
"""

from __future__ import annotations

import os
from typing import TypeVar

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

"""What this machine can run: its GPUs, their precision, the kernels and the rank count a preset asks for.

The checks of a config that only the machine itself can answer, made when a stage starts (after
`trlm/checks.py` passed the config, before anything is loaded or written), in the same `Problem`
form so that they are reported together.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from trlm.config import Accelerator, HardwareConfig, Precision
from trlm.distributed import world_size
from trlm.errors import Problem, TrlmError


def hardware_problems(hardware: HardwareConfig) -> list[Problem]:
    """The machine can run the preset: its accelerator, precision, kernels and rank count."""
    key, found = "hardware", []
    if hardware.accelerator == Accelerator.cuda:
        if not torch.cuda.is_available():
            return [Problem(key, "needs a CUDA/ROCm GPU, but torch sees none here", hardware.name, "use hardware=cpu")]
        if torch.cuda.device_count() < hardware.devices_per_node:
            found.append(Problem(key, f"expects {hardware.devices_per_node} GPUs per node, torch sees "
                                      f"{torch.cuda.device_count()}", hardware.name))  # fmt: skip
        if hardware.precision == Precision.bf16 and not torch.cuda.is_bf16_supported():
            found.append(Problem(key, "trains in bf16, which this GPU does not support", hardware.name,
                                 "set hardware.precision=fp16"))  # fmt: skip
    elif hardware.precision != Precision.fp32:
        found.append(Problem(key, f"asks for {hardware.precision.value} on CPU, which trlm does not train in",
                             hardware.name, "use fp32"))  # fmt: skip
    if hardware.liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        found.append(Problem("hardware.liger_kernel", "asks for Liger kernels, which are not installed", "true",
                             "pip install -e '.[liger]' (liger-kernel)"))  # fmt: skip
    expected = hardware.devices_per_node * hardware.num_nodes
    if world_size() != expected:
        found.append(Problem(key, f"expects {expected} ranks but this process group has {world_size()}",
                             hardware.name, f"launch with `torchrun --nproc-per-node {hardware.devices_per_node} "
                             f"train.py ...`, or tell the preset (hardware.devices_per_node x hardware.num_nodes = "
                             f"{world_size()})"))  # fmt: skip
    return found


@contextmanager
def gpu_share(trials_per_gpu: int, device_bytes: int | None = None) -> Iterator[None]:
    """A trial sharing its GPU with `trials_per_gpu` - 1 others (Slurm gres shard) keeps to 1/k of its memory
    (`set_per_process_memory_fraction`, which HIP honours too); running out of that share fails in one line
    that names the share and the fix, not with the allocator's trace."""
    if trials_per_gpu <= 1:
        yield
        return
    if device_bytes is None and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1 / trials_per_gpu)
        device_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        share = f"{(device_bytes or 0) / trials_per_gpu / 2**30:.1f} GiB" if device_bytes else "its share"
        raise TrlmError(
            f"the trial ran out of its share of the GPU: {share} (1/{trials_per_gpu} of the card, "
            f"hardware.trials_per_gpu={trials_per_gpu}): lower hardware.trials_per_gpu, or the batch "
            f"(stage.recipe.per_device_train_batch_size with more gradient_accumulation_steps)"
        ) from None

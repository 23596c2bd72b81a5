"""Checks that need more than the schema's types, run before any data or model is loaded."""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig
from transformers import SchedulerType

from trlm.config import Accelerator, HardwareConfig, Precision, TrainerKind
from trlm.errors import TrlmError

SFT_LOSSES = ("nll", "dft")
# trl 1.x DPOTrainer's loss types (trl/trainer/dpo_trainer.py).
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
TRACKERS = ("none", "wandb")


def choice(key: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise TrlmError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def check_config(cfg: DictConfig) -> None:
    stage, recipe = cfg.stage, cfg.stage.recipe
    if stage.trainer == TrainerKind.sft:
        choice("stage.recipe.loss_type", recipe.loss_type, SFT_LOSSES)
        for key, value in (("stage.recipe.beta", recipe.beta), ("stage.max_prompt_length", stage.max_prompt_length)):
            if value is not None:
                raise TrlmError(f"stage {stage.name}: {key} applies to DPO stages only (this is an SFT stage)")
    else:
        choice("stage.recipe.loss_type", recipe.loss_type, DPO_LOSSES)
        if stage.assistant_only_loss:
            raise TrlmError(f"stage {stage.name}: assistant_only_loss applies to SFT stages only")
    choice("stage.recipe.lr_scheduler_type", recipe.lr_scheduler_type, tuple(s.value for s in SchedulerType))
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "save_steps"):
        if recipe[key] <= 0:
            raise TrlmError(f"stage.recipe.{key} must be positive, got {recipe[key]}")
    if recipe.max_steps <= 0 and recipe.num_train_epochs <= 0:
        raise TrlmError("stage.recipe: set num_train_epochs > 0 or max_steps > 0")
    if (cfg.model.path is None) == (cfg.model.tiny is None):
        raise TrlmError(f"model {cfg.model.name}: set exactly one of model.path and model.tiny")
    for tracker in cfg.tracking.report_to:
        choice("tracking.report_to", tracker, TRACKERS)
    expected = "preference" if stage.trainer == TrainerKind.dpo else "conversation"
    if cfg.data.kind.value != expected:
        raise TrlmError(
            f"stage {stage.name} ({stage.trainer.value}) needs a {expected} blend, "
            f"but data={cfg.data.name} holds {cfg.data.kind.value} rows"
        )


def check_hardware(hardware: HardwareConfig) -> None:
    """The machine can run the preset: its accelerator, precision and rank count."""
    name = f"hardware={hardware.name}"
    if hardware.accelerator == Accelerator.cuda:
        if not torch.cuda.is_available():
            raise TrlmError(f"{name} needs a CUDA/ROCm GPU, but torch sees none here; use hardware=cpu")
        if torch.cuda.device_count() < hardware.devices_per_node:
            raise TrlmError(
                f"{name} expects {hardware.devices_per_node} GPUs per node, torch sees {torch.cuda.device_count()}"
            )
        if hardware.precision == Precision.bf16 and not torch.cuda.is_bf16_supported():
            raise TrlmError(f"{name} trains in bf16, which this GPU does not support; set hardware.precision=fp16")
    elif hardware.precision != Precision.fp32:
        raise TrlmError(f"{name} asks for {hardware.precision.value} on CPU, which trlm does not train in; use fp32")
    expected_ranks = hardware.devices_per_node * hardware.num_nodes
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != expected_ranks:
        raise TrlmError(
            f"{name} expects {expected_ranks} ranks but this process group has {world_size}; "
            f"launch with `torchrun --nproc-per-node {hardware.devices_per_node} train.py ...`"
        )

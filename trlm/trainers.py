"""From a stage's config to a TRL trainer: the one place where trlm talks to TRL.

Both SFT stages and the DPO stage go through `training_arguments` (recipe + hardware + tracking
merged into TRL's own config class) and `build_trainer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from datasets import Dataset
from omegaconf import OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from trlm.config import Accelerator, HardwareConfig, Precision, StageConfig, TrainerKind
from trlm.errors import TrlmError

CONFIG_CLASSES: dict[TrainerKind, type[TrainingArguments]] = {TrainerKind.sft: SFTConfig, TrainerKind.dpo: DPOConfig}


class PromptTruncatingDPOTrainer(DPOTrainer):
    """DPO that keeps only the last `max_prompt_length` prompt tokens, as TRL < 1.0 did.

    TRL 1.x dropped `max_prompt_length` and truncates prompt + completion together at `max_length`
    (keeping the start), so a long prompt can crowd out the completions it is meant to rank.
    """

    def __init__(self, *args: Any, max_prompt_length: int | None = None, **kwargs: Any) -> None:
        self.max_prompt_length = max_prompt_length
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.max_prompt_length is None:
            return dataset
        keep = self.max_prompt_length
        return dataset.map(
            lambda row: {"prompt_ids": row["prompt_ids"][-keep:]}, desc=f"Truncating {dataset_name} prompts"
        )


def config_fields(kind: TrainerKind) -> set[str]:
    return {f.name for f in dataclasses.fields(CONFIG_CLASSES[kind])}


def hardware_arguments(hardware: HardwareConfig) -> dict[str, Any]:
    return {
        "use_cpu": hardware.accelerator == Accelerator.cpu,
        # Explicit on both: TRL defaults bf16 to True, which a CPU run must not inherit.
        "bf16": hardware.precision == Precision.bf16,
        "fp16": hardware.precision == Precision.fp16,
        "dataloader_num_workers": hardware.dataloader_num_workers,
        "optim": hardware.optim,
        "torch_empty_cache_steps": hardware.torch_empty_cache_steps,
    }


def training_arguments(
    stage: StageConfig,
    hardware: HardwareConfig,
    output_dir: str,
    run_name: str,
    report_to: list[str],
) -> TrainingArguments:
    """TRL's config for the stage: the recipe as written, the hardware's knobs, trlm's conventions."""
    recipe = {k: v for k, v in OmegaConf.to_container(OmegaConf.structured(stage.recipe)).items() if v is not None}
    kwargs: dict[str, Any] = {
        **recipe,
        **hardware_arguments(hardware),
        "output_dir": output_dir,
        "run_name": run_name,
        "report_to": report_to,
        "save_strategy": "steps",
        "logging_first_step": True,
        "save_total_limit": 2,
    }
    if stage.trainer == TrainerKind.sft:
        kwargs.update(assistant_only_loss=stage.assistant_only_loss, packing=False)
    kwargs.update(stage.extra_args)
    unknown = sorted(set(kwargs) - config_fields(stage.trainer))
    if unknown:
        name = CONFIG_CLASSES[stage.trainer].__name__
        raise TrlmError(f"stage {stage.name}: {unknown} are not arguments of trl.{name}")
    return CONFIG_CLASSES[stage.trainer](**kwargs)


def build_trainer(
    stage: StageConfig,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    callbacks: list[TrainerCallback],
) -> SFTTrainer | DPOTrainer:
    common = dict(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if stage.trainer == TrainerKind.sft:
        return SFTTrainer(**common)
    # No ref_model: TRL uses a frozen copy of the starting policy, as the report did.
    return PromptTruncatingDPOTrainer(**common, max_prompt_length=stage.max_prompt_length)

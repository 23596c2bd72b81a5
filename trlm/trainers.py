"""From a stage's config to a TRL trainer: the one place where trlm talks to TRL.

`TRAINERS` is the table of trainer kinds: for each, TRL's config and trainer classes, the blend
kind it trains on, the stage keys only it takes, and how its held-out rows become conversations
for the generation evaluation. Validation, training and evaluation all read this table, so a new
kind (GRPO, say) is one entry. Allowed values come from TRL's own config metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from omegaconf import OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from trlm.config import Accelerator, DataKind, HardwareConfig, Precision, RecipeConfig, StageConfig, TrainerKind
from trlm.errors import TrlmError
from trlm.evaluation import REPLY_METRICS
from trlm.fsutil import atomic_write_with
from trlm.padding_free import make_dpo_padding_free

log = logging.getLogger(__name__)
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
TOKEN_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]

Conversation = list[dict[str, str]]


class TrlmDPOTrainer(DPOTrainer):
    """TRL's DPO with three things trlm adds:

    - `max_prompt_length`: only the last N prompt tokens are kept, as TRL < 1.0 did (TRL 1.x truncates
      prompt + completion together at `max_length`, keeping the start, so a long prompt can crowd out
      the completions it is meant to rank);
    - `ref_cache_dir`: the precomputed reference pass shared by runs that would compute the same one;
    - `padding_free=(attention, accelerator)`: batches without padding (trlm/padding_free.py), the
      reference pass included, so that policy and reference see the same kernels.
    """

    def __init__(
        self, *args: Any, max_prompt_length: int | None = None, ref_cache_dir: Path | None = None,
        padding_free: tuple[str, str] | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        self.max_prompt_length = max_prompt_length
        self.ref_cache_dir = ref_cache_dir
        self.padding_free_with, self.padding_free_done = padding_free, False
        super().__init__(*args, **kwargs)
        self.drop_padding()

    def drop_padding(self) -> None:
        """Once the fused LM head TRL adds is in place (before the reference pass, or after __init__)."""
        if self.padding_free_with and not self.padding_free_done:
            self.padding_free_done = True
            make_dpo_padding_free(self, *self.padding_free_with)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """TRL's reference pass, kept in `ref_cache_dir` under a key of what decides its values — the
        reference weights (TRL's own hash of them), the tokenized rows, precision — so sweep trials that
        share a start checkpoint and a blend compute it once. (TRL caches it too, but under the dataset's
        fingerprint, which differs between processes: each trial recomputed.)"""
        self.drop_padding()
        if self.ref_cache_dir is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        path = self.ref_cache_dir / f"{self.ref_cache_key(dataset)}.pt"
        if path.exists():
            log.info("reference log-probs of the %s rows from the cache %s", name, path)
            columns = torch.load(path, weights_only=True)
            return concatenate_datasets([dataset, Dataset.from_dict(columns)], axis=1)
        computed = super()._precompute_ref_logps(dataset, name, batch_size)
        if self.accelerator.is_main_process:
            columns = {key: torch.tensor(computed[key]) for key in REF_COLUMNS}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_with(path, lambda staging: torch.save(columns, staging))
        return computed

    def ref_cache_key(self, dataset: Dataset) -> str:
        packed = getattr(self.model.forward, "trlm_padding_free", False)  # other kernels: other rounding
        decided_by = f"{self._precompute_model_hash}|{self.args.bf16}|{self.args.fp16}|{self.ld_alpha}|{packed}"
        digest = hashlib.sha256(decided_by.encode())
        for rows in dataset.select_columns(TOKEN_COLUMNS).iter(batch_size=4096):
            digest.update(json.dumps(rows).encode())
        return digest.hexdigest()[:32]

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.max_prompt_length is None:
            return dataset
        keep = self.max_prompt_length
        return dataset.map(
            lambda row: {"prompt_ids": row["prompt_ids"][-keep:]}, desc=f"Truncating {dataset_name} prompts"
        )


@dataclass(frozen=True)
class TrainerSpec:
    kind: TrainerKind
    config_class: type[TrainingArguments]
    trainer_class: type[Trainer]
    data_kind: DataKind
    # Stage keys (outside the recipe) that only this kind takes: name -> passed to TRL's config (True)
    # or to the trainer (False).
    stage_keys: dict[str, bool]
    held_out: Callable[[Dataset], list[Conversation]]  # conversations whose last reply is the reference
    logged: tuple[str, ...]  # what TRL logs each step (and, eval_-prefixed, at each evaluation)

    @property
    def metrics(self) -> frozenset[str]:
        """Every figure a stage's summary can hold: what an objective may name (tests pin it to real runs)."""
        replies = (*REPLY_METRICS, *(f"start_{name}" for name in REPLY_METRICS))
        evaluated = (*self.logged, "runtime", "samples_per_second", "steps_per_second")
        return frozenset((*self.logged, "epoch", *TRAINING_TOTALS, *(f"eval_{m}" for m in evaluated), *replies))

    @property
    def fields(self) -> set[str]:
        return config_fields(self.config_class)

    @property
    def loss_types(self) -> tuple[str, ...]:
        return loss_types(self.config_class)


def sft_held_out(rows: Dataset) -> list[Conversation]:
    return rows["messages"]


def dpo_held_out(rows: Dataset) -> list[Conversation]:
    return [p + c for p, c in zip(rows["prompt"], rows["chosen"], strict=True)]  # the chosen reply is the reference


SFT_LOGGED = ("loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "mean_token_accuracy")
PAIR_FIGURES = tuple(f"{kind}/{side}" for kind in ("rewards", "logps", "logits") for side in ("chosen", "rejected"))
DPO_LOGGED = (*SFT_LOGGED, "rewards/accuracies", "rewards/margins", *PAIR_FIGURES)
TRAINING_TOTALS = ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")
TRAINERS: dict[TrainerKind, TrainerSpec] = {
    TrainerKind.sft: TrainerSpec(
        TrainerKind.sft, SFTConfig, SFTTrainer, DataKind.conversation, {"assistant_only_loss": True}, sft_held_out,
        SFT_LOGGED,
    ),
    TrainerKind.dpo: TrainerSpec(
        TrainerKind.dpo, DPOConfig, TrlmDPOTrainer, DataKind.preference, {"max_prompt_length": False},
        dpo_held_out, DPO_LOGGED,
    ),
}  # fmt: skip
STAGE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(StageConfig)}
RECIPE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RecipeConfig)}


@cache
def config_fields(config_class: type[TrainingArguments]) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


@cache
def loss_types(config_class: type[TrainingArguments]) -> tuple[str, ...]:
    """`loss_type`'s allowed values from TRL's field metadata: its `choices`, else the names its help lists."""
    metadata = next(f.metadata for f in dataclasses.fields(config_class) if f.name == "loss_type")
    if "choices" in metadata:
        return tuple(metadata["choices"])
    return tuple(dict.fromkeys(re.findall(r"`'(\w+)'`", metadata.get("help", ""))))


def kinds_taking(key: str) -> list[str]:
    return [kind.value for kind, spec in TRAINERS.items() if key in spec.fields or key in spec.stage_keys]


def check_stage_keys(stage: StageConfig) -> None:
    """Every key the stage sets is one its trainer consumes: nothing is silently ignored."""
    spec = TRAINERS[stage.trainer]
    for key, value in stage.recipe.items():
        if key not in spec.fields and value != RECIPE_DEFAULTS[key]:
            raise TrlmError(
                f"stage {stage.name}: stage.recipe.{key} applies to {' / '.join(kinds_taking(key))} stages only "
                f"(this is a {stage.trainer.value} stage)"
            )
    for other in TRAINERS.values():
        for key in other.stage_keys.keys() - spec.stage_keys.keys():
            if stage[key] != STAGE_DEFAULTS[key]:
                raise TrlmError(
                    f"stage {stage.name}: stage.{key} applies to {other.kind.value} stages only "
                    f"(this is a {stage.trainer.value} stage)"
                )


def hardware_arguments(hardware: HardwareConfig) -> dict[str, Any]:
    return {
        "use_cpu": hardware.accelerator == Accelerator.cpu,
        # Explicit on both: TRL defaults bf16 to True, which a CPU run must not inherit.
        "bf16": hardware.precision == Precision.bf16,
        "fp16": hardware.precision == Precision.fp16,
        "dataloader_num_workers": hardware.dataloader_num_workers,
        # torch refuses persistent workers where there are none (a preset's workers overridden to 0)
        "dataloader_persistent_workers": hardware.dataloader_persistent_workers and hardware.dataloader_num_workers > 0,
        "optim": hardware.optim,
        "torch_empty_cache_steps": hardware.torch_empty_cache_steps,
        "torch_compile": hardware.torch_compile,
        "use_liger_kernel": hardware.liger_kernel,
    }


def training_arguments(
    stage: StageConfig,
    hardware: HardwareConfig,
    output_dir: str,
    run_name: str,
    report_to: list[str],
    evaluate_every: float | None = None,
) -> TrainingArguments:
    """TRL's config for the stage: the recipe as written, the hardware's knobs, trlm's conventions.

    `evaluate_every` (steps; < 1: a share of the run) evaluates during training, for a pruner.
    """
    spec = TRAINERS[stage.trainer]
    recipe = OmegaConf.to_container(OmegaConf.structured(stage.recipe))
    kwargs: dict[str, Any] = {
        **{k: v for k, v in recipe.items() if v is not None and k in spec.fields},
        **{k: stage[k] for k, to_config in spec.stage_keys.items() if to_config},
        **hardware_arguments(hardware),
        "output_dir": output_dir,
        "run_name": run_name,
        "report_to": report_to,
        "save_strategy": "steps",
        "logging_first_step": True,
        "save_total_limit": 2,
        "ddp_find_unused_parameters": False,  # every parameter takes part: skip DDP's extra graph walk
    }
    if evaluate_every:
        kwargs.update(eval_strategy="steps", eval_steps=evaluate_every)
    kwargs.update(stage.extra_args)
    unknown = sorted(set(kwargs) - spec.fields)
    if unknown:
        raise TrlmError(f"stage {stage.name}: {unknown} are not arguments of trl.{spec.config_class.__name__}")
    return spec.config_class(**kwargs)


def precompute_reference(stage: StageConfig, args: TrainingArguments, train_rows: int) -> bool:
    """Whether DPO's reference pass runs once before training (TRL's `precompute_ref_log_probs`): as the recipe
    says, or, left open, when the run reads every row at least once. Then one pass costs no more than a
    reference forward at every step, and sweep trials on the same start and blend share it (`ref_cache_dir`);
    a short run on a large blend would pay for rows it never trains on."""
    if stage.recipe.precompute_ref_log_probs is not None:
        return stage.recipe.precompute_ref_log_probs
    if args.max_steps <= 0:  # epochs: every row
        return True
    rows_read = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return rows_read >= train_rows


def build_trainer(
    stage: StageConfig,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    callbacks: list[TrainerCallback],
    ref_cache_dir: Path | None = None,
    padding_free: tuple[str, str] | None = None,
) -> Trainer:
    # No ref_model for DPO: TRL uses a frozen copy of the starting policy, as the report did.
    spec = TRAINERS[stage.trainer]
    own = {k: stage[k] for k, to_config in spec.stage_keys.items() if not to_config}
    if stage.trainer == TrainerKind.dpo:
        own.update(ref_cache_dir=ref_cache_dir, padding_free=padding_free)
        args.precompute_ref_log_probs = precompute_reference(stage, args, len(train_dataset))
    return spec.trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        **own,
    )

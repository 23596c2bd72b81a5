"""From a `StagePlan` to a TRL trainer: the one place where trlm builds TRL's objects.

The plan decided the trainer kind (`trlm/trainer_kinds.py`, the table of kinds) and its TRL
arguments as plain data; this module turns them into TRL's config and trainer classes, and holds
what trlm adds to TRL's DPO and GRPO trainers.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from trl import DPOTrainer, GRPOTrainer

from trlm.config import PeftConfig
from trlm.fsutil import atomic_write_text, atomic_write_with, disk_space, sha256_of
from trlm.library_facts import load_class
from trlm.padding_free import make_dpo_padding_free
from trlm.stage_plan import StagePlan

log = logging.getLogger(__name__)
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
TOKEN_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]


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
        columns = cached_columns(path, len(dataset))
        if columns is not None:
            log.info("reference log-probs of the %s rows from the cache %s", name, path)
            return concatenate_datasets([dataset, Dataset.from_dict(columns)], axis=1)
        computed = super()._precompute_ref_logps(dataset, name, batch_size)
        if self.accelerator.is_main_process:
            columns = {key: torch.tensor(computed[key]) for key in REF_COLUMNS}
            path.parent.mkdir(parents=True, exist_ok=True)
            with disk_space(path.parent, "caching the reference log-probs"):
                atomic_write_with(path, lambda staging: torch.save(columns, staging))
                atomic_write_text(path.with_suffix(".sha256"), sha256_of(path) + "\n")
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


def cached_columns(path: Path, rows: int) -> dict[str, torch.Tensor] | None:
    """A cache entry of reference log-probs, if it is whole: the sha256 written beside it matches, it
    loads, and it has a value per row; else None (and the pass is computed again, said in the log)."""
    if not path.exists():
        return None
    recorded = path.with_suffix(".sha256")
    try:
        if not recorded.exists() or recorded.read_text().strip() != sha256_of(path):
            raise ValueError("its sha256 is not the one recorded beside it")
        columns = torch.load(path, weights_only=True)
        if sorted(columns) != sorted(REF_COLUMNS) or any(len(columns[key]) != rows for key in REF_COLUMNS):
            raise ValueError(f"it does not hold {rows} rows of {', '.join(REF_COLUMNS)}")
    except Exception as error:  # a torn or foreign file: torch's own errors vary
        log.warning("reference log-prob cache entry %s is unusable (%s): computing it again", path, error)
        return None
    return columns


def training_arguments(plan: StagePlan) -> TrainingArguments:
    """TRL's config for the stage, from the arguments the plan decided (`plan.training_args`)."""
    return load_class(plan.trainer.config_class)(**plan.training_args)


def precompute_reference(setting: bool | None, args: TrainingArguments, train_rows: int) -> bool:
    """Whether DPO's reference pass runs once before training (TRL's `precompute_ref_log_probs`): as the recipe
    says, or, left open, when the run reads every row at least once. Then one pass costs no more than a
    reference forward at every step, and sweep trials on the same start and blend share it (`ref_cache_dir`);
    a short run on a large blend would pay for rows it never trains on."""
    if setting is not None:
        return setting
    if args.max_steps <= 0:  # epochs: every row
        return True
    rows_read = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return rows_read >= train_rows


def added_token_ids(model: PreTrainedModel) -> list[int]:
    """The ids of tokens this stage added to its start model: its embeddings grown past the saved config's
    vocabulary (stage 2's think tokens, on a model without them)."""
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(model.config._name_or_path).vocab_size
    return list(range(saved, model.get_input_embeddings().num_embeddings))


def lora_config(peft: PeftConfig, new_tokens: list[int]) -> Any:
    """peft's LoraConfig from trlm's settings (`all-linear`: peft's own name for every linear layer).

    Tokens the stage adds (stage 2's think tokens on a model without them) keep their initial embedding
    rows: peft's trainable tokens would wrap the LM head, which TRL's fused LM head reads directly (its
    `.weight` and `.bias`), so that stage fails in TRL 1.16. The adapters learn around the fixed rows;
    `model.new_token_init=mean` starts them at the mean embedding rather than at random.
    """
    from peft import LoraConfig

    if new_tokens:
        log.warning("LoRA: the %d tokens this stage adds keep their initial embeddings (only adapters train; "
                    "model.new_token_init=mean starts them at the mean embedding)", len(new_tokens))  # fmt: skip
    targets = peft.target_modules
    return LoraConfig(r=peft.r, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets))  # fmt: skip


def dpo_extras(plan: StagePlan, args: TrainingArguments, train_rows: int, padding_free: tuple[str, str] | None,
               tokenizer: PreTrainedTokenizerBase):  # fmt: skip
    """No ref_model: TRL uses a frozen copy of the starting policy, as the report did (with LoRA: the base with
    its adapters off). The reference pass precomputed when it pays, and shared through trlm's cache."""
    args.precompute_ref_log_probs = precompute_reference(plan.stage.recipe.precompute_ref_log_probs, args, train_rows)
    return {"ref_cache_dir": plan.cache_dir / "ref_logps", "padding_free": padding_free}


class TrlmGRPOTrainer(GRPOTrainer):
    """TRL's GRPO whose reference (beta > 0, no adapters) is the policy as the stage starts it. TRL builds the
    reference again from the start model's path, which misses what the stage changed in memory: stage 2's
    think tokens added to a model without them (`stage.previous=null` from a base model), whose ids the
    reloaded reference cannot embed."""

    def __init__(self, model: PreTrainedModel, *args: Any, **kwargs: Any) -> None:
        config = kwargs["args"]
        changed = bool(added_token_ids(model))
        start = copy.deepcopy(model) if config.beta > 0 and not kwargs.get("peft_config") and changed else None
        super().__init__(model, *args, **kwargs)
        if start is not None:
            from trl.trainer.grpo_trainer import add_fused_lm_head, disable_dropout_in_model

            start.requires_grad_(False)
            if config.disable_dropout:
                disable_dropout_in_model(start)
            add_fused_lm_head(start, temperature=self.temperature, cast_lm_head_to_fp32=config.cast_lm_head_to_fp32)
            self.ref_model = self.accelerator.prepare_model(start.eval(), evaluation_mode=True)


def grpo_extras(plan: StagePlan, args: TrainingArguments, train_rows: int, padding_free: tuple[str, str] | None,
                tokenizer: PreTrainedTokenizerBase):  # fmt: skip
    """The stage's rewards (trlm/rewards.py), scored as the stage's evaluation scores replies."""
    from trlm.rewards import build_rewards

    names = [reward.name for reward in plan.stage.rewards]
    return {"reward_funcs": build_rewards(names, plan.stage.think_tokens, args.max_completion_length, tokenizer)}


def build_trainer(
    plan: StagePlan,
    args: TrainingArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
    callbacks: list[TrainerCallback],
    padding_free: tuple[str, str] | None = None,
) -> Trainer:
    own: dict[str, Any] = dict(plan.trainer_args)
    if plan.trainer.trainer_extras:
        own.update(load_class(plan.trainer.trainer_extras)(plan, args, len(train_dataset), padding_free, tokenizer))
    if plan.peft is not None:
        own["peft_config"] = lora_config(plan.peft, added_token_ids(model))
    return load_class(plan.trainer.trainer_class)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        **own,
    )

"""From a `StagePlan` to a TRL trainer: the one place where trlm builds TRL's objects.

The plan decided the trainer kind (`trlm/trainer_kinds.py`, the table of kinds) and its TRL
arguments as plain data; this module turns them into TRL's config and trainer classes, and holds
what trlm adds to TRL's DPO trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from trl import DPOTrainer

from trlm.config import TrainerKind
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
    # No ref_model for DPO: TRL uses a frozen copy of the starting policy, as the report did.
    own: dict[str, Any] = dict(plan.trainer_args)
    if plan.stage.trainer == TrainerKind.dpo:
        own.update(ref_cache_dir=plan.cache_dir / "ref_logps", padding_free=padding_free)
        setting = plan.stage.recipe.precompute_ref_log_probs
        args.precompute_ref_log_probs = precompute_reference(setting, args, len(train_dataset))
    return load_class(plan.trainer.trainer_class)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        **own,
    )

"""The table of trainer kinds: what each stage trainer is, in one entry, without importing TRL.

For each kind: TRL's config and trainer classes (by name: `trlm/trainers.py` imports them when a
stage runs), the blend kind it trains on, the stage keys only it takes, what it logs, and how its
held-out rows become conversations for the generation evaluation. Checks, planning, training and
evaluation all read this table, so a new kind is one entry here (and its recipe preset). What the
named TRL classes accept (their fields, their loss types) comes from TRL itself, through
`trlm/library_facts.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trlm.config import DataKind, TrainerKind
from trlm.scoring import REPLY_METRICS

Conversation = list[dict[str, str]]
TRAINING_TOTALS = ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


@dataclass(frozen=True)
class TrainerSpec:
    kind: TrainerKind
    config_class: str  # "module.Class" of TRL's config for this trainer
    trainer_class: str  # "module.Class" of the trainer
    data_kind: DataKind
    # Stage keys (outside the recipe) that only this kind takes: name -> passed to TRL's config (True)
    # or to the trainer (False).
    stage_keys: dict[str, bool]
    held_out: Callable[[Any], list[Conversation]]  # held-out rows -> conversations whose last reply is the reference
    logged: tuple[str, ...]  # what TRL logs each step (and, eval_-prefixed, at each evaluation)

    @property
    def metrics(self) -> frozenset[str]:
        """Every figure a stage's summary can hold: what an objective may name (tests pin it to real runs)."""
        replies = (*REPLY_METRICS, *(f"start_{name}" for name in REPLY_METRICS))
        evaluated = (*self.logged, "runtime", "samples_per_second", "steps_per_second")
        return frozenset((*self.logged, "epoch", *TRAINING_TOTALS, *(f"eval_{m}" for m in evaluated), *replies))


def sft_held_out(rows: Any) -> list[Conversation]:
    return rows["messages"]


def dpo_held_out(rows: Any) -> list[Conversation]:
    return [p + c for p, c in zip(rows["prompt"], rows["chosen"], strict=True)]  # the chosen reply is the reference


SFT_LOGGED = ("loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "mean_token_accuracy")
PAIR_FIGURES = tuple(f"{kind}/{side}" for kind in ("rewards", "logps", "logits") for side in ("chosen", "rejected"))
DPO_LOGGED = (*SFT_LOGGED, "rewards/accuracies", "rewards/margins", *PAIR_FIGURES)
TRAINERS: dict[TrainerKind, TrainerSpec] = {
    TrainerKind.sft: TrainerSpec(
        TrainerKind.sft, "trl.SFTConfig", "trl.SFTTrainer", DataKind.conversation, {"assistant_only_loss": True},
        sft_held_out, SFT_LOGGED,
    ),
    TrainerKind.dpo: TrainerSpec(
        TrainerKind.dpo, "trl.DPOConfig", "trlm.trainers.TrlmDPOTrainer", DataKind.preference,
        {"max_prompt_length": False}, dpo_held_out, DPO_LOGGED,
    ),
}  # fmt: skip


def kinds_taking(key: str, fields: dict[str, frozenset[str]]) -> list[str]:
    """The trainer kinds whose config (`fields`: kind -> TRL config fields) or stage keys take `key`."""
    return [kind.value for kind, spec in TRAINERS.items() if key in fields[kind.value] or key in spec.stage_keys]

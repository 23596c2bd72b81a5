"""The table of trainer kinds: what each stage trainer is, in one entry, without importing TRL.

For each kind: TRL's config and trainer classes (by name: `trlm/trainers.py` imports them when a
stage runs), the blend kind it trains on, the stage keys only it takes (and where each goes), what
TRL arguments trlm derives from the stage, what the trainer is given besides TRL's usual arguments,
what it logs, and how its held-out rows become conversations for the generation evaluation. Checks,
planning, training and evaluation all read this table, so a new kind is one entry here (and its recipe preset). What the
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
    # Stage keys (outside the recipe) that only this kind takes: name -> where it goes: "config" (TRL's
    # config), "trainer" (the trainer's own argument), "trlm" (trlm builds something from it).
    stage_keys: dict[str, str]
    held_out: Callable[[Any], list[Conversation]]  # held-out rows -> conversations whose last reply is the reference
    logged: tuple[str, ...]  # what TRL logs each step (and, eval_-prefixed, at each evaluation)
    derived: Callable[[Any], dict[str, Any]] = lambda stage: {}  # TRL config arguments trlm derives from the stage
    # "module.function(plan, args, train_rows, padding_free, tokenizer) -> dict": what the trainer is given besides
    # TRL's usual arguments (None: nothing)
    trainer_extras: str | None = None

    @property
    def metrics(self) -> frozenset[str]:
        """Every figure a stage's summary can hold: what an objective may name (tests pin it to real runs)."""
        replies = (*REPLY_METRICS, *(f"start_{name}" for name in REPLY_METRICS))
        evaluated = (*self.logged, "runtime", "samples_per_second", "steps_per_second")
        return frozenset((*self.logged, "epoch", *TRAINING_TOTALS, *(f"eval_{m}" for m in evaluated), *replies))

    def metrics_of(self, rewards: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
        """`metrics` and, for a stage with rewards, each reward's mean and std as TRL logs them."""
        per_reward = [f"rewards/{name}/{stat}" for name in rewards for stat in ("mean", "std")]
        return self.metrics | {*per_reward, *(f"eval_{m}" for m in per_reward)}


def grpo_held_out(rows: Any) -> list[Conversation]:
    """The prompt, and the reference answer as the reply a greedy one is scored against."""
    pairs = zip(rows["prompt"], rows["answer"], strict=True)
    return [[*prompt, {"role": "assistant", "content": answer}] for prompt, answer in pairs]


def sft_held_out(rows: Any) -> list[Conversation]:
    return rows["messages"]


def dpo_held_out(rows: Any) -> list[Conversation]:
    return [p + c for p, c in zip(rows["prompt"], rows["chosen"], strict=True)]  # the chosen reply is the reference


SFT_LOGGED = ("loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "mean_token_accuracy")
PAIR_FIGURES = tuple(f"{kind}/{side}" for kind in ("rewards", "logps", "logits") for side in ("chosen", "rejected"))
DPO_LOGGED = (*SFT_LOGGED, "rewards/accuracies", "rewards/margins", *PAIR_FIGURES)
# TRL's GRPO logs, besides the loss: the reward (mean over the rewards' weighted sum) and each reward's
# mean and std (`rewards/<name>/...`, per stage: `TrainerSpec.metrics_of`), the KL to the reference,
# completion lengths, clipping ratios and the share of groups whose rewards were all equal.
GRPO_LOGGED = ("loss", "grad_norm", "learning_rate", "entropy", "num_tokens", "reward", "reward_std",
               "frac_reward_zero_std", "kl", "completions/mean_length", "completions/min_length",
               "completions/max_length", "completions/clipped_ratio", "completions/mean_terminated_length",
               "completions/min_terminated_length", "completions/max_terminated_length", "clip_ratio/low_mean",
               "clip_ratio/low_min", "clip_ratio/high_mean", "clip_ratio/high_max", "clip_ratio/region_mean",
               "step_time")  # fmt: skip
TRAINERS: dict[TrainerKind, TrainerSpec] = {
    TrainerKind.sft: TrainerSpec(
        TrainerKind.sft, "trl.SFTConfig", "trl.SFTTrainer", DataKind.conversation, {"assistant_only_loss": "config"},
        sft_held_out, SFT_LOGGED,
    ),
    TrainerKind.dpo: TrainerSpec(
        TrainerKind.dpo, "trl.DPOConfig", "trlm.trainers.TrlmDPOTrainer", DataKind.preference,
        {"max_prompt_length": "trainer"}, dpo_held_out, DPO_LOGGED, trainer_extras="trlm.trainers.dpo_extras",
    ),
    TrainerKind.grpo: TrainerSpec(
        TrainerKind.grpo, "trl.GRPOConfig", "trlm.trainers.TrlmGRPOTrainer", DataKind.verifiable, {"rewards": "trlm"},
        grpo_held_out, GRPO_LOGGED, derived=lambda stage: {"reward_weights": [r.weight for r in stage.rewards]},
        trainer_extras="trlm.trainers.grpo_extras",
    ),
}  # fmt: skip


def kinds_taking(key: str, fields: dict[str, frozenset[str]]) -> list[str]:
    """The trainer kinds whose config (`fields`: kind -> TRL config fields) or stage keys take `key`."""
    return [kind.value for kind, spec in TRAINERS.items() if key in fields[kind.value] or key in spec.stage_keys]

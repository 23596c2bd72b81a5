"""What a run *is*: the inputs that change its weights, hashed part by part.

A run directory is continued (resumed, or re-read when finished) only by a command with the same
fingerprint. The parts are what change the weights — the optimisation recipe, the effective
global batch (per-device batch x accumulation x ranks), the rows trained on, the model and the
start point — and nothing else: a different objective, evaluation setting, logging or save
cadence, or per-device split of the same global batch continues the same run. The plan decides
the parts the data does not (`base_parts`); the prepared blend adds its own (`with_data`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import OmegaConf

from trlm.config import HardwareConfig, ModelConfig, PeftConfig, PeftMethod, RecipeConfig, StageConfig

# Recipe fields that do not change the weights (or enter through the global batch).
NOT_WEIGHTS = ("save_steps", "logging_steps", "per_device_eval_batch_size", "gradient_checkpointing",
               "per_device_train_batch_size", "gradient_accumulation_steps", "precompute_ref_log_probs")  # fmt: skip
# Stage keys, besides the recipe, that shape training (GRPO's rewards too, where a stage has them).
STAGE_KEYS = ("trainer", "think_tokens", "system_prompt", "assistant_only_loss", "max_prompt_length", "extra_args")
# Recipe fields added with GRPO: hashed only when set, so that the fingerprints of earlier runs stand.
ADDED = ("num_generations", "max_completion_length", "temperature")


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plain(record: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready data (enums as their values), as the recorded fingerprints hash it."""
    return OmegaConf.to_container(OmegaConf.structured(record), resolve=True, enum_to_str=True)


def global_batch(recipe: RecipeConfig, hardware: HardwareConfig) -> int:
    ranks = hardware.devices_per_node * hardware.num_nodes
    return recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * ranks


def base_parts(stage: StageConfig, model: ModelConfig, hardware: HardwareConfig, start: Any,
               peft: PeftConfig | None = None) -> dict[str, str]:  # fmt: skip
    """The parts decided before any data is read: recipe, global batch, model, start point, and LoRA's
    adapters when the stage trains them (no part otherwise: fingerprints from before LoRA stand)."""
    spec = plain(stage)
    recipe = {k: v for k, v in spec["recipe"].items() if k not in NOT_WEIGHTS and not (k in ADDED and v is None)}
    keys = {k: spec[k] for k in STAGE_KEYS} | ({"rewards": spec["rewards"]} if spec["rewards"] else {})
    parts = {
        "recipe": digest({"recipe": recipe, **keys}),
        "global_batch": str(global_batch(stage.recipe, hardware)),
        "model": digest(plain(model)),
        "start": digest(start.record()),
    }
    if peft is not None and peft.method != PeftMethod.none:
        parts["peft"] = digest(plain(peft))
    return parts


def with_data(parts: dict[str, str], data: dict[str, Any]) -> dict[str, str]:
    """All the parts: the plan's, and those of the rows trained on."""
    return {
        **parts,
        "data": data["sha256"],
        "data_use": digest({k: data[k] for k in ("eval_sha256", "rows", "too_long")}),
    }


def fingerprint(parts: dict[str, str]) -> str:
    return digest(parts)


def differences(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    return sorted(key for key in recorded.keys() | now.keys() if recorded.get(key) != now.get(key))

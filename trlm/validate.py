"""Checks that need more than the schema's types, run before anything is loaded or written.

Every key a user can set is consumed or refused: `+key=value` additions outside the schema, values
out of range, settings the stage's trainer does not take, and an objective the stage never
computes all stop here with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from collections.abc import Callable, Iterator

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from transformers import SchedulerType

from trlm import layout
from trlm.config import Accelerator, HardwareConfig, Precision
from trlm.distributed import world_size
from trlm.errors import TrlmError

TRACKERS = ("none", "wandb")


def at_least(low: float, strict: bool = False) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v > low, f"> {low:g}") if strict else (lambda v: v >= low, f">= {low:g}")


POSITIVE, COUNT, NON_NEGATIVE = at_least(0, strict=True), at_least(1), at_least(0)
TINY_SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "max_position_embeddings", "vocab_size")  # fmt: skip
STEPS = (lambda v: v == -1 or v >= 1, "-1 (unset: epochs decide) or >= 1")
# Ranges of the numeric settings; `*` stands for every item of a list. None (unset) is always allowed.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "stage.recipe.num_train_epochs": POSITIVE,
    "stage.recipe.max_steps": STEPS,
    "stage.recipe.per_device_train_batch_size": COUNT,
    "stage.recipe.per_device_eval_batch_size": COUNT,
    "stage.recipe.gradient_accumulation_steps": COUNT,
    "stage.recipe.learning_rate": POSITIVE,
    "stage.recipe.weight_decay": NON_NEGATIVE,
    "stage.recipe.warmup_steps": NON_NEGATIVE,  # < 1: a ratio of the total steps
    "stage.recipe.max_grad_norm": POSITIVE,
    "stage.recipe.max_length": COUNT,
    "stage.recipe.neftune_noise_alpha": POSITIVE,
    "stage.recipe.beta": POSITIVE,
    "stage.recipe.save_steps": COUNT,
    "stage.recipe.logging_steps": COUNT,
    "stage.recipe.seed": NON_NEGATIVE,
    "stage.max_prompt_length": COUNT,
    "stage.evaluation.max_new_tokens": COUNT,
    "stage.evaluation.temperature": POSITIVE,
    "stage.evaluation.batch_size": COUNT,
    "stage.evaluation.max_prompts": COUNT,
    "data.eval_size": NON_NEGATIVE,
    "data.seed": NON_NEGATIVE,
    "data.shard_threshold": COUNT,
    "data.shard_rows": COUNT,
    "data.sources.*.entries": COUNT,
    "data.sources.*.skip": NON_NEGATIVE,
    "data.eval_sources.*.entries": COUNT,
    "data.eval_sources.*.skip": NON_NEGATIVE,
    "hardware.devices_per_node": COUNT,
    "hardware.num_nodes": COUNT,
    "hardware.dataloader_num_workers": NON_NEGATIVE,
    "hardware.cpu_threads": COUNT,
    **{f"model.tiny.{key}": COUNT for key in TINY_SHAPE},
    "model.tiny.rope_theta": POSITIVE,
}
WANDB_MODES = ("online", "offline", "disabled", "shared")


def choice(key: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise TrlmError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def schema_paths(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every config node typed by a trlm dataclass, with its dotted path."""
    if dataclasses.is_dataclass(OmegaConf.get_type(node)):
        yield prefix.rstrip("."), node
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig) and not child._is_none() and not child._is_missing():
            yield from schema_paths(child, f"{prefix}{key}.")


def check_known_keys(cfg: DictConfig) -> None:
    """`+stage.learning_rate=…` adds a key Hydra accepts but trlm would never read: refuse it."""
    nodes = list(schema_paths(cfg))
    known_paths = [f"{path}.{f.name}".lstrip(".") for path, node in nodes
                   for f in dataclasses.fields(OmegaConf.get_type(node))]  # fmt: skip
    for path, node in nodes:
        fields = {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}
        for key in node:
            if key not in fields:
                full = f"{path}.{key}".lstrip(".")
                alike = [p for p in known_paths if p.rsplit(".", 1)[-1] == key]
                hint = f"; did you mean {' or '.join(alike)}?" if alike else ""
                raise TrlmError(f"{full} is not a trlm setting, so it would be ignored{hint}")


def check_ranges(cfg: DictConfig) -> None:
    for pattern, (ok, wanted) in RANGES.items():
        head, _, tail = pattern.partition(".*.")
        if tail:
            items = OmegaConf.select(cfg, head) or []
            keys = [f"{head}.{i}.{tail}" for i in range(len(items))]
        else:
            keys = [pattern]
        for key in keys:
            value = OmegaConf.select(cfg, key)
            if value is not None and not ok(value):
                raise TrlmError(f"{key}={value} is out of range: it must be {wanted}")


def check_objective(cfg: DictConfig) -> None:
    """The objective must be a figure the stage computes, or a sweep would optimise nothing."""
    from trlm.evaluation import REPLY_METRICS
    from trlm.trainers import TRAINERS

    stage, data, metric = cfg.stage, cfg.data, cfg.stage.objective.metric
    known = TRAINERS[stage.trainer].metrics
    if not metric.startswith("lm_eval/") and metric not in known:  # else found missing only after training
        close = difflib.get_close_matches(metric, known, n=1)
        examples = "eval_loss, train_loss, answer_accuracy, ..."
        advice = (
            f"did you mean {close[0]}?" if close else f"one of its summary's metrics ({examples}) or lm_eval/<task>/<m>"
        )
        raise TrlmError(
            f"stage.objective.metric={metric!r} is not a figure a {stage.trainer.value} stage reports; {advice}"
        )
    held_out = data.eval_size > 0 or len(data.eval_sources) > 0
    base = metric.removeprefix("start_")
    generated = base in REPLY_METRICS
    if (metric.startswith("eval_") or generated) and not held_out:
        raise TrlmError(
            f"stage.objective.metric={metric} is measured on held-out rows, but data={data.name} holds none: "
            f"set data.eval_size (or data.eval_sources), or choose a training metric such as train_loss"
        )
    if generated and not stage.evaluation.generate:
        raise TrlmError(f"stage.objective.metric={metric} needs stage.evaluation.generate=true")
    if metric.startswith("lm_eval/") and metric.split("/")[1] not in stage.evaluation.lm_eval.tasks:
        raise TrlmError(f"stage.objective.metric={metric} needs its task in stage.evaluation.lm_eval.tasks "
                        f"(now {list(stage.evaluation.lm_eval.tasks)})")  # fmt: skip
    if stage.evaluation.lm_eval.tasks and importlib.util.find_spec("lm_eval") is None:
        raise TrlmError("stage.evaluation.lm_eval.tasks needs lm-evaluation-harness: pip install 'trlm[eval]'")
    if base == "think_format_rate" and not stage.think_tokens:
        raise TrlmError(f"stage.objective.metric={metric}: stage {stage.name} does not think (think_tokens=false)")


def check_config(cfg: DictConfig) -> None:
    from trlm.trainers import TRAINERS, check_stage_keys  # TRL: only once the config has passed the cheap checks

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise TrlmError(f"{', '.join(missing)} must be set (it is ??? in the composed config)")
    check_known_keys(cfg)
    check_ranges(cfg)
    layout.check_run_name(cfg.run.name)
    stage, recipe = cfg.stage, cfg.stage.recipe
    spec = TRAINERS[stage.trainer]
    choice("stage.recipe.loss_type", recipe.loss_type, spec.loss_types)
    check_stage_keys(stage)
    choice("stage.recipe.lr_scheduler_type", recipe.lr_scheduler_type, tuple(s.value for s in SchedulerType))
    if recipe.max_steps == -1 and recipe.num_train_epochs <= 0:
        raise TrlmError("stage.recipe: set num_train_epochs > 0 or max_steps >= 1")
    if (cfg.model.path is None) == (cfg.model.tiny is None):
        raise TrlmError(f"model {cfg.model.name}: set exactly one of model.path and model.tiny")
    if cfg.model.tiny is not None:
        check_tiny_shape(cfg.model.tiny)
    check_attention(cfg.hardware.attn_implementation)
    if cfg.tracking.mode is not None:
        choice("tracking.mode", cfg.tracking.mode, WANDB_MODES)
    for tracker in cfg.tracking.report_to:
        choice("tracking.report_to", tracker, TRACKERS)
    if cfg.data.kind != spec.data_kind:
        raise TrlmError(
            f"stage {stage.name} ({stage.trainer.value}) needs a {spec.data_kind.value} blend, "
            f"but data={cfg.data.name} holds {cfg.data.kind.value} rows"
        )
    if cfg.data.eval_size and cfg.data.eval_sources:
        raise TrlmError(f"data={cfg.data.name}: hold rows out by data.eval_size or data.eval_sources, not both")
    check_objective(cfg)


def check_tiny_shape(tiny: DictConfig) -> None:
    heads, kv_heads = tiny.num_attention_heads, tiny.num_key_value_heads
    if tiny.hidden_size % heads or heads % kv_heads:
        raise TrlmError(
            f"model.tiny: hidden_size ({tiny.hidden_size}) must be a multiple of num_attention_heads ({heads}), "
            f"and num_attention_heads of num_key_value_heads ({kv_heads})"
        )


def check_attention(name: str) -> None:
    """One transformers knows (a Hub kernel "org/repo" is its to judge), or `auto`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from trlm.padding_free import DOCUMENT_ATTENTION  # trlm's own, chosen by hardware.padding_free

    known = [key for key in ALL_ATTENTION_FUNCTIONS.valid_keys() if key != DOCUMENT_ATTENTION]
    if "/" not in name:
        choice("hardware.attn_implementation", name, ("auto", "eager", *known))


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
    if hardware.liger_kernel:
        if hardware.accelerator == Accelerator.cpu:  # Triton kernels: they would fail at the first step, not here
            raise TrlmError(f"{name} asks for Liger kernels (hardware.liger_kernel=true), which run on GPUs only")
        if importlib.util.find_spec("liger_kernel") is None:
            raise TrlmError(
                f"{name} asks for Liger kernels (hardware.liger_kernel=true): pip install -e '.[liger]' (liger-kernel)"
            )
    expected_ranks = hardware.devices_per_node * hardware.num_nodes
    if world_size() != expected_ranks:
        raise TrlmError(
            f"{name} expects {expected_ranks} ranks but this process group has {world_size()}; "
            f"launch with `torchrun --nproc-per-node {hardware.devices_per_node} train.py ...`, or tell the preset "
            f"(hardware.devices_per_node x hardware.num_nodes = {world_size()})"
        )

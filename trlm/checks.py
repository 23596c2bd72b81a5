"""Every check of a composed config, collected: `problems(cfg)` lists all that is wrong at once.

Run before anything is loaded or written, by `python train.py`, `trlm plan`, `trlm prepare` and the
sweeper's preflight (all through `trlm/stage_plan.py`), so a command with three mistakes is refused
once, naming the three. Every key a user can set is consumed or refused: `+key=value` additions
outside the schema, values out of the range their schema field declares (`trlm/config.py`),
settings the stage's trainer does not take, an objective the stage never computes. What TRL and
transformers accept is read from them (`trlm/library_facts.py`) without importing them here. Checks
that need the machine itself (a GPU, a model's real architecture) run when the stage starts, in
the same `Problem` form (`trlm/run.py`). Light: no torch, no transformers.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trlm import layout
from trlm.config import Range, RecipeConfig, StageConfig, TrainerKind
from trlm.errors import Problem
from trlm.library_facts import library_facts
from trlm.rewards import REWARDS, reward_problems
from trlm.scoring import REPLY_METRICS
from trlm.trainer_kinds import TRAINERS, kinds_taking

TRACKERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled", "shared")
MUST_BE_SET = "must be set (it is ??? in the composed config)"
DOCUMENT_ATTENTION = "trlm_documents"  # trlm's own (trlm/padding_free.py), chosen by hardware.padding_free


def defaults(schema: type) -> dict[str, Any]:
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(schema)}  # fmt: skip


STAGE_DEFAULTS, RECIPE_DEFAULTS = defaults(StageConfig), defaults(RecipeConfig)

Check = Callable[[DictConfig], Iterator[Problem]]


def problems(cfg: DictConfig) -> list[Problem]:
    """Every problem of a training config, in the order of its groups."""
    found = [*missing_values(cfg), *unknown_keys(cfg), *out_of_range(cfg)]
    if any(problem.rule == MUST_BE_SET for problem in found):
        return found  # the other checks read every value
    checks: tuple[Check, ...] = (run_settings, stage_settings, grpo_settings, peft_settings, model_settings,
                                 hardware_settings, tracking_settings, data_settings, objective_settings,
                                 trial_settings)  # fmt: skip
    for check in checks:
        found.extend(check(cfg))
    return found


def data_problems(cfg: DictConfig) -> list[Problem]:
    """`trlm prepare`: the blend's own settings, as training would check them."""
    return [*missing_values(cfg), *unknown_keys(cfg), *out_of_range(cfg)]


def choice(key: str, value: Any, valid: tuple[str, ...] | list[str]) -> Iterator[Problem]:
    if value not in valid:
        yield Problem(key, f"is not valid; choose one of: {', '.join(valid)}", repr(value))


# -- the schema's own rules: every value set, every key known, every number in its range ----------


def schema_nodes(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every config node typed by a trlm dataclass, with its dotted path."""
    if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
        yield prefix.rstrip("."), node
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        if not prefix and key == "hydra":  # Hydra's own section: Hydra checks it
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig | ListConfig) and not child._is_none() and not child._is_missing():
            yield from schema_nodes(child, f"{prefix}{key}.")


def missing_values(cfg: DictConfig) -> Iterator[Problem]:
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if not key.startswith("hydra."):  # Hydra fills its own ??? values for a job
            yield Problem(key, MUST_BE_SET)


def unknown_keys(cfg: DictConfig) -> Iterator[Problem]:
    """`+stage.learning_rate=…` adds a key Hydra accepts but trlm would never read: refuse it."""
    nodes = list(schema_nodes(cfg))
    known = [
        f"{path}.{f.name}".lstrip(".") for path, node in nodes for f in dataclasses.fields(OmegaConf.get_type(node))
    ]
    for path, node in nodes:
        fields = {f.name for f in dataclasses.fields(OmegaConf.get_type(node))}
        for key in node:
            if key not in fields and not (path == "" and key == "hydra"):
                alike = [p for p in known if p.rsplit(".", 1)[-1] == key]
                hint = f"did you mean {' or '.join(alike)}?" if alike else ""
                yield Problem(f"{path}.{key}".lstrip("."), "is not a trlm setting, so it would be ignored", hint=hint)


def out_of_range(cfg: DictConfig | Any, prefix: str = "") -> Iterator[Problem]:
    """Every number outside the range its schema field declares (`setting(..., range=...)`)."""
    for path, node in schema_nodes(cfg) if isinstance(cfg, DictConfig) else [(prefix, cfg)]:
        for field in dataclasses.fields(OmegaConf.get_type(node) if isinstance(node, DictConfig) else type(node)):
            rule: Range | None = field.metadata.get("range")
            value = OmegaConf.select(node, field.name) if isinstance(node, DictConfig) else getattr(node, field.name)
            if rule is not None and value is not None and not isinstance(value, bool) and not rule.admits(value):
                yield Problem(f"{path}.{field.name}".lstrip("."), f"is out of range: it must be {rule}", str(value))


# -- the groups' rules -------------------------------------------------------------------------


def run_settings(cfg: DictConfig) -> Iterator[Problem]:
    if not layout.RUN_NAME.fullmatch(cfg.run.name):
        yield Problem("run.name", layout.RUN_NAME_RULE, repr(cfg.run.name))
    previous = cfg.run.previous_trial
    if previous and not all(str(previous).rpartition("/")[::2]):
        yield Problem("run.previous_trial", "must be written <sweep>/<trial>", repr(previous))


def stage_settings(cfg: DictConfig) -> Iterator[Problem]:
    stage, recipe = cfg.stage, cfg.stage.recipe
    facts = library_facts()
    kind = stage.trainer.value
    fields = facts.config_fields[kind]
    yield from choice("stage.recipe.loss_type", recipe.loss_type, facts.loss_types[kind])
    yield from choice("stage.recipe.lr_scheduler_type", recipe.lr_scheduler_type, facts.schedulers)
    if recipe.max_steps == -1 and recipe.num_train_epochs <= 0:
        yield Problem("stage.recipe", "must train: set num_train_epochs > 0 or max_steps >= 1")
    # Every key the stage sets is one its trainer consumes: nothing is silently ignored.
    for key, value in recipe.items():
        if key in RECIPE_DEFAULTS and key not in fields and value != RECIPE_DEFAULTS[key]:
            takers = " / ".join(kinds_taking(key, facts.config_fields))
            yield Problem(f"stage.recipe.{key}", f"applies to {takers} stages only (this is a {kind} stage)")
    own = TRAINERS[stage.trainer].stage_keys
    for other in TRAINERS.values():
        for key in other.stage_keys.keys() - own.keys():
            if stage[key] != STAGE_DEFAULTS[key]:
                yield Problem(f"stage.{key}", f"applies to {other.kind.value} stages only (this is a {kind} stage)")
    unknown = sorted(set(stage.extra_args) - fields)
    if unknown:
        config_class = TRAINERS[stage.trainer].config_class
        yield Problem("stage.extra_args", f"names {unknown}, which are not arguments of {config_class}")


def grpo_settings(cfg: DictConfig) -> Iterator[Problem]:
    """A GRPO stage's rewards exist, and its batch splits into whole groups of completions. (beta admits 0
    for GRPO's sake — no KL term — but DPO's loss divides by nothing without it.)"""
    stage, recipe = cfg.stage, cfg.stage.recipe
    if stage.trainer == TrainerKind.dpo and recipe.beta is not None and recipe.beta <= 0:
        yield Problem("stage.recipe.beta", "is out of range for a DPO stage: it must be > 0", str(recipe.beta))
    if stage.trainer != TrainerKind.grpo:
        return
    names = [reward.name for reward in stage.rewards]
    if not names:
        yield Problem("stage.rewards", "is empty: a GRPO stage needs at least one reward",
                      hint=f"e.g. [{{name: answer_correct}}]; the rewards: {', '.join(REWARDS)}")  # fmt: skip
    yield from reward_problems(names)
    group = recipe.num_generations or 8  # TRL's default
    hardware = cfg.hardware
    batch = recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * hardware.devices_per_node * (
        hardware.num_nodes)  # fmt: skip
    if group >= 2 and batch % group:
        yield Problem("stage.recipe.num_generations", f"must divide the batch of completions a step ({batch}: "
                      "per_device_train_batch_size x gradient_accumulation_steps x ranks)", str(group))  # fmt: skip
    if stage.extra_args.get("use_vllm"):
        if cfg.hardware.accelerator.value == "cpu":
            yield Problem("stage.extra_args.use_vllm", "generates through vLLM, which needs a GPU", "true",
                          f"hardware={cfg.hardware.name} is a CPU preset: leave use_vllm out here")  # fmt: skip
        elif importlib.util.find_spec("vllm") is None:
            yield Problem("stage.extra_args.use_vllm", "generates through vLLM, which is not installed", "true",
                          'pip install -e ".[vllm]"')  # fmt: skip


def peft_settings(cfg: DictConfig) -> Iterator[Problem]:
    if cfg.peft.method.value != "none" and importlib.util.find_spec("peft") is None:
        yield Problem("peft", "trains low-rank adapters through the peft library, which is not installed",
                      cfg.peft.method.value, "pip install peft")  # fmt: skip


def model_settings(cfg: DictConfig) -> Iterator[Problem]:
    model = cfg.model
    if (model.path is None) == (model.tiny is None):
        yield Problem("model", f"{model.name}: set exactly one of model.path and model.tiny")
    tiny = model.tiny
    if tiny is not None:
        heads, kv_heads = tiny.num_attention_heads, tiny.num_key_value_heads
        if heads >= 1 and kv_heads >= 1 and (tiny.hidden_size % heads or heads % kv_heads):
            rule = (f"hidden_size ({tiny.hidden_size}) must be a multiple of num_attention_heads ({heads}), "
                    f"and num_attention_heads of num_key_value_heads ({kv_heads})")  # fmt: skip
            yield Problem("model.tiny", rule)


def hardware_settings(cfg: DictConfig) -> Iterator[Problem]:
    """An attention transformers knows (a Hub kernel "org/repo" is its to judge), or `auto`."""
    name = cfg.hardware.attn_implementation
    if "/" not in name:
        known = [key for key in library_facts().attention if key != DOCUMENT_ATTENTION]
        yield from choice("hardware.attn_implementation", name, ("auto", "eager", *known))
    if cfg.hardware.liger_kernel and cfg.hardware.accelerator.value == "cpu":
        yield Problem("hardware.liger_kernel", "asks for Liger kernels, which run on GPUs only",
                      hint=f"hardware={cfg.hardware.name} is a CPU preset")  # fmt: skip
    yield from gpu_share_settings(cfg.hardware)


def gpu_share_settings(hardware: Any) -> Iterator[Problem]:
    k, key = hardware.trials_per_gpu, "hardware.trials_per_gpu"
    if k <= 1:  # 1: a whole GPU; < 1: refused by its range
        return
    if hardware.devices_per_node * hardware.num_nodes != 1:
        yield Problem(key, "shares one GPU between single-GPU trials", str(k),
                      f"hardware={hardware.name} has {hardware.devices_per_node} x {hardware.num_nodes} GPUs a job; "
                      "use hardware=mi300x")  # fmt: skip
    if hardware.shards_per_gpu % k:
        yield Problem(key, f"must divide hardware.shards_per_gpu={hardware.shards_per_gpu} (each trial asks "
                           "shards_per_gpu / trials_per_gpu shards)", str(k))  # fmt: skip


def tracking_settings(cfg: DictConfig) -> Iterator[Problem]:
    if cfg.tracking.mode is not None:
        yield from choice("tracking.mode", cfg.tracking.mode, WANDB_MODES)
    for tracker in cfg.tracking.report_to:
        yield from choice("tracking.report_to", tracker, TRACKERS)


def data_settings(cfg: DictConfig) -> Iterator[Problem]:
    stage, data = cfg.stage, cfg.data
    wanted = TRAINERS[stage.trainer].data_kind
    if data.kind != wanted:
        yield Problem("data", f"holds {data.kind.value} rows, but stage {stage.name} ({stage.trainer.value}) needs a "
                              f"{wanted.value} blend", data.name)  # fmt: skip
    if data.eval_size and data.eval_sources:
        yield Problem("data", "holds rows out by data.eval_size and data.eval_sources: choose one", data.name)


def objective_settings(cfg: DictConfig) -> Iterator[Problem]:
    """The objective must be a figure the stage computes, or a sweep would optimise nothing."""
    stage, data, metric = cfg.stage, cfg.data, cfg.stage.objective.metric
    key = "stage.objective.metric"
    known = TRAINERS[stage.trainer].metrics_of([reward.name for reward in stage.rewards])
    if not metric.startswith("lm_eval/") and metric not in known:  # else found missing only after training
        close = difflib.get_close_matches(metric, known, n=1)
        examples = "one of its summary's metrics (eval_loss, train_loss, answer_accuracy, ...) or lm_eval/<task>/<m>"
        hint = f"did you mean {close[0]}?" if close else examples
        yield Problem(key, f"is not a figure a {stage.trainer.value} stage reports", repr(metric), hint)
        return
    held_out = data.eval_size > 0 or len(data.eval_sources) > 0
    base = metric.removeprefix("start_")
    generated = base in REPLY_METRICS
    if (metric.startswith("eval_") or generated) and not held_out:
        yield Problem(
            key,
            f"is measured on held-out rows, but data={data.name} holds none",
            metric,
            "set data.eval_size (or data.eval_sources), or choose a training metric such as train_loss",
        )
    if generated and not stage.evaluation.generate:
        yield Problem(key, "needs stage.evaluation.generate=true", metric)
    tasks = list(stage.evaluation.lm_eval.tasks)
    if metric.startswith("lm_eval/") and metric.split("/")[1] not in tasks:
        yield Problem(key, f"needs its task in stage.evaluation.lm_eval.tasks (now {tasks})", metric)
    if tasks and importlib.util.find_spec("lm_eval") is None:
        yield Problem("stage.evaluation.lm_eval.tasks", "needs lm-evaluation-harness", hint="pip install 'trlm[eval]'")
    if base == "think_format_rate" and not stage.think_tokens:
        yield Problem(key, f"names a think figure, but stage {stage.name} does not think (think_tokens=false)", metric)


def trial_settings(cfg: DictConfig) -> Iterator[Problem]:
    """A pruned trial reports its objective during training: only an eval_* figure is measured then."""
    optuna, metric = cfg.optuna, cfg.stage.objective.metric
    if optuna.storage is not None and optuna.number is not None and optuna.pruner and not metric.startswith("eval_"):
        yield Problem("stage.objective.metric", "is only measured at the end, but pruning needs an objective "
                      "measured during training (an eval_* metric)", metric,
                      "choose an eval_* objective, or set hydra.sweeper.pruner=null")  # fmt: skip


def sweeper_problems(conf: Any, schema: type) -> list[Problem]:
    """hydra.sweeper's own settings against their schema's ranges (`trlm plan` checks them too)."""
    found = []
    for field in dataclasses.fields(schema):
        rule: Range | None = field.metadata.get("range")
        value = conf.get(field.name)
        if rule is not None and value is not None and not rule.admits(value):
            found.append(Problem(f"hydra.sweeper.{field.name}", f"is out of range: it must be {rule}", str(value)))
    if conf.get("direction") not in (None, "minimize", "maximize"):
        found.append(Problem("hydra.sweeper.direction", "must be minimize, maximize or null (the objective's)",
                             str(conf.get("direction"))))  # fmt: skip
    return found

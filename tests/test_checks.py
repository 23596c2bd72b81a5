"""The config checks: every problem of a command at once, before anything loads; ranges from the schema."""

from __future__ import annotations

import dataclasses
import math
import re
import typing

import pytest

from trlm.checks import problems
from trlm.config import Range, TrainConfig
from trlm.machine import hardware_problems


def said(found) -> str:
    return "\n".join(str(problem) for problem in found)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["stage=sft", "stage.recipe.loss_type=apo_zero"], "nll, dft, chunked_nll"),  # TRL's own choices
        (["stage=dpo", "stage.recipe.loss_type=dft"], "apo_zero"),
        (["stage=sft", "stage.recipe.beta=0.1"], "beta applies to dpo / grpo stages only"),
        (["stage=dpo", "stage.recipe.packing=true"], "packing applies to sft stages only"),
        (["stage=sft", "stage.max_prompt_length=64"], "max_prompt_length applies to dpo stages only"),
        (["stage=dpo", "stage.assistant_only_loss=true"], "assistant_only_loss applies to sft stages only"),
        (["stage=sft", "stage.recipe.lr_scheduler_type=cosine_typo"], "cosine_with_min_lr"),
        (["stage=sft", "stage.recipe.per_device_train_batch_size=0"], "must be >= 1"),
        (["stage=sft", "stage.recipe.max_steps=-5"], r"max_steps=-5 is out of range: it must be -1 \(unset"),
        (["stage=sft", "stage.recipe.max_steps=0"], "max_steps=0 is out of range"),
        (["stage=sft", "stage.recipe.learning_rate=-1"], "learning_rate=-1.0 is out of range: it must be > 0"),
        (["experiment=demo", "data.sources.0.entries=-3"], r"data\.sources\.0\.entries=-3 is out of range"),
        (["stage=sft", "+stage.learning_rate=1e-4"], "stage.learning_rate is not a trlm setting.*stage.recipe"),
        (["stage=sft", "+stage.recipe.lerning_rate=1e-4"], "stage.recipe.lerning_rate is not a trlm setting"),
        (["stage=sft", "stage.system_prompt=???"], "stage.system_prompt must be set"),
        (["experiment=demo", "data.eval_size=0"], "eval_loss is measured on held-out rows"),
        (["experiment=demo", "stage.objective.metric=think_format_rate"], "does not think"),
        (
            ["experiment=demo", "stage.objective.metric=lm_eval/trlm_demo/answer_accuracy"],
            r"needs its task in stage.evaluation.lm_eval.tasks \(now \[\]\)",
        ),
        (
            [
                "experiment=demo",
                "stage=sft_think",
                "stage.objective.metric=answer_accuracy",
                "stage.evaluation.generate=false",
            ],
            "needs stage.evaluation.generate=true",
        ),
        (["stage=sft", "stage.objective.metric=eval_los"], "not a figure a sft stage reports; did you mean eval_loss"),
        (["stage=sft", "stage.objective.metric=rewards/margins"], "not a figure a sft stage reports"),
        (["stage=dpo", "stage.objective.metric=rewards/accuracy"], "did you mean rewards/accuracies"),
        (
            ["experiment=demo", "stage.objective.metric=think_leak_rate", "stage.evaluation.generate=false"],
            "needs stage.evaluation.generate=true",  # every reply metric, not just the two the presets name
        ),
        (
            ["hardware.attn_implementation=flash"],
            "attn_implementation='flash' is not valid; choose one of: auto, eager",
        ),
        (["model=tiny_llama", "model.tiny.hidden_size=0"], "model.tiny.hidden_size=0 is out of range"),
        (["model=tiny_llama", "model.tiny.hidden_size=130"], r"hidden_size \(130\) must be a multiple"),
        (["tracking=wandb", "tracking.mode=sometimes"], "tracking.mode='sometimes' is not valid"),
        (["stage=sft", "data=report/dpo"], "needs a conversation blend"),
        (["stage=dpo", "data=demo/sft"], "needs a preference blend"),
        (["tracking.report_to=[tensorbored]"], "wandb"),
        (["model=tiny_llama", "model.path=some/model"], "exactly one of"),
        (["experiment=demo", "stage=grpo", "stage.rewards=[]"], "is empty: a GRPO stage needs at least one reward"),
        (["experiment=demo", "stage=grpo", "stage.rewards=[{name: acc}]"], "choose one of: answer_correct"),
        (["experiment=demo", "stage=grpo", "stage.recipe.num_generations=5"], "must divide the batch of completions"),
        (["experiment=demo", "stage=grpo", "+stage.extra_args.use_vllm=true"], "vLLM, which needs a GPU"),
        (["stage=sft", "stage.recipe.num_generations=4"], "num_generations applies to grpo stages only"),
        (["stage=sft", "stage.rewards=[{name: think_format}]"], "rewards applies to grpo stages only"),
        (["stage=grpo", "data=report/dpo"], "needs a verifiable blend"),
        (
            ["experiment=demo", "stage=grpo", "stage.objective.metric=rewards/answer_corect/mean"],
            "did you mean rewards/answer_correct/mean",
        ),
        (["experiment=demo", "peft=lora", "peft.r=0"], "peft.r=0 is out of range"),
        (["stage=dpo", "stage.recipe.beta=0"], "beta=0.0 is out of range for a DPO stage"),
    ],
)
def test_bad_values_name_the_key_and_the_choices(compose_cfg, overrides, needle):
    found = problems(compose_cfg(*overrides))
    assert found and re.search(needle, said(found)), said(found)


def test_the_report_and_demo_configs_pass(compose_cfg):
    for experiment in ("report", "demo", "smollm2_demo"):
        for stage in ("sft", "sft_think", "dpo", "grpo"):
            assert problems(compose_cfg(f"experiment={experiment}", f"stage={stage}")) == []
            assert problems(compose_cfg(f"experiment={experiment}", f"stage={stage}", "peft=lora")) == []


def test_three_independent_mistakes_are_three_problems(compose_cfg):
    found = problems(compose_cfg("stage=sft", "stage.recipe.learning_rate=-1", "stage.recipe.max_steps=0",
                                 "data.seed=-3"))  # fmt: skip
    assert [p.key for p in found] == ["stage.recipe.max_steps", "stage.recipe.learning_rate", "data.seed"]


def schema_ranges(schema: type = TrainConfig, prefix: str = "") -> list[tuple[str, Range]]:
    """(key, range) of every ranged setting, walked from the schema itself (a list of sources: its first)."""
    hints = typing.get_type_hints(schema)
    found = []
    for field in dataclasses.fields(schema):
        path, hint = f"{prefix}{field.name}", hints[field.name]
        if "range" in field.metadata:
            found.append((path, field.metadata["range"]))
            continue
        nested = [t for t in typing.get_args(hint) or (hint,) if dataclasses.is_dataclass(t)]
        if nested:
            found += schema_ranges(nested[0], f"{path}.0." if typing.get_origin(hint) is list else f"{path}.")
    return found


# A config where every ranged key exists: the demo's tiny model, a source, a held-out source.
BASE = ("experiment=demo", "stage=sft", "data.eval_sources=[{name:trlm/demo/data/sft.jsonl}]", "data.eval_size=0")
RANGES = schema_ranges()


def out_of_range(found, key: str) -> list:
    return [p for p in found if p.key == key and "is out of range: it must be" in p.rule]


def test_every_ranged_setting_is_walked():
    keys = [key for key, _ in RANGES]
    assert {"stage.recipe.learning_rate", "data.sources.0.entries", "model.tiny.vocab_size"} <= set(keys)
    assert len(keys) == len(set(keys)) >= 40


@pytest.mark.parametrize(("key", "rule"), RANGES, ids=[key for key, _ in RANGES])
def test_each_range_admits_its_bound_and_refuses_past_it(compose_cfg, key, rule):
    """A value on each side of every range, through the real check: a renamed field keeps its check."""
    inside, outside = (rule.low + 1, rule.low) if rule.strict else (rule.low, rule.low - 1)
    assert not out_of_range(problems(compose_cfg(*BASE, f"{key}={inside:g}")), key)
    assert out_of_range(problems(compose_cfg(*BASE, f"{key}={outside:g}")), key)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused_where_nan_is(compose_cfg, value):
    found = problems(compose_cfg("stage=sft", f"stage.recipe.learning_rate={value}"))
    assert [p.key for p in found] == ["stage.recipe.learning_rate"] and not math.isfinite(float(value))


@pytest.mark.parametrize(("hardware", "needle"), [("mi300x", "needs a CUDA/ROCm GPU"), ("cuda", "hardware=cpu")])
def test_gpu_presets_on_a_cpu_machine(compose_cfg, hardware, needle):
    assert needle in said(hardware_problems(compose_cfg(f"hardware={hardware}").hardware))


def test_bf16_on_cpu_is_refused(compose_cfg):
    assert "bf16 on CPU" in said(hardware_problems(compose_cfg("hardware.precision=bf16").hardware))


def test_rank_count_must_match_the_preset(compose_cfg, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    found = said(hardware_problems(compose_cfg("hardware=cpu").hardware))
    assert re.search(r"expects 1 ranks but this process group has 2.*devices_per_node x .* = 2", found)

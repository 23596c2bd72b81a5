"""The recipe fingerprint guards what changes the weights, and only that."""

from __future__ import annotations

import pytest

from trlm.fingerprint import base_parts, differences, fingerprint, with_data
from trlm.lineage import StartPoint

DATA = {"sha256": "a" * 64, "eval_sha256": None, "rows": {"train": 10}, "too_long": {"policy": "truncate"}}
START = StartPoint("base", "tiny:tiny_llama")


@pytest.fixture
def parts(plan_for):
    def _parts(*overrides, data=DATA, start=START):
        plan = plan_for("experiment=demo", "stage=sft", *overrides)
        assert plan.fingerprint_parts == base_parts(plan.stage, plan.model, plan.hardware, plan.start)
        return with_data(base_parts(plan.stage, plan.model, plan.hardware, start), data)

    return _parts


@pytest.mark.parametrize(
    "override",
    [
        "stage.objective.metric=train_loss",
        "stage.objective.direction=maximize",
        "stage.evaluation.max_new_tokens=3",
        "stage.recipe.logging_steps=3",
        "stage.recipe.save_steps=7",
        "stage.description=other",
        "tracking=wandb",
    ],
)
def test_what_does_not_change_the_weights_keeps_the_fingerprint(parts, override):
    assert fingerprint(parts(override)) == fingerprint(parts())


def test_the_same_global_batch_split_differently_is_the_same_run(parts):
    assert fingerprint(parts("stage.recipe.per_device_train_batch_size=16",
                             "stage.recipe.gradient_accumulation_steps=2")) == fingerprint(parts())  # fmt: skip


@pytest.mark.parametrize(
    ("override", "part"),
    [
        ("stage.recipe.learning_rate=1e-5", "recipe"),
        ("stage.recipe.seed=3", "recipe"),
        ("stage.system_prompt=other", "recipe"),
        ("stage.recipe.gradient_accumulation_steps=2", "global_batch"),
        ("hardware.devices_per_node=8", "global_batch"),  # mi300x_node: 8x the global batch
        ("model.tiny.hidden_size=64", "model"),
    ],
)
def test_what_changes_the_weights_changes_its_part(parts, override, part):
    assert differences(parts(), parts(override)) == [part]


def test_data_and_start_are_parts(parts):
    assert differences(parts(), parts(data={**DATA, "sha256": "b" * 64})) == ["data"]
    assert differences(parts(), parts(start=StartPoint("base", "tiny:tiny_llama", fingerprint="x"))) == ["start"]

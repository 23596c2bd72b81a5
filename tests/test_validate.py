"""Semantic checks that run before anything loads."""

from __future__ import annotations

import pytest

from trlm.errors import TrlmError
from trlm.validate import check_config, check_hardware


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["stage=sft", "stage.recipe.loss_type=apo_zero"], "nll, dft, chunked_nll"),  # TRL's own choices
        (["stage=dpo", "stage.recipe.loss_type=dft"], "apo_zero"),
        (["stage=sft", "stage.recipe.beta=0.1"], "beta applies to dpo stages only"),
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
    ],
)
def test_bad_values_name_the_key_and_the_choices(compose_cfg, overrides, needle):
    with pytest.raises(TrlmError, match=needle):
        check_config(compose_cfg(*overrides))


def test_the_report_and_demo_configs_pass(compose_cfg):
    for experiment in ("report", "demo"):
        for stage in ("sft", "sft_think", "dpo"):
            check_config(compose_cfg(f"experiment={experiment}", f"stage={stage}"))


@pytest.mark.parametrize(("hardware", "needle"), [("mi300x", "needs a CUDA/ROCm GPU"), ("cuda", "hardware=cpu")])
def test_gpu_presets_on_a_cpu_machine(compose_cfg, hardware, needle):
    with pytest.raises(TrlmError, match=needle):
        check_hardware(compose_cfg(f"hardware={hardware}").hardware)


def test_bf16_on_cpu_is_refused(compose_cfg):
    with pytest.raises(TrlmError, match="bf16 on CPU"):
        check_hardware(compose_cfg("hardware.precision=bf16").hardware)


def test_rank_count_must_match_the_preset(compose_cfg, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrlmError, match=r"expects 1 ranks but this process group has 2.*devices_per_node x .* = 2"):
        check_hardware(compose_cfg("hardware=cpu").hardware)

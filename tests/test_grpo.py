"""stage=grpo on the tiny model: a step learns from the rewards and logs each of them; the plan counts generation."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import QUICK
from trlm import rewards
from trlm.config import TrainerKind
from trlm.records import Summary
from trlm.trainer_kinds import TRAINERS

GRPO = ("stage=grpo", "stage.previous=null", "stage.recipe.num_generations=4",
        "stage.recipe.per_device_train_batch_size=8", "stage.recipe.max_completion_length=12")  # fmt: skip


def even_tokens(think: bool, replies: rewards.Replies) -> rewards.Reward:
    """A reward an untrained model's samples differ on (the demo's rewards are all 0 for it: no advantage)."""

    def reward(completions, completion_ids, **_):
        return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]

    return reward


@pytest.mark.parametrize("beta", [0.0, 0.04])  # 0.04: a KL term, against a reference with the added think tokens
def test_a_grpo_step_changes_the_weights_and_logs_every_named_reward(plan_for, tmp_path, monkeypatch, beta):
    from datasets import Dataset

    from trlm.modeling import load_model, load_tokenizer, tiny_model_dir
    from trlm.trainers import build_trainer, training_arguments

    monkeypatch.setitem(rewards.REWARDS, "even_tokens", rewards.RewardSpec(even_tokens))
    names = ["answer_correct", "think_format", "even_tokens"]
    chosen = "[" + ", ".join(f"{{name: {n}}}" for n in names) + "]"
    plan = plan_for(*QUICK, *GRPO, "stage.recipe.max_steps=2", f"stage.rewards={chosen}", f"stage.recipe.beta={beta}",
                    f"paths.output_root={tmp_path}")  # fmt: skip
    source = str(tiny_model_dir(plan.model.tiny, tmp_path / "cache"))
    tokenizer = load_tokenizer(source, plan.stage)
    model = load_model(source, tokenizer, plan.hardware)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{i} + 2?"}], "answer": str(i + 2)}
                              for i in range(8)])  # fmt: skip
    trainer = build_trainer(plan, training_arguments(plan), model, tokenizer, rows, None, [])
    trainer.train()
    logged = trainer.state.log_history[0]
    assert {f"rewards/{name}/{stat}" for name in names for stat in ("mean", "std")} <= set(logged)
    assert 0 < logged["rewards/even_tokens/mean"] < 1 and logged["completions/mean_length"] > 0
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "no weight moved"
    if beta:  # the reference is the start policy, think tokens included (TRL would reload one without them)
        assert "kl" in logged and trainer.ref_model.get_input_embeddings().num_embeddings == len(tokenizer)
        reference = dict(trainer.ref_model.named_parameters())
        assert all(torch.equal(reference[name], before[name]) for name in before)


@pytest.mark.slow
def test_the_grpo_stage_runs_end_to_end_and_records_its_figures(run_cli, tmp_path):
    result = run_cli(*QUICK, *GRPO)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = Summary.load(tmp_path / "outputs" / "demo" / "grpo" / "summary.json")
    figures = {
        "answer_accuracy",
        "start_answer_accuracy",
        "reward",
        "completions/mean_length",
        "clip_ratio/region_mean",
    }
    named = {f"{split}rewards/{name}/{stat}" for split in ("", "eval_") for name in ("answer_correct", "think_format")
             for stat in ("mean", "std")}  # fmt: skip
    assert figures | named <= set(summary.metrics)
    # what an objective may name covers all the run reported (checked before training)
    assert set(summary.metrics) <= TRAINERS[TrainerKind.grpo].metrics_of(["answer_correct", "think_format"])


def test_the_plan_counts_generation_as_well_as_the_training_pass(plan_for, tmp_path):
    from trlm.data.prepare import prepare_blend
    from trlm.plan import describe_workload, workload

    def plan(*args):
        return plan_for(*QUICK, *GRPO, f"paths.output_root={tmp_path}", *args)

    prepare_blend(plan().data, plan().blends_dir)
    short, longer = workload(plan()), workload(plan("stage.recipe.max_completion_length=48"))
    assert short.generated_tokens == short.steps * 8 * 12 > 0  # steps x completions a step x their length
    assert longer.generated_tokens == 4 * short.generated_tokens
    # the training pass: every completion with its prompt
    assert longer.trained_tokens - short.trained_tokens == short.steps * 8 * (48 - 12)
    lines, _ = describe_workload(plan())
    assert any("4 a prompt" in line and f"{short.generated_tokens:,} sampled tokens" in line for line in lines)
    by_epoch = workload(plan("stage.recipe.max_steps=-1"))  # an epoch: each prompt sampled 4 times
    assert by_epoch.steps == -(-by_epoch.rows * 4 // 8)

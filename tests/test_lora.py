"""LoRA for every stage (peft=lora): only adapters train, final/ is the merged model, the adapter beside it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import QUICK
from trlm.records import RunRecord, Summary

LORA = ("peft=lora", "peft.r=4", "peft.lora_alpha=8")


def adapter_parameters(model: torch.nn.Module, rank: int) -> int:
    """What LoRA adds on every linear layer of the decoder: r x (in + out) weights each (A and B)."""
    linear = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in name]
    return sum(rank * (m.in_features + m.out_features) for m in linear)


@pytest.fixture
def quick_plan(plan_for, tmp_path):
    return lambda *args: plan_for(*QUICK, f"paths.output_root={tmp_path}", *args)


def trainer_of(plan, tmp_path):
    from datasets import Dataset

    from trlm.modeling import load_model, load_tokenizer, tiny_model_dir
    from trlm.trainers import build_trainer, training_arguments

    source = str(tiny_model_dir(plan.model.tiny, tmp_path / "cache"))
    tokenizer = load_tokenizer(source, plan.stage)
    model = load_model(source, tokenizer, plan.hardware)
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "1 + 2?"}],
                               "chosen": [{"role": "assistant", "content": "3"}],
                               "rejected": [{"role": "assistant", "content": "4"}],
                               "messages": [{"role": "user", "content": "1 + 2?"},
                                            {"role": "assistant", "content": "3"}], "answer": "3"}] * 4)  # fmt: skip
    columns = {"sft": ["messages"], "dpo": ["prompt", "chosen", "rejected"], "grpo": ["prompt", "answer"]}
    rows = rows.select_columns(columns[plan.stage.trainer.value])
    from trlm.trainers import added_token_ids

    # counted before peft wraps the model's layers; the stages after the first add <think> and </think> to the
    # base model, whose rows stay as initialised (TRL's fused LM head cannot read peft's trainable tokens)
    assert len(added_token_ids(model)) == (0 if plan.stage.name == "sft" else 2)
    expected = adapter_parameters(model, plan.peft.r)
    return build_trainer(plan, training_arguments(plan), model, tokenizer, rows, None, []), expected


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_only_the_adapters_train(quick_plan, tmp_path, stage):
    kl = ["stage.recipe.beta=0.04"] if stage == "grpo" else []  # GRPO with a KL term: a reference is needed
    plan = quick_plan(f"stage={stage}", "stage.previous=null", *LORA, *kl)
    trainer, expected = trainer_of(plan, tmp_path)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainable == expected > 0  # every linear layer of the decoder, MLPs included
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    assert frozen and all("lora_" not in name for name in frozen)
    if stage != "sft":  # the reference is the base with its adapters off: no second copy of the model
        assert getattr(trainer, "ref_model", None) is None


def test_the_plan_and_the_fingerprint_carry_the_adapters(quick_plan):
    full, lora = quick_plan("stage=sft"), quick_plan("stage=sft", *LORA)
    assert full.peft is None and lora.peft.r == 4 and "peft" not in full.fingerprint_parts
    assert lora.fingerprint_parts["peft"] != quick_plan("stage=sft", "peft=lora", "peft.r=8").fingerprint_parts["peft"]
    assert {k: v for k, v in lora.fingerprint_parts.items() if k != "peft"} == full.fingerprint_parts


@pytest.mark.slow
def test_a_lora_stage_saves_the_merged_model_and_the_adapter_and_the_next_stage_starts_from_it(run_cli, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run_cli(*QUICK, "stage=sft", "stage.evaluation.generate=false", *LORA)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    assert RunRecord.load(run_dir / "run.json").peft["r"] == 4
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final").eval()  # portable: no peft needed
    base_dir = RunRecord.load(run_dir / "run.json").start["resolved"]
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), run_dir / "adapter")
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter.eval()(ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits)
    after = run_cli(*QUICK, "stage=sft_think", "stage.evaluation.generate=false")  # full fine-tuning on the merge
    assert after.returncode == 0, after.stderr[-3000:]
    assert Summary.load(tmp_path / "outputs" / "demo" / "sft_think" / "summary.json").start["stage"] == "sft"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo"])  # GRPO's LoRA trainer: test_only_the_adapters_train
def test_the_later_stages_train_with_lora_and_save_merged_and_adapter(run_cli, tmp_path, stage):
    from transformers import AutoModelForCausalLM

    result = run_cli(*QUICK, f"stage={stage}", "stage.previous=null", "stage.recipe.beta=0.05", *LORA)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "demo" / stage
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert "answer_accuracy" in Summary.load(run_dir / "summary.json").metrics

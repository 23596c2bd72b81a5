"""Recipe + hardware -> TRL config, and the DPO prompt truncation TRL 1.x no longer does."""

from __future__ import annotations

import pytest
from datasets import Dataset
from trl import DPOConfig, SFTConfig

from tests.helpers import TINY, stage
from trlm.errors import TrlmError
from trlm.modeling import load_model, load_tokenizer
from trlm.records import read_jsonl
from trlm.stage_plan import hardware_arguments
from trlm.trainers import TrlmDPOTrainer, training_arguments


@pytest.fixture
def args_for(plan_for):
    return lambda *overrides: training_arguments(plan_for(*overrides))


def test_sft_report_recipe_reaches_trl_unchanged(args_for):
    args = args_for("stage=sft")
    assert isinstance(args, SFTConfig)
    assert (args.learning_rate, args.num_train_epochs, args.loss_type, args.max_length) == (3e-4, 3, "dft", 4096)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (32, 4)
    assert args.neftune_noise_alpha == 0.01 and args.warmup_steps == 0.1 and args.save_steps == 1500
    assert args.assistant_only_loss is False and args.packing is False
    assert args.bf16 is False and args.use_cpu is True  # hardware=cpu, against TRL's bf16 default


def test_dpo_report_recipe_reaches_trl_unchanged(args_for):
    args = args_for("stage=dpo")
    assert isinstance(args, DPOConfig)
    assert args.loss_type == ["apo_zero"] and args.beta == 0.1 and args.max_length == 2048
    assert args.lr_scheduler_type.value == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.max_grad_norm == 0.2 and args.learning_rate == 1e-5


@pytest.mark.parametrize(("overrides", "rows", "precomputed"), [
    ((), 10**6, True),                                                      # the report: one epoch, every row read
    (("experiment=demo",), 4800, True),                                     # 300 steps x 16 read every row
    (("experiment=demo",), 4801, False),                                    # ... but not one more: on the fly
    (("experiment=demo", "stage.recipe.precompute_ref_log_probs=true"), 10**6, True),
    (("stage.recipe.precompute_ref_log_probs=false",), 10, False),
])  # fmt: skip
def test_dpo_reference_log_probs_are_precomputed_when_every_row_is_read(plan_for, overrides, rows, precomputed):
    from trlm.trainers import precompute_reference

    plan = plan_for("stage=dpo", *overrides)
    setting = plan.stage.recipe.precompute_ref_log_probs
    assert precompute_reference(setting, training_arguments(plan), rows) is precomputed


def test_extra_args_pass_through_and_are_checked(args_for):
    args = args_for("stage=sft", "+stage.extra_args.packing=true")
    assert args.packing is True
    with pytest.raises(TrlmError, match=r"not arguments of trl\.SFTConfig"):
        args_for("stage=sft", "+stage.extra_args.beta=0.3")


def test_dpo_keeps_the_last_max_prompt_length_prompt_tokens(compose_cfg, args_for, tmp_path):
    from trlm.modeling import tiny_model_dir

    model_dir = tiny_model_dir(TINY, tmp_path / "cache")
    tokenizer = load_tokenizer(str(model_dir), stage(think=True))
    model = load_model(str(model_dir), tokenizer, compose_cfg().hardware)
    long_prompt = "What is " + " + ".join(["1"] * 40) + "?"
    rows = Dataset.from_list(
        [
            {
                "chosen": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "40"}],
                "rejected": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "41"}],
            }
        ]
    )
    args = args_for("stage=dpo", "experiment=demo", "stage.max_prompt_length=16", f"paths.output_root={tmp_path}")
    full = TrlmDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    cut = TrlmDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, max_prompt_length=16)
    full_prompt, cut_prompt = full.train_dataset[0]["prompt_ids"], cut.train_dataset[0]["prompt_ids"]
    assert len(full_prompt) > 16 and len(cut_prompt) == 16
    assert cut_prompt == full_prompt[-16:]  # the end of the prompt, where the question meets the reply
    assert cut.train_dataset[0]["chosen_ids"] == full.train_dataset[0]["chosen_ids"]


def test_gpu_preset_knobs_reach_trl_and_auto_attention_is_sdpa_without_flash_attn(compose_cfg, args_for):
    from trlm.modeling import attention_implementation

    args = args_for("stage=sft", "hardware.torch_compile=true")
    assert args.torch_compile is True and args.use_liger_kernel is False
    cuda = compose_cfg("hardware=cuda").hardware
    assert cuda.attn_implementation == "auto" and cuda.optim == "adamw_torch_fused" and cuda.precision == "bf16"
    assert attention_implementation(cuda) == "sdpa"  # no flash-attn kernels installed here
    assert hardware_arguments(cuda)["dataloader_persistent_workers"] is True
    cuda.dataloader_num_workers = 0  # torch refuses persistent workers where there are none
    assert hardware_arguments(cuda)["dataloader_persistent_workers"] is False


def test_liger_kernels_on_cpu_are_refused_before_training(plan_for):
    with pytest.raises(TrlmError, match="GPUs only"):
        plan_for("hardware.liger_kernel=true")


def test_liger_kernels_asked_for_but_not_installed_is_one_clear_line(compose_cfg, monkeypatch):
    import torch

    from trlm.machine import hardware_problems

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine without liger-kernel
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    hardware = compose_cfg("hardware=cuda", "hardware.liger_kernel=true").hardware
    assert "pip install -e '.[liger]'" in " ".join(str(p) for p in hardware_problems(hardware))


@pytest.mark.slow
def test_sweep_trials_that_share_a_start_and_a_blend_share_the_reference_pass(run_cli, tmp_path):
    result = run_cli("-m", "experiment=demo", "stage=dpo", "stage.previous=null", "stage.recipe.max_steps=1",
                     "stage.recipe.precompute_ref_log_probs=true", "stage.evaluation.generate=false",
                     "stage.recipe.learning_rate=1e-4,2e-4", "run.sweep=ref", "hardware.cpu_threads=1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cached = sorted((tmp_path / "outputs" / ".cache" / "ref_logps").glob("*.pt"))
    assert len(cached) == 2  # train and eval rows: computed once, by the first trial
    first, second = sorted((tmp_path / "outputs" / "demo" / "sweeps" / "ref" / "dpo").glob("*learning_rate*"))
    assert "from the cache" not in (first / "train.log").read_text()
    assert (second / "train.log").read_text().count("from the cache") == 2
    # apo_zero at the first step, policy == reference: loss exactly 1 and rewards 0 — only if the cached
    # log-probs are the reference's own for these very rows, in this order
    step = next(row for row in read_jsonl(second / "metrics.jsonl") if "loss" in row)
    assert step["loss"] == pytest.approx(1.0, abs=1e-4)
    assert step["rewards/chosen"] == pytest.approx(0.0, abs=1e-4) == step["rewards/rejected"]


def test_a_reference_log_prob_cache_entry_is_used_only_when_whole(tmp_path, caplog):
    import torch

    from trlm.fsutil import atomic_write_text, sha256_of
    from trlm.trainers import REF_COLUMNS, cached_columns

    path = tmp_path / "key.pt"
    torch.save({key: torch.arange(4.0) for key in REF_COLUMNS}, path)
    assert cached_columns(path, 4) is None  # no sha256 recorded beside it (a foreign or older file)
    atomic_write_text(path.with_suffix(".sha256"), sha256_of(path))
    assert torch.equal(cached_columns(path, 4)["ref_chosen_logps"], torch.arange(4.0))
    assert cached_columns(path, 5) is None  # another row count: not this dataset's pass
    path.write_bytes(path.read_bytes()[:-7])  # a torn entry
    assert cached_columns(path, 4) is None and "computing it again" in caplog.text

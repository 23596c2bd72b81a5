"""Composition of every group combination, the report's recipe values, and schema validation."""

from __future__ import annotations

import itertools

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from trlm.errors import TrlmError
from trlm.paths import CONF_DIR
from trlm.trainer_kinds import TRAINERS

STAGES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF_DIR / "hardware").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

# The report's Tables 4-6 (and the reference notes for the save cadence), written out independently.
REPORT = {
    "sft": dict(num_train_epochs=3, per_device_train_batch_size=32, gradient_accumulation_steps=4,
                gradient_checkpointing=True, learning_rate=3e-4, weight_decay=0.01, warmup_steps=0.1,
                max_grad_norm=1.0, loss_type="dft", max_length=4096, lr_scheduler_type="cosine",
                neftune_noise_alpha=0.01, save_steps=1500),
    "sft_think": dict(num_train_epochs=1, per_device_train_batch_size=32, gradient_accumulation_steps=4,
                      gradient_checkpointing=True, learning_rate=3e-4, weight_decay=0.02, warmup_steps=0.1,
                      max_grad_norm=1.0, loss_type="nll", max_length=4096, lr_scheduler_type="cosine",
                      neftune_noise_alpha=0.02, save_steps=300),
    "dpo": dict(num_train_epochs=1, per_device_train_batch_size=32, gradient_accumulation_steps=4,
                gradient_checkpointing=True, learning_rate=1e-5, weight_decay=0.01, warmup_steps=0.1,
                max_grad_norm=0.2, beta=0.1, loss_type="apo_zero", max_length=2048,
                lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1}, save_steps=180),
}  # fmt: skip


def test_groups_have_the_options_the_brief_names():
    assert {"sft", "sft_think", "dpo", "grpo"} <= set(STAGES)
    assert {"cpu", "cuda", "mi300x", "mi300x_node"} <= set(HARDWARE)
    assert {"report", "demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize(("stage", "hardware", "experiment"), itertools.product(STAGES, HARDWARE, EXPERIMENTS))
def test_every_combination_composes_and_resolves(compose_cfg, stage, hardware, experiment):
    cfg = compose_cfg(f"stage={stage}", f"hardware={hardware}", f"experiment={experiment}")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.stage.name == stage
    assert cfg.hardware.name == hardware
    assert cfg.run.name == experiment
    assert cfg.data.kind == TRAINERS[cfg.stage.trainer].data_kind  # each stage's blend is its trainer's kind


@pytest.mark.parametrize("stage", sorted(REPORT))
@pytest.mark.parametrize("hardware", HARDWARE)
def test_report_recipe_is_tables_4_to_6_on_every_hardware(compose_cfg, stage, hardware):
    recipe = compose_cfg(f"stage={stage}", f"hardware={hardware}").stage.recipe
    for key, value in REPORT[stage].items():
        assert recipe[key] == value, key


def test_dpo_prompt_length_and_lineage(compose_cfg):
    cfg = compose_cfg("stage=dpo")
    assert cfg.stage.max_prompt_length == 1048
    assert [compose_cfg(f"stage={s}").stage.previous for s in ("sft", "sft_think", "dpo")] == [None, "sft", "sft_think"]


def test_default_is_the_report(compose_cfg):
    cfg = compose_cfg()
    assert cfg.experiment == "report"
    assert cfg.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg.data.name == "Shekswess/trlm-sft-stage-1-final-2"
    assert cfg.stage.assistant_only_loss is False  # the report trains on the whole sequence


def test_demo_changes_model_data_and_recipe_but_keeps_the_schedule_shape(compose_cfg):
    demo, report = compose_cfg("experiment=demo", "stage=dpo"), compose_cfg("stage=dpo")
    assert demo.model.tiny is not None and demo.data.sources[0].name.endswith(".jsonl")
    assert demo.stage.recipe.max_steps > 0
    assert demo.stage.recipe.loss_type == report.stage.recipe.loss_type == "apo_zero"


@pytest.mark.parametrize("stage", STAGES)
def test_recipe_keys_are_trl_arguments(stage):
    from trlm.library_facts import library_facts

    preset = OmegaConf.load(CONF_DIR / "stage" / f"{stage}.yaml")
    assert set(preset.recipe) <= library_facts().config_fields[preset.trainer]


def test_the_tiny_tokenizer_learns_every_stages_system_prompt(compose_cfg):
    texts = compose_cfg("experiment=demo").model.tiny.tokenizer_texts
    assert sorted(texts) == sorted({compose_cfg(f"stage={stage}").stage.system_prompt for stage in STAGES})


def test_the_report_grpo_stage_maximises_greedy_accuracy_on_gsm8ks_test_split(compose_cfg):
    cfg = compose_cfg("stage=grpo")
    assert cfg.stage.objective.metric == "answer_accuracy" and cfg.stage.objective.direction.value == "maximize"
    assert [s.split for s in cfg.data.eval_sources] == ["test"] and [s.split for s in cfg.data.sources] == ["train"]


@pytest.mark.parametrize("stage", ["sft", "sft_think", "dpo"])
def test_report_objectives_are_evaluation_figures(compose_cfg, stage):
    cfg = compose_cfg(f"stage={stage}")
    assert cfg.stage.objective.metric.startswith("eval_")
    assert cfg.data.eval_sources and cfg.data.eval_size == 0  # held out past the caps: training rows untouched
    for held_out in cfg.data.eval_sources:
        trained = next(s for s in cfg.data.sources if (s.subset, s.split) == (held_out.subset, held_out.split))
        assert held_out.skip == trained.entries  # the rows just past the training cap


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("stage.recipe.lerning_rate=1", "lerning_rate"),
        ("stage.recipe.learning_rate=fast", "learning_rate"),
        ("hardware.precision=fp8", "fp32"),
        ("stage=pretrain", "stage/pretrain"),
        ("hardware=tpu", "hardware/tpu"),
        ("experiment=paper", "experiment/paper"),
    ],
)
def test_schema_rejects_bad_values_at_composition(compose_cfg, override, needle):
    with pytest.raises(TrlmError, match="the command does not compose") as raised:
        compose_cfg(override)
    assert needle in str(raised.value)


def test_structured_types_apply_to_yaml_groups(compose_cfg):
    cfg = compose_cfg("stage=dpo")
    with pytest.raises(ConfigAttributeError):
        cfg.stage.recipe.not_a_field = 1
    with pytest.raises(ValidationError):
        cfg.stage.recipe.learning_rate = "fast"

"""The run-directory layout: one definition, read by Hydra (resolvers) and lineage alike."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from trlm import layout
from trlm.compose import register_resolvers
from trlm.paths import CONF_DIR


def hydra_dirs(*overrides: str, multirun: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    return cfg.hydra


def test_single_run_directory_is_the_layouts(tmp_path):
    hydra = hydra_dirs("experiment=demo", "stage=dpo", f"paths.output_root={tmp_path}")
    assert hydra.run.dir == str(layout.run_dir(tmp_path, "demo", "dpo")) == str(tmp_path / "demo" / "dpo")


def test_sweep_directory_is_named_by_the_sweep_not_a_counter(tmp_path):
    hydra = hydra_dirs("experiment=demo", "stage=sft", f"paths.output_root={tmp_path}", "run.sweep=lr-v2")
    assert hydra.sweep.dir == str(tmp_path / "demo" / "sweeps" / "lr-v2" / "sft")


def test_trial_names(tmp_path):
    assert layout.trial_name(7) == "7"
    assert layout.trial_name(None, "stage.recipe.learning_rate:0.001") == "stage.recipe.learning_rate:0.001"
    assert layout.trial_name(None, "") == layout.SINGLE_TRIAL
    assert "/" not in layout.trial_name(None, "data.sources=[{name:/x/y.jsonl}]")
    assert layout.trial_dir(tmp_path, "demo", "sft", "s", 3) == tmp_path / "demo" / "sweeps" / "s" / "sft" / "3"


def test_the_trial_subdir_resolver_prefers_the_sweepers_trial_number(tmp_path):
    register_resolvers()
    cfg = OmegaConf.create({"trial": None, "o": "a:1+b:2", "d": "${trlm.trial:${trial},${o}}"})
    assert cfg.d == "a:1+b:2"
    cfg.trial = 12
    assert cfg.d == "12"

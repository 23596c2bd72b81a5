"""Tracking settings reach W&B through its environment and TRL's report_to."""

from __future__ import annotations

import os

import pytest

from trlm import tracking


def test_none_reports_nowhere(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = compose_cfg("tracking=none")
    tracking.configure(cfg, tmp_path)
    assert tracking.report_to(cfg) == ["none"] and "WANDB_PROJECT" not in os.environ


def test_wandb_groups_stages_of_one_experiment(compose_cfg, monkeypatch, tmp_path):
    for key in ("WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_MODE", "WANDB_ENTITY", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    cfg = compose_cfg("tracking=wandb", "experiment=demo", "stage=dpo", "tracking.mode=offline")
    tracking.configure(cfg, tmp_path)
    assert tracking.report_to(cfg) == ["wandb"]
    assert os.environ["WANDB_PROJECT"] == "trlm" and os.environ["WANDB_RUN_GROUP"] == "demo"
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_TAGS"].startswith("dpo,cpu")
    assert "WANDB_ENTITY" not in os.environ and os.environ["WANDB_DIR"] == str(tmp_path)


@pytest.mark.slow
def test_an_offline_wandb_run_lands_in_the_run_directory(run_cli, tmp_path):
    args = ["tracking=wandb", "tracking.mode=offline", "stage.recipe.max_steps=2", "stage.evaluation.generate=false"]
    result = run_cli("experiment=demo", "stage=sft", *args)  # tracking.mode wins over the runner's WANDB_MODE
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and (run_dir / "summary.json").exists()

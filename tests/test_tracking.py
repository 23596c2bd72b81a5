"""Tracking settings reach W&B through its environment and TRL's report_to."""

from __future__ import annotations

import os

from trlm import tracking


def test_none_reports_nowhere(compose_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    cfg = compose_cfg("tracking=none")
    tracking.configure(cfg)
    assert tracking.report_to(cfg) == ["none"] and "WANDB_PROJECT" not in os.environ


def test_wandb_groups_stages_of_one_experiment(compose_cfg, monkeypatch):
    for key in ("WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_MODE", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    cfg = compose_cfg("tracking=wandb", "experiment=demo", "stage=dpo", "tracking.mode=offline")
    tracking.configure(cfg)
    assert tracking.report_to(cfg) == ["wandb"]
    assert os.environ["WANDB_PROJECT"] == "trlm" and os.environ["WANDB_RUN_GROUP"] == "demo"
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_TAGS"].startswith("dpo,cpu")
    assert "WANDB_ENTITY" not in os.environ

"""Experiment tracking: W&B is configured through its environment variables, one W&B run per trlm run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig


def report_to(cfg: DictConfig) -> list[str]:
    trackers = [t for t in cfg.tracking.report_to if t != "none"]
    return trackers or ["none"]


def configure(cfg: DictConfig, run_dir: Path) -> None:
    if "wandb" not in cfg.tracking.report_to:
        return
    settings = {
        "WANDB_DIR": str(run_dir),  # W&B's local files (offline runs too) live with the run
        "WANDB_PROJECT": cfg.tracking.project,
        "WANDB_ENTITY": cfg.tracking.entity,
        "WANDB_MODE": cfg.tracking.mode,
        "WANDB_RUN_GROUP": cfg.run.name,  # the stages of one experiment side by side
        "WANDB_TAGS": ",".join([cfg.stage.name, cfg.hardware.name, *cfg.tracking.tags]),
    }
    os.environ.update({key: str(value) for key, value in settings.items() if value is not None})


def finish() -> None:
    """Closes the W&B run so the next job of a multirun starts its own instead of merging into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()

"""Shared fixtures: Hydra `compose()` over the real conf/ tree, and a CLI runner for train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from trlm.config import register_configs
from trlm.paths import CONF_DIR, PROJECT_ROOT

register_configs()


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=list(overrides))

    return _compose


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Runs `python train.py ARGS` with outputs under a temporary root, offline."""

    def _run(*args: str, root: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600):
        root = root or tmp_path / "outputs"
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
        return subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "train.py"), f"paths.output_root={root}", *args],
            cwd=tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run

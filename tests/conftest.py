"""Shared fixtures: `compose()` / `plan_stage()` over the real conf/ tree, and a CLI runner for train.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from trlm.compose import compose
from trlm.paths import PROJECT_ROOT
from trlm.stage_plan import StagePlan, plan_stage


@pytest.fixture(scope="session")  # stateless: module- and session-scoped fixtures may use it too
def compose_cfg() -> Callable[..., DictConfig]:
    """The config `python train.py ARGS` composes (trlm.compose, as every command composes)."""

    def _compose(*args: str) -> DictConfig:
        return compose(list(args))

    return _compose


@pytest.fixture(scope="session")
def plan_for() -> Callable[..., StagePlan]:
    """The plan of `python train.py ARGS` (a previous stage not run yet: planned as it will start)."""

    def _plan(*args: str) -> StagePlan:
        return plan_stage(compose(list(args)), lineage_pending=True)

    return _plan


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Runs `python train.py ARGS` with outputs under a temporary root, offline."""

    def _run(
        *args: str,
        root: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: int = 600,
        launcher: tuple[str, ...] = (sys.executable,),
    ):
        root = root or tmp_path / "outputs"
        flags = [a for a in args if a in ("-m", "--multirun")]  # argparse wants them before the overrides
        overrides = [a for a in args if a not in flags]
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
        return subprocess.run(
            [*launcher, str(PROJECT_ROOT / "train.py"), *flags, f"paths.output_root={root}", *overrides],
            cwd=tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return _run


@pytest.fixture
def train_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`python train.py ARGS` in this process, for commands refused before training: the same entry point
    as `run_cli` without a new interpreter's few seconds of imports (a refusal then takes milliseconds)."""

    def _run(*args: str, root: Path | None = None) -> subprocess.CompletedProcess:
        from trlm.cli import train_main

        flags = [a for a in args if a in ("-m", "--multirun")]  # argparse wants them before the overrides
        overrides = [a for a in args if a not in flags]
        output_root = f"paths.output_root={root or tmp_path / 'outputs'}"
        monkeypatch.setattr(sys, "argv", ["train.py", *flags, output_root, *overrides])
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("WANDB_MODE", "disabled")
        root_logger = logging.getLogger()
        handlers, level = list(root_logger.handlers), root_logger.level
        try:
            train_main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        finally:  # Hydra configured logging for the job: give the next test the logging it had
            root_logger.handlers[:], root_logger.level = handlers, level
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)

    return _run


def pytest_configure(config: pytest.Config) -> None:
    """Under `pytest -n N` the cores are split between the workers: each worker and every process it
    starts (OMP_NUM_THREADS is inherited) gets cores / N torch threads. Two torch processes with the
    default thread count on the same cores slow each other several-fold."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--pinned-print", action="store_true", help="print the pinned figures a run measured")

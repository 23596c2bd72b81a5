"""A run's directory: its files, how a finished run is told from a half-written one, its callbacks.

    <run dir>/                 (where: trlm/layout.py)
      .hydra/            config.yaml (as composed) and overrides.yaml of the command that did the work
      run.json           what the run is: fingerprint and its parts, start model, data hashes, git, hardware
      train.log          the run's log lines (appended by each process that works on it)
      metrics.jsonl      one line per logged step (loss, lr, grad norm, accuracy, entropy, rewards)
      checkpoints/       TRL checkpoints; a complete one holds trlm's marker file
      final/             the final model + tokenizer (`from_pretrained` loads it)
      eval_samples.jsonl sampled replies behind the generation metrics
      summary.json       final figures; written last, so its presence means "finished"
      .lock              while a process works on the run: its host and pid

The Trainer callbacks that write some of these files are in trlm/callbacks.py. Files are written by
rank 0 only, each atomically (temporary name, then rename), and only by a command that does work
on the run: a refused command leaves the directory as it found it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from trlm.distributed import is_main_process
from trlm.fsutil import atomic_write_text
from trlm.paths import PROJECT_ROOT
from trlm.records import Summary

SUMMARY, RUN_RECORD, METRICS, FINAL = "summary.json", "run.json", "metrics.jsonl", "final"
CHECKPOINTS, LOCK, LOG_FILE = "checkpoints", ".lock", "train.log"
COMPLETE_MARKER = "trlm_complete"  # written into a checkpoint once TRL has saved all of it
CHECKPOINT_PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR: checkpoint-<step>

log = logging.getLogger(__name__)


def is_finished(run_dir: Path) -> bool:
    summary = Summary.load(run_dir / SUMMARY)
    return summary is not None and summary.status == "completed" and (run_dir / FINAL / "config.json").exists()


def has_progress(run_dir: Path) -> bool:
    """Whether the directory holds work worth protecting: a finished run or a complete checkpoint."""
    return is_finished(run_dir) or latest_complete_checkpoint(run_dir / CHECKPOINTS, clean=False) is not None


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def is_complete_checkpoint(path: Path) -> bool:
    if not (path / COMPLETE_MARKER).exists():
        return False
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def latest_complete_checkpoint(checkpoints: Path, clean: bool = True) -> Path | None:
    """The newest complete checkpoint; incomplete ones (a kill or a full disk mid-save) are skipped,
    and with `clean` removed, so that TRL neither resumes from nor rotates around them."""
    if not checkpoints.is_dir():
        return None
    found = sorted(checkpoints.glob(f"{CHECKPOINT_PREFIX}-*"), key=checkpoint_step, reverse=True)
    for path in found:
        if is_complete_checkpoint(path):
            return path
        if clean:  # the resume acting on it says so; a mere look (has_progress) stays quiet
            log.warning("skipping incomplete checkpoint %s (cut short while saving)", path)
            if is_main_process():
                shutil.rmtree(path, ignore_errors=True)
    return None


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    return {"sha": sha, "dirty": bool(git("status", "--porcelain")) if sha else None}


def save_command_records(run_dir: Path, config_yaml: str, overrides: tuple[str, ...] | list[str]) -> None:
    """`.hydra/config.yaml` and `overrides.yaml`, as Hydra writes them, by the command doing the work."""
    from omegaconf import OmegaConf

    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(hydra_dir / "config.yaml", config_yaml)
    atomic_write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))

"""A run's directory: its files, how a finished run is told from a half-written one, its callbacks.

    <run dir>/                 (where: trlm/layout.py)
      .hydra/            config.yaml (as composed) and overrides.yaml of the command that did the work
      run.json           what the run is: fingerprint and its parts, start model, data hashes, git, hardware
      train.log          the run's log lines (appended by each process that works on it)
      metrics.jsonl      one line per logged step (loss, lr, grad norm, accuracy, entropy, rewards)
      checkpoints/       TRL checkpoints; a complete one holds trlm's marker file
      final/             the final model + tokenizer (`from_pretrained` loads it; a LoRA stage's merged)
      adapter/           a LoRA stage's adapter alone (peft's `PeftModel.from_pretrained` loads it)
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
from trlm.fsutil import atomic_write_text, fsync_path, sha256_of
from trlm.paths import PROJECT_ROOT
from trlm.records import Summary

SUMMARY, RUN_RECORD, METRICS, FINAL = "summary.json", "run.json", "metrics.jsonl", "final"
CHECKPOINTS, LOCK, LOG_FILE = "checkpoints", ".lock", "train.log"
ADAPTER = "adapter"  # a LoRA stage's adapter, beside final/ (which holds the merged model)
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


def mark_complete(path: Path, step: int) -> None:
    """Marks a saved checkpoint complete: its files flushed to the disk first, then the marker, which
    records each file's size and sha256 so that a resume can tell the files are the ones saved."""
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
        fsync_path(file)
        files[str(file.relative_to(path))] = {"size": file.stat().st_size, "sha256": sha256_of(file)}
    atomic_write_text(path / COMPLETE_MARKER, json.dumps({"step": step, "files": files}, indent=1) + "\n")


def checkpoint_problem(path: Path, verify: bool = True) -> str | None:
    """Why a checkpoint cannot be resumed from (None: it can). Without `verify`, the marker alone counts."""
    marker = read_json(path / COMPLETE_MARKER)
    if marker is None:
        return "no completion marker: cut short while saving"
    if read_json(path / "trainer_state.json") is None:
        return "its trainer_state.json is unreadable"
    for name, recorded in (marker.get("files") or {}).items() if verify else ():  # older markers: no files listed
        file = path / name
        if not file.is_file() or file.stat().st_size != recorded["size"]:
            return f"{name} is missing or not the size it was saved at"
        if sha256_of(file) != recorded["sha256"]:
            return f"{name} does not match the sha256 it was saved with"
    return None


def latest_complete_checkpoint(checkpoints: Path, clean: bool = True) -> Path | None:
    """The newest complete checkpoint whose files are the ones saved; others (a kill, a full disk or a
    power loss mid-save, a file changed since) are skipped with a log line and, with `clean`, removed,
    so that TRL neither resumes from nor rotates around them. Without `clean`: a look, by the marker."""
    if not checkpoints.is_dir():
        return None
    found = sorted(checkpoints.glob(f"{CHECKPOINT_PREFIX}-*"), key=checkpoint_step, reverse=True)
    for path in found:
        problem = checkpoint_problem(path, verify=clean)
        if problem is None:
            return path
        if clean:  # the resume acting on it says so; a mere look (has_progress) stays quiet
            log.warning("skipping incomplete checkpoint %s: %s", path, problem)
            if is_main_process():
                shutil.rmtree(path, ignore_errors=True)
    return None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when it is missing, unreadable, not UTF-8 or not an object."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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

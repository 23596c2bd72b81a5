"""A run's directory: what it records, and how a finished run is told from a half-written one.

    outputs/<run.name>/<stage>/
      .hydra/            resolved config, overrides (written by Hydra)
      run.json           git sha, data hash, start model, recipe fingerprint, world size, versions
      metrics.jsonl      one line per logged step (loss, lr, grad norm, accuracy, entropy, rewards)
      checkpoints/       TRL checkpoints, for resuming
      final/             the final model + tokenizer (`from_pretrained` loads it)
      eval_samples.jsonl sampled replies behind the generation metrics
      summary.json       final figures; written last, so its presence means "finished"

Files are written by rank 0 only, each atomically (temporary name, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trlm.paths import PROJECT_ROOT

SUMMARY, RUN_RECORD, METRICS, FINAL = "summary.json", "run.json", "metrics.jsonl", "final"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_json(path: Path, payload: dict[str, Any]) -> None:
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    staging.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_finished(run_dir: Path) -> bool:
    summary = read_json(run_dir / SUMMARY)
    return bool(summary) and summary.get("status") == "completed" and (run_dir / FINAL / "config.json").exists()


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    return {"sha": sha, "dirty": bool(git("status", "--porcelain")) if sha else None}


def recipe_fingerprint(cfg: DictConfig) -> str:
    """What must match for a run directory to be resumed: everything but hardware, tracking, run flags."""
    recipe = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("stage", "data", "model")}
    recipe["init_from"] = cfg.run.init_from
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class MetricsLog(TrainerCallback):
    """Appends every `Trainer.log` call as one JSON line (rank 0); a resume drops lines past its checkpoint."""

    path: Path

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero and self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= state.global_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

"""Resuming a run exactly: where training stands in a checkpoint, and the figures of the whole run.

A run resumed from a checkpoint in the middle trains on from it (TRL's own resume). A run whose
checkpoint is at its last step — killed after the final checkpoint, say while saving `final/`, or a
finished run whose summary was lost — has no step left to train: it is finished from that
checkpoint without calling `Trainer.train` (which would train one step past the end), so its
figures are those of the run never interrupted: the same global step, the training loss over the
whole run, one `train_runtime` line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerState

from trlm.fsutil import atomic_write_text
from trlm.records import read_jsonl

log = logging.getLogger(__name__)
END_OF_TRAINING = "train_runtime"  # the line Trainer logs once training is over


def checkpoint_state(checkpoint: Path) -> TrainerState:
    return TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))


def training_done(checkpoint: Path) -> bool:
    """Whether the checkpoint was saved at the run's last optimizer step."""
    state = checkpoint_state(checkpoint)
    return state.max_steps > 0 and state.global_step >= state.max_steps


def whole_run_loss(log_history: list[dict[str, Any]]) -> float | None:
    """The mean training loss over every step of the run, from its logged losses: each logged loss is the
    mean over the steps since the one logged before (trlm logs the last step: `callbacks.MetricsLog`)."""
    total, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last_step:
            total += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    return total / last_step if last_step else None


def load_weights(trainer: Trainer, checkpoint: Path) -> None:
    """The checkpoint's model weights into the trainer's model, as `Trainer.train(resume_from_checkpoint)`
    loads them (sharded, safetensors, adapters alike). The one place trlm calls this private method of
    transformers' Trainer: the resume-at-the-end test fails loudly if it changes."""
    trainer._load_from_checkpoint(str(checkpoint))


def finish_from_checkpoint(trainer: Trainer, checkpoint: Path, metrics_file: Path) -> dict[str, float]:
    """Restores a run whose training had ended at `checkpoint`; returns its end-of-training figures.

    The trainer gets the checkpoint's weights and state (step, log history); metrics.jsonl keeps the
    per-step lines and the first run's end-of-training line, and drops what came after it (the
    evaluation that is about to run again), so that nothing is counted twice.
    """
    load_weights(trainer, checkpoint)
    trainer.state = checkpoint_state(checkpoint)
    step = trainer.state.global_step
    rows = read_jsonl(metrics_file)
    end = next((row for row in rows if END_OF_TRAINING in row), None)
    kept = [row for row in rows if row.get("step", 0) < step or (row.get("step") == step and ("loss" in row or
                                                                                            row is end))]  # fmt: skip
    atomic_write_text(metrics_file, "".join(json.dumps(row) + "\n" for row in kept))
    if end is None:
        log.warning("training had ended at %s but its end-of-training line is missing: no train_runtime", checkpoint)
        return {}
    log.info("training had ended at %s (step %d): finishing the run from it, no step trained again", checkpoint, step)
    return {key: value for key, value in end.items() if key not in ("step", "epoch")}

"""What trlm adds to TRL's training loop, as Trainer callbacks (rank 0 writes, every rank agrees).

    MetricsLog        every logged step as one line of metrics.jsonl; a resume drops lines past its checkpoint
    DivergenceGuard   a non-finite loss or gradient norm stops the run as failed, naming the step
    CheckpointMarker  a checkpoint is marked complete once TRL has written all of it
    TrialReporter     the objective to the Optuna trial at each evaluation; training stops when pruned
    WandbRecord       trlm's config and hashes into the W&B run TRL's own callback started

Preemption (save, then requeue) has its own module, trlm/preemption.py.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trlm import tracking
from trlm.distributed import broadcast_from_main, is_main_process
from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_text, disk_space
from trlm.records import read_jsonl
from trlm.run_dir import mark_complete
from trlm.study import TrialLink

log = logging.getLogger(__name__)


@dataclass
class MetricsLog(TrainerCallback):
    """Appends every `Trainer.log` call as one JSON line (rank 0); a resume drops lines past its checkpoint."""

    path: Path

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero and self.path.exists():  # a line cut short by a crash is dropped too
            kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= state.global_step]
            atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # The last step and every checkpoint's step are logged, so that the losses logged up to any
        # checkpoint cover every step before it: the whole run's loss follows from them (trlm/resume.py).
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class TrainingDiverged(TrlmError):
    """The loss or the gradient norm stopped being a number: the run failed."""


class DivergenceGuard(TrainerCallback):
    """Stops a run whose logged loss or gradient norm is not finite (nan, inf), as failed, in one line naming
    the step, the last finite loss and the learning rate. TRL's `logging_nan_inf_filter` is off in trlm's
    arguments, so a non-finite step shows in the loss logged over its window instead of being averaged away.
    Every rank logs the same gathered figures, so every rank stops at the same step."""

    def __init__(self) -> None:
        self.last_finite: tuple[int, float] | None = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        figures = {key: (logs or {}).get(key) for key in ("loss", "grad_norm")}
        broken = {k: v for k, v in figures.items() if isinstance(v, int | float) and not math.isfinite(v)}
        if not broken:
            if isinstance(figures["loss"], int | float):
                self.last_finite = (state.global_step, figures["loss"])
            return
        said = ", ".join(f"{key} is {value}" for key, value in broken.items())
        before = (f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}" if self.last_finite
                  else "no finite loss logged before")  # fmt: skip
        rate = (logs or {}).get("learning_rate")
        raise TrainingDiverged(
            f"training diverged at step {state.global_step}: {said} ({before}, learning rate "
            f"{rate if rate is None else f'{rate:.3g}'}); the run failed. Lower stage.recipe.learning_rate "
            f"(or raise warmup / lower max_grad_norm) and run again"
        )


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once TRL has written all of it (`on_save` runs after the save): its
    files flushed to the disk, their sizes and sha256 in the marker (trlm/run_dir.py)."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if path.is_dir():
                with disk_space(path.parent, "marking a checkpoint complete"):
                    mark_complete(path, state.global_step)


class TrialReporter(TrainerCallback):
    """At each evaluation: report the objective to the trial; stop training if the pruner says so.

    Rank 0 reports and decides; the decision is broadcast so that no rank is left waiting in a
    collective. The job never tells the trial's final state: the sweeper does, from its return value.
    """

    def __init__(self, link: TrialLink) -> None:
        from trlm.study import TrialChannel

        self.metric = link.metric
        self.channel = TrialChannel(link) if is_main_process() else None
        self.pruned = False

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs: Any
    ):
        prune = False
        if self.channel is not None and metrics and self.metric in metrics:
            prune = self.channel.report(state.global_step, float(metrics[self.metric]))
        if broadcast_from_main(prune):
            log.info("pruned at step %d: %s = %s", state.global_step, self.metric, (metrics or {}).get(self.metric))
            self.pruned = True
            control.should_training_stop = True


class WandbRecord(TrainerCallback):
    """trlm's config and hashes into the W&B run, once TRL's own callback (earlier in the list) has started it."""

    def __init__(self, config: dict[str, Any], data_sha256: str, git_sha: str | None) -> None:
        self.config, self.data_sha256, self.git_sha = config, data_sha256, git_sha

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            tracking.record_config(self.config, self.data_sha256, self.git_sha)

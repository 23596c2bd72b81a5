"""What trlm adds to TRL's training loop, as Trainer callbacks (rank 0 writes, every rank agrees).

    MetricsLog        every logged step as one line of metrics.jsonl; a resume drops lines past its checkpoint
    CheckpointMarker  a checkpoint is marked complete once TRL has written all of it
    TrialReporter     the objective to the Optuna trial at each evaluation; training stops when pruned
    WandbRecord       trlm's config and hashes into the W&B run TRL's own callback started

Preemption (save, then requeue) has its own module, trlm/preemption.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trlm import tracking
from trlm.distributed import broadcast_from_main, is_main_process
from trlm.fsutil import atomic_write_text
from trlm.records import read_jsonl
from trlm.run_dir import COMPLETE_MARKER
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

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs: Any):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once TRL has written all of it (`on_save` runs after the save)."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if path.is_dir():
                (path / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step}) + "\n")


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

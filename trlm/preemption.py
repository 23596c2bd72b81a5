"""Preemption and time limits under Slurm: save at the current step, then let submitit requeue.

submitit installs a handler for its requeue signal (USR2, `signal_delay_s` before the time limit,
or `scancel --signal=USR2`) that checkpoints the job's call and requeues it. trlm puts its own
handler in front: it only raises a flag; at the end of the current optimizer step the callback
has TRL save a complete checkpoint and stop; then submitit's handler runs and requeues. The
requeued job resumes from that checkpoint (the same run directory, the same data order), so no
optimizer step is lost or repeated. Under several ranks, rank 0's flag is broadcast each step so
every rank stops at the same one. Outside a submitit Slurm job this does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trlm import tracking
from trlm.distributed import broadcast_from_main, is_main_process, world_size
from trlm.errors import TrlmError

log = logging.getLogger(__name__)


def requeue_signal() -> signal.Signals:
    """submitit's requeue signal: USR2 unless SUBMITIT_PREEMPT_SIGNAL names another."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return signal.Signals[f"SIG{name}"]


class Preempted(SystemExit):
    """Training stopped for a requeue: the job ends here without a summary (the requeued one writes it)."""


class PreemptionCheckpoint(TrainerCallback):
    def __init__(self) -> None:
        self.signalled = False
        self.stopped = False
        self.checkpoint = ""
        self.previous: Any = None
        in_main_thread = threading.current_thread() is threading.main_thread()
        self.enabled = os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and in_main_thread
        if self.enabled:
            self.signal = requeue_signal()
            self.previous = signal.signal(self.signal, self._flag)

    def _flag(self, signum: int, frame: FrameType | None) -> None:
        log.warning("%s: saving a checkpoint at the end of this step, then requeueing", signal.Signals(signum).name)
        self.signalled = True

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not self.enabled:  # no handler installed: nothing to agree on, no collective per step
            return
        stop = broadcast_from_main(self.signalled) if world_size() > 1 else self.signalled
        if stop:
            self.stopped = True
            self.checkpoint = f"{args.output_dir}/checkpoint-{state.global_step}"
            control.should_save = True
            control.should_log = True  # the losses up to the checkpoint all logged (trlm/resume.py)
            control.should_training_stop = True

    def hand_over(self) -> None:
        """After training stopped for the signal: submitit requeues the job (rank 0), every rank exits."""
        if not self.stopped:
            return
        log.warning("checkpoint saved; handing over to submitit to requeue the job")
        tracking.finish()  # now: the requeue stops the job's processes, W&B's service among them
        signal.signal(self.signal, self.previous)
        if is_main_process() and callable(self.previous):
            from submitit.core.utils import UncompletedJobError

            try:
                self.previous(self.signal, None)  # submitit: checkpoint the call, requeue, exit
            except UncompletedJobError as refusal:  # a time-out beyond the launcher's max_num_timeout
                raise TrlmError(
                    f"the job timed out once more than hydra.launcher.max_num_timeout allows, so it is not "
                    f"requeued ({refusal}); {self.checkpoint} is complete: run the same command again to "
                    f"resume from it"
                ) from None
        raise Preempted(0)

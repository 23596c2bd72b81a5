"""Which model a stage starts from.

In order: `run.init_from` when given; the base model (`model.path`, or the tiny demo model) for a
stage without a `previous`; otherwise the `final/` checkpoint of the previous stage's finished run
of the same experiment — its single run, or with `run.previous_trial=<sweep>/<trial>` one trial of
a sweep of that stage (directories: trlm/layout.py).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from trlm import layout
from trlm.config import ModelConfig, RunConfig, StageConfig
from trlm.errors import Problem, Problems, TrlmError
from trlm.records import RunRecord
from trlm.run_dir import FINAL, RUN_RECORD, is_finished


@dataclass(frozen=True)
class StartPoint:
    kind: str  # "explicit" | "base" | "previous_stage"
    source: str  # Hub id or local directory, as given
    stage: str | None = None  # the stage it came from, for previous_stage
    fingerprint: str | None = None  # that run's fingerprint: a retrained previous stage is another start

    def record(self) -> dict[str, str | None]:
        return asdict(self)


def previous_stage_dir(run: RunConfig, previous: str, output_root: str) -> Path:
    if run.previous_trial:
        sweep, _, trial = str(run.previous_trial).rpartition("/")
        if not sweep or not trial:
            raise TrlmError(f"run.previous_trial={run.previous_trial!r}: write it as <sweep>/<trial>")
        return layout.trial_dir(output_root, run.name, previous, sweep, trial)
    return layout.run_dir(output_root, run.name, previous)


def rerun_hint(experiment: str | None, run_name: str, previous: str) -> str:
    """The command that would produce the missing start, with the user's experiment and run name."""
    words = ["python", "train.py", f"stage={previous}"]
    if experiment and experiment != "report":
        words.append(f"experiment={experiment}")
    if run_name != (experiment or "report"):
        words.append(f"run.name={run_name}")
    return shlex.join(words)


def resolve_start(stage: StageConfig, run: RunConfig, model: ModelConfig, experiment: str | None,
                  output_root: str, pending: bool = False) -> StartPoint:  # fmt: skip
    """The stage's start; `pending`: a previous stage not finished yet is taken as the start it will be
    (for a plan made before the stages before it ran: no fingerprint yet)."""
    if run.init_from:
        return StartPoint("explicit", str(run.init_from))
    previous = stage.previous
    if previous is None:
        if model.tiny is not None:
            return StartPoint("base", f"tiny:{model.name}")
        return StartPoint("base", model.path)
    previous_dir = previous_stage_dir(run, previous, output_root)
    if not is_finished(previous_dir):
        if pending:
            return StartPoint("previous_stage", str(previous_dir / FINAL), previous, None)
        where = f"trial {run.previous_trial}" if run.previous_trial else f"run '{run.name}'"
        hint = f"run `{rerun_hint(experiment, run.name, previous)}` first, or pass run.init_from=<model dir or Hub id>"
        raise Problems([Problem("stage", f"starts from a finished '{previous}' {where}, but {previous_dir} holds none",
                                stage.name, hint)])  # fmt: skip
    record = RunRecord.load(previous_dir / RUN_RECORD)
    return StartPoint("previous_stage", str(previous_dir / FINAL), previous, record.fingerprint if record else None)

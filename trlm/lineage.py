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

from omegaconf import DictConfig

from trlm import layout
from trlm.errors import TrlmError
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


def previous_stage_dir(cfg: DictConfig, previous: str) -> Path:
    if cfg.run.previous_trial:
        sweep, _, trial = str(cfg.run.previous_trial).rpartition("/")
        if not sweep or not trial:
            raise TrlmError(f"run.previous_trial={cfg.run.previous_trial!r}: write it as <sweep>/<trial>")
        return layout.trial_dir(cfg.paths.output_root, cfg.run.name, previous, sweep, trial)
    return layout.run_dir(cfg.paths.output_root, cfg.run.name, previous)


def rerun_hint(cfg: DictConfig, previous: str) -> str:
    """The command that would produce the missing start, with the user's experiment and run name."""
    words = ["python", "train.py", f"stage={previous}"]
    if cfg.experiment and cfg.experiment != "report":
        words.append(f"experiment={cfg.experiment}")
    if cfg.run.name != (cfg.experiment or "report"):
        words.append(f"run.name={cfg.run.name}")
    return shlex.join(words)


def resolve_start(cfg: DictConfig) -> StartPoint:
    if cfg.run.init_from:
        return StartPoint("explicit", str(cfg.run.init_from))
    previous = cfg.stage.previous
    if previous is None:
        if cfg.model.tiny is not None:
            return StartPoint("base", f"tiny:{cfg.model.name}")
        return StartPoint("base", cfg.model.path)
    previous_dir = previous_stage_dir(cfg, previous)
    if not is_finished(previous_dir):
        where = f"trial {cfg.run.previous_trial}" if cfg.run.previous_trial else f"run '{cfg.run.name}'"
        raise TrlmError(
            f"stage={cfg.stage.name} starts from a finished '{previous}' {where}, but {previous_dir} holds none: "
            f"run `{rerun_hint(cfg, previous)}` first, or pass run.init_from=<model dir or Hub id>"
        )
    record = RunRecord.load(previous_dir / RUN_RECORD)
    return StartPoint("previous_stage", str(previous_dir / FINAL), previous, record.fingerprint if record else None)

"""Which model a stage starts from.

In order: `run.init_from` when given; the base model (`model.path`, or the tiny demo model) for a
stage without a `previous`; otherwise the `final/` checkpoint of the previous stage's finished run
of the same experiment: outputs/<run.name>/<previous>/.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from trlm.errors import TrlmError
from trlm.paths import project_path
from trlm.run_dir import FINAL, is_finished


@dataclass(frozen=True)
class StartPoint:
    kind: str  # "explicit" | "base" | "previous_stage"
    source: str  # Hub id or local directory, as given
    stage: str | None = None  # the stage it came from, for previous_stage

    def record(self) -> dict[str, str | None]:
        return asdict(self)


def output_root(cfg: DictConfig) -> Path:
    return project_path(cfg.paths.output_root).resolve()


def stage_dir(cfg: DictConfig, stage_name: str) -> Path:
    return output_root(cfg) / cfg.run.name / stage_name


def resolve_start(cfg: DictConfig) -> StartPoint:
    if cfg.run.init_from:
        return StartPoint("explicit", str(cfg.run.init_from))
    previous = cfg.stage.previous
    if previous is None:
        if cfg.model.tiny is not None:
            return StartPoint("base", f"tiny:{cfg.model.name}")
        return StartPoint("base", cfg.model.path)
    previous_dir = stage_dir(cfg, previous)
    if not is_finished(previous_dir):
        raise TrlmError(
            f"stage={cfg.stage.name} starts from a finished '{previous}' run of experiment '{cfg.run.name}', "
            f"but {previous_dir} holds none: run `python train.py stage={previous}` with the same "
            f"experiment/run.name first, or pass run.init_from=<model dir or Hub id>"
        )
    return StartPoint("previous_stage", str(previous_dir / FINAL), stage=previous)

"""The typed records a run directory and a prepared blend hold, each with load / save.

    Summary        summary.json   a finished run's figures; written last, so it marks "finished"
    RunRecord      run.json       what the run is: fingerprint, start model, data, git, hardware
    BlendMetadata  metadata.json  a prepared blend: counts per source and reason, hashes, files

Loading tolerates what an interrupted or older writer leaves: a missing or unreadable file is
`None`, unknown keys are ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from trlm.fsutil import atomic_write_text


class JsonRecord:
    @classmethod
    def load(cls, path: Path) -> Self | None:
        try:
            payload = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError):  # missing, torn, or not UTF-8
            return None
        if not isinstance(payload, dict):
            return None
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        try:
            return cls(**{k: v for k, v in payload.items() if k in known})
        except TypeError:  # a required field is missing: not a record of this kind
            return None

    def save(self, path: Path) -> None:
        payload = dataclasses.asdict(self)  # type: ignore[call-overload]
        atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


@dataclass
class Summary(JsonRecord):
    stage: str
    run_name: str
    final_model: str
    metrics_file: str
    data_sha256: str
    global_step: int
    metrics: dict[str, float]
    objective: dict[str, Any]  # metric, direction, value
    start: dict[str, Any] = field(default_factory=dict)
    status: str = "completed"
    sweep: str | None = None
    trial: str | None = None
    pruned: bool = False  # stopped early by its Optuna trial's pruner


@dataclass
class RunRecord(JsonRecord):
    stage: str
    run_name: str
    fingerprint: str  # what must match to continue this directory (see trlm.fingerprint)
    fingerprint_parts: dict[str, str]
    start: dict[str, Any]
    data: dict[str, Any]
    hardware: str
    world_size: int
    global_batch: int
    experiment: str | None = None
    git: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # every installed dependency of trlm's
    python: str | None = None
    environment_sha256: str | None = None  # of the installed distributions (name==version): same hash, same set
    sweep: str | None = None
    trial: str | None = None
    peft: dict[str, Any] | None = None  # LoRA's settings, when the stage trained adapters
    slurm_job_id: str | None = None  # the Slurm job that did (or last resumed) the work
    slurm_node: str | None = None  # rank 0's node in that job
    devices: str | None = None  # the GPUs Slurm bound to rank 0's task (its *_VISIBLE_DEVICES)


@dataclass
class SourceCounts:
    name: str
    subset: str | None
    split: str
    requested_entries: int | None
    read: int
    actual_entries: int
    dropped: dict[str, int]
    percentage_of_total: float
    repaired: dict[str, int] = field(default_factory=dict)


@dataclass
class BlendMetadata(JsonRecord):
    name: str
    description: str
    kind: str
    folder: str
    config_hash: str
    content_sha256: str
    creation_date: str
    sampling: str
    dedup: bool
    seed: int
    total_entries: int
    total_read: int
    dropped: dict[str, int]
    format: str
    files: list[str]
    sources: list[SourceCounts]
    repaired: dict[str, int] = field(default_factory=dict)
    file_sha256: dict[str, str] = field(default_factory=dict)  # each written file's bytes (older blends: none)

    def __post_init__(self) -> None:
        self.sources = [s if isinstance(s, SourceCounts) else SourceCounts(**s) for s in self.sources]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file; a line cut short by a crash (or any unreadable line) is skipped."""
    rows = []
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()  # a bad byte spoils its line only
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows

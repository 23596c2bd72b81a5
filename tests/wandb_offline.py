"""Reads an offline W&B run back from its `.wandb` file: run id, group, job type, tags, config, history, summary.

`wandb sync --view` is gone in wandb 0.31, and W&B writes a second local directory when an offline
run is resumed (a requeued job), so checking that a resumed history continues means reading the
files themselves. A `.wandb` file is a 7-byte header (":W&B", magic, version) followed by
LevelDB-log records (32 KiB blocks; FULL / FIRST / MIDDLE / LAST fragments), each a protobuf
`Record` of wandb's own schema (`wandb.proto.wandb_internal_pb2`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trlm.errors import TrlmError

HEADER, BLOCK, FRAGMENT_HEADER = 7, 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    folder: Path
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def record_payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise TrlmError(f"{path} is not a W&B run file (no :W&B header)")
    position, pending = HEADER, b""
    while position + FRAGMENT_HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < FRAGMENT_HEADER:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        payload = data[position + FRAGMENT_HEADER : position + FRAGMENT_HEADER + length]
        position += FRAGMENT_HEADER + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload


def _items(items: Any) -> dict[str, Any]:
    return {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in items}


def read_run(folder: Path) -> OfflineRun:
    """One local run directory (`wandb/offline-run-*`)."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise TrlmError(f"{folder} holds no run-*.wandb file")
    run = OfflineRun(folder)
    for payload in record_payloads(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.job_type = record.run.run_id, record.run.run_group, record.run.job_type
            run.tags = list(record.run.tags)
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
    return run


def read_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run a trlm run directory holds, oldest first (a resumed run adds one)."""
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))  # offline-run-<time>-<id>[-<n>]
    return [read_run(folder) for folder in folders]

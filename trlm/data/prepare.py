"""Preparing a blend: stream every source, normalise and check its rows, shuffle, write, describe.

    <blends_dir>/<name>-<config hash>/
      train.jsonl                       (blends up to `shard_threshold` rows), or
      data/train-00000-of-000NN.parquet (larger blends, `shard_rows` rows a shard)
      metadata.json                     per-source requested / read / kept / dropped-by-reason counts,
                                        totals, creation time, config hash, content sha256
      README.md                         the dataset card

The folder's name carries a hash of the blend config and its sources' identity, so a repeated
preparation reuses it and a changed config builds a new one. It is built under a temporary name
and renamed when complete: an interrupted preparation never leaves a folder that looks finished.
Rows stream through an on-disk Arrow file (memory-mapped), so memory stays flat as sources grow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset
from datasets.arrow_writer import ArrowWriter
from omegaconf import OmegaConf

from trlm.config import DataConfig, SourceConfig
from trlm.data.card import dataset_card
from trlm.data.schema import FEATURES, Dropped, normalise
from trlm.data.sources import is_local, local_identity, read_source
from trlm.errors import TrlmError

log = logging.getLogger(__name__)
METADATA, CARD = "metadata.json", "README.md"
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class PreparedBlend:
    path: Path
    metadata: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.path / name for name in self.metadata["files"]]


def config_hash(data: DataConfig) -> str:
    """Identity of a prepared blend: the config fields that shape its rows, and its sources' identity."""
    spec = OmegaConf.to_container(OmegaConf.structured(data), resolve=True, enum_to_str=True)
    for training_only in ("eval_size", "too_long"):
        spec.pop(training_only)
    spec["local_files"] = [local_identity(s) for s in data.sources if is_local(s)]
    spec["schema"] = 1  # bump when normalisation changes what a prepared row is
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def blend_dir(data: DataConfig, blends_dir: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.name).strip("_")
    return blends_dir / f"{slug}-{config_hash(data)}"


@dataclass
class SourceStats:
    read: int = 0
    kept: int = 0
    dropped: Counter | None = None

    def __post_init__(self) -> None:
        self.dropped = self.dropped or Counter()


def source_rows(
    data: DataConfig, source: SourceConfig, stats: SourceStats, seen: set[bytes]
) -> Iterator[dict[str, Any]]:
    """The source's rows in the blend's schema, counting what is dropped and why."""
    started = last_report = time.monotonic()
    label = f"{source.name}" + (f" [{source.subset}/{source.split}]" if source.subset else f" [{source.split}]")
    for index, raw in read_source(source, data.sampling, data.seed):
        stats.read += 1
        try:
            row = normalise(raw, data.kind)
            if data.dedup:
                key = hashlib.blake2b(json.dumps(row, sort_keys=True).encode(), digest_size=12).digest()
                if key in seen:
                    raise Dropped("duplicate")
                seen.add(key)
        except Dropped as dropped:
            stats.dropped[dropped.reason] += 1
            continue
        stats.kept += 1
        yield {
            **row,
            "_source_dataset": source.name,
            "_source_subset": source.subset,
            "_source_split": source.split,
            "_source_index": index,
        }
        if (now := time.monotonic()) - last_report > PROGRESS_EVERY_S:
            log.info("%s: %d rows read, %d kept, %.0f rows/s", label, stats.read, stats.kept,
                     stats.read / (now - started))  # fmt: skip
            last_report = now
    elapsed = max(time.monotonic() - started, 1e-9)
    log.info("%s: %d rows read, %d kept, %d dropped, %.0f rows/s", label, stats.read, stats.kept,
             stats.read - stats.kept, stats.read / elapsed)  # fmt: skip


def write_rows(rows: Dataset, data: DataConfig, out: Path) -> tuple[list[str], str]:
    """Writes the shuffled rows as one JSONL file or parquet shards; returns the files and a content sha256."""
    digest = hashlib.sha256()
    sharded = len(rows) > data.shard_threshold
    if not sharded:
        files = ["train.jsonl"]
        with (out / files[0]).open("w", encoding="utf-8") as handle:
            for row in rows:
                line = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
                digest.update(line.encode())
                handle.write(line + "\n")
        return files, digest.hexdigest()
    (out / "data").mkdir()
    count = -(-len(rows) // data.shard_rows)
    files = [f"data/train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    schema = FEATURES[data.kind].arrow_schema
    for name, batch in zip(files, rows.iter(batch_size=data.shard_rows), strict=True):
        table = pa.Table.from_pydict(batch, schema=schema)
        for row in table.to_pylist():
            digest.update(json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode())
        pq.write_table(table, out / name)
    return files, digest.hexdigest()


def build(data: DataConfig, target: Path) -> PreparedBlend:
    staging = target.with_name(f"{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed preparation
    staging.mkdir(parents=True)
    try:
        return build_in(data, staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_in(data: DataConfig, staging: Path, target: Path) -> PreparedBlend:
    stats = [SourceStats() for _ in data.sources]
    seen: set[bytes] = set()
    arrow_path = staging / "_rows.arrow"
    with ArrowWriter(features=FEATURES[data.kind], path=str(arrow_path), writer_batch_size=1000) as writer:
        for source, source_stats in zip(data.sources, stats, strict=True):
            for row in source_rows(data, source, source_stats, seen):
                writer.write(row)
        writer.finalize()
    rows = Dataset.from_file(str(arrow_path))  # memory-mapped
    if len(rows) == 0:
        raise TrlmError(f"blend {data.name} is empty: its sources yielded no usable rows ({summary_of(stats)})")
    files, content_hash = write_rows(rows.shuffle(seed=data.seed, keep_in_memory=True), data, staging)
    del rows
    arrow_path.unlink()
    metadata = describe(data, stats, files, content_hash, target.name)
    (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    (staging / CARD).write_text(dataset_card(metadata))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return PreparedBlend(target, metadata)


def summary_of(stats: list[SourceStats]) -> str:
    dropped = sum((s.dropped for s in stats), Counter())
    return f"{sum(s.read for s in stats)} read, dropped: {dict(dropped) or 'none'}"


def describe(data: DataConfig, stats: list[SourceStats], files: list[str], content_hash: str, folder: str) -> dict:
    total = sum(s.kept for s in stats)
    sources = []
    for source, s in zip(data.sources, stats, strict=True):
        sources.append(
            {
                "name": source.name,
                "subset": source.subset,
                "split": source.split,
                "requested_entries": source.entries,
                "read": s.read,
                "actual_entries": s.kept,
                "dropped": dict(sorted(s.dropped.items())),
                "percentage_of_total": round(100 * s.kept / total, 2),
            }
        )
    return {
        "name": data.name,
        "description": data.description,
        "kind": data.kind.value,
        "folder": folder,
        "config_hash": config_hash(data),
        "content_sha256": content_hash,
        "creation_date": datetime.now(UTC).isoformat(timespec="seconds"),
        "sampling": data.sampling.value,
        "dedup": data.dedup,
        "seed": data.seed,
        "total_entries": total,
        "total_read": sum(s.read for s in stats),
        "dropped": dict(sorted(sum((s.dropped for s in stats), Counter()).items())),
        "format": "parquet" if files[0].endswith(".parquet") else "jsonl",
        "files": files,
        "sources": sources,
    }


def prepare_blend(data: DataConfig, blends_dir: Path, rebuild: bool = False) -> PreparedBlend:
    """The prepared blend of this config: reused when it exists, built otherwise."""
    target = blend_dir(data, blends_dir)
    metadata_path = target / METADATA
    if metadata_path.exists() and not rebuild:
        log.info("blend %s: reusing %s", data.name, target)
        return PreparedBlend(target, json.loads(metadata_path.read_text()))
    log.info("blend %s: preparing %d source(s) into %s", data.name, len(data.sources), target)
    prepared = build(data, target)
    meta = prepared.metadata
    log.info("blend %s: %d rows (%d read, dropped %s), sha256 %s", data.name, meta["total_entries"],
             meta["total_read"], meta["dropped"] or "none", meta["content_sha256"][:12])  # fmt: skip
    return prepared

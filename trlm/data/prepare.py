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
Rows stream from the sources into on-disk buckets (trlm/data/buckets.py), which deduplicate and
shuffle one bucket at a time, so memory stays flat as sources grow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from trlm.config import DataConfig, Sampling, SourceConfig
from trlm.data.buckets import BUCKETS, BucketSpill, permuted
from trlm.data.card import dataset_card
from trlm.data.schema import FEATURES, Dropped, normalise
from trlm.data.sources import MalformedLine, is_local, local_identity, read_source
from trlm.errors import TrlmError
from trlm.fsutil import atomic_dir, disk_space, sha256_of
from trlm.locks import FileLock
from trlm.progress import progress_counter
from trlm.records import BlendMetadata, SourceCounts

log = logging.getLogger(__name__)
METADATA, CARD = "metadata.json", "README.md"
MAX_REPORTED_LINES = 10  # malformed lines named one by one in the log; the rest are counted


@dataclass(frozen=True)
class PreparedBlend:
    path: Path
    metadata: BlendMetadata

    @property
    def files(self) -> list[Path]:
        return [self.path / name for name in self.metadata.files]


def config_hash(data: DataConfig) -> str:
    """Identity of a prepared blend: the config fields that shape its rows, and its sources' identity."""
    spec = OmegaConf.to_container(OmegaConf.structured(data), resolve=True, enum_to_str=True)
    for training_only in ("eval_size", "eval_sources", "too_long"):
        spec.pop(training_only)
    spec["local_files"] = [local_identity(s) for s in data.sources if is_local(s)]
    spec["schema"] = 2  # bump when normalisation changes what a prepared row is (2: repairs)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def blend_dir(data: DataConfig, blends_dir: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.name).strip("_")
    return blends_dir / f"{slug}-{config_hash(data)}"


@dataclass
class SourceStats:
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)


def row_key(row: dict[str, Any]) -> int:
    """A 64-bit digest of a normalised row (provenance excluded): what makes two rows duplicates."""
    digest = hashlib.blake2b(json.dumps(row, sort_keys=True).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def message_chars(row: dict[str, Any]) -> int:
    """The characters of a normalised row's message texts (a pair: both sides and the prompt)."""
    return sum(len(m["content"]) for key in ("messages", "prompt", "chosen", "rejected") for m in row.get(key) or ())


def source_rows(data: DataConfig, source: SourceConfig, ordinal: int, stats: SourceStats) -> Iterator[dict[str, Any]]:
    """The source's rows in the blend's schema (plus `_key` / `_source_ordinal`), counting drops by reason."""
    started = time.monotonic()
    label = f"{source.name}" + (f" [{source.subset}/{source.split}]" if source.subset else f" [{source.split}]")
    fill = data.fill and data.sampling == Sampling.first and source.entries is not None
    read_as = dataclasses.replace(source, entries=None) if fill else source  # read on until `entries` are kept
    with progress_counter(f"reading {label}", total=source.entries, unit="row") as advance:
        yield from kept_rows(data, source, ordinal, stats, read_as, fill, advance)
    elapsed = max(time.monotonic() - started, 1e-9)
    log.info("%s: %d rows read, %d kept, %d dropped, %d repaired, %.0f rows/s", label, stats.read, stats.kept,
             stats.read - stats.kept, sum(stats.repaired.values()), stats.read / elapsed)  # fmt: skip
    if fill and stats.kept < source.entries:
        log.warning("%s RAN OUT: %d valid rows of the %d requested (%d read, dropped %s); the blend is smaller "
                    "than its config says", label, stats.kept, source.entries, stats.read,
                    dict(stats.dropped) or "none")  # fmt: skip


def kept_rows(data: DataConfig, source: SourceConfig, ordinal: int, stats: SourceStats, read_as: SourceConfig,
              fill: bool, advance: Callable[..., None]) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The rows of a source that pass the checks (repaired where they can be), counted in `stats`."""
    for index, raw in read_source(read_as, data.sampling, data.seed):
        if fill and stats.kept == source.entries:
            break
        stats.read += 1
        if isinstance(raw, MalformedLine):
            stats.dropped["malformed_json"] += 1
            if stats.dropped["malformed_json"] <= MAX_REPORTED_LINES:
                log.warning("%s line %d is not valid JSON (%s): dropped", raw.file, raw.line, raw.error)
            continue
        repairs: list[str] = []
        try:
            row = normalise(raw, data.kind, repairs)
            if message_chars(row) > data.max_row_chars:
                raise Dropped("row_too_long")
        except Dropped as dropped:
            stats.dropped[dropped.reason] += 1
            continue
        stats.repaired.update(repairs)
        stats.kept += 1
        advance(1)
        yield {
            **row,
            "_source_dataset": source.name,
            "_source_subset": source.subset,
            "_source_split": source.split,
            "_source_index": index,
            "_key": row_key(row) if data.dedup else 0,
            "_source_ordinal": ordinal,
        }


def spill_rows(data: DataConfig, staging: Path, stats: list[SourceStats]) -> tuple[BucketSpill, int]:
    """Every kept row, deduplicated when asked, spread over uniformly random buckets; and their count."""
    schema = spill_schema(data)
    rng = random.Random(data.seed)
    shuffled = BucketSpill(staging / "_shuffled", schema)
    rows = (
        row
        for i, (src, st) in enumerate(zip(data.sources, stats, strict=True))
        for row in source_rows(data, src, i, st)
    )
    if data.dedup:  # duplicates share a content bucket: dedup one bucket at a time
        by_content = BucketSpill(staging / "_by_content", schema)
        for row in rows:
            by_content.add(row["_key"] % BUCKETS, row)
        by_content.close()
        rows = unique_rows(by_content, stats)
    total = 0
    for row in rows:
        shuffled.add(rng.randrange(BUCKETS), row)
        total += 1
    shuffled.close()
    return shuffled, total


def unique_rows(buckets: BucketSpill, stats: list[SourceStats]) -> Iterator[dict[str, Any]]:
    for table in buckets.tables():
        seen: set[int] = set()
        for row in table.to_pylist():  # arrival order within a bucket: the first occurrence is kept
            if row["_key"] in seen:
                stats[row["_source_ordinal"]].dropped["duplicate"] += 1
                stats[row["_source_ordinal"]].kept -= 1
                continue
            seen.add(row["_key"])
            yield row


def spill_schema(data: DataConfig) -> pa.Schema:
    schema = FEATURES[data.kind].arrow_schema
    return schema.append(pa.field("_key", pa.uint64())).append(pa.field("_source_ordinal", pa.int32()))


def write_rows(shuffled: BucketSpill, total: int, data: DataConfig, out: Path) -> tuple[list[str], str]:
    """Permutes each bucket and streams the rows out as one JSONL file or parquet shards.

    Returns the files and a sha256 over the rows' JSON in their final order (the same for both formats).
    """
    digest, rng = hashlib.sha256(), random.Random(data.seed + 1)
    schema = FEATURES[data.kind].arrow_schema
    sharded = total > data.shard_threshold
    count = -(-total // data.shard_rows)
    files = [f"data/train-{i:05d}-of-{count:05d}.parquet" for i in range(count)] if sharded else ["train.jsonl"]
    (out / files[0]).parent.mkdir(exist_ok=True)
    jsonl = None if sharded else (out / files[0]).open("w", encoding="utf-8")
    shard, writer, in_shard = 0, None, 0
    for bucket in shuffled.tables():
        table = permuted(bucket, rng).drop_columns(["_key", "_source_ordinal"]).cast(schema)
        for row in table.to_pylist():
            line = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
            digest.update(line.encode())
            if jsonl:
                jsonl.write(line + "\n")
        while sharded and table.num_rows:
            if writer is None:
                writer, in_shard = pq.ParquetWriter(out / files[shard], schema), 0
            take = min(data.shard_rows - in_shard, table.num_rows)
            writer.write_table(table.slice(0, take))
            table, in_shard = table.slice(take), in_shard + take
            if in_shard == data.shard_rows:
                writer.close()
                writer, shard = None, shard + 1
    if writer:
        writer.close()
    if jsonl:
        jsonl.close()
    return files, digest.hexdigest()


def build(data: DataConfig, target: Path) -> PreparedBlend:
    with atomic_dir(target) as staging:  # an interrupted preparation never leaves a finished-looking folder
        stats = [SourceStats() for _ in data.sources]
        shuffled, total = spill_rows(data, staging, stats)
        if total == 0:
            raise TrlmError(f"blend {data.name} is empty: its sources yielded no usable rows ({summary_of(stats)})")
        files, content_hash = write_rows(shuffled, total, data, staging)
        shutil.rmtree(staging / "_shuffled")
        shutil.rmtree(staging / "_by_content", ignore_errors=True)
        metadata = blend_metadata(data, stats, files, content_hash, target.name)
        metadata.file_sha256 = {name: sha256_of(staging / name) for name in files}
        metadata.save(staging / METADATA)
        (staging / CARD).write_text(dataset_card(metadata))
    return PreparedBlend(target, metadata)


def summary_of(stats: list[SourceStats]) -> str:
    dropped = sum((s.dropped for s in stats), Counter())
    return f"{sum(s.read for s in stats)} read, dropped: {dict(dropped) or 'none'}"


def blend_metadata(
    data: DataConfig, stats: list[SourceStats], files: list[str], content_hash: str, folder: str
) -> BlendMetadata:
    total = sum(s.kept for s in stats)
    sources = []
    for source, s in zip(data.sources, stats, strict=True):
        sources.append(
            SourceCounts(
                name=source.name,
                subset=source.subset,
                split=source.split,
                requested_entries=source.entries,
                read=s.read,
                actual_entries=s.kept,
                dropped=dict(sorted(s.dropped.items())),
                percentage_of_total=round(100 * s.kept / total, 2),
                repaired=dict(sorted(s.repaired.items())),
            )
        )
    return BlendMetadata(
        name=data.name,
        description=data.description,
        kind=data.kind.value,
        folder=folder,
        config_hash=config_hash(data),
        content_sha256=content_hash,
        creation_date=datetime.now(UTC).isoformat(timespec="seconds"),
        sampling=data.sampling.value,
        dedup=data.dedup,
        seed=data.seed,
        total_entries=total,
        total_read=sum(s.read for s in stats),
        dropped=dict(sorted(sum((s.dropped for s in stats), Counter()).items())),
        repaired=dict(sorted(sum((s.repaired for s in stats), Counter()).items())),
        format="parquet" if files[0].endswith(".parquet") else "jsonl",
        files=files,
        sources=sources,
    )


def row_lines(prepared: PreparedBlend) -> Iterator[bytes]:
    """The blend's rows as the JSON lines its content sha256 was taken over, read back from its files."""
    for file in prepared.files:
        if file.suffix == ".parquet":
            for row in pq.read_table(file).to_pylist():
                yield json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode()
        else:
            with file.open("rb") as handle:
                yield from (line.rstrip(b"\n") for line in handle)


def verify_prepared(prepared: PreparedBlend) -> str:
    """Checks the blend's files are the ones prepared; returns the sha256 of the rows they hold.

    Each file against the sha256 recorded when it was written; a blend prepared before trlm recorded
    them, against its content sha256, recomputed from the rows read back. A changed or cut file is
    refused in one line, never loaded under the hash it was prepared with.
    """
    meta = prepared.metadata
    fix = (f"prepare it again (`trlm prepare data=<this blend> rebuild=true`), or delete {prepared.path} and "
           "training prepares it anew")  # fmt: skip
    for name in meta.files:
        file = prepared.path / name
        if not file.is_file():
            raise TrlmError(f"blend {meta.name}: {file} is missing: {fix}")
        if name in meta.file_sha256 and sha256_of(file) != meta.file_sha256[name]:
            raise TrlmError(f"blend {meta.name}: {file} does not match the sha256 recorded when it was prepared "
                            f"(changed or cut since): {fix}")  # fmt: skip
    if set(meta.file_sha256) >= set(meta.files):
        return meta.content_sha256
    digest = hashlib.sha256()
    try:
        for line in row_lines(prepared):
            digest.update(line)
    except (OSError, pa.ArrowException) as error:
        raise TrlmError(f"blend {meta.name}: its files cannot be read ({error}): {fix}") from None
    if digest.hexdigest() != meta.content_sha256:
        raise TrlmError(f"blend {meta.name}: the rows in {prepared.path} do not match the sha256 recorded when it "
                        f"was prepared (changed or cut since): {fix}")  # fmt: skip
    return meta.content_sha256


def local_source_bytes(data: DataConfig) -> int | None:
    """What a blend's local sources weigh: about what preparing it writes (spill, then the blend). None for Hub
    sources, whose size is not known here."""
    if not all(is_local(source) for source in data.sources):
        return None
    return sum(max(size, 0) for source in data.sources for _, size, _ in local_identity(source))


def prepared_blend(data: DataConfig, blends_dir: Path) -> PreparedBlend | None:
    target = blend_dir(data, blends_dir)
    metadata = BlendMetadata.load(target / METADATA)
    return PreparedBlend(target, metadata) if metadata else None


def prepare_blend(data: DataConfig, blends_dir: Path, rebuild: bool = False) -> PreparedBlend:
    """The prepared blend of this config: reused when it exists, built otherwise.

    One process builds a blend at a time (a lock beside its folder); another asking for the same
    blend meanwhile waits, then reuses what the first built.
    """
    if not rebuild and (found := prepared_blend(data, blends_dir)):
        log.info("blend %s: reusing %s", data.name, found.path)
        return found
    target = blend_dir(data, blends_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrlmError(
            f"cannot write prepared blends to {target.parent}: {error.strerror}; "
            f"set paths.blends_dir (or paths.output_root) to a writable folder"
        ) from None
    with FileLock(target.with_name(f"{target.name}.lock"), f"preparing blend {data.name}").hold(wait=True):
        if not rebuild and (found := prepared_blend(data, blends_dir)):  # built while we waited
            log.info("blend %s: reusing %s (prepared by another process)", data.name, found.path)
            return found
        log.info("blend %s: preparing %d source(s) into %s", data.name, len(data.sources), target)
        with disk_space(target.parent, f"preparing blend {data.name}", needed=local_source_bytes(data)):
            prepared = build(data, target)
    meta = prepared.metadata
    log.info("blend %s: %d rows (%d read, dropped %s), sha256 %s", data.name, meta.total_entries,
             meta.total_read, meta.dropped or "none", meta.content_sha256[:12])  # fmt: skip
    return prepared

"""Spilling rows to on-disk Arrow buckets, so a blend is deduplicated and shuffled in flat memory.

Two passes over buckets give an exact uniform shuffle and exact deduplication while only one
bucket (about rows / BUCKETS) is ever in memory:
1. rows go to the bucket of their content hash, so duplicates meet in one bucket;
2. each bucket is deduplicated, and its rows go to a uniformly random second-level bucket;
3. each second-level bucket is permuted and streamed out in turn (a random bucket assignment
   followed by a random permutation within each bucket is a uniform permutation of all rows).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

BUCKETS = 64
FLUSH_ROWS = 200  # rows buffered per bucket before they are written


class BucketSpill:
    """`BUCKETS` Arrow IPC files under `folder`, written row by row, read back one table at a time."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.paths = [folder / f"{i:03d}.arrow" for i in range(BUCKETS)]
        self.buffers: list[list[dict[str, Any]]] = [[] for _ in range(BUCKETS)]
        self.writers = [pa.ipc.new_stream(pa.OSFile(str(p), "wb"), schema) for p in self.paths]

    def add(self, bucket: int, row: dict[str, Any]) -> None:
        buffer = self.buffers[bucket]
        buffer.append(row)
        if len(buffer) >= FLUSH_ROWS:
            self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        if self.buffers[bucket]:
            self.writers[bucket].write_batch(pa.RecordBatch.from_pylist(self.buffers[bucket], schema=self.schema))
            self.buffers[bucket] = []

    def close(self) -> None:
        for bucket, writer in enumerate(self.writers):
            self._flush(bucket)
            writer.close()

    def tables(self) -> Iterator[pa.Table]:
        """Each bucket as a table (read into memory, not memory-mapped), deleting its file after."""
        for path in self.paths:
            with pa.OSFile(str(path), "rb") as source:
                table = pa.ipc.open_stream(source).read_all()
            path.unlink()
            yield table


def permuted(table: pa.Table, rng: random.Random) -> pa.Table:
    order = list(range(table.num_rows))
    rng.shuffle(order)
    return table.take(pa.array(order, type=pa.int64()))

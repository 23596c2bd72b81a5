"""Reading one source of a blend as a stream of raw rows, capped or sampled, columns renamed.

A source is a Hub dataset (`name`, `subset`, `split`) or local files: a .jsonl / .json / .parquet
file, a folder of them, or a `save_to_disk` folder. Nothing here holds a whole source in memory:
`first` stops after `entries` rows; `random` keeps a reservoir of `entries` rows. `skip` passes
over a source's first rows (held-out rows read just past a training cap).

JSON Lines files are read line by line here rather than by `datasets`, so that one malformed line
is a dropped row (counted, and named by file and line) instead of the end of the preparation.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import IterableDataset

from trlm.config import Sampling, SourceConfig
from trlm.errors import TrlmError
from trlm.hub import hub_reachable
from trlm.paths import project_path

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
JSON_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class MalformedLine:
    """A line of a JSON Lines source that is not a JSON object: dropped and counted, not fatal."""

    file: str
    line: int
    error: str


def read_jsonl_rows(files: list[Path]) -> Iterator[dict[str, Any] | MalformedLine]:
    """Each line's row; a line that is not UTF-8, not JSON or not an object is a `MalformedLine`."""
    for file in files:
        with file.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield MalformedLine(str(file), number, f"not UTF-8 ({error.reason} at byte {error.start})")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    yield MalformedLine(str(file), number, error.msg)
                    continue
                yield row if isinstance(row, dict) else MalformedLine(str(file), number, "not a JSON object")


def is_local(source: SourceConfig) -> bool:
    return Path(source.name).suffix in LOCAL_FORMATS or project_path(source.name).is_dir()


def local_identity(source: SourceConfig) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of every local file of a source: a change to any of them changes the blend."""
    path = project_path(source.name)
    if not path.exists():
        return [(str(path), -1, -1)]  # reading it will say so
    files = sorted(path.iterdir()) if path.is_dir() else [path]  # the files open_local reads
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


def open_local(source: SourceConfig) -> Iterable[dict[str, Any] | MalformedLine] | None:
    path = project_path(source.name)
    if not path.exists():
        raise TrlmError(f"data source {source.name}: no such file or folder ({path})")
    if path.is_dir() and (path / "dataset_info.json").exists():  # a `save_to_disk` folder
        return datasets.load_from_disk(str(path)).to_iterable_dataset()
    files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS) if path.is_dir() else [path]
    if not files:
        raise TrlmError(f"data source {source.name}: no .jsonl/.json/.parquet files in {path}")
    files = [f for f in files if f.stat().st_size > 0]  # datasets cannot infer a schema from an empty file
    if not files:
        return None
    if all(f.suffix == ".jsonl" for f in files):
        return read_jsonl_rows(files)
    builder = LOCAL_FORMATS[files[0].suffix]
    # datasets parses JSON in 10 MB chunks by default, at ~30x that in memory: 1 MB chunks keep it flat.
    options = {"chunksize": JSON_CHUNK_BYTES} if builder == "json" else {}
    return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True, **options)


def open_hub(source: SourceConfig) -> IterableDataset:
    # Streaming reads the Hub directly (it never serves from the cache): without the Hub, say so now
    # rather than after the client's minute of retries.
    if not hub_reachable():
        raise TrlmError(
            f"data source {source.name} ({source.subset}/{source.split}) cannot be streamed: the Hub is "
            f"unreachable; prepare the blend on a connected machine and copy its folder (paths.blends_dir) "
            f"here, or point the source at local files (name: path/to/file.jsonl); to try trlm offline, "
            f"run experiment=demo"
        )
    return datasets.load_dataset(source.name, source.subset, split=source.split, streaming=True)


def reservoir(rows: Iterator[tuple[int, dict]], size: int, rng: random.Random) -> list[tuple[int, dict]]:
    """A uniform sample of `size` (index, row) pairs in source order (Algorithm R)."""
    sample: list[tuple[int, dict]] = []
    for seen, item in enumerate(rows):
        if seen < size:
            sample.append(item)
        elif (slot := rng.randrange(seen + 1)) < size:
            sample[slot] = item
    return sorted(sample, key=lambda item: item[0])


def read_source(
    source: SourceConfig, sampling: Sampling, seed: int
) -> Iterator[tuple[int, dict[str, Any] | MalformedLine]]:
    """(index in the source, row) pairs after skip and cap, with `drop_columns` / `rename_columns` applied."""
    stream = open_local(source) if is_local(source) else open_hub(source)
    if stream is None:
        return
    indexed: Iterator[tuple[int, Any]] = itertools.islice(enumerate(stream), source.skip, None)
    if source.entries is not None:
        if sampling == Sampling.random:
            rng = random.Random(f"{seed}:{source.name}:{source.subset}:{source.split}")
            indexed = iter(reservoir(indexed, source.entries, rng))
        else:
            indexed = itertools.islice(indexed, source.entries)
    for index, row in indexed:
        if isinstance(row, MalformedLine):
            yield index, row
            continue
        row = {k: v for k, v in row.items() if k not in source.drop_columns}
        for old, new in source.rename_columns.items():
            if old in row and new not in row:  # as the reference: never overwrite an existing column
                row[new] = row.pop(old)
        yield index, row

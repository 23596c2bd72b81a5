"""Loading a blend (conf/data/*) into train / held-out datasets, with provenance on every row.

Each source is read streaming and capped at its first `entries` rows, as the reference pipeline
does; columns are dropped / renamed per the config; `_source_dataset`, `_source_subset`,
`_source_split` record where each row came from. The blend is shuffled with its seed and the
last `eval_size` rows are held out for the stage's evaluation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, IterableDataset

from trlm.config import DataConfig, DataKind, SourceConfig
from trlm.errors import TrlmError
from trlm.modeling import hub_reachable
from trlm.paths import project_path

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
REQUIRED_COLUMNS = {DataKind.conversation: ("messages",), DataKind.preference: ("chosen", "rejected")}


def is_local(source: SourceConfig) -> bool:
    return Path(source.name).suffix in LOCAL_FORMATS or project_path(source.name).is_dir()


def open_source(source: SourceConfig) -> IterableDataset:
    """The source as a stream of rows: local files directly, Hub datasets via the cache or the Hub."""
    if is_local(source):
        path = project_path(source.name)
        if not path.exists():
            raise TrlmError(f"data source {source.name}: no such file or folder ({path})")
        if path.is_dir():
            if (path / "dataset_info.json").exists():  # a `save_to_disk` folder
                return datasets.load_from_disk(str(path)).to_iterable_dataset()
            files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_FORMATS)
            if not files:
                raise TrlmError(f"data source {source.name}: no .jsonl/.json/.parquet files in {path}")
            builder = LOCAL_FORMATS[files[0].suffix]
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)
        return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train", streaming=True)
    try:
        return datasets.load_dataset(source.name, source.subset, split=source.split, streaming=True)
    except (ConnectionError, OSError, ValueError) as error:
        if hub_reachable():
            raise
        raise TrlmError(
            f"data source {source.name} ({source.subset}/{source.split}) cannot be read: the Hub is "
            f"unreachable and it is not cached ({type(error).__name__}); prepare the blend on a "
            f"connected machine or point the source at local files; to try trlm offline, run experiment=demo"
        ) from error


def source_rows(source: SourceConfig) -> Iterator[dict[str, Any]]:
    if is_local(source) and project_path(source.name).is_file() and project_path(source.name).stat().st_size == 0:
        return  # datasets cannot infer a schema from an empty file
    stream = open_source(source)
    if source.entries is not None:
        stream = stream.take(source.entries)
    for row in stream:
        row = {k: v for k, v in row.items() if k not in source.drop_columns}
        for old, new in source.rename_columns.items():
            if old in row and new not in row:
                row[new] = row.pop(old)
        row["_source_dataset"] = source.name
        row["_source_subset"] = source.subset
        row["_source_split"] = source.split
        yield row


def load_source(source: SourceConfig, kind: DataKind) -> Dataset:
    dataset = Dataset.from_list(list(source_rows(source)))
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in dataset.column_names]
    if len(dataset) and missing:
        raise TrlmError(f"data source {source.name}: {kind.value} rows need column(s) {missing}")
    return dataset


def load_blend(data: DataConfig) -> DatasetDict:
    """The blend's `train` split and, when `eval_size` > 0, its held-out `eval` split."""
    parts = [load_source(source, data.kind) for source in data.sources]
    parts = [part for part in parts if len(part)]
    if not parts:
        raise TrlmError(f"blend {data.name} is empty: its sources yielded no rows")
    blend = datasets.concatenate_datasets(parts).shuffle(seed=data.seed).flatten_indices()
    if data.eval_size >= len(blend):
        raise TrlmError(f"blend {data.name}: eval_size {data.eval_size} leaves no training rows of {len(blend)}")
    if data.eval_size == 0:
        return DatasetDict(train=blend)
    cut = len(blend) - data.eval_size
    return DatasetDict(train=blend.select(range(cut)), eval=blend.select(range(cut, len(blend))))


def dataset_hash(blend: DatasetDict) -> str:
    """sha256 over the Arrow data of every split: the identity of what a run trained on."""
    digest = hashlib.sha256()
    for name in sorted(blend):
        digest.update(name.encode())
        for batch in blend[name].with_format("arrow").iter(batch_size=10_000):
            digest.update(batch.to_pandas().to_json(orient="records").encode())
    return digest.hexdigest()

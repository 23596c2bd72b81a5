"""Reading sources: local formats, caps, sampling, column handling."""

from __future__ import annotations

import random

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from trlm.config import Sampling, SourceConfig
from trlm.data.fixtures import smoltalk_row, write_jsonl
from trlm.data.sources import read_source, reservoir
from trlm.errors import TrlmError


def source(**fields) -> SourceConfig:
    return OmegaConf.merge(OmegaConf.structured(SourceConfig), fields)


def test_a_folder_of_jsonl_files_reads_in_name_order(tmp_path):
    write_jsonl([smoltalk_row(i, think=False) for i in range(3)], tmp_path / "a.jsonl")
    write_jsonl([smoltalk_row(i, think=False) for i in range(3, 5)], tmp_path / "b.jsonl")
    rows = list(read_source(source(name=str(tmp_path)), Sampling.first, 0))
    assert [i for i, _ in rows] == [0, 1, 2, 3, 4]
    assert rows[3][1]["messages"][0]["content"] == "Tell me about item 3."


def test_a_save_to_disk_folder_is_a_source(tmp_path):
    Dataset.from_list([smoltalk_row(i, think=True) for i in range(4)]).save_to_disk(str(tmp_path / "saved"))
    rows = list(read_source(source(name=str(tmp_path / "saved"), entries=2), Sampling.first, 0))
    assert len(rows) == 2 and "<think>" in rows[0][1]["messages"][1]["content"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TrlmError, match="no such file"):
        list(read_source(source(name=str(tmp_path / "nope.jsonl")), Sampling.first, 0))


def test_rename_never_overwrites_and_drop_removes(tmp_path):
    rows = [{**smoltalk_row(0, think=False), "dataset": "d"}, {**smoltalk_row(1, think=False), "dataset": "e"}]
    write_jsonl(rows, tmp_path / "r.jsonl")
    cfg = source(name=str(tmp_path / "r.jsonl"), drop_columns=["chat_template_kwargs"],
                 rename_columns={"dataset": "source"})  # fmt: skip
    (_, row), _ = read_source(cfg, Sampling.first, 0)
    assert "chat_template_kwargs" not in row
    assert row["source"] == "fixture-smoltalk" and row["dataset"] == "d"  # `source` existed: kept


def test_reservoir_is_a_uniform_seeded_sample_in_source_order():
    counts = [0] * 10
    for seed in range(2000):
        for index, _ in reservoir(iter((i, {}) for i in range(10)), 3, random.Random(seed)):
            counts[index] += 1
    assert all(abs(c / 2000 - 0.3) < 0.05 for c in counts)
    sample = reservoir(iter((i, {}) for i in range(100)), 5, random.Random(1))
    assert sample == sorted(sample) and sample == reservoir(iter((i, {}) for i in range(100)), 5, random.Random(1))

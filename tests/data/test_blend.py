"""Blend loading: caps, column normalisation, provenance, held-out split, hashing, empty blends."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from trlm.config import DataConfig
from trlm.data.blend import dataset_hash, load_blend
from trlm.errors import TrlmError


def blend_cfg(**fields) -> DataConfig:
    return OmegaConf.merge(OmegaConf.structured(DataConfig), fields)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat(i):
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
            "chat_template_kwargs": {"x": 1}, "dataset": "src"}  # fmt: skip


def test_caps_normalises_and_records_provenance(tmp_path):
    a = write_rows(tmp_path / "a.jsonl", [chat(i) for i in range(10)])
    b = write_rows(tmp_path / "b.jsonl", [chat(100 + i) for i in range(10)])
    cfg = blend_cfg(
        name="t", kind="conversation", eval_size=2,
        sources=[
            {"name": a, "entries": 3, "drop_columns": ["chat_template_kwargs"],
             "rename_columns": {"dataset": "source"}},
            {"name": b, "split": "dev"},
        ],
    )  # fmt: skip
    blend = load_blend(cfg)
    rows = [*blend["train"], *blend["eval"]]
    assert len(blend["eval"]) == 2 and len(rows) == 13
    from_a = [r for r in rows if r["_source_dataset"] == a]
    assert sorted(r["messages"][0]["content"] for r in from_a) == ["q0", "q1", "q2"]  # the first N
    assert all(r["_source_split"] == "dev" for r in rows if r["_source_dataset"] == b)
    assert "chat_template_kwargs" not in blend["train"].column_names or all(
        r["chat_template_kwargs"] is None for r in from_a
    )
    assert all(r["source"] == "src" for r in from_a)


def test_shuffle_and_hash_are_deterministic_and_sensitive(tmp_path):
    path = write_rows(tmp_path / "a.jsonl", [chat(i) for i in range(20)])
    first = load_blend(blend_cfg(name="t", kind="conversation", sources=[{"name": path}]))
    second = load_blend(blend_cfg(name="t", kind="conversation", sources=[{"name": path}]))
    reseeded = load_blend(blend_cfg(name="t", kind="conversation", seed=7, sources=[{"name": path}]))
    assert first["train"]["messages"] == second["train"]["messages"]
    assert dataset_hash(first) == dataset_hash(second)
    assert dataset_hash(first) != dataset_hash(reseeded)


def test_empty_blend_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(TrlmError, match="is empty"):
        load_blend(blend_cfg(name="t", kind="conversation", sources=[{"name": str(path)}]))


def test_missing_file_and_wrong_schema_are_errors(tmp_path):
    with pytest.raises(TrlmError, match="no such file"):
        load_blend(blend_cfg(name="t", kind="conversation", sources=[{"name": str(tmp_path / "nope.jsonl")}]))
    path = write_rows(tmp_path / "p.jsonl", [{"text": "x"}])
    with pytest.raises(TrlmError, match="need column"):
        load_blend(blend_cfg(name="t", kind="preference", sources=[{"name": path}]))


def test_eval_size_must_leave_training_rows(tmp_path):
    path = write_rows(tmp_path / "a.jsonl", [chat(i) for i in range(3)])
    with pytest.raises(TrlmError, match="leaves no training rows"):
        load_blend(blend_cfg(name="t", kind="conversation", eval_size=3, sources=[{"name": path}]))


def test_offline_hub_source_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = blend_cfg(name="t", kind="conversation", sources=[{"name": "HuggingFaceTB/smoltalk2", "subset": "SFT"}])
    with pytest.raises(TrlmError, match="Hub is unreachable"):
        load_blend(cfg)

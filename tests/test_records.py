"""Typed run and blend records: a round trip, and what an interrupted or older writer leaves."""

from __future__ import annotations

import json

from tests.helpers import finish_run
from trlm.records import RunRecord, Summary, read_jsonl


def test_summary_round_trip(tmp_path):
    finish_run(tmp_path, {"eval_loss": 0.5}, step=7)
    summary = Summary.load(tmp_path / "summary.json")
    assert summary.global_step == 7 and summary.metrics == {"eval_loss": 0.5} and summary.status == "completed"
    summary.save(tmp_path / "again.json")
    assert Summary.load(tmp_path / "again.json") == summary


def test_missing_unreadable_or_partial_records_load_as_none(tmp_path):
    assert Summary.load(tmp_path / "nope.json") is None
    (tmp_path / "cut.json").write_text('{"stage": "sft", "glob')
    assert Summary.load(tmp_path / "cut.json") is None
    (tmp_path / "old.json").write_text(json.dumps({"status": "completed"}))  # required fields missing
    assert Summary.load(tmp_path / "old.json") is None
    assert RunRecord.load(tmp_path / "old.json") is None


def test_unknown_keys_are_ignored(tmp_path):
    finish_run(tmp_path)
    payload = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**payload, "written_by_a_newer_trlm": 1}))
    assert Summary.load(tmp_path / "summary.json").stage == "sft"


def test_read_jsonl_skips_a_line_cut_short(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1}, {"step": 2}]

"""The demo task: shipped blends match their generator, traces are right, rejected replies are worse."""

from __future__ import annotations

import json
import re

from trlm.demo.task import DATA_DIR, demo_blends, worked_trace
from trlm.scoring import parse_think_reply


def test_shipped_jsonl_is_what_the_generator_writes():
    for name, rows in demo_blends().items():
        shipped = [json.loads(line) for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()]
        assert shipped == rows, name


def test_worked_trace_adds_left_to_right():
    assert worked_trace((4, 7, 5)) == (["4 + 7 = 11", "11 + 5 = 16"], 16)


def test_think_rows_are_well_formed_correct_and_unique():
    rows = demo_blends()["sft_think"]
    prompts = [r["messages"][0]["content"] for r in rows]
    assert len(set(prompts)) == len(prompts)
    for row in rows:
        parsed = parse_think_reply(row["messages"][1]["content"])
        terms = [int(t) for t in re.findall(r"\d+", row["messages"][0]["content"])]
        assert parsed.well_formed and parsed.answer == f"The answer is {sum(terms)}."


def test_preference_rows_pair_a_correct_trace_with_a_flawed_one():
    rows = demo_blends()["dpo"]
    assert {r["category"] for r in rows} == {"slip", "no_think", "unclosed", "contradiction"}
    for row in rows:
        assert row["chosen"][0] == row["rejected"][0] and row["chosen"] != row["rejected"]
        chosen, rejected = (parse_think_reply(row[k][1]["content"]) for k in ("chosen", "rejected"))
        assert chosen.well_formed
        assert not rejected.well_formed or rejected.answer != chosen.answer

"""Row normalisation and every drop reason, one row at a time."""

from __future__ import annotations

import pytest

from trlm.config import DataKind
from trlm.data.fixtures import CONVERSATION_BREAKS, LINE_BREAKS, PREFERENCE_BREAKS, olmo_row, smoltalk_row
from trlm.data.schema import DROP_REASONS, Dropped, normalise, think_problem


@pytest.mark.parametrize("reason", sorted(CONVERSATION_BREAKS))
def test_each_broken_conversation_is_dropped_for_its_reason(reason):
    with pytest.raises(Dropped) as dropped:
        normalise(CONVERSATION_BREAKS[reason](smoltalk_row(1, think=True)), DataKind.conversation)
    assert dropped.value.reason == reason


@pytest.mark.parametrize("reason", sorted(PREFERENCE_BREAKS))
def test_each_broken_pair_is_dropped_for_its_reason(reason):
    with pytest.raises(Dropped) as dropped:
        normalise(PREFERENCE_BREAKS[reason](olmo_row(1)), DataKind.preference)
    assert dropped.value.reason == reason


def test_every_reason_is_exercised_by_the_fixtures():
    assert set(DROP_REASONS) == {*CONVERSATION_BREAKS, *PREFERENCE_BREAKS, *LINE_BREAKS, "duplicate"}


def test_conversation_keeps_role_and_content_only():
    row = smoltalk_row(3, think=True)
    row["messages"][0]["name"] = "extra"
    out = normalise(row, DataKind.conversation)
    assert out["messages"] == [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    assert out["source"] == "fixture-smoltalk"


def test_preference_splits_the_shared_prompt_from_the_completions():
    out = normalise({**olmo_row(2), "source": "olmo"}, DataKind.preference)
    assert out["prompt"] == [{"role": "user", "content": "Which is better for task 2?"}]
    assert [m["role"] for m in out["chosen"]] == ["assistant"] and out["chosen"] != out["rejected"]


def test_a_malformed_rejected_trace_is_a_valid_pair():
    row = olmo_row(4)
    row["rejected"] = [row["rejected"][0], {"role": "assistant", "content": "<think> never closed"}]
    assert normalise(row, DataKind.preference)["rejected"][0]["content"] == "<think> never closed"


def test_multimodal_parts_become_text():
    row = smoltalk_row(5, think=False)
    row["messages"][0]["content"] = [
        {"type": "text", "text": "Look "},
        {"type": "image"},
        {"type": "text", "text": "here"},
    ]
    assert normalise(row, DataKind.conversation)["messages"][0]["content"] == "Look here"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<think>a</think> b <think>c</think> d", None),
        ("no thinking at all", None),
        ("</think> a", "think_unbalanced"),
        ("<think> a", "think_unbalanced"),
        ("<think> a <think> b </think></think>", "think_nested"),
        ("<think> \n </think> b", "think_empty"),
    ],
)
def test_think_problem(text, problem):
    assert think_problem(text) == problem

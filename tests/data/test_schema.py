"""Row normalisation and every drop reason, one row at a time."""

from __future__ import annotations

import pytest

from trlm.config import DataKind
from trlm.data.fixtures import (
    CONVERSATION_BREAKS,
    LINE_BREAKS,
    PREFERENCE_BREAKS,
    VERIFIABLE_BREAKS,
    gsm8k_row,
    olmo_row,
    smoltalk_row,
)
from trlm.data.schema import DROP_REASONS, REPAIRS, Dropped, normalise, think_problem

CONVERSATION_DROPS = sorted(set(CONVERSATION_BREAKS) - set(REPAIRS))
PREFERENCE_DROPS = sorted(set(PREFERENCE_BREAKS) - set(REPAIRS))


@pytest.mark.parametrize("reason", CONVERSATION_DROPS)
def test_each_broken_conversation_is_dropped_for_its_reason(reason):
    with pytest.raises(Dropped) as dropped:
        normalise(CONVERSATION_BREAKS[reason](smoltalk_row(1, think=True)), DataKind.conversation)
    assert dropped.value.reason == reason


@pytest.mark.parametrize("reason", PREFERENCE_DROPS)
def test_each_broken_pair_is_dropped_for_its_reason(reason):
    with pytest.raises(Dropped) as dropped:
        normalise(PREFERENCE_BREAKS[reason](olmo_row(1)), DataKind.preference)
    assert dropped.value.reason == reason


def gsm8k_prompt_row(i: int) -> dict:
    row = gsm8k_row(i)
    return {"prompt": row.pop("question"), **row}  # the preset renames `question` to `prompt`


@pytest.mark.parametrize("reason", sorted(VERIFIABLE_BREAKS))
def test_each_broken_verifiable_row_is_dropped_for_its_reason(reason):
    with pytest.raises(Dropped) as dropped:
        normalise(VERIFIABLE_BREAKS[reason](gsm8k_prompt_row(1)), DataKind.verifiable)
    assert dropped.value.reason == reason


def test_verifiable_row_keeps_the_question_and_the_answer_after_the_gsm8k_marker():
    out = normalise(gsm8k_prompt_row(4), DataKind.verifiable)
    assert out["prompt"] == [{"role": "user", "content": gsm8k_row(4)["question"]}] and out["answer"] == "7"
    # a conversation whose last turn is the reply: the reply is the reference's, not the prompt's
    conversation = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]
    assert normalise({"prompt": conversation, "answer": "2"}, DataKind.verifiable)["prompt"] == conversation[:1]


@pytest.mark.parametrize("repair", sorted(REPAIRS))
def test_each_harmless_defect_is_repaired_and_named(repair):
    repairs: list[str] = []
    row = normalise(CONVERSATION_BREAKS[repair](smoltalk_row(1, think=True)), DataKind.conversation, repairs)
    assert repairs == [repair]
    system = [m for m in row["messages"] if m["role"] == "system"]
    reply = row["messages"][-1]["content"]
    assert all(m["content"].strip() for m in system)  # an empty system message is gone
    assert think_problem(reply) is None and "<think>\n\n</think>" not in reply
    if repair == "think_opening_restored":
        assert reply.startswith("<think>\na trace the template had opened\n</think>")


def test_an_empty_think_block_in_an_earlier_turn_is_removed_and_the_trace_after_it_kept():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think></think>Hello."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>add</think>4"}]  # fmt: skip
    repairs: list[str] = []
    out = normalise({"messages": messages}, DataKind.conversation, repairs)
    assert [m["content"] for m in out["messages"]][1::2] == ["Hello.", "<think>add</think>4"]
    assert repairs == ["empty_think_removed"]


def test_every_reason_is_exercised_by_the_fixtures():
    assert set(DROP_REASONS) | set(REPAIRS) == {
        *CONVERSATION_BREAKS,
        *PREFERENCE_BREAKS,
        *VERIFIABLE_BREAKS,
        *LINE_BREAKS,
        "duplicate",
        "row_too_long",
    }


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
    ],
)
def test_think_problem(text, problem):
    assert think_problem(text) == problem

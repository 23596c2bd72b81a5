"""Scoring replies: think-trace well-formedness and answer accuracy (one rule for evaluation, sweeps, lm-eval)."""

from __future__ import annotations

import pytest

from trlm.scoring import parse_think_reply, score_replies, split_last_reply

GOOD = "<think>\n2 + 3 = 5\n</think>\nThe answer is 5."


@pytest.mark.parametrize(
    ("reply", "well_formed"),
    [
        (GOOD, True),
        ("  " + GOOD + "\n", True),
        ("The answer is 5.", False),  # no trace
        ("<think>\n2 + 3 = 5\nThe answer is 5.", False),  # unclosed
        ("<think>\n</think>\nThe answer is 5.", False),  # empty trace
        ("<think>\n2 + 3 = 5\n</think>\n", False),  # no answer
        ("<think><think>x</think></think> 5", False),  # nested
        ("Sure. <think>x</think> 5", False),  # trace not first
        ("<think>a</think> 5 <think>b</think>", False),  # two blocks
    ],
)
def test_parse_think_reply(reply, well_formed):
    assert parse_think_reply(reply).well_formed is well_formed


def test_answers_compare_after_the_trace_whitespace_normalised():
    reference = GOOD
    replies = [
        "<think>other steps</think>  The answer is   5.",  # different trace, same answer: correct
        "<think>\n2 + 3 = 6\n</think>\nThe answer is 6.",  # wrong answer
        "The answer is 5.",  # right answer, malformed: not counted correct
        GOOD,
    ]
    metrics = score_replies(replies, [reference] * 4, expect_think=True)
    assert metrics["answer_accuracy"] == 0.5 and metrics["think_format_rate"] == 0.75
    assert metrics["answer_accuracy_stripped"] == 0.75  # the malformed right answer counts once stripped


def test_without_thinking_the_whole_reply_is_the_answer():
    metrics = score_replies(["2 + 3 = 5.", "<think>x</think>2 + 3 = 6."], ["2 + 3 = 5."] * 2, expect_think=False)
    assert metrics == {"eval_prompts": 2.0, "answer_accuracy": 0.5, "answer_accuracy_stripped": 0.5,
                       "think_leak_rate": 0.5}  # fmt: skip


def test_think_format_metrics_on_hand_made_generations():
    replies = [
        GOOD,                                                   # well-formed: 3 trace words
        "<think>\n2 + 3 = 5\nThe answer is 5.",                  # unbalanced
        "<think>\n</think>\nThe answer is 5.",                   # empty trace
        "<think>\n2 + 3 = 5\n</think>\n",                        # missing answer
        "<think>a b</think>\nThe answer is 5. <think>more</think>",  # leaked tags after the trace
    ]  # fmt: skip
    metrics = score_replies(replies, [GOOD] * 5, expect_think=True)
    assert metrics["think_format_rate"] == 0.2 and metrics["answer_accuracy"] == 0.2
    assert metrics["think_empty_rate"] == 0.2 and metrics["think_leak_rate"] == 0.2
    assert metrics["mean_trace_words"] == 5.0  # "2 + 3 = 5": five words, in the one well-formed trace
    assert metrics["answer_accuracy_stripped"] == 0.4  # GOOD, and the empty-trace reply's answer


def test_split_last_reply_takes_the_final_assistant_turn():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    prompt, reference = split_last_reply(messages)
    assert prompt == messages[:3] and reference == "d"

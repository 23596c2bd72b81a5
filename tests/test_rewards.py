"""The GRPO reward registry: each reward on hand-made completions, and the same verdicts as the evaluation."""

from __future__ import annotations

import pytest

from trlm.errors import Problems
from trlm.rewards import REWARDS, build_rewards, reward_problems
from trlm.scoring import score_replies

RIGHT, WRONG = "<think>\n3 plus 4 is 7.\n</think>\n7", "<think>\n3 plus 4 is 8.\n</think>\n8"
BROKEN = {
    "missing think block": "7",
    "duplicated think block": "<think>a</think><think>b</think>7",
    "unclosed think block": "<think>\n3 plus 4 is 7.\n7",
    "empty trace": "<think>\n</think>\n7",
    "empty answer": "<think>\n3 plus 4 is 7.\n</think>\n",
    "empty reply": "",
}


def scores(name: str, completions: list[str], answer: str = "7", think: bool = True, length: int = 64) -> list[float]:
    (reward,) = build_rewards([name], think=think, max_completion_length=length)
    return reward(completions, answer=[answer] * len(completions))


@pytest.mark.parametrize("name", ["answer_correct", "math_equivalent"])
def test_a_right_answer_scores_one_and_a_wrong_or_malformed_one_zero(name):
    assert scores(name, [RIGHT, WRONG]) == [1.0, 0.0]
    assert scores(name, list(BROKEN.values())) == [0.0] * len(BROKEN)  # no well-formed trace: no answer


def test_a_stage_without_thinking_scores_the_bare_answer():
    assert scores("answer_correct", ["7", "8", RIGHT], think=False) == [1.0, 0.0, 0.0]


def test_math_equivalence_reads_numbers_in_words_and_latex_that_exact_match_does_not():
    replies = ["<think>t</think>The answer is 7.", "<think>t</think>$\\frac{14}{2}$", "<think>t</think>7.0"]
    assert scores("math_equivalent", replies) == [1.0, 1.0, 1.0]
    assert scores("answer_correct", replies) == [0.0, 0.0, 0.0]
    # the number inside the trace is not the answer
    assert scores("math_equivalent", ["<think>it is 7</think>I am not sure."]) == [0.0]


def test_think_format_is_one_well_formed_block_then_an_answer():
    assert scores("think_format", [RIGHT, WRONG]) == [1.0, 1.0]  # the format, right or wrong
    assert scores("think_format", list(BROKEN.values())) == [0.0] * len(BROKEN)


def test_overlong_punishes_only_the_last_stretch_before_the_limit():
    (reward,) = build_rewards(["overlong"], think=True, max_completion_length=64)
    lengths = [10, 48, 56, 64]
    got = reward(completions=["x"] * 4, completion_ids=[[1] * n for n in lengths])
    assert got[:2] == [0.0, 0.0] and -1.0 < got[2] < 0.0 and got[3] == pytest.approx(-1.0)


def test_rewards_and_the_stage_evaluation_give_the_same_verdict():
    replies = [RIGHT, WRONG, *BROKEN.values()]
    references = ["<think>\nx\n</think>\n7"] * len(replies)
    evaluation = [score_replies([r], [ref], expect_think=True) for r, ref in zip(replies, references, strict=True)]
    assert scores("answer_correct", replies) == [e["answer_accuracy"] for e in evaluation]
    assert scores("think_format", replies) == [e["think_format_rate"] for e in evaluation]


def test_rewards_read_the_think_tags_that_tokenizer_decoding_would_skip(tmp_path):
    """TRL decodes completions with special tokens skipped: <think> would vanish from every reply."""
    from tests.helpers import stage
    from trlm.config import TinyModelConfig
    from trlm.modeling import load_tokenizer, tiny_model_dir

    tokenizer = load_tokenizer(str(tiny_model_dir(TinyModelConfig(), tmp_path)), stage(think=True))
    ids = tokenizer(RIGHT, add_special_tokens=False)["input_ids"]
    skipped = tokenizer.decode(ids, skip_special_tokens=True)
    assert "<think>" not in skipped  # what TRL would pass as the completion text
    (reward,) = build_rewards(["think_format"], think=True, max_completion_length=64, tokenizer=tokenizer)
    assert reward([skipped], completion_ids=[ids]) == [1.0]


def test_a_reward_that_does_not_exist_is_a_config_problem_naming_the_choices(plan_for):
    (problem,) = reward_problems(["answer_correct", "accuracy"])
    assert problem.key == "stage.rewards.1.name" and all(name in problem.rule for name in REWARDS)
    with pytest.raises(Problems) as found:
        plan_for("experiment=demo", "stage=grpo", "stage.rewards=[{name: accuracy}]")
    assert any(p.key == "stage.rewards.0.name" for p in found.value.problems)

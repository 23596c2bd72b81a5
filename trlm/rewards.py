"""The rewards a GRPO stage scores its completions with: a registry, named in `stage.rewards`.

Each reward is a TRL reward function — `reward(completions, **columns) -> list[float]`, one score
per completion, the blend's columns (`answer`, the reference) passed by name. Correctness and format
are scored by `trlm/scoring.py`, the code behind a stage's own evaluation and the sweep objective, so
a reward and the reported accuracy cannot disagree.

    answer_correct   1 when the reply's final answer is the reference's (well-formed, when the stage
                     thinks), else 0: the demo's exact, verifiable answers
    think_format     1 for one well-formed <think>…</think> block followed by an answer, else 0
    math_equivalent  the reply's answer parsed and checked for mathematical equivalence with the
                     reference by math-verify (as TRL's `accuracy_reward`, plain-text numbers read too;
                     `pip install -e ".[math]"`)
    overlong         TRL's soft overlong punishment: 0 up to `max_completion_length - 64` tokens,
                     falling linearly to -1 at the limit (DAPO)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trlm.errors import Problem
from trlm.scoring import parse_think_reply, score_replies

Reward = Callable[..., list[float]]


class Replies:
    """The completions as text with their special tokens kept: TRL decodes them for rewards with special
    tokens skipped, which would take `<think>` and `</think>` out of every reply. The reply ends where
    a stage's evaluation cuts it (`chat_template.cut_at_turn_end`)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, completions: list[Any], completion_ids: list[list[int]] | None = None) -> list[str]:
        from trlm.chat_template import cut_at_turn_end

        if completion_ids is None or self.tokenizer is None:
            return [text_of(c) for c in completions]
        return [cut_at_turn_end(self.tokenizer.decode(ids, skip_special_tokens=False)) for ids in completion_ids]


def text_of(completion: Any) -> str:
    """A completion as text: conversational completions are message lists (the reply is their last turn)."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return str(completion)


def answer_correct(think: bool, replies: Replies) -> Reward:
    def reward(completions: list[Any], answer: list[str], completion_ids=None, **_: Any) -> list[float]:
        texts = replies(completions, completion_ids)
        return [
            score_replies([t], [a], expect_think=think)["answer_accuracy"] for t, a in zip(texts, answer, strict=True)
        ]

    return reward


def think_format(think: bool, replies: Replies) -> Reward:
    def reward(completions: list[Any], completion_ids=None, **_: Any) -> list[float]:
        return [
            score_replies([t], [""], expect_think=True)["think_format_rate"]
            for t in replies(completions, completion_ids)
        ]

    return reward


def math_equivalent(think: bool, replies: Replies) -> Reward:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # TRL's accuracy_reward reads only LaTeX answers ($…$, \boxed{}); a tiny model writes "… is 18."
    # in plain text, so plain expressions are read too (the last one in the answer).
    read = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def score(text: str, reference: str) -> float:
        gold = parse(reference)
        return float(bool(gold) and verify(gold, parse(text, extraction_config=read)))

    def reward(completions: list[Any], answer: list[str], completion_ids=None, **_: Any) -> list[float]:
        texts = replies(completions, completion_ids)
        if think:  # the answer after one well-formed trace (a number inside the trace is no answer)
            texts = [parsed.answer if (parsed := parse_think_reply(t)).well_formed else "" for t in texts]
        return [score(t, a) if t else 0.0 for t, a in zip(texts, answer, strict=True)]

    return reward


def overlong(think: bool, replies: Replies, max_completion_length: int) -> Reward:
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(max_completion_length, soft_punish_cache=min(64, max_completion_length // 4))


@dataclass(frozen=True)
class RewardSpec:
    build: Callable[..., Reward]
    needs: str | None = None  # a package it imports, for the check's one line
    wants_length: bool = False  # built with the stage's max_completion_length


REWARDS: dict[str, RewardSpec] = {
    "answer_correct": RewardSpec(answer_correct),
    "think_format": RewardSpec(think_format),
    "math_equivalent": RewardSpec(math_equivalent, needs="math_verify"),
    "overlong": RewardSpec(overlong, wants_length=True),
}


def reward_problems(names: list[str]) -> list[Problem]:
    """Rewards that do not exist, or whose package is not installed (config checks; light)."""
    found = []
    for index, name in enumerate(names):
        spec = REWARDS.get(name)
        if spec is None:
            found.append(Problem(f"stage.rewards.{index}.name", f"is not a reward; choose one of: {', '.join(REWARDS)}",
                                 repr(name)))  # fmt: skip
        elif spec.needs and importlib.util.find_spec(spec.needs) is None:
            found.append(Problem(f"stage.rewards.{index}.name", f"needs the {spec.needs} package", repr(name),
                                 f"pip install {spec.needs.replace('_', '-')}"))  # fmt: skip
    return found


def build_rewards(names: list[str], think: bool, max_completion_length: int, tokenizer: Any = None) -> list[Reward]:
    """The stage's reward functions, each named as TRL logs it (`rewards/<name>/mean`)."""
    built, replies = [], Replies(tokenizer)
    for name in names:
        spec = REWARDS[name]
        wants = (max_completion_length,) if spec.wants_length else ()
        reward = spec.build(think, replies, *wants)
        reward.__name__ = name
        built.append(reward)
    return built

"""Measuring a stage on held-out conversations: answers sampled from the model, scored.

A reply is *well-formed* when it opens with one `<think>` block holding a non-empty trace, closes it
once, and follows it with a non-empty final answer. Answer accuracy compares the final answer
(the text after `</think>`, or the whole reply for a stage without thinking) with the held-out
reply's, whitespace-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trlm.chat_template import IM_END, THINK_END, THINK_START
from trlm.config import EvalConfig


@dataclass(frozen=True)
class ParsedReply:
    well_formed: bool
    answer: str


def normalise(text: str) -> str:
    return " ".join(text.split())


def parse_think_reply(text: str) -> ParsedReply:
    """Splits `<think>trace</think> answer`; anything else (nested, unclosed, empty parts) is malformed."""
    stripped = text.strip()
    if not stripped.startswith(THINK_START) or stripped.count(THINK_START) != 1 or stripped.count(THINK_END) != 1:
        return ParsedReply(False, normalise(stripped))
    trace, _, answer = stripped[len(THINK_START) :].partition(THINK_END)
    return ParsedReply(bool(trace.strip()) and bool(answer.strip()), normalise(answer))


def split_last_reply(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The conversation up to its last assistant turn, and that turn's content (the reference)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@torch.no_grad()
def generate_replies(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict[str, str]]], cfg: EvalConfig
) -> list[str]:
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    replies = []
    try:
        for start in range(0, len(prompts), cfg.batch_size):
            texts = [
                tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                for p in prompts[start : start + cfg.batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=cfg.do_sample,
                temperature=cfg.temperature if cfg.do_sample else None,
                top_p=None,
                top_k=None,
                eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, batch["input_ids"].shape[1] :]:
                # Keep special tokens (<think> is one); cut at the end of the turn.
                replies.append(tokenizer.decode(row, skip_special_tokens=False).split(IM_END)[0])
    finally:
        tokenizer.padding_side = padding_side
    return replies


def score_replies(replies: list[str], references: list[str], expect_think: bool) -> dict[str, float]:
    well_formed, correct = 0, 0
    for reply, reference in zip(replies, references, strict=True):
        if expect_think:
            parsed, wanted = parse_think_reply(reply), parse_think_reply(reference)
            well_formed += parsed.well_formed
            correct += parsed.well_formed and parsed.answer == wanted.answer
        else:
            correct += normalise(reply) == normalise(reference)
    n = len(replies)
    metrics = {"eval_prompts": float(n), "answer_accuracy": correct / n}
    if expect_think:
        metrics["think_format_rate"] = well_formed / n
    return metrics


def generation_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict[str, str]]],
    cfg: EvalConfig,
    expect_think: bool,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics over held-out conversations, and the samples behind them."""
    pairs = [split_last_reply(messages) for messages in conversations[: cfg.max_prompts]]
    prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    replies = generate_replies(model, tokenizer, prompts, cfg)
    samples = [
        {"prompt": p[-1]["content"], "reference": r, "reply": reply}
        for p, r, reply in zip(prompts, references, replies, strict=True)
    ]
    return score_replies(replies, references, expect_think), samples

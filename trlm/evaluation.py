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

from trlm.chat_template import THINK_END, THINK_START, cut_at_turn_end, turn_end_ids
from trlm.config import EvalConfig

# What score_replies returns (a stage's own evaluation; `start_<name>` the same for its start model).
REPLY_METRICS = ("eval_prompts", "answer_accuracy", "answer_accuracy_stripped", "think_leak_rate",
                 "think_format_rate", "think_empty_rate", "mean_trace_words")  # fmt: skip


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
                eos_token_id=turn_end_ids(tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, batch["input_ids"].shape[1] :]:
                replies.append(cut_at_turn_end(tokenizer.decode(row, skip_special_tokens=False)))
    finally:
        tokenizer.padding_side = padding_side
    return replies


def answer_of(text: str) -> str:
    """The final answer with any trace stripped: the text after the last `</think>` (or all of it)."""
    return normalise(text.rpartition(THINK_END)[2] if THINK_END in text else text)


def score_replies(replies: list[str], references: list[str], expect_think: bool) -> dict[str, float]:
    """The think-format metrics, one place for the stage evaluation and the sweep objective.

    answer_accuracy: well-formed (when thinking) and the right answer; answer_accuracy_stripped:
    the right answer after stripping whatever trace there is; think_format_rate: well-formed share;
    think_empty_rate: replies whose trace is empty; think_leak_rate: think tags where none belong
    (in the answer after the trace, a second block, or any tag in a stage without thinking);
    mean_trace_words: words inside well-formed traces, averaged over them.
    """
    n = len(replies)
    correct = stripped = well_formed = empty = leaked = trace_words = 0
    for reply, reference in zip(replies, references, strict=True):
        stripped += answer_of(reply) == answer_of(reference)
        if not expect_think:
            correct += normalise(reply) == normalise(reference)
            leaked += THINK_START in reply or THINK_END in reply
            continue
        parsed, wanted = parse_think_reply(reply), parse_think_reply(reference)
        well_formed += parsed.well_formed
        correct += parsed.well_formed and parsed.answer == wanted.answer
        trace = (
            reply.strip()[len(THINK_START) :].partition(THINK_END)[0] if reply.strip().startswith(THINK_START) else ""
        )
        empty += reply.strip().startswith(THINK_START) and THINK_END in reply and not trace.strip()
        after = reply.partition(THINK_END)[2]
        leaked += THINK_START in after or THINK_END in after
        trace_words += len(trace.split()) if parsed.well_formed else 0
    metrics = {"eval_prompts": float(n), "answer_accuracy": correct / n, "answer_accuracy_stripped": stripped / n,
               "think_leak_rate": leaked / n}  # fmt: skip
    if expect_think:
        metrics.update(think_format_rate=well_formed / n, think_empty_rate=empty / n,
                       mean_trace_words=trace_words / well_formed if well_formed else 0.0)  # fmt: skip
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

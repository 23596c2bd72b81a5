"""Measuring a stage on held-out conversations: answers sampled from the model, then scored
(trlm/scoring.py says what a right, well-formed answer is)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trlm.chat_template import cut_at_turn_end, turn_end_ids
from trlm.config import EvalConfig
from trlm.scoring import score_replies, split_last_reply


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

"""Sampling replies for a stage's evaluation: where a reply ends."""

from __future__ import annotations

import pytest
import torch


class ScriptedHead(torch.nn.Module):
    """An LM head that makes greedy decoding say `ids` in order (the last one from then on)."""

    def __init__(self, ids: list[int], vocab: int):
        super().__init__()
        self.ids, self.vocab, self.calls = ids, vocab, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.ids[min(self.calls, len(self.ids) - 1)]] = 1.0
        self.calls += 1
        return logits


@pytest.mark.parametrize("turn_end", ["<|im_end|>", "<|im_start|>", "<|endoftext|>"])
def test_a_reply_ends_where_the_model_ends_its_turn_or_starts_another(compose_cfg, tmp_path, turn_end):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trlm.chat_template import chatml_template
    from trlm.config import EvalConfig
    from trlm.evaluation import generate_replies
    from trlm.modeling import tiny_model_dir

    directory = tiny_model_dir(compose_cfg("experiment=demo").model.tiny, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = chatml_template("You add numbers.", generation_markers=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    five, end = tokenizer.convert_tokens_to_ids("5"), tokenizer.convert_tokens_to_ids(turn_end)
    model.lm_head = head = ScriptedHead([five, end, five], len(tokenizer))
    (reply,) = generate_replies(
        model, tokenizer, [[{"role": "user", "content": "2 + 3?"}]], EvalConfig(max_new_tokens=6)
    )
    assert reply == "5" and head.calls == 2  # generation stopped at the turn's end, not after 6 tokens

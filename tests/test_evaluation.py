"""Scoring sampled replies: think-trace well-formedness and answer accuracy."""

from __future__ import annotations

import pytest
import torch

from trlm.evaluation import parse_think_reply, score_replies, split_last_reply

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

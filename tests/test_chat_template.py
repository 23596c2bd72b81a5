"""The ChatML template: layout, default system prompt, generation prompt, assistant mask."""

from __future__ import annotations

import pytest
from jinja2 import Environment

from trlm.chat_template import chatml_template
from trlm.demo.tokenizer import train_demo_tokenizer

SYSTEM = 'You are "tiny".\nReason first.'
CHAT = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\nThe answer is 5."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_demo_tokenizer(vocab_size=400)


def render(tokenizer, template: str, messages, **kwargs) -> str:
    tokenizer.chat_template = template
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_renders_clean_chatml_with_default_system(tokenizer):
    text = render(tokenizer, chatml_template(SYSTEM), CHAT)
    assert text == (
        '<|im_start|>system\nYou are "tiny".\nReason first.<|im_end|>\n'
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n2 + 3 = 5\n</think>\nThe answer is 5.<|im_end|>\n"
    )


def test_an_explicit_system_turn_replaces_the_default(tokenizer):
    text = render(tokenizer, chatml_template(SYSTEM), [{"role": "system", "content": "Be brief."}, *CHAT])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert "tiny" not in text


def test_generation_prompt_is_a_prefix_of_the_full_conversation(tokenizer):
    template = chatml_template(SYSTEM)
    prompt = render(tokenizer, template, CHAT[:1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert render(tokenizer, template, CHAT).startswith(prompt)


def test_generation_markers_do_not_change_the_text(tokenizer):
    with_markers = render(tokenizer, chatml_template(SYSTEM, generation_markers=True), CHAT)
    without = render(tokenizer, chatml_template(SYSTEM, generation_markers=False), CHAT)
    assert with_markers == without
    assert "{% generation %}" in chatml_template(SYSTEM) and "{% generation %}" not in chatml_template(SYSTEM, False)


def test_assistant_mask_covers_the_reply_and_its_end_token_only(tokenizer):
    tokenizer.chat_template = chatml_template(SYSTEM)
    out = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert masked == CHAT[1]["content"] + "<|im_end|>"


def test_template_is_valid_jinja_for_awkward_prompts():
    for prompt in ['quote " and \\ backslash', "{{ not a variable }}", "{% raw %}"]:
        template = chatml_template(prompt, generation_markers=False)
        rendered = Environment().from_string(template).render(messages=[], add_generation_prompt=False)
        assert prompt in rendered

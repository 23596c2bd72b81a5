"""The ChatML chat template the report enforces, with the stage's system prompt as default.

`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message; a system turn with the stage's prompt is
injected when the conversation has none; the generation prompt is `<|im_start|>assistant\\n`.

Whitespace, on purpose: the reference YAML's indentation leaks stray spaces and a blank line
between turns into its rendered prompts. trlm renders clean ChatML (exactly SmolLM2's own
layout), so a trlm checkpoint is prompted the way its base model was pretrained.

`{% generation %}` marks each assistant reply and its `<|im_end|>`, so TRL can build an
assistant-only loss mask (`stage.assistant_only_loss=true`). The markers do not change the
rendered text.
"""

from __future__ import annotations

import json

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_START, THINK_END = "<think>", "</think>"
THINK_TOKENS = (THINK_START, THINK_END)
# A reply ends at its <|im_end|>, or where the model starts another turn or the text without closing it.
TURN_ENDS = (IM_END, IM_START, ENDOFTEXT)


def turn_end_ids(tokenizer) -> list[int]:
    """The ids that end a reply in `generate` (those of TURN_ENDS this tokenizer has as tokens)."""
    vocabulary = tokenizer.get_vocab()
    return [vocabulary[token] for token in TURN_ENDS if token in vocabulary]


def cut_at_turn_end(text: str) -> str:
    """A decoded reply up to the first of TURN_ENDS (special tokens such as <think> kept)."""
    for token in TURN_ENDS:
        text = text.split(token)[0]
    return text


_TEMPLATE = """\
{%- if not messages or messages[0]['role'] != 'system' -%}
{{- '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{{- '<|im_start|>assistant\\n' -}}
GEN_START{{- message['content'] + '<|im_end|>' -}}GEN_END
{{- '\\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- endif -%}"""


def chatml_template(system_prompt: str, generation_markers: bool = True) -> str:
    """The Jinja chat template with `system_prompt` as the default system turn."""
    start, end = ("{% generation %}", "{% endgeneration %}") if generation_markers else ("", "")
    body = _TEMPLATE.replace("GEN_START", start).replace("GEN_END", end)
    # A JSON string literal is a valid Jinja string literal: quotes and newlines stay escaped.
    return "{%- set DEFAULT_SYSTEM = " + json.dumps(system_prompt) + " -%}\n" + body

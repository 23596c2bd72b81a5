"""A small byte-level BPE tokenizer trained on the demo blends, shaped like SmolLM2's.

Like SmolLM2's, it knows `<|endoftext|>`, `<|im_start|>` and `<|im_end|>` (ids 0-2) but not
`<think>` / `</think>`: stage 2 adds those exactly as it does for the real model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from trlm.chat_template import ENDOFTEXT, IM_END, IM_START
from trlm.demo.task import demo_blends

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BASE_SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]


def demo_corpus(extra_texts: Iterable[str] = ()) -> Iterator[str]:
    """Every message text of the demo blends, role names, plus `extra_texts` (system prompts)."""
    yield from ("system", "user", "assistant")
    yield from extra_texts
    for rows in demo_blends().values():
        for row in rows:
            for key in ("messages", "chosen", "rejected"):
                for message in row.get(key, []):
                    yield message["content"]


def train_demo_bpe(vocab_size: int, extra_texts: Iterable[str] = ()) -> Tokenizer:
    """The BPE itself (the `tokenizers` library alone: `trlm plan` counts tokens with it, without transformers)."""
    tokenizer = Tokenizer(models.BPE())
    # Digit runs split from their neighbours: "17" is the same token after a space, a newline or "=",
    # so copying and adding numbers is a lookup the tiny model can learn quickly.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(demo_corpus(extra_texts), trainer=trainer)
    return tokenizer


def train_demo_tokenizer(vocab_size: int, extra_texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=train_demo_bpe(vocab_size, extra_texts),
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=IM_END,
        unk_token=ENDOFTEXT,
    )

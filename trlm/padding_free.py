"""Padding-free SFT: the padded recipe's sequences, batches and loss, without computing padding.

A padded batch of rows of very different lengths (the report's long-tailed reasoning traces)
spends most of its compute on padding. Padding-free, TRL's collator concatenates the batch's rows
into one sequence: position ids restart at each row, labels are masked at each row's first token,
and `cu_seq_lens` marks the boundaries. Each row must then attend only to itself:

- flash-attention varlen kernels (CUDA / ROCm, `flash_attention_2|3`) do that natively;
- on sdpa and eager (CPU, or GPUs without flash-attention) trlm registers `trlm_documents`: causal
  sdpa per row of the concatenated batch (O(sum n_i^2), no dense block mask), and, for padded
  batches (evaluation, generation), plain sdpa with the usual mask;
- any other attention cannot isolate rows here: trlm keeps padding and says so once.

TRL 1.16 refuses `padding_free` without packing while `max_length` is set (its collator does not
truncate). trlm builds the trainer padded, so that TRL truncates the rows at `max_length` as the
recipe says, then swaps in the same collator with `padding_free=True`. The model runs without a
KV cache in training: a cache would join the rows.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel, Trainer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

log = logging.getLogger(__name__)
DOCUMENT_ATTENTION = "trlm_documents"
VARLEN = ("flash_attention_2", "flash_attention_3")  # isolate rows by cu_seq_lens themselves
PER_DOCUMENT = ("sdpa", "eager")  # isolated by trlm_documents


def boundaries(kwargs: dict, position_ids: torch.Tensor | None) -> list[int] | None:
    """Row starts and the end of a concatenated batch: from the collator's cu_seq_lens, or position ids."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        return [int(x) for x in cu.tolist()]
    if position_ids is None or position_ids.shape[0] != 1:
        return None
    restarts = (torch.diff(position_ids[0]) != 1).nonzero().flatten() + 1  # a row starts where positions jump
    if not len(restarts):
        return None
    return [0, *restarts.tolist(), position_ids.shape[1]]


def document_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each row of a concatenated batch (shape (1, heads, total, dim))."""
    spans = boundaries(kwargs, kwargs.get("position_ids")) if query.shape[0] == 1 and attention_mask is None else None
    if spans is None:  # a padded or single-row batch: sdpa as usual
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    dropout = dropout if module.training else 0.0
    rows = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, is_causal=True, scale=scaling
        )
        for s, e in itertools.pairwise(spans)
        if e > s
    ]
    return torch.cat(rows, dim=2).transpose(1, 2).contiguous(), None


def document_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """No dense mask for a concatenated batch (each row is causal by itself); sdpa's for a padded one."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(DOCUMENT_ATTENTION, document_attention)
AttentionMaskInterface.register(DOCUMENT_ATTENTION, document_mask)


def attention_for_padding_free(attn_implementation: str) -> str | None:
    """The attention that keeps rows apart when batches are concatenated, or None (pad instead)."""
    if attn_implementation in VARLEN:
        return attn_implementation
    if attn_implementation in PER_DOCUMENT:
        return DOCUMENT_ATTENTION
    return None


def keep_rows_apart(model: PreTrainedModel, attn_implementation: str) -> bool:
    """Gives the model an attention that keeps concatenated rows apart; False if there is none for it."""
    attention = attention_for_padding_free(attn_implementation)
    if attention is None:
        return False
    if attention != attn_implementation:
        model.set_attn_implementation(attention)
    model.config.use_cache = False
    return True


def make_padding_free(trainer: Trainer, model: PreTrainedModel, attn_implementation: str) -> bool:
    """Switches an SFT trainer built padded to padding-free batches; False (and one warning) if it cannot."""
    if not keep_rows_apart(model, attn_implementation):
        log.warning("padding-free training needs rows kept apart, which attn_implementation=%s cannot do: "
                    "training padded (hardware.padding_free=false silences this)", attn_implementation)  # fmt: skip
        return False
    trainer.data_collator = dataclasses.replace(trainer.data_collator, padding_free=True)
    return True

"""Padding-free SFT: the padded recipe's sequences, batches and loss, without computing padding.

A padded batch of rows of very different lengths (the report's long-tailed reasoning traces)
spends most of its compute on padding. Padding-free, TRL's collator concatenates the batch's rows
into one sequence: position ids restart at each row, labels are masked at each row's first token,
and `cu_seq_lens` marks the boundaries. Each row must then attend only to itself:

- flash-attention varlen kernels (CUDA / ROCm, `flash_attention_2|3`) do that natively;
- on sdpa and eager trlm registers `trlm_documents`: on a GPU, the flash varlen kernel torch itself
  ships (`torch.nn.attention.varlen`, no flash-attn package needed; tried once, a build without it
  falls back with one warning); on CPU, causal sdpa per row of
  the concatenated batch (O(sum n_i^2), no dense block mask); for padded batches (evaluation,
  generation), plain sdpa with the usual mask;
- any other attention cannot isolate rows here: trlm keeps padding and says so once.

TRL 1.16 refuses `padding_free` without packing while `max_length` is set (its collator does not
truncate). trlm builds the trainer padded, so that TRL truncates the rows at `max_length` as the
recipe says, then swaps in the same collator with `padding_free=True`. The model runs without a
KV cache in training: a cache would join the rows.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel, Trainer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:  # torch >= 2.10: flash-attention varlen on CUDA and ROCm, shipped with torch
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch
    varlen_attn = None

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
    dropout = dropout if module.training else 0.0
    flash_dtype = half_precision(query)
    if query.is_cuda and flash_dtype is not None and dropout == 0.0 and varlen_works(query.device, flash_dtype):
        return varlen_rows(query, key, value, spans, scaling, groups, flash_dtype, kwargs), None
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # split, not slices: the backward of a slice writes into a zeroed copy of the whole batch, row after row
    sizes = [e - s for s, e in itertools.pairwise(spans)]
    rows = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling).transpose(1, 2)
        for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
        if q.shape[2]
    ]
    return torch.cat(rows, dim=1), None  # (1, total, heads, dim), as sdpa_attention_forward returns


def half_precision(query: torch.Tensor) -> torch.dtype | None:
    """The dtype flash kernels can run this attention in: the query's, or autocast's; None in plain fp32."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    device = query.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


_VARLEN_ARGS = inspect.signature(varlen_attn).parameters if varlen_attn is not None else {}


@functools.cache
def varlen_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's flash varlen kernel runs on this device (tried once); else the per-row loop, said once."""
    if varlen_attn is None:
        return False
    try:
        probe = torch.zeros(4, 1, 64, device=device, dtype=dtype)
        spans = torch.tensor([0, 1, 4], dtype=torch.int32, device=device)
        varlen_rows(probe[None].transpose(1, 2), probe[None].transpose(1, 2), probe[None].transpose(1, 2),
                    [0, 1, 4], None, 1, dtype, {"cu_seq_lens_q": spans})  # fmt: skip
        return True
    except (RuntimeError, NotImplementedError) as error:
        log.warning("torch's flash varlen attention does not run on %s (%s): rows kept apart one by one",
                    device, str(error).splitlines()[0])  # fmt: skip
        return False


def varlen_rows(query, key, value, spans, scaling, groups, dtype, kwargs) -> torch.Tensor:
    """All rows in one flash varlen call: (1, heads, total, dim) in, (1, total, heads, dim) out."""
    cu = kwargs.get("cu_seq_lens_q")
    cu = cu.to(torch.int32) if cu is not None else torch.tensor(spans, dtype=torch.int32, device=query.device)
    longest = kwargs.get("max_length_q") or max(e - s for s, e in itertools.pairwise(spans))
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # (total, heads, dim)
    options = {"scale": scaling}
    # torch 2.10/2.11 take is_causal; later releases a (left, right) window, (-1, 0) being causal
    options.update({"is_causal": True} if "is_causal" in _VARLEN_ARGS else {"window_size": (-1, 0)})
    if groups > 1:
        if "enable_gqa" in _VARLEN_ARGS:
            options["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, cu, cu, int(longest), int(longest), **options)[None]


def document_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    """No dense mask for a concatenated batch (each row is causal by itself); sdpa's for a padded one."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(DOCUMENT_ATTENTION, document_attention)
AttentionMaskInterface.register(DOCUMENT_ATTENTION, document_mask)


def attention_for_padding_free(attn_implementation: str, accelerator: str = "cpu") -> str | None:
    """The attention that keeps rows apart when batches are concatenated, or None (pad instead).

    On a GPU the per-row loop is no option: on an H100 it ran at 0.16-0.36x the padded recipe's
    tokens/s (docs/bench/gpu-*.json), so without torch's varlen kernel a GPU trains padded.
    """
    if attn_implementation in VARLEN:
        return attn_implementation
    if attn_implementation in PER_DOCUMENT and (accelerator == "cpu" or varlen_attn is not None):
        return DOCUMENT_ATTENTION
    return None


def keep_rows_apart(model: PreTrainedModel, attn_implementation: str, accelerator: str = "cpu") -> bool:
    """Gives the model an attention that keeps concatenated rows apart; False if there is none for it."""
    attention = attention_for_padding_free(attn_implementation, accelerator)
    if attention is None:
        return False
    if attention != attn_implementation:
        model.set_attn_implementation(attention)
    model.config.use_cache = False
    return True


def make_padding_free(
    trainer: Trainer, model: PreTrainedModel, attn_implementation: str, accelerator: str = "cpu"
) -> bool:
    """Switches an SFT trainer built padded to padding-free batches; False (and one warning) if it cannot."""
    if not keep_rows_apart(model, attn_implementation, accelerator):
        log.warning("padding-free training needs rows kept apart, which attn_implementation=%s cannot do fast "
                    "on %s: training padded (hardware.padding_free=false silences this)",
                    attn_implementation, accelerator)  # fmt: skip
        return False
    trainer.data_collator = dataclasses.replace(trainer.data_collator, padding_free=True)
    return True


def right_padded(mask: torch.Tensor) -> bool:
    """Every row's tokens first, then its padding, and at least one token a row."""
    return mask.dim() == 2 and bool((mask[:, 1:] <= mask[:, :-1]).all()) and bool(mask[:, 0].all())


def padding_free_fused_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps a forward that TRL gave a fused LM head (DPO): a right-padded batch goes through the model as one
    concatenated row (position ids restarting, `cu_seq_lens` marking rows) and the per-token outputs come back
    in the padded layout, zero at padding, as TRL's padded forward gives them. Any other call is unchanged."""

    @functools.wraps(forward)
    def packed_forward(*args: Any, fused_lm_head: bool = False, **kwargs: Any) -> Any:
        ids, mask, labels = kwargs.get("input_ids"), kwargs.get("attention_mask"), kwargs.get("labels")
        if not fused_lm_head or args or ids is None or mask is None or labels is None or "position_ids" in kwargs:
            return forward(*args, fused_lm_head=fused_lm_head, **kwargs)
        if not right_padded(mask):
            return forward(*args, fused_lm_head=fused_lm_head, **kwargs)
        keep = mask.bool()
        lengths = mask.sum(dim=1)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        starts = cu[:-1].long()
        packed_labels = labels[keep].clone()
        packed_labels[starts] = -100  # a row's last position would score the next row's first token
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)[keep]
        rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask", "labels")}
        longest = int(lengths.max())
        out = forward(input_ids=ids[keep][None], position_ids=positions[None], labels=packed_labels[None],
                      fused_lm_head=True, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest,
                      max_length_k=longest, **rest)  # fmt: skip
        scored = torch.ones(int(cu[-1]) - 1, dtype=torch.bool, device=ids.device)  # position t scores token t+1
        scored[starts[1:] - 1] = False  # ... except each row's last
        into = keep[:, 1:]  # padded layout: position t of a row scores its token t+1
        for name, value in out.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == scored.shape[0]:
                out[name] = value.new_zeros(into.shape).masked_scatter(into, value[0][scored])
        return out

    return packed_forward


def make_dpo_padding_free(trainer: Trainer, attn_implementation: str, accelerator: str = "cpu") -> bool:
    """DPO batches without padding (TRL 1.16 turns its own `padding_free` off for DPO); False with one warning."""
    models = [m for m in (trainer.model, getattr(trainer, "ref_model", None)) if m is not None]
    if not all(keep_rows_apart(m, attn_implementation, accelerator) for m in models):
        log.warning("padding-free DPO needs rows kept apart, which attn_implementation=%s cannot do fast on %s: "
                    "training padded (hardware.padding_free=false silences this)",
                    attn_implementation, accelerator)  # fmt: skip
        return False
    for model in models:
        if not getattr(model.forward, "trlm_padding_free", False):
            model.forward = padding_free_fused_forward(model.forward)
            model.forward.trlm_padding_free = True
    return True

"""A blend as training sees it: the prepared rows, the held-out split, the length policy.

Training on `data=<blend>` prepares the blend once (trlm/data/prepare.py) and reuses it after,
keyed by the hash of its config and sources; the run records that hash and the rows' sha256.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from trlm.config import DataConfig, DataKind, TooLong
from trlm.data.prepare import PreparedBlend, prepare_blend, verify_prepared
from trlm.errors import TrlmError

log = logging.getLogger(__name__)


def load_prepared(prepared: PreparedBlend) -> Dataset:
    """The blend's rows, once its files are checked to be the ones prepared (`verify_prepared`)."""
    verify_prepared(prepared)
    builder = "parquet" if prepared.metadata.format == "parquet" else "json"
    files = [str(f) for f in prepared.files]
    return datasets.load_dataset(builder, data_files=files, split="train")


def held_out_blend(data: DataConfig) -> DataConfig:
    """The held-out rows of `data.eval_sources`, as a blend of their own (same kind and pipeline)."""
    return dataclasses.replace(data, name=f"{data.name}-eval", sources=data.eval_sources, eval_sources=[])


PROVENANCE_KEY = ["_source_dataset", "_source_subset", "_source_split", "_source_index"]


def without_training_rows(held_out: Dataset, train: Dataset) -> Dataset:
    """Held-out rows less any the training rows also hold: a training source read past its cap to fill
    it (data.fill) may have reached rows its held-out source starts at."""
    trained = set(zip(*(train[column] for column in PROVENANCE_KEY), strict=True))
    keys = zip(*(held_out[column] for column in PROVENANCE_KEY), strict=True)
    keep = [i for i, key in enumerate(keys) if key not in trained]
    if len(keep) < len(held_out):
        log.info("held-out rows also in training (read past a cap to fill it): %d of %d left out",
                 len(held_out) - len(keep), len(held_out))  # fmt: skip
        held_out = held_out.select(keep)
    return held_out


def load_blend(data: DataConfig, blends_dir: Path) -> tuple[DatasetDict, dict[str, Any]]:
    """The blend's `train` rows, its `eval` rows when it holds any out, and where they came from.

    Held-out rows are the last `eval_size` rows of the shuffled blend, or the rows of `eval_sources`
    prepared as a second blend (which leaves every training row in place).
    """
    prepared = prepare_blend(data, blends_dir)
    rows = load_prepared(prepared)
    provenance = {
        "prepared": str(prepared.path),
        "config_hash": prepared.metadata.config_hash,
        "sha256": prepared.metadata.content_sha256,
        "eval_sha256": None,
    }
    if data.eval_sources:
        held_out = prepare_blend(held_out_blend(data), blends_dir)
        provenance["eval_sha256"] = held_out.metadata.content_sha256
        return DatasetDict(train=rows, eval=without_training_rows(load_prepared(held_out), rows)), provenance
    if data.eval_size >= len(rows):
        raise TrlmError(f"blend {data.name}: eval_size {data.eval_size} leaves no training rows of {len(rows)}")
    if data.eval_size == 0:
        return DatasetDict(train=rows), provenance
    cut = len(rows) - data.eval_size  # the rows are already shuffled
    return DatasetDict(train=rows.select(range(cut)), eval=rows.select(range(cut, len(rows)))), provenance


def token_lengths(
    rows: Dataset,
    kind: DataKind,
    tokenizer: PreTrainedTokenizerBase,
    combine: Callable[[tuple[int, int]], int] = max,
    cap: int | None = None,
) -> list[int]:
    """Each row's length in tokens as the stage renders it, capped at `cap`; for a pair, `combine` of its
    two sides (`max`: the longer, what must fit `max_length`; `sum`: what a DPO step runs through)."""

    def counted(rendered: list[str]) -> list[int]:
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return [min(len(row), cap) if cap else len(row) for row in ids]

    def lengths(batch: dict) -> dict:
        if kind == DataKind.conversation:
            return {"n": counted([tokenizer.apply_chat_template(m, tokenize=False) for m in batch["messages"]])}
        if kind == DataKind.verifiable:  # the prompt a completion is sampled after
            return {"n": counted([tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                                  for p in batch["prompt"]])}  # fmt: skip
        sides = [
            counted([tokenizer.apply_chat_template(prompt + reply, tokenize=False)
                     for prompt, reply in zip(batch["prompt"], batch[side], strict=True)])
            for side in ("chosen", "rejected")
        ]  # fmt: skip
        return {"n": [combine(pair) for pair in zip(*sides, strict=True)]}

    return rows.map(lengths, batched=True, remove_columns=rows.column_names, desc="Measuring token lengths")["n"]


def apply_length_policy(
    blend: DatasetDict, kind: DataKind, tokenizer: PreTrainedTokenizerBase, max_length: int, policy: TooLong
) -> tuple[DatasetDict, dict[str, int]]:
    """Counts rows over `max_length` tokens per split; drops them under `too_long: drop`."""
    counts, kept = {}, {}
    for split, rows in blend.items():
        too_long = [i for i, n in enumerate(token_lengths(rows, kind, tokenizer)) if n > max_length]
        counts[split] = len(too_long)
        if policy == TooLong.drop and too_long:
            excluded = set(too_long)
            rows = rows.select([i for i in range(len(rows)) if i not in excluded])
        kept[split] = rows
    if any(counts.values()):
        action = "dropped" if policy == TooLong.drop else "left for TRL to truncate"
        log.info("rows over max_length %d: %s (%s)", max_length, counts, action)
    if not len(kept["train"]):
        raise TrlmError(f"no training rows fit max_length {max_length} (data.too_long=drop)")
    return DatasetDict(kept), counts

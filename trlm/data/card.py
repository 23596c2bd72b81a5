"""The dataset card of a prepared blend, and its optional upload to the Hub."""

from __future__ import annotations

from pathlib import Path

from trlm.errors import TrlmError
from trlm.records import BlendMetadata

SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
KIND_TAGS = {"conversation": ["conversation", "instruction-following"], "preference": ["preference", "dpo"],
             "verifiable": ["math", "verifiable-answers", "grpo"]}  # fmt: skip


ROW_SCHEMAS = {
    "conversation": "Rows are `messages`: a list of `{role, content}`.",
    "preference": "Rows are `prompt`, `chosen`, `rejected`: lists of `{role, content}`.",
    "verifiable": "Rows are `prompt`, a list of `{role, content}` ending with the user's turn, and `answer`, the "
    "reference a reward checks a reply against.",
}


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_BUCKETS if rows < limit), "n>1M")


def composition_table(metadata: BlendMetadata) -> str:
    lines = [
        "| Source | Subset | Split | Requested | Read | Actual | Dropped | Percentage |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in metadata.sources:
        requested = "all" if s.requested_entries is None else f"{s.requested_entries:,}"
        dropped = sum(s.dropped.values())
        lines.append(
            f"| {s.name} | {s.subset or '-'} | {s.split} | {requested} | {s.read:,} | "
            f"{s.actual_entries:,} | {dropped:,} | {s.percentage_of_total:.2f}% |"
        )
    return "\n".join(lines)


def reason_table(metadata: BlendMetadata, counts: str, none: str) -> str:
    """Per-source counts by reason of `counts` ("dropped" or "repaired")."""
    if not getattr(metadata, counts):
        return none
    reasons = sorted(getattr(metadata, counts))
    lines = ["| Source | " + " | ".join(reasons) + " |", "|---|" + "---:|" * len(reasons)]
    for s in metadata.sources:
        per_reason = getattr(s, counts)
        lines.append(f"| {s.name} ({s.split}) | " + " | ".join(str(per_reason.get(r, 0)) for r in reasons) + " |")
    return "\n".join(lines)


def dataset_card(metadata: BlendMetadata) -> str:
    """The blend's card, through huggingface_hub's `DatasetCard` (its front matter validated as the Hub reads it)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    tags = ["synthetic", *KIND_TAGS[metadata.kind], "trlm"]
    size = size_category(metadata.total_entries)
    data = DatasetCardData(tags=tags, language=["en"], size_categories=[size], pretty_name=metadata.name)
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n" + card_body(metadata)))


def card_body(metadata: BlendMetadata) -> str:
    return f"""
# {metadata.name}

{metadata.description}

{metadata.total_entries:,} rows ({metadata.kind}), prepared by trlm on {metadata.creation_date}
from {len(metadata.sources)} source(s): sampling `{metadata.sampling}`, dedup `{metadata.dedup}`,
shuffled with seed {metadata.seed}. Config hash `{metadata.config_hash}`, content sha256
`{metadata.content_sha256}`.

## Composition

{composition_table(metadata)}

## Rows dropped by validation

{reason_table(metadata, "dropped", "No rows were dropped.")}

## Rows repaired (kept)

{reason_table(metadata, "repaired", "No rows needed a repair.")}

## Schema

Every row carries its provenance: `_source_dataset`, `_source_subset`, `_source_split` and
`_source_index` (the row's position in its source), plus the upstream `source` tag where it had one.
{ROW_SCHEMAS[metadata.kind]}

## Usage

```python
from datasets import load_dataset

dataset = load_dataset("{metadata.name}", split="train")
```

## Attribution

The rows come from the sources listed above, under their own licences; cite them when you use this blend.
"""


def push_to_hub(folder: Path, repo_id: str, private: bool) -> str:
    """Uploads the prepared folder (data + card) as a dataset repo; the local folder is left as it is."""
    from huggingface_hub import HfApi

    from trlm.hub import hub_reachable

    if not hub_reachable():
        raise TrlmError(
            f"cannot push {repo_id}: the Hub is unreachable (or HF_HUB_OFFLINE is set); "
            f"the prepared blend is complete at {folder} — push it later from a connected machine"
        )
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder))
    return f"https://huggingface.co/datasets/{repo_id}"

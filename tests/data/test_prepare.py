"""Blend preparation over the fixture sources: counts, caps, provenance, formats, card, cache, safety."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

import trlm.data.prepare as prepare_module
from trlm.data.blend import load_prepared
from trlm.data.card import push_to_hub
from trlm.data.prepare import CARD, METADATA, blend_dir, prepare_blend
from trlm.data.schema import REPAIRS
from trlm.errors import TrlmError
from trlm.records import BlendMetadata


def conversation_blend(blend_cfg, root, **fields):
    sources = [
        {"name": str(root / "smoltalk_no_think.jsonl"), "split": "no_think"},
        {"name": str(root / "smoltalk_think.parquet"), "split": "think", "entries": 1500,
         "drop_columns": ["chat_template_kwargs"]},
    ]  # fmt: skip
    return blend_cfg(**{"name": "org/fixture-sft", "kind": "conversation", "sources": sources, **fields})


def preference_blend(blend_cfg, root, **fields):
    source = {"name": str(root / "olmo_preference.jsonl"), "drop_columns": ["prompt", "category", "prompt_id"],
              "rename_columns": {"dataset": "source"}}  # fmt: skip
    return blend_cfg(**{"name": "org/fixture-dpo", "kind": "preference", "sources": [source], **fields})


def expected_drops(injected: dict[int, str], limit: int | None = None) -> dict[str, int]:
    counts = Counter(reason for index, reason in injected.items() if limit is None or index < limit)
    return {reason: n for reason, n in counts.items() if reason not in REPAIRS}


def expected_repairs(injected: dict[int, str], limit: int | None = None) -> dict[str, int]:
    counts = Counter(reason for index, reason in injected.items() if limit is None or index < limit)
    return {reason: n for reason, n in sorted(counts.items()) if reason in REPAIRS}


def test_drops_are_counted_per_reason_and_source(fixture_sources, blend_cfg, tmp_path):
    root, injected = fixture_sources
    meta = prepare_blend(conversation_blend(blend_cfg, root, dedup=True), tmp_path).metadata
    no_think, think = meta.sources
    assert no_think.dropped == expected_drops(injected["smoltalk_no_think.jsonl"])
    assert no_think.repaired == expected_repairs(injected["smoltalk_no_think.jsonl"]) != {}
    assert think.dropped == expected_drops(injected["smoltalk_think.parquet"], limit=think.read)
    # read on past the first 1500 rows until 1500 were valid; dedup then removed the duplicates
    assert think.requested_entries == 1500 < think.read
    assert think.actual_entries == 1500 - think.dropped["duplicate"]
    assert meta.repaired == dict(sorted((Counter(no_think.repaired) + Counter(think.repaired)).items()))
    assert meta.total_entries == no_think.actual_entries + think.actual_entries
    assert no_think.percentage_of_total + think.percentage_of_total == pytest.approx(100, abs=0.02)


def test_without_fill_a_cap_is_the_first_n_rows_valid_or_not(fixture_sources, blend_cfg, tmp_path):
    root, injected = fixture_sources
    meta = prepare_blend(conversation_blend(blend_cfg, root, fill=False, dedup=True), tmp_path).metadata
    think = meta.sources[1]
    assert think.read == 1500 and think.dropped == expected_drops(injected["smoltalk_think.parquet"], limit=1500)
    assert think.actual_entries == 1500 - sum(think.dropped.values())


def test_a_source_that_runs_out_before_its_count_is_said_loudly(fixture_sources, blend_cfg, tmp_path, caplog):
    root, _ = fixture_sources
    source = {"name": str(root / "olmo_preference.jsonl"), "entries": 10**6}
    meta = prepare_blend(blend_cfg(name="f", kind="preference", sources=[source]), tmp_path).metadata
    assert meta.sources[0].actual_entries < 10**6
    assert f"RAN OUT: {meta.sources[0].actual_entries} valid rows of the 1000000 requested" in caplog.text


def test_duplicates_are_kept_without_dedup(fixture_sources, blend_cfg, tmp_path):
    root, _ = fixture_sources
    meta = prepare_blend(conversation_blend(blend_cfg, root, dedup=False), tmp_path).metadata
    assert "duplicate" not in meta.dropped


def test_preferences_are_normalised_with_provenance(fixture_sources, blend_cfg, tmp_path):
    root, injected = fixture_sources
    prepared = prepare_blend(preference_blend(blend_cfg, root, dedup=True), tmp_path)
    assert prepared.metadata.dropped == expected_drops(injected["olmo_preference.jsonl"])
    rows = load_prepared(prepared)
    assert set(rows.column_names) == {"prompt", "chosen", "rejected", "source", "_source_dataset",
                                      "_source_subset", "_source_split", "_source_index"}  # fmt: skip
    row = rows[0]
    assert row["source"] == "fixture-olmo" and row["_source_dataset"] == str(root / "olmo_preference.jsonl")
    assert row["_source_split"] == "train" and row["_source_subset"] is None
    index = row["_source_index"]
    original = json.loads((root / "olmo_preference.jsonl").read_text().splitlines()[index])
    assert row["prompt"] + row["chosen"] == original["chosen"]


def test_first_n_takes_the_head_and_random_a_seeded_sample(fixture_sources, blend_cfg, tmp_path):
    root, _ = fixture_sources
    source = {"name": str(root / "olmo_preference.jsonl"), "entries": 300}
    first = blend_cfg(name="f", kind="preference", sources=[source])
    sampled = blend_cfg(name="f", kind="preference", sources=[source], sampling="random")
    prepared = prepare_blend(first, tmp_path)
    head = load_prepared(prepared)["_source_index"]
    read = prepared.metadata.sources[0].read  # 300 valid rows: the head, read on past the rows dropped
    assert len(head) == 300 and max(head) == read - 1 and read == 300 + sum(prepared.metadata.dropped.values())
    sample = load_prepared(prepare_blend(sampled, tmp_path))["_source_index"]
    again = load_prepared(prepare_blend(sampled, tmp_path / "again"))["_source_index"]
    assert sample == again and max(sample) >= 300 and len(set(sample)) == len(sample)
    reseeded = load_prepared(prepare_blend(dataclasses.replace(sampled, seed=1), tmp_path))["_source_index"]
    assert sorted(reseeded) != sorted(sample)


def test_large_blends_are_parquet_shards_small_ones_jsonl(fixture_sources, blend_cfg, tmp_path):
    root, _ = fixture_sources
    small = prepare_blend(conversation_blend(blend_cfg, root), tmp_path)
    large = prepare_blend(conversation_blend(blend_cfg, root, shard_threshold=1000, shard_rows=800), tmp_path)
    assert small.metadata.files == ["train.jsonl"]
    assert large.metadata.format == "parquet" and len(large.files) == -(-large.metadata.total_entries // 800)
    assert all(f.exists() for f in large.files)
    assert load_prepared(small)[:] == load_prepared(large)[:]  # same rows, same shuffled order
    assert small.metadata.content_sha256 == large.metadata.content_sha256


def test_card_describes_the_blend(fixture_sources, blend_cfg, tmp_path):
    root, _ = fixture_sources
    prepared = prepare_blend(conversation_blend(blend_cfg, root, dedup=True), tmp_path)
    card = (prepared.path / CARD).read_text()
    meta = BlendMetadata.load(prepared.path / METADATA)
    assert meta == prepared.metadata
    from huggingface_hub import DatasetCard

    data = DatasetCard(card).data  # the front matter, as the Hub reads it
    assert data.tags[:2] == ["synthetic", "conversation"] and data.language == ["en"]
    assert data.size_categories == ["1K<n<10K"] and data.pretty_name == "org/fixture-sft"
    for source in meta.sources:
        assert f"| {source.name} | - | {source.split} |" in card
        assert f"{source.actual_entries:,}" in card
    assert "think_nested" in card
    repaired = card.split("## Rows repaired (kept)")[1].split("##")[0]
    assert all(reason in repaired for reason in meta.repaired) and meta.repaired
    assert 'load_dataset("org/fixture-sft"' in card


def test_a_prepared_blend_is_reused_and_a_changed_one_rebuilt(fixture_sources, blend_cfg, tmp_path):
    root, _ = fixture_sources
    cfg = preference_blend(blend_cfg, root)
    first = prepare_blend(cfg, tmp_path)
    stamp = (first.path / METADATA).stat().st_mtime_ns
    assert prepare_blend(cfg, tmp_path).path == first.path
    assert (first.path / METADATA).stat().st_mtime_ns == stamp  # not rebuilt
    assert blend_dir(dataclasses.replace(cfg, eval_size=9), tmp_path) == first.path  # training-only field
    changed = prepare_blend(dataclasses.replace(cfg, seed=3), tmp_path)
    assert changed.path != first.path


def test_a_changed_source_file_is_a_new_blend(blend_cfg, tmp_path):
    from trlm.data.fixtures import olmo_row, write_jsonl

    path = tmp_path / "pairs.jsonl"
    write_jsonl([olmo_row(i) for i in range(20)], path)
    cfg = blend_cfg(name="p", kind="preference", sources=[{"name": str(path)}])
    before = blend_dir(cfg, tmp_path)
    write_jsonl([olmo_row(i) for i in range(21)], path)
    assert blend_dir(cfg, tmp_path) != before


def test_an_interrupted_preparation_leaves_nothing_that_looks_finished(
    fixture_sources, blend_cfg, tmp_path, monkeypatch
):
    root, _ = fixture_sources
    cfg = preference_blend(blend_cfg, root)
    real, calls = prepare_module.normalise, {"n": 0}

    def failing(row, kind, repairs=None):
        calls["n"] += 1
        if calls["n"] == 500:
            raise KeyboardInterrupt
        return real(row, kind, repairs)

    monkeypatch.setattr(prepare_module, "normalise", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_blend(cfg, tmp_path)
    target = blend_dir(cfg, tmp_path)
    assert not target.exists()
    monkeypatch.setattr(prepare_module, "normalise", real)
    prepared = prepare_blend(cfg, tmp_path)
    assert prepared.path == target and (target / METADATA).exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_push_offline_fails_clearly_and_keeps_the_local_blend(fixture_sources, blend_cfg, tmp_path, monkeypatch):
    root, _ = fixture_sources
    prepared = prepare_blend(preference_blend(blend_cfg, root), tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrlmError, match=r"Hub is unreachable.*complete at"):
        push_to_hub(prepared.path, "org/fixture-dpo", private=True)
    assert (prepared.path / METADATA).exists() and all(f.exists() for f in prepared.files)


def test_offline_hub_source_fails_with_instructions(monkeypatch, blend_cfg, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = blend_cfg(name="t", kind="conversation", sources=[{"name": "HuggingFaceTB/smoltalk2", "subset": "SFT"}])
    with pytest.raises(TrlmError, match="Hub is unreachable"):
        prepare_blend(cfg, tmp_path)
    assert not any(tmp_path.glob("t-*"))


def test_an_empty_blend_is_an_error(blend_cfg, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(TrlmError, match="is empty"):
        prepare_blend(blend_cfg(name="t", kind="conversation", sources=[{"name": str(path)}]), tmp_path)
    assert not list(tmp_path.glob("t-*"))


def test_dedup_keeps_the_first_occurrence(fixture_sources, blend_cfg, tmp_path):
    root, injected = fixture_sources
    rows = load_prepared(prepare_blend(conversation_blend(blend_cfg, root, dedup=True), tmp_path))
    kept = {(r["_source_dataset"], r["_source_index"]) for r in rows}
    source = str(root / "smoltalk_no_think.jsonl")
    duplicates = [i for i, reason in injected["smoltalk_no_think.jsonl"].items() if reason == "duplicate"]
    assert duplicates and all((source, i) not in kept and (source, i - 1) in kept for i in duplicates)


def test_every_kept_row_is_written_once_in_a_seeded_order(fixture_sources, blend_cfg, tmp_path):
    root, _ = fixture_sources
    orders = []
    for seed in (1, 1, 2):
        cfg = conversation_blend(blend_cfg, root, seed=seed)
        rows = load_prepared(prepare_blend(cfg, tmp_path / str(len(orders))))
        orders.append([(r["_source_dataset"], r["_source_index"]) for r in rows])
    assert len(set(orders[0])) == len(orders[0])  # no row twice
    assert orders[0] == orders[1] and sorted(orders[0]) == sorted(orders[2]) and orders[0] != orders[2]
    sources = [name for name, _ in orders[0][:200]]
    assert len(set(sources)) == 2  # the two sources are interleaved, not concatenated


def test_a_source_line_that_is_not_utf8_is_dropped_and_counted_like_a_malformed_one(blend_cfg, tmp_path, caplog):
    from trlm.data.fixtures import smoltalk_row, write_jsonl

    path = tmp_path / "conv.jsonl"
    write_jsonl([smoltalk_row(i, think=False) for i in range(4)], path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], b'{"messages": "\xff\xfe"}\n', *lines[2:]]))
    meta = prepare_blend(blend_cfg(name="t", kind="conversation", sources=[{"name": str(path)}]), tmp_path).metadata
    assert meta.total_entries == 4 and meta.dropped == {"malformed_json": 1}
    assert f"{path} line 3 is not valid JSON (not UTF-8" in caplog.text


def test_a_row_longer_than_the_limit_is_dropped_at_preparation_and_counted(blend_cfg, tmp_path):
    from trlm.data.fixtures import smoltalk_row, write_jsonl

    rows = [smoltalk_row(i, think=False) for i in range(5)]
    rows[1]["messages"][1]["content"] = "x" * 5000  # one huge row (a 200 MB line would blow up training)
    write_jsonl(rows, tmp_path / "conv.jsonl")
    cfg = blend_cfg(name="t", kind="conversation", max_row_chars=2000, sources=[{"name": str(tmp_path / "conv.jsonl")}])
    meta = prepare_blend(cfg, tmp_path).metadata
    assert meta.total_entries == 4 and meta.dropped == {"row_too_long": 1}


def test_a_verifiable_blend_of_gsm8k_rows_is_prepared_like_the_others(blend_cfg, tmp_path):
    """The report's GRPO preset in miniature: GSM8K's train split renamed to `prompt`, its test split held out."""
    from trlm.data.blend import load_blend
    from trlm.data.fixtures import VERIFIABLE_BREAKS, gsm8k_row, sprinkle, write_jsonl

    rows = [{"prompt": r["question"], "answer": r["answer"]} for r in map(gsm8k_row, range(120))]
    injected = sprinkle(rows, VERIFIABLE_BREAKS, every=10)
    source = [{"question": r["prompt"], "answer": r["answer"]} for r in rows]
    write_jsonl(source, tmp_path / "train.jsonl")
    write_jsonl([gsm8k_row(i) for i in range(1000, 1016)], tmp_path / "test.jsonl")
    rename = {"question": "prompt"}
    cfg = blend_cfg(name="org/fixture-gsm8k", kind="verifiable", dedup=True, eval_size=0,
                    sources=[{"name": str(tmp_path / "train.jsonl"), "entries": 100, "rename_columns": rename}],
                    eval_sources=[{"name": str(tmp_path / "test.jsonl"), "rename_columns": rename}])  # fmt: skip
    blend, _ = load_blend(cfg, tmp_path / "blends")
    train, held_out = blend["train"], blend["eval"]
    prepared = prepare_blend(cfg, tmp_path / "blends")
    (source,) = prepared.metadata.sources  # read on past 100 rows until 100 were valid; then deduplicated
    assert prepared.metadata.dropped == expected_drops(injected, limit=source.read)
    assert len(train) == 100 - prepared.metadata.dropped["duplicate"] == source.actual_entries
    assert len(held_out) == 16 and {"prompt", "answer", "_source_index"} <= set(train.column_names)
    assert all(a == str(i + 3) for a, i in zip(train["answer"], train["_source_index"], strict=True))
    assert not set(train["answer"]) & set(held_out["answer"])  # the test split's answers are its own
    card = (prepared.path / CARD).read_text()
    assert "verifiable" in card and "no_answer" in card

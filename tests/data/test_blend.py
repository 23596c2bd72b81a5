"""The blend as training sees it: held-out split and the too-long policy."""

from __future__ import annotations

import pytest

from trlm.config import DataKind, TooLong
from trlm.data.blend import apply_length_policy, load_blend
from trlm.data.fixtures import olmo_row, smoltalk_row, write_jsonl
from trlm.demo.tokenizer import train_demo_tokenizer
from trlm.errors import TrlmError


@pytest.fixture(scope="module")
def tokenizer():
    from trlm.chat_template import chatml_template

    tok = train_demo_tokenizer(vocab_size=400)
    tok.chat_template = chatml_template("Sys.")
    return tok


def conversations(tmp_path, n=30, long_every=0):
    rows = [smoltalk_row(i, think=False) for i in range(n)]
    for i in range(0, n, long_every or n + 1):
        rows[i]["messages"][1]["content"] = "word " * 300
    path = tmp_path / "conv.jsonl"
    write_jsonl(rows, path)
    return str(path)


def test_eval_rows_are_held_out_from_the_prepared_order(blend_cfg, tmp_path):
    cfg = blend_cfg(name="t", kind="conversation", eval_size=5, sources=[{"name": conversations(tmp_path)}])
    blend, provenance = load_blend(cfg, tmp_path / "blends")
    assert (len(blend["train"]), len(blend["eval"])) == (25, 5)
    train_ids = {r["_source_index"] for r in blend["train"]}
    assert train_ids.isdisjoint(r["_source_index"] for r in blend["eval"])
    assert len(provenance["sha256"]) == 64 and provenance["eval_sha256"] is None


def test_eval_sources_hold_rows_out_past_the_training_cap(blend_cfg, tmp_path):
    source = conversations(tmp_path)
    cfg = blend_cfg(
        name="t",
        kind="conversation",
        sources=[{"name": source, "entries": 20}],
        eval_sources=[{"name": source, "skip": 20, "entries": 6}],
    )
    blend, provenance = load_blend(cfg, tmp_path / "blends")
    assert sorted(blend["train"]["_source_index"]) == list(range(20))  # every training row in place
    assert sorted(blend["eval"]["_source_index"]) == list(range(20, 26))
    assert provenance["eval_sha256"] and provenance["eval_sha256"] != provenance["sha256"]


def test_a_training_cap_filled_past_invalid_rows_never_shares_a_row_with_the_held_out_rows(blend_cfg, tmp_path):
    rows = [smoltalk_row(i, think=False) for i in range(30)]
    for i in (3, 7):  # two invalid rows in the training head: filling 20 valid rows reads rows 0..21
        rows[i]["messages"] = rows[i]["messages"][:1]
    write_jsonl(rows, tmp_path / "conv.jsonl")
    source = str(tmp_path / "conv.jsonl")
    cfg = blend_cfg(name="t", kind="conversation", sources=[{"name": source, "entries": 20}],
                    eval_sources=[{"name": source, "skip": 20, "entries": 6}])  # fmt: skip
    blend, _ = load_blend(cfg, tmp_path / "blends")
    assert sorted(blend["train"]["_source_index"]) == [i for i in range(22) if i not in (3, 7)]
    assert sorted(blend["eval"]["_source_index"]) == list(range(22, 26))  # 20 and 21 trained on: left out


def test_a_malformed_json_line_is_a_counted_drop_named_by_file_and_line(blend_cfg, tmp_path, caplog):
    from trlm.data.prepare import prepare_blend

    path = tmp_path / "conv.jsonl"
    conversations(tmp_path, n=5)
    lines = path.read_text().splitlines()
    lines.insert(2, '{"messages": [{"role": "user", "content": "cut sho')
    path.write_text("\n".join(lines) + "\n")
    cfg = blend_cfg(name="t", kind="conversation", sources=[{"name": str(path)}])
    meta = prepare_blend(cfg, tmp_path / "blends").metadata
    assert meta.total_entries == 5 and meta.dropped == {"malformed_json": 1}
    assert f"{path} line 3 is not valid JSON" in caplog.text


def test_eval_size_must_leave_training_rows(blend_cfg, tmp_path):
    cfg = blend_cfg(name="t", kind="conversation", eval_size=30, sources=[{"name": conversations(tmp_path)}])
    with pytest.raises(TrlmError, match="leaves no training rows"):
        load_blend(cfg, tmp_path / "blends")


@pytest.mark.parametrize(("policy", "kept"), [(TooLong.truncate, 30), (TooLong.drop, 24)])
def test_too_long_rows_are_counted_and_dropped_by_policy(blend_cfg, tmp_path, tokenizer, policy, kept):
    cfg = blend_cfg(name="t", kind="conversation", sources=[{"name": conversations(tmp_path, long_every=5)}])
    blend, _ = load_blend(cfg, tmp_path / "blends")
    out, counts = apply_length_policy(blend, DataKind.conversation, tokenizer, 200, policy)
    assert counts == {"train": 6} and len(out["train"]) == kept


def test_preference_length_is_the_longer_side(blend_cfg, tmp_path, tokenizer):
    rows = [olmo_row(i) for i in range(10)]
    rows[0]["rejected"][1]["content"] = "word " * 300
    write_jsonl(rows, tmp_path / "pairs.jsonl")
    cfg = blend_cfg(name="p", kind="preference", sources=[{"name": str(tmp_path / "pairs.jsonl")}])
    blend, _ = load_blend(cfg, tmp_path / "blends")
    _, counts = apply_length_policy(blend, DataKind.preference, tokenizer, 200, TooLong.drop)
    assert counts == {"train": 1}


@pytest.mark.parametrize("damage", ["rows cut", "cut mid-line", "bytes changed"])
def test_a_damaged_prepared_blend_is_refused_naming_the_file_and_the_fix(blend_cfg, tmp_path, damage):
    from trlm.data.prepare import prepare_blend

    cfg = blend_cfg(name="t", kind="conversation", eval_size=5, sources=[{"name": conversations(tmp_path)}])
    prepared = prepare_blend(cfg, tmp_path / "blends")
    train = prepared.path / "train.jsonl"
    data = train.read_bytes()
    lines = data.splitlines(keepends=True)
    train.write_bytes({"rows cut": b"".join(lines[:20]), "cut mid-line": data[: len(data) // 2],
                       "bytes changed": data.replace(b"user", b"User", 1)}[damage])  # fmt: skip
    with pytest.raises(
        TrlmError, match=rf"{train} does not match the sha256 recorded when it was prepared.*rebuild=true"
    ):
        load_blend(cfg, tmp_path / "blends")


def test_a_blend_prepared_before_file_hashes_is_checked_by_its_rows(blend_cfg, tmp_path):
    import json

    from trlm.data.prepare import METADATA, prepare_blend

    cfg = blend_cfg(name="t", kind="conversation", sources=[{"name": conversations(tmp_path)}])
    prepared = prepare_blend(cfg, tmp_path / "blends")
    meta = json.loads((prepared.path / METADATA).read_text())
    del meta["file_sha256"]  # as an older trlm wrote it
    (prepared.path / METADATA).write_text(json.dumps(meta))
    blend, provenance = load_blend(cfg, tmp_path / "blends")
    assert len(blend["train"]) == 30 and provenance["sha256"] == meta["content_sha256"]  # the rows read: verified
    train = prepared.path / "train.jsonl"
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(TrlmError, match=r"the rows in .* do not match the sha256 recorded"):
        load_blend(cfg, tmp_path / "blends")

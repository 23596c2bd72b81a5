"""conf/data holds the report's blends exactly (Tables 1-3 and the reference notes)."""

from __future__ import annotations

import pytest

SMOLTALK = "HuggingFaceTB/smoltalk2"
TABLE_1 = [
    ("SFT", "smoltalk_smollm3_smol_magpie_ultra_no_think", 33500),
    ("SFT", "smoltalk_smollm3_smol_summarize_no_think", 7500),
    ("SFT", "smoltalk_smollm3_smol_rewrite_no_think", 7500),
    ("SFT", "smoltalk_smollm3_systemchats_30k_no_think", 2500),
    ("SFT", "smoltalk_smollm3_explore_instruct_rewriting_no_think", 2500),
    ("SFT", "tulu_3_sft_personas_instruction_following_no_think", 2500),
    ("SFT", "smoltalk_smollm3_everyday_conversations_no_think", 2000),
]
TABLE_2 = [
    ("Mid", "Llama_Nemotron_Post_Training_Dataset_reasoning_r1", 40200),
    ("Mid", "OpenThoughts3_1.2M", 20000),
    ("SFT", "multi_turn_reasoning_if_think", 10000),
    ("SFT", "aya_dataset_Qwen3_32B_think", 5000),
    ("SFT", "smoltalk_everyday_convs_reasoning_Qwen3_32B_think", 2000),
    ("SFT", "s1k_1.1_think", 800),
]


def sources(cfg):
    return [(s.name, s.subset, s.split, s.entries) for s in cfg.data.sources]


def test_table_1_stage_1_blend(compose_cfg):
    cfg = compose_cfg("stage=sft")
    assert cfg.data.name == "Shekswess/trlm-sft-stage-1-final-2" and cfg.data.kind.value == "conversation"
    assert sources(cfg) == [(SMOLTALK, *row) for row in TABLE_1]
    assert sum(s.entries for s in cfg.data.sources) == 58000
    assert all(not s.drop_columns and not s.rename_columns for s in cfg.data.sources)


def test_table_2_stage_2_blend(compose_cfg):
    cfg = compose_cfg("stage=sft_think")
    assert cfg.data.name == "Shekswess/trlm-sft-stage-2-final-2"
    assert sources(cfg) == [(SMOLTALK, *row) for row in TABLE_2]
    assert all(list(s.drop_columns) == ["chat_template_kwargs"] for s in cfg.data.sources)


def test_table_3_stage_3_pairs(compose_cfg):
    cfg = compose_cfg("stage=dpo")
    assert cfg.data.name == "Shekswess/trlm-dpo-stage-3-final-2" and cfg.data.kind.value == "preference"
    (source,) = cfg.data.sources
    assert (source.name, source.subset, source.split, source.entries) == (
        "scottgeng00/olmo-3-preference-mix-deltas_reasoning-yolo_scottmix-DECON-chfiltered", None, "train", 50000,
    )  # fmt: skip
    assert list(source.drop_columns) == ["prompt", "category", "prompt_id"]
    assert dict(source.rename_columns) == {"dataset": "source"}


@pytest.mark.parametrize("stage", ["sft", "sft_think", "dpo"])
def test_report_blends_follow_the_reference_pipeline(compose_cfg, stage):
    data = compose_cfg(f"stage={stage}").data
    assert (data.sampling.value, data.dedup, data.shard_threshold, data.seed) == ("first", False, 50000, 42)


@pytest.mark.parametrize("stage", ["sft", "sft_think", "dpo"])
def test_demo_blends_use_local_files_and_dedup(compose_cfg, stage):
    data = compose_cfg(f"stage={stage}", "experiment=demo").data
    assert data.dedup is True and data.eval_size > 0
    assert all(s.name.startswith("trlm/demo/data/") for s in data.sources)

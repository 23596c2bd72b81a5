"""`trlm push`: a finished run's model with a card built from its records; --dry-run, and the offline refusal."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.helpers import finish_run
from trlm.errors import TrlmError
from trlm.push import PUSHED, push, push_command
from trlm.records import RunRecord


def finished(run_dir, stage: str, start: dict, metrics: dict) -> None:
    finish_run(run_dir, metrics, stage_name=stage)
    (run_dir / "final" / "model.safetensors").write_bytes(b"weights")
    RunRecord(stage=stage, run_name="demo", fingerprint="f" * 16, fingerprint_parts={}, start=start,
              data={"name": "org/blend-think", "sha256": "d" * 64, "rows": {"train": 736, "eval": 64},
                    "prepared": "/x/blends/blend"},
              hardware="mi300x", world_size=1, global_batch=128, git={"sha": "abc123", "dirty": False},
              versions={"trl": "1.16.0", "torch": "2.13.0"}).save(run_dir / "run.json")  # fmt: skip
    (run_dir / ".hydra").mkdir()
    config = {"stage": {"name": stage, "trainer": "sft", "description": "SFT with <think> traces",
                        "system_prompt": "You reason.", "recipe": {"learning_rate": 3e-4, "num_train_epochs": 1}},
              "tracking": {"report_to": ["wandb"], "project": "trlm", "entity": "me"}}  # fmt: skip
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(["experiment=demo", f"stage={stage}"], run_dir / ".hydra" / "overrides.yaml")
    (run_dir / "wandb-run-id").write_text("abcd1234\n")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "demo"
    finished(
        root / "sft", "sft", {"kind": "base", "source": "HuggingFaceTB/SmolLM2-135M-Instruct"}, {"train_loss": 1.0}
    )
    (root / "sft" / PUSHED).write_text(json.dumps({"repo": "me/trlm-sft", "url": "u", "revision": "r"}))
    start = {"kind": "previous_stage", "source": str(root / "sft" / "final"), "stage": "sft"}
    finished(root / "sft_think", "sft_think", start, {"train_loss": 0.5, "answer_accuracy": 0.875})
    return root


def test_a_dry_run_writes_a_complete_card_and_the_file_list(runs, capsys):
    assert push_command([str(runs / "sft_think"), "--repo", "me/trlm-think", "--dry-run"]) == 0
    assert "nothing uploaded" in capsys.readouterr().out
    from huggingface_hub import ModelCard

    card = ModelCard.load(runs / "sft_think" / "push" / "README.md")
    assert card.data.base_model == "me/trlm-sft"  # lineage: the earlier stage's pushed repo
    assert card.data.datasets == ["org/blend-think"] and "trlm" in card.data.tags
    text = card.text
    assert "[me/trlm-sft](https://huggingface.co/me/trlm-sft)" in text  # where it started, linked
    assert f"content sha256 `{'d' * 64}`" in text and "`learning_rate` | 0.0003" in text  # blend, recipe
    assert "| answer_accuracy | 0.875 |" in text and "python train.py experiment=demo stage=sft_think" in text
    assert "https://wandb.ai/me/trlm/runs/abcd1234" in text and "git `abc123`" in text
    files = (runs / "sft_think" / "push" / "files.txt").read_text()
    assert "final/model.safetensors\t7" in files and "final/config.json" in files
    assert not (runs / "sft_think" / PUSHED).exists()  # nothing was pushed


def test_a_first_stage_names_its_hub_base_model(runs):
    push(runs / "sft", "me/x", dry_run=True)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (runs / "sft" / "push" / "README.md").read_text()


def test_offline_the_real_push_is_one_line_naming_the_dry_run_and_the_token(runs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    with pytest.raises(TrlmError, match=r"the Hub is unreachable.*HF_TOKEN.*--dry-run"):
        push(runs / "sft_think", "me/x")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(TrlmError, match=r"HF_TOKEN is not set.*--dry-run"):
        push(runs / "sft_think", "me/x")


def test_an_unfinished_run_or_a_bad_repo_is_refused(runs, tmp_path):
    with pytest.raises(TrlmError, match="not a finished run"):
        push(tmp_path, "me/x", dry_run=True)
    with pytest.raises(TrlmError, match="write it owner/name"):
        push(runs / "sft", "nope", dry_run=True)

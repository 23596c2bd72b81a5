"""The three demo stages through train.py, a few steps each: lineage, artifacts, resume, skip."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.slow

QUICK = ["experiment=demo", "stage.recipe.max_steps=4", "stage.recipe.save_steps=2", "stage.recipe.logging_steps=1",
         "stage.evaluation.max_prompts=8", "stage.evaluation.max_new_tokens=12"]  # fmt: skip


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e") / "outputs"


@pytest.fixture(scope="module")
def stages(demo_root, tmp_path_factory):
    import os
    import subprocess
    import sys

    from trlm.paths import PROJECT_ROOT

    results = {}
    for stage in ("sft", "sft_think", "dpo"):
        results[stage] = subprocess.run(
            [
                sys.executable,
                str(PROJECT_ROOT / "train.py"),
                f"paths.output_root={demo_root}",
                f"stage={stage}",
                *QUICK,
            ],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert results[stage].returncode == 0, results[stage].stderr[-3000:]
    return results


@pytest.mark.parametrize("stage", ["sft", "sft_think", "dpo"])
def test_each_stage_leaves_a_complete_run_directory(stages, demo_root, stage):
    run_dir = demo_root / "demo" / stage
    for name in ("run.json", "metrics.jsonl", "summary.json", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    record = json.loads((run_dir / "run.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 4
    assert summary["data_sha256"] == record["data"]["sha256"] and len(record["data"]["sha256"]) == 64
    assert record["versions"]["trl"] and "sha" in record["git"]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if "loss" in s]
    assert [s["step"] for s in train_steps] == [1, 2, 3, 4]
    assert {"loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy"} <= set(train_steps[0])
    if stage == "dpo":
        assert {"rewards/accuracies", "rewards/margins", "rewards/chosen"} <= set(train_steps[0])
        assert "eval_rewards/accuracies" in summary["metrics"]
    if stage == "sft_think":
        assert 0 <= summary["metrics"]["think_format_rate"] <= 1
        assert 0 <= summary["metrics"]["start_think_format_rate"] <= 1  # the stage-1 model, same prompts
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert ("<think>" in tokenizer.get_vocab()) == (stage != "sft")


def test_stages_chain_through_lineage(stages, demo_root):
    for stage, previous in (("sft_think", "sft"), ("dpo", "sft_think")):
        start = json.loads((demo_root / "demo" / stage / "run.json").read_text())["start"]
        assert start["kind"] == "previous_stage" and start["stage"] == previous
        assert start["source"] == str(demo_root / "demo" / previous / "final")
    assert json.loads((demo_root / "demo" / "sft" / "run.json").read_text())["start"]["kind"] == "base"


def test_a_finished_stage_is_not_trained_again(stages, demo_root, run_cli):
    summary = demo_root / "demo" / "sft" / "summary.json"
    before = summary.read_text()
    result = run_cli("stage=sft", *QUICK, root=demo_root)
    assert result.returncode == 0 and "already finished" in result.stdout + result.stderr
    assert summary.read_text() == before


def test_an_interrupted_run_resumes_from_its_last_checkpoint(stages, demo_root, run_cli):
    run_dir = demo_root / "demo" / "sft"
    shutil.copytree(run_dir, demo_root / "sft_done")
    # A crash after the step-2 checkpoint: no summary, no final, no later checkpoint.
    (run_dir / "summary.json").unlink()
    shutil.rmtree(run_dir / "final")
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    result = run_cli("stage=sft", *QUICK, root=demo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr and "checkpoint-2" in result.stdout + result.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s]
    assert train_steps == sorted(train_steps) and train_steps.count(3) == 1  # no duplicated steps
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 4

"""Helpers the test modules share (a module of its own: tests never import from each other)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trlm.config import StageConfig, TinyModelConfig
from trlm.records import Summary

# A demo stage in seconds: a few steps, a small generation evaluation.
QUICK = ("experiment=demo", "stage.recipe.max_steps=4", "stage.recipe.save_steps=2", "stage.recipe.logging_steps=1",
         "stage.evaluation.max_prompts=8", "stage.evaluation.max_new_tokens=12")  # fmt: skip
TINY = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=300, tokenizer_texts=["Sys."])  # fmt: skip


def stage(think: bool) -> StageConfig:
    return OmegaConf.structured(StageConfig(name="s", trainer="sft", think_tokens=think, system_prompt="Sys."))


def assert_one_line_refusal(result, needle: str) -> None:
    """A command refused the trlm way: exit 2, no traceback, the last line `trlm: error: …` naming it."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trlm: error: ")


def finish_run(run_dir: Path, metrics: dict[str, float] | None = None, step: int = 10, stage_name: str = "sft") -> None:
    """A run directory that looks finished: a final model config and a completed summary."""
    (run_dir / "final").mkdir(parents=True, exist_ok=True)
    (run_dir / "final" / "config.json").write_text("{}")
    Summary(
        stage=stage_name,
        run_name="t",
        final_model=str(run_dir / "final"),
        metrics_file=str(run_dir / "metrics.jsonl"),
        data_sha256="0" * 64,
        global_step=step,
        metrics=metrics or {"train_loss": 1.0},
        objective={"metric": "train_loss", "direction": "minimize", "value": 1.0},
    ).save(run_dir / "summary.json")


def cluster_up() -> bool:
    """Whether the local Slurm dev cluster (scripts/slurm/up.sh) answers with idle nodes."""
    if not shutil.which("sinfo"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T", "-p", "mi300x"], capture_output=True, text=True)
    return states.returncode == 0 and "idle" in states.stdout


_cluster_skip = pytest.mark.skipif(not cluster_up(), reason="no local Slurm cluster (make slurm-up)")


def requires_cluster(test: Callable) -> Callable:
    """Runs `test` against the local Slurm dev cluster, skipped while it is down. Under `pytest -n`
    (xdist, `--dist loadgroup`) one worker runs all of them in turn: they share the cluster's nodes."""
    return pytest.mark.xdist_group("slurm")(_cluster_skip(test))

"""`trlm eval` and the stage's lm-eval step: lm-evaluation-harness on trlm's own offline task.

The equality with the stage's own evaluation on the same rows is checked where a trained demo
model exists: tests/demo/test_demo_learns.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import QUICK, assert_one_line_refusal
from trlm.errors import Problems, TrlmError
from trlm.harness import flat_metrics, model_dir_of, task_manager, unknown_tasks
from trlm.records import Summary


def test_a_run_directory_means_its_final_model_and_a_half_written_one_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    with pytest.raises(TrlmError, match="final is not a complete model directory"):  # killed while saving
        model_dir_of(run)
    (run / "final" / "model.safetensors").write_bytes(b"")
    assert model_dir_of(run) == (run / "final", run)  # results go to the run, beside its other figures
    assert model_dir_of(run / "final") == (run / "final", run / "final")
    with pytest.raises(TrlmError, match="does not exist"):
        model_dir_of(tmp_path / "missing")


def test_lm_evals_figures_are_flattened_without_bookkeeping():
    results = {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                                     "exact_match_stderr,strict-match": 0.1, "sample_len": 8}}}  # fmt: skip
    assert flat_metrics(results) == {"lm_eval/gsm8k/exact_match": 0.25}


@pytest.mark.slow
def test_unknown_and_unreachable_tasks_are_one_clear_line(tmp_path):
    with pytest.raises(TrlmError, match=r"unknown lm-eval task.*nope.*trlm_demo"):
        raise Problems(unknown_tasks(["trlm_demo", "nope"], task_manager()))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "trlm.cli", "eval", str(model), "tasks=gsm8k", "limit=1"],
                            capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})  # fmt: skip
    # the model directory holds no real model: the data is asked for first
    assert_one_line_refusal(result, "gsm8k need their datasets from the Hugging Face Hub")


@pytest.mark.slow
def test_a_stage_benchmarks_its_final_model_and_a_sweep_can_optimise_the_result(run_cli, tmp_path):
    result = run_cli(*QUICK, "stage=sft_think", "stage.previous=null", "stage.evaluation.lm_eval.tasks=[trlm_demo]",
                     "stage.evaluation.lm_eval.limit=6", "stage.objective.metric=lm_eval/trlm_demo/think_format_rate",
                     "stage.objective.direction=maximize")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "outputs" / "demo" / "sft_think"
    summary = Summary.load(run / "summary.json")
    assert summary.objective["value"] == summary.metrics["lm_eval/trlm_demo/think_format_rate"]
    written = json.loads((run / "lm_eval" / "results.json").read_text())
    assert (
        written["results"]["trlm_demo"]["answer_accuracy,none"] == summary.metrics["lm_eval/trlm_demo/answer_accuracy"]
    )
    samples = (run / "lm_eval" / "samples_trlm_demo.jsonl").read_text().splitlines()
    assert len(samples) == 6  # limit: the first six rows

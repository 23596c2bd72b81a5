"""`trlm results`: the experiment table from stage summaries."""

from __future__ import annotations

import json

from trlm.results import format_table, print_results, stage_summaries


def write_summary(root, stage, metrics, step=10):
    run_dir = root / stage
    run_dir.mkdir(parents=True)
    summary = {"global_step": step, "final_model": str(run_dir / "final"), "metrics": metrics}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_stages_in_pipeline_order_with_missing_figures_dashed(tmp_path):
    write_summary(tmp_path, "dpo", {"train_loss": 0.5, "eval_rewards/accuracies": 0.875})
    write_summary(tmp_path, "sft", {"train_loss": 1.25, "answer_accuracy": 0.5})
    (tmp_path / "sft_think").mkdir()  # unfinished: no summary
    rows = stage_summaries(tmp_path)
    assert [name for name, _ in rows] == ["sft", "dpo"]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["stage", "steps", "train"]
    assert lines[1].split() == ["sft", "10", "1.250", "-", "-", "0.500", "-", "-", "-", "-"]
    assert lines[2].split() == ["dpo", "10", "0.500", "-", "-", "-", "-", "-", "0.875", "-"]


def test_print_results_names_checkpoints_and_metrics(tmp_path, capsys):
    write_summary(tmp_path, "sft", {"train_loss": 1.0})
    assert print_results(tmp_path) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {tmp_path / 'sft' / 'final'}" in out and str(tmp_path / "sft" / "metrics.jsonl") in out


def test_no_finished_stage_is_an_error(tmp_path, capsys):
    assert print_results(tmp_path) == 1
    assert "no finished stage" in capsys.readouterr().out

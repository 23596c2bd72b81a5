"""`trlm results`: the table of every finished run under a folder, sweep trials included."""

from __future__ import annotations

from tests.helpers import finish_run
from trlm.results import LEGEND, finished_runs, format_table, print_results


def test_stages_in_pipeline_order_with_missing_figures_dashed(tmp_path):
    finish_run(tmp_path / "dpo", {"train_loss": 0.5, "eval_rewards/accuracies": 0.875}, stage_name="dpo")
    finish_run(tmp_path / "sft", {"train_loss": 1.25, "answer_accuracy": 0.5})
    (tmp_path / "sft_think").mkdir()  # unfinished: no summary
    rows = finished_runs(tmp_path)
    assert [name for name, _ in rows] == ["sft", "dpo"]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["run", "steps", "train"]
    assert lines[1].split() == ["sft", "10", "1.250", "-", "-", "0.500", "-", "-", "-", "-"]
    assert lines[2].split() == ["dpo", "10", "0.500", "-", "-", "-", "-", "-", "0.875", "-"]


def test_sweep_trials_at_any_depth_are_found(tmp_path):
    finish_run(tmp_path / "sft")
    finish_run(tmp_path / "sweeps" / "lr" / "sft" / "3")
    assert [name for name, _ in finished_runs(tmp_path)] == ["sft", "sweeps/lr/sft/3"]


def test_print_results_names_checkpoints_metrics_and_a_legend(tmp_path, capsys):
    finish_run(tmp_path / "sft")
    assert print_results(tmp_path) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {tmp_path / 'sft' / 'final'}" in out and str(tmp_path / "sft" / "metrics.jsonl") in out
    assert out.rstrip().endswith(LEGEND)


def test_no_finished_run_is_an_error(tmp_path, capsys):
    assert print_results(tmp_path) == 1
    assert "no finished run" in capsys.readouterr().out


def test_a_run_whose_summary_is_unreadable_is_listed_with_a_note(tmp_path, capsys):
    finish_run(tmp_path / "sft")
    finish_run(tmp_path / "dpo", stage_name="dpo")
    summary = tmp_path / "dpo" / "summary.json"
    summary.write_bytes(summary.read_bytes()[:40])  # cut short
    finish_run(tmp_path / "sft_think")
    (tmp_path / "sft_think" / "summary.json").write_bytes(b'{"stage": "\xff\xfe"}')  # not UTF-8
    assert print_results(tmp_path) == 0
    out = capsys.readouterr().out
    assert "dpo: summary.json is unreadable" in out and "sft_think: summary.json is unreadable" in out
    assert [name for name, _ in finished_runs(tmp_path)] == ["sft"]

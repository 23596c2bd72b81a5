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
    assert lines[0].split() == ["run", "steps", "train", "loss", "acc", "reward", "acc"]  # columns some run has
    assert lines[1].split() == ["sft", "10", "1.250", "0.500", "-"]
    assert lines[2].split() == ["dpo", "10", "0.500", "-", "0.875"]


def test_grpo_runs_show_the_reward_each_named_reward_kl_length_and_clipping(tmp_path):
    figures = {"answer_accuracy": 0.75, "eval_reward": 0.9, "eval_reward_std": 0.31, "reward": 0.5,
               "eval_rewards/answer_correct/mean": 0.7, "eval_rewards/answer_correct/std": 0.46,
               "rewards/think_format/mean": 1.0, "rewards/think_format/std": 0.0, "kl": 0.02,
               "eval_completions/mean_length": 17.5, "clip_ratio/region_mean": 0.0}  # fmt: skip
    finish_run(tmp_path / "grpo", figures, stage_name="grpo")
    finish_run(tmp_path / "dpo", {"train_loss": 0.5}, stage_name="dpo")
    header, dpo, grpo = format_table(finished_runs(tmp_path)).splitlines()
    assert header.split() == ["run", "steps", "train", "loss", "acc", "reward", "answer_correct", "think_format",
                              "kl", "length", "clipped"]  # fmt: skip
    # held-out samples (eval_) where the run has them, else the last logged step; rewards as mean±std
    assert grpo.split() == ["grpo", "10", "-", "0.750", "0.900±0.31", "0.700±0.46", "1.000±0.00", "0.020",
                            "17.500", "0.000"]  # fmt: skip
    assert dpo.split()[0] == "dpo"  # pipeline order


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

"""Real multiruns (`python train.py -m ...`): a failing job does not end the sweep, trials are named
by what they are, a re-run resumes the same directories, and a stage can start from a trial."""

from __future__ import annotations

import pytest

from trlm.records import RunRecord, Summary

pytestmark = pytest.mark.slow

FAST = ("experiment=demo", "stage.recipe.max_steps=2", "stage.recipe.save_steps=2", "stage.evaluation.generate=false")


def trials(sweep_dir):
    return sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.exists() else []


def test_a_failing_job_does_not_end_the_multirun(run_cli, tmp_path):
    result = run_cli("-m", *FAST, "stage=sft", "stage.recipe.loss_type=no_such_loss,nll")
    output = result.stdout + result.stderr
    assert "trlm: error: stage.recipe.loss_type='no_such_loss' is not valid" in output
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "multirun" / "sft"
    (trial,) = trials(sweep)  # the refused job left no directory; the next job ran
    assert "stage.recipe.loss_type:nll" in trial
    assert Summary.load(sweep / trial / "summary.json").global_step == 2


def test_trials_keep_their_directories_across_sweeps_and_a_rerun_resumes(run_cli, tmp_path):
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "lr" / "sft"
    first = run_cli("-m", *FAST, "stage=sft", "run.sweep=lr", "stage.recipe.learning_rate=1e-3,2e-3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(trials(sweep)) == 2
    before = {name: (sweep / name / "summary.json").read_text() for name in trials(sweep)}

    second = run_cli("-m", *FAST, "stage=sft", "run.sweep=lr", "stage.recipe.learning_rate=2e-3,4e-3")
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(trials(sweep)) == 3  # 2e-3 is the same trial, resumed (finished: re-read), not a fourth
    assert "already finished" in second.stdout + second.stderr
    assert all((sweep / name / "summary.json").read_text() == text for name, text in before.items())


def test_a_stage_starts_from_a_trial_of_a_sweep(run_cli, tmp_path):
    first = run_cli("-m", *FAST, "stage=sft", "run.sweep=s1", "stage.recipe.learning_rate=3e-3")
    assert first.returncode == 0, first.stderr[-3000:]
    (trial,) = trials(tmp_path / "outputs" / "demo" / "sweeps" / "s1" / "sft")
    result = run_cli(*FAST, "stage=sft_think", f"run.previous_trial=s1/{trial}")
    assert result.returncode == 0, result.stderr[-3000:]
    start = RunRecord.load(tmp_path / "outputs" / "demo" / "sft_think" / "run.json").start
    assert start["kind"] == "previous_stage" and start["source"].endswith(f"sweeps/s1/sft/{trial}/final")

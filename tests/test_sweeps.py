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


def test_a_grpo_sweep_searches_its_four_settings(run_cli, tmp_path):
    result = run_cli("-m", *FAST, "stage=grpo", "stage.previous=null", "sweep=grpo", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.pruner=null", "stage.recipe.per_device_train_batch_size=8",
                     "stage.recipe.max_completion_length=8", "stage.evaluation.generate=true",
                     "stage.evaluation.max_prompts=8", "stage.evaluation.max_new_tokens=8")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "grpo" / "grpo"
    assert {"0", "1"} <= set(trials(sweep))
    for trial in ("0", "1"):
        params = RunRecord.load(sweep / trial / "run.json")
        summary = Summary.load(sweep / trial / "summary.json")
        assert summary.objective["metric"] == "answer_accuracy"  # the stage's objective, maximised
        assert params.fingerprint_parts  # a real run, planned and recorded
    import optuna

    from trlm.study import open_storage

    storage = open_storage(str(sweep / "optuna.journal"), sweep, parallel=False)
    study = optuna.load_study(study_name="grpo", storage=storage)
    assert {"stage.recipe.learning_rate", "stage.recipe.beta", "stage.recipe.num_generations",
            "stage.recipe.temperature"} == set(study.trials[0].params)  # fmt: skip


def test_a_lora_sweep_and_a_full_one_of_the_same_stage_give_the_ratio_of_their_best_rates(run_cli, tmp_path):
    from trlm.compare import compare

    common = ("-m", *FAST, "stage=sft", "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner=null")
    lora = run_cli(*common, "sweep=lora")
    full = run_cli(*common, "sweep=lr")
    assert lora.returncode == 0 and full.returncode == 0, (lora.stderr + full.stderr)[-3000:]
    sweeps = tmp_path / "outputs" / "demo" / "sweeps"
    assert RunRecord.load(sweeps / "lora" / "sft" / "0" / "run.json").peft
    assert not RunRecord.load(sweeps / "lr" / "sft" / "0" / "run.json").peft

    page = compare([str(sweeps / "lr" / "sft"), str(sweeps / "lora" / "sft")], out=str(tmp_path / "report"))
    text = page.read_text()
    assert "each study&#x27;s best trial" in text
    ratio_line = next(line for line in text.splitlines() if "lora/sft / lr/sft = " in line)
    ratio = float(ratio_line.split("= ")[1].split("x")[0])
    import optuna

    from trlm.study import open_storage

    def best_lr(name):
        storage = open_storage(str(sweeps / name / "sft" / "optuna.journal"), None, parallel=False)
        return optuna.load_study(study_name=name, storage=storage).best_params["stage.recipe.learning_rate"]

    assert ratio == pytest.approx(best_lr("lora") / best_lr("lr"), rel=0.01)

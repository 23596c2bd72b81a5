"""trlm's Trainer callbacks: divergence stops a run; every checkpoint's and the last step's losses are logged."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from trlm.callbacks import DivergenceGuard, MetricsLog, TrainingDiverged
from trlm.errors import TrlmError


def state(step: int, max_steps: int = 100):
    return SimpleNamespace(global_step=step, max_steps=max_steps, is_world_process_zero=True, epoch=0.0)


@pytest.mark.parametrize(("figure", "value"), [("loss", math.nan), ("loss", math.inf), ("grad_norm", math.nan)])
def test_a_non_finite_loss_or_gradient_norm_fails_the_run_naming_the_step(figure, value):
    guard = DivergenceGuard()
    guard.on_log(None, state(10), None, logs={"loss": 2.5, "grad_norm": 1.0, "learning_rate": 3e-4})
    with pytest.raises(TrainingDiverged) as raised:
        guard.on_log(None, state(20), None, logs={"loss": 2.0, figure: value, "learning_rate": 2e-4})
    said = str(raised.value)
    assert isinstance(raised.value, TrlmError) and "\n" not in said
    assert f"training diverged at step 20: {figure} is {value}" in said
    assert "last finite loss 2.5 at step 10" in said and "learning rate 0.0002" in said


def test_finite_figures_and_evaluation_logs_pass():
    guard = DivergenceGuard()
    for step, logs in enumerate([{"loss": 3.0, "grad_norm": 5.0}, {"eval_loss": 1.0}, {"train_runtime": 2.0}], 1):
        guard.on_log(None, state(step), None, logs=logs)
    assert guard.last_finite == (1, 3.0)


@pytest.mark.parametrize(("step", "should_save", "logged"), [(7, False, False), (7, True, True), (100, False, True)])
def test_the_last_step_and_each_checkpoints_step_are_logged(tmp_path, step, should_save, logged):
    control = SimpleNamespace(should_save=should_save, should_log=False)
    MetricsLog(tmp_path / "metrics.jsonl").on_step_end(None, state(step), control)
    assert control.should_log is logged

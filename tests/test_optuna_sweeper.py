"""trlm's Optuna sweeper end to end: real multiruns whose trials are processes (submitit_local)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from omegaconf import OmegaConf

from hydra_plugins.trlm_optuna.sweeper import threads_per_trial
from tests.helpers import assert_one_line_refusal
from trlm.paths import PROJECT_ROOT
from trlm.records import RunRecord, Summary
from trlm.study import RESULTS, TRIALS, open_storage

pytestmark = pytest.mark.slow

# A demo SFT trial in seconds: 8 steps, evaluated (and reported) every 2, no generation.
FAST = ("experiment=demo", "stage=sft", "stage.recipe.max_steps=8", "stage.recipe.save_steps=4",
        "stage.evaluation.generate=false", "sweep=lr", "hydra.sweeper.report_every=2")  # fmt: skip
# Every combination once, in this order (enqueued trials come before the sampler's own).
EVERY_COMBINATION = "hydra.sweeper.enqueue_trials=[" + ",".join(
    f"{{stage.recipe.learning_rate:{lr},stage.recipe.loss_type:{loss}}}"
    for lr in ("2e-3", "1e4") for loss in ("nll", "no_such_loss")
) + "]"  # fmt: skip


def sweep_dir(tmp_path, study="lr"):
    return tmp_path / "outputs" / "demo" / "sweeps" / study / "sft"


def trials_table(tmp_path, study="lr"):
    return list(csv.DictReader((sweep_dir(tmp_path, study) / TRIALS).open()))


def test_a_sweep_end_to_end_with_trials_that_raise_or_return_nan(run_cli, tmp_path):
    result = run_cli(
        "-m", *FAST, EVERY_COMBINATION, "hydra.sweeper.pruner=null", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.max_failures=4", "stage.recipe.learning_rate=choice(2e-3,1e4)",
        "stage.recipe.loss_type=choice(nll,no_such_loss)",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]  # 3 failed of 4: the budget did not cut the sweep short
    rows = {(r["stage.recipe.learning_rate"], r["stage.recipe.loss_type"]): r for r in trials_table(tmp_path)}
    assert len(rows) == 4 and sorted(r["number"] for r in rows.values()) == ["0", "1", "2", "3"]
    failed = [r for r in rows.values() if r["state"] == "FAIL"]
    assert all("not valid" in r["reason"] or "diverged" in r["reason"] for r in failed), failed
    completed = [r for r in rows.values() if r["state"] == "COMPLETE"]
    assert all(r["stage.recipe.loss_type"] == "nll" and r["stage.recipe.learning_rate"] == "0.002" for r in completed)
    diverged = rows[("10000.0", "nll")]  # a learning rate of 1e4: training diverges, and the trial fails saying so
    assert diverged["state"] == "FAIL" and "training diverged at step" in diverged["reason"]
    results = OmegaConf.load(sweep_dir(tmp_path) / RESULTS)
    assert results.name == "optuna" and results.best_params["stage.recipe.learning_rate"] == 0.002
    best = next(iter(completed))
    summary = Summary.load(sweep_dir(tmp_path) / best["number"] / "summary.json")
    assert results.best_value == pytest.approx(summary.metrics["eval_loss"]) and summary.trial == best["number"]
    printed = subprocess.run([sys.executable, "-m", "trlm.cli", "sweep", str(sweep_dir(tmp_path))],
                             capture_output=True, text=True)  # fmt: skip
    assert printed.returncode == 0 and "study lr (minimize, 4 trials)" in printed.stdout


def test_the_failure_budget_stops_the_sweep(run_cli, tmp_path):
    # Learning rates that diverge: each trial's objective is not a number (found only by training).
    result = run_cli("-m", *FAST, "hydra.sweeper.n_trials=5", "hydra.sweeper.max_failures=2",
                     "hydra.sweeper.pruner=null", "stage.recipe.learning_rate=choice(1e4,2e4)")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trlm: error: sweep lr stopped: 2 trials failed (hydra.sweeper.max_failures=2)" in result.stderr
    assert [r["state"] for r in trials_table(tmp_path)] == ["FAIL", "FAIL"]


def test_a_bad_learning_rate_is_pruned_against_a_good_one(run_cli, tmp_path):
    result = run_cli(
        "-m", *FAST, "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.enqueue_trials=[{stage.recipe.learning_rate:3e-3},{stage.recipe.learning_rate:1e-7}]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    good, bad = trials_table(tmp_path)
    assert (good["state"], bad["state"]) == ("COMPLETE", "PRUNED")
    summary = Summary.load(sweep_dir(tmp_path) / "1" / "summary.json")
    assert summary.pruned and summary.global_step < 8  # stopped early
    assert float(bad["value"]) > float(good["value"])  # recorded with its last reported value


def test_parallel_trials_overlap_and_share_the_cores(run_cli, tmp_path):
    result = run_cli("-m", *FAST, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=null")
    assert result.returncode == 0, result.stderr[-3000:]
    spans = []
    for number in ("0", "1"):
        trial = sweep_dir(tmp_path) / number
        spans.append(((trial / "run.json").stat().st_mtime, (trial / "summary.json").stat().st_mtime))
        threads = OmegaConf.load(trial / ".hydra" / "config.yaml").hardware.cpu_threads
        assert threads == threads_per_trial(2)
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a  # both in flight at once


@pytest.mark.parametrize(
    ("environ", "n_jobs", "threads"),
    [({}, 1, os.cpu_count()), ({"OMP_NUM_THREADS": "8"}, 2, 4), ({"OMP_NUM_THREADS": "8"}, 3, 2),
     ({"OMP_NUM_THREADS": "1"}, 2, 1), ({"OMP_NUM_THREADS": ""}, 1, os.cpu_count())],
)  # fmt: skip
def test_local_trials_split_the_cores_this_process_was_given(environ, n_jobs, threads):
    assert threads_per_trial(n_jobs, environ) == threads


def test_a_killed_sweep_resumes_its_study(tmp_path):
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", f"paths.output_root={tmp_path / 'outputs'}",
               *FAST, "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=null", "stage.recipe.max_steps=24",
               "stage.recipe.save_steps=4", "stage.recipe.logging_steps=1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    sweeper = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    running = sweep_dir(tmp_path) / "1" / "checkpoints"  # trial 1 has saved a checkpoint: kill it all now
    deadline = time.monotonic() + 300
    while not list(running.glob("checkpoint-*/trlm_complete")) and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(sweeper.pid, signal.SIGKILL)
    sweeper.wait()
    storage = open_storage(None, sweep_dir(tmp_path), parallel=False)
    states = [t.state.name for t in optuna.load_study(study_name="lr", storage=storage).trials]
    assert states == ["COMPLETE", "RUNNING"]

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "trial 1 was running when its sweep stopped" in rerun.stdout + rerun.stderr
    rows = trials_table(tmp_path)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    rates = [r["stage.recipe.learning_rate"] for r in rows]
    assert rates[2] not in rates[:2]  # the resumed sampler does not propose again what the study has tried
    log = (sweep_dir(tmp_path) / "1" / "train.log").read_text()
    assert "resuming from" in log  # the re-run trial continued from its checkpoint
    metrics = [json.loads(line) for line in (sweep_dir(tmp_path) / "1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 25))  # no step lost or repeated


def test_two_workers_share_one_study(tmp_path):
    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "-m", f"paths.output_root={tmp_path / 'outputs'}",
               *FAST, "hydra.sweeper.n_trials=3", "hydra.sweeper.pruner=null", "hardware.cpu_threads=1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    rows = trials_table(tmp_path)
    numbers = [int(r["number"]) for r in rows]
    assert numbers == list(range(len(numbers))) and 3 <= len(numbers) <= 4  # unique, no gap
    assert {r["state"] for r in rows} == {"COMPLETE"}
    records = [RunRecord.load(sweep_dir(tmp_path) / str(n) / "run.json") for n in numbers]
    assert all(record.trial == str(n) for record, n in zip(records, numbers, strict=True))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["hydra.sweeper.params={stage.recipe.learning_rate:'interval(1e-5)'}"], "is not a Hydra sweep expression"),
        (["stage.recipe.lerning_rate=interval(1e-5,1e-3)"], "stage.recipe.lerning_rate is not a setting"),
        (["hydra.sweeper.storage=/dev/null/study.journal"], "cannot write the study's journal"),
        (["stage.objective.metric=answer_accuracy"], "needs stage.evaluation.generate=true"),
        (["sweep=dpo_beta"], "stage.recipe.beta applies to dpo / grpo stages only"),
        (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is out of range: it must be >= 1"),
        (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 is out of range: it must be >= 1"),
        (["hydra.sweeper.report_every=0"], "hydra.sweeper.report_every=0.0 is out of range: it must be > 0"),
        (["hydra.sweeper.direction=up"], "hydra.sweeper.direction=up must be minimize, maximize or null"),
    ],
)
def test_bad_sweeps_are_refused_in_one_line(train_in_process, tmp_path, args, needle):
    result = train_in_process("-m", *FAST, *args)
    assert_one_line_refusal(result, needle)
    assert not (sweep_dir(tmp_path) / "optuna.journal").exists()  # nothing half-written


def test_a_study_of_another_space_or_direction_is_refused(train_in_process, tmp_path):
    folder = sweep_dir(tmp_path)
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="lr", storage=open_storage(None, folder, parallel=False))
    study.set_user_attr("search_space", {"stage.recipe.learning_rate": "{}"})
    other_space = train_in_process("-m", *FAST)
    assert other_space.returncode == 2 and "with another search space" in other_space.stderr
    other_direction = train_in_process("-m", *FAST, "hydra.sweeper.direction=maximize")
    assert other_direction.returncode == 2 and "this sweep would maximize" in other_direction.stderr


class ScriptedLauncher:
    """Hands back what a trial's job returned (or raised), as Hydra's launchers do: nothing is written anywhere."""

    def __init__(self, outcomes: dict[int, object]) -> None:
        self.outcomes = outcomes

    def launch(self, job_overrides, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        outcome = self.outcomes[initial_job_idx]
        failed = isinstance(outcome, BaseException)
        return [JobReturn(overrides=job_overrides[0], status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
                          _return_value=outcome)]  # fmt: skip


def test_the_sweeper_learns_pruned_and_failed_trials_from_what_the_job_returns(tmp_path):
    from hydra_plugins.trlm_optuna.config import TrlmOptunaSweeperConf
    from hydra_plugins.trlm_optuna.sweeper import TrlmOptunaSweeper
    from trlm.errors import Problem, Problems
    from trlm.stage_plan import StageOutcome

    sweeper = TrlmOptunaSweeper(**OmegaConf.to_container(OmegaConf.structured(TrlmOptunaSweeperConf)))
    sweeper.config = OmegaConf.create({"stage": {"objective": {"metric": "eval_loss"}}})
    sweeper.study_name, sweeper.fixed, sweeper.sweep_dir = "s", [], tmp_path / "never-created"
    sweeper.storage = optuna.storages.InMemoryStorage()
    sweeper.study = optuna.create_study(study_name="s", storage=sweeper.storage)
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    numbers = [sweeper.study.ask(space).number for _ in range(3)]
    sweeper.launcher = ScriptedLauncher({
        0: StageOutcome(0.25),
        1: StageOutcome(0.75, pruned=True),
        2: Problems([Problem("stage.recipe.loss_type", "is not valid", "'x'"), Problem("data.seed", "is bad", "-1")]),
    })  # fmt: skip
    for number in numbers:
        sweeper.tell(sweeper.run_trial(number, {"x": 0.5}))
    trials = sweeper.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert trials[0].value == 0.25 and not sweeper.sweep_dir.exists()  # no job file read, none there to read
    assert "loss_type='x' is not valid" in trials[2].user_attrs["fail_reason"]
    assert "data.seed=-1 is bad" in trials[2].user_attrs["fail_reason"]  # every problem, in one line


def test_a_stage_outcome_is_its_objective_and_crosses_processes_whole():
    import pickle

    from trlm.stage_plan import StageOutcome

    outcome = pickle.loads(pickle.dumps(StageOutcome(0.5, pruned=True)))
    assert outcome == 0.5 and float(outcome) + 1 == 1.5 and outcome.pruned
    assert not StageOutcome(1.0).pruned

"""Study helpers: Hydra sweep expressions -> Optuna distributions, override values, results files."""

from __future__ import annotations

import csv

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from trlm.errors import TrlmError
from trlm.study import (
    RESULTS,
    TRIALS,
    build_pruner,
    distribution,
    format_study,
    open_storage,
    override_value,
    write_results,
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("interval(1e-5, 1e-3)", FloatDistribution(1e-5, 1e-3)),
        ("tag(log, interval(1e-5, 1e-3))", FloatDistribution(1e-5, 1e-3, log=True)),
        ("interval(1, 8)", FloatDistribution(1.0, 8.0)),  # Hydra's interval is a float interval
        ("tag(int, interval(1, 8))", IntDistribution(1, 8)),
        ("tag(int, log, interval(1, 8))", IntDistribution(1, 8, log=True)),
        ("choice(nll, dft)", CategoricalDistribution(["nll", "dft"])),
        ("range(1, 9, 2)", IntDistribution(1, 7, step=2)),  # Hydra's range excludes its end
    ],
)
def test_hydra_expressions_become_optuna_distributions(expression, expected):
    assert distribution("k", expression) == expected


@pytest.mark.parametrize("expression", ["interval(1e-5)", "fast", "glob(*)"])
def test_a_bad_expression_is_one_clear_error(expression):
    with pytest.raises(TrlmError, match="search space k="):
        distribution("k", expression)


def test_override_values_round_trip_through_hydras_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "name": "it's"}
    parsed = OverridesParser.create().parse_override(f"k={override_value(value)}").value()
    assert parsed == value
    assert OverridesParser.create().parse_override(f"k={override_value(3e-4)}").value() == 3e-4


def test_the_pruner_is_rebuilt_from_its_config():
    pruner = build_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 7})
    assert isinstance(pruner, optuna.pruners.MedianPruner) and pruner._n_startup_trials == 7
    assert isinstance(build_pruner({}), optuna.pruners.NopPruner)


def test_sqlite_is_refused_for_parallel_trials(tmp_path):
    with pytest.raises(TrlmError, match="SQLite"):
        open_storage(f"sqlite:///{tmp_path}/s.db", tmp_path, parallel=True)


def test_results_files(tmp_path):
    study = optuna.create_study(storage=open_storage(None, tmp_path, parallel=True), study_name="s")
    for value in (0.5, 0.25):
        study.tell(study.ask({"lr": FloatDistribution(1e-4, 1e-2)}), value)
    failed = study.ask({"lr": FloatDistribution(1e-4, 1e-2)})
    study._storage.set_trial_user_attr(failed._trial_id, "fail_reason", "objective is nan")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    write_results(study, tmp_path)
    results = OmegaConf.load(tmp_path / RESULTS)
    assert results.name == "optuna" and results.best_value == 0.25 and set(results.best_params) == {"lr"}
    rows = list(csv.DictReader((tmp_path / TRIALS).open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "FAIL"] and rows[2]["reason"] == "objective is nan"
    assert set(rows[0]) == {"number", "state", "value", "lr", "reason"}
    assert "best: trial 1, value 0.25" in format_study(study)


def test_a_journal_whose_last_record_was_torn_is_repaired_and_the_study_goes_on(tmp_path, caplog):
    study = optuna.create_study(study_name="s", storage=open_storage(None, tmp_path, parallel=False))
    study.tell(study.ask({"x": FloatDistribution(0, 1)}), 0.5)
    journal = tmp_path / "optuna.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "w", "trial_id": 1, "para')  # a crash mid-write
    reopened = optuna.load_study(study_name="s", storage=open_storage(None, tmp_path, parallel=False))
    assert [t.value for t in reopened.trials] == [0.5] and journal.read_bytes() == whole
    (aside,) = tmp_path.glob("optuna.journal.torn-*")
    assert aside.read_bytes().endswith(b'"para') and "ended in a record cut short" in caplog.text
    reopened.tell(reopened.ask({"x": FloatDistribution(0, 1)}), 0.25)  # it goes on, and reads back
    again = optuna.load_study(study_name="s", storage=open_storage(None, tmp_path, parallel=False))
    assert [t.value for t in again.trials] == [0.5, 0.25]


def test_a_whole_journal_is_left_as_it_is(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(None, tmp_path, parallel=False))
    study.tell(study.ask({"x": FloatDistribution(0, 1)}), 0.5)
    before = (tmp_path / "optuna.journal").read_bytes()
    open_storage(None, tmp_path, parallel=False)
    assert (tmp_path / "optuna.journal").read_bytes() == before and not list(tmp_path.glob("*.torn-*"))

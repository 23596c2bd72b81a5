"""Tracking settings reach W&B through its environment and TRL's report_to; the user's WANDB_MODE wins."""

from __future__ import annotations

import os
import time

import pytest

from tests.wandb_offline import read_runs
from trlm import tracking
from trlm.errors import TrlmError
from trlm.records import RunRecord, Summary, read_jsonl

DUMMY_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, as a real key


def test_none_reports_nowhere(plan_for, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    plan = plan_for("tracking=none")
    tracking.configure(plan.tracking, tmp_path)
    assert plan.tracking.report_to == ("none",) and "WANDB_PROJECT" not in os.environ
    assert plan.training_args["report_to"] == ["none"]


def test_wandb_groups_stages_of_one_experiment(plan_for, monkeypatch, tmp_path):
    for key in (
        "WANDB_PROJECT",
        "WANDB_RUN_GROUP",
        "WANDB_TAGS",
        "WANDB_MODE",
        "WANDB_ENTITY",
        "WANDB_DIR",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
    ):
        monkeypatch.delenv(key, raising=False)
    plan = plan_for("tracking=wandb", "experiment=demo", "stage=dpo", "tracking.mode=offline")
    tracking.configure(plan.tracking, tmp_path)
    assert plan.training_args["report_to"] == ["wandb"]
    assert os.environ["WANDB_PROJECT"] == "trlm" and os.environ["WANDB_RUN_GROUP"] == "demo"
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_JOB_TYPE"] == "dpo"
    assert os.environ["WANDB_TAGS"].split(",")[:3] == ["dpo", plan.data.name, "cpu"]
    assert "WANDB_ENTITY" not in os.environ and os.environ["WANDB_DIR"] == str(tmp_path)
    run_id = os.environ["WANDB_RUN_ID"]
    tracking.configure(plan.tracking, tmp_path)  # a resume of the same run directory: the same W&B run
    assert os.environ["WANDB_RUN_ID"] == run_id and os.environ["WANDB_RESUME"] == "allow"
    (tmp_path / "other").mkdir()
    tracking.configure(plan.tracking, tmp_path / "other")
    assert os.environ["WANDB_RUN_ID"] != run_id


@pytest.mark.parametrize(("env", "setting", "key", "expected"), [
    (None, None, True, "online"), (None, None, False, "offline"), ("offline", None, True, "offline"),
    ("offline", "online", False, "online"), (None, "disabled", True, "disabled"),
])  # fmt: skip
def test_the_users_wandb_mode_is_respected_unless_the_config_says_otherwise(
    monkeypatch, tmp_path, env, setting, key, expected
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    if key:
        monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
    else:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if env:
        monkeypatch.setenv("WANDB_MODE", env)
    assert tracking.mode(setting) == expected


def test_online_without_a_reachable_server_fails_fast(plan_for, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(TrlmError, match=r"W&B server http://127.0.0.1:9 is unreachable; set tracking.mode=offline"):
        plan_for("tracking=wandb")  # refused when the stage is planned, before anything runs
    assert time.monotonic() - started < 5


def test_online_without_a_key_says_so(plan_for, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(TrlmError, match="no W&B API key"):
        plan_for("tracking=wandb", "tracking.mode=online")
    assert plan_for("tracking=wandb").tracking.mode == "offline"  # mode unset: offline, nothing to refuse


@pytest.mark.slow
def test_wandb_mode_offline_from_the_environment_is_honoured(run_cli, tmp_path):
    args = ["tracking=wandb", "stage.recipe.max_steps=2", "stage.evaluation.max_prompts=3",
            "stage.evaluation.max_new_tokens=4"]  # fmt: skip
    started = time.monotonic()
    result = run_cli("experiment=demo", "stage=sft", *args, env={"WANDB_MODE": "offline", "WANDB_API_KEY": DUMMY_KEY})
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.monotonic() - started < 90  # no online attempt, no retries
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    (offline,) = read_runs(run_dir)  # read back from W&B's own files
    assert offline.run_id == (run_dir / tracking.RUN_ID).read_text().strip()  # kept for a resume
    logged_here = [row["step"] for row in read_jsonl(run_dir / "metrics.jsonl") if "loss" in row]
    assert logged_here and [row["train/global_step"] for row in offline.history if "train/loss" in row] == logged_here
    assert offline.config["learning_rate"] == pytest.approx(2e-3) and offline.config["max_steps"] == 2
    assert "train/loss" in offline.summary and (run_dir / "summary.json").exists()
    # one run per stage, grouped by experiment, typed by stage, tagged, carrying trlm's own record
    record = RunRecord.load(run_dir / "run.json")
    assert (offline.group, offline.job_type) == ("demo", "sft")
    assert {"sft", "cpu", f"git-{record.git['sha'][:8]}", f"data-{record.data['sha256'][:8]}"} <= set(offline.tags)
    assert offline.config["trlm"]["stage"]["recipe"]["max_steps"] == 2
    assert offline.config["data_sha256"] == record.data["sha256"]
    final = Summary.load(run_dir / "summary.json").metrics
    assert offline.summary["final/answer_accuracy"] == final["answer_accuracy"]
    assert offline.summary["final/eval_loss"] == pytest.approx(final["eval_loss"])
    (table,) = [row for row in offline.history if "eval/samples/_type" in row]  # W&B flattens a table's record
    assert table["eval/samples/_type"] == "table-file" and table["eval/samples/nrows"] == 3  # sampled generations
    logged = (run_dir / "train.log").read_text() + result.stdout + result.stderr
    assert DUMMY_KEY not in logged and DUMMY_KEY not in (run_dir / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_tracking_off_says_nothing_about_wandb(run_cli):
    result = run_cli("experiment=demo", "stage=sft", "stage.recipe.max_steps=1", "stage.evaluation.generate=false",
                     env={"WANDB_MODE": "offline"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wandb" not in (result.stdout + result.stderr).lower()

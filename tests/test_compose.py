"""Composition outside @hydra.main, and the user's own config folders (--config-dir, hydra.searchpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import QUICK, assert_one_line_refusal
from trlm.compose import check_choices, compose, group_options, split_command
from trlm.errors import TrlmError
from trlm.paths import PROJECT_ROOT
from trlm.records import RunRecord, Summary

DEMO_SFT = PROJECT_ROOT / "trlm" / "demo" / "data" / "sft.jsonl"


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """A config folder of the user's own, outside the package: a blend `mine/sft` over the demo rows."""
    conf = tmp_path / "my-conf"
    (conf / "data" / "mine").mkdir(parents=True)
    (conf / "data" / "mine" / "sft.yaml").write_text(
        "name: my-org/my-sft\nkind: conversation\neval_size: 64\ndedup: true\n"
        f"sources:\n  - {{name: {DEMO_SFT}, drop_columns: [chat_template_kwargs]}}\n"
    )
    return conf


def test_a_command_line_splits_into_flags_folders_and_overrides(user_conf):
    command = split_command(["-m", "--config-dir", str(user_conf), "a=1", f"-cd={user_conf}", "b=2"])
    assert command.multirun and command.overrides == ["a=1", "b=2"]
    assert command.config_dirs == [str(user_conf)] * 2 and command.flags[:2] == ["--config-dir", str(user_conf)]
    with pytest.raises(TrlmError, match="no such folder"):
        split_command(["--config-dir", "/no/such/conf"])


@pytest.mark.parametrize("spelling", ["--config-dir", "searchpath"])
def test_a_users_blend_is_an_option_everywhere_the_packages_are(user_conf, spelling):
    args = ["--config-dir", str(user_conf)] if spelling == "--config-dir" else [
        f"hydra.searchpath=[file://{user_conf}]"]  # fmt: skip
    assert "mine/sft" in group_options("data", args) and "demo/sft" in group_options("data", args)
    assert compose([*args, "experiment=demo", "data=mine/sft"]).data.name == "my-org/my-sft"
    with pytest.raises(TrlmError, match=r"data=nope/sft is not a blend; choose one of: .*mine/sft"):
        check_choices([*args, "data=nope/sft"])
    with pytest.raises(TrlmError, match="data=mine/sft is not a blend"):
        check_choices(["data=mine/sft"])  # without the folder, trlm's own only


def test_compose_refuses_what_does_not_compose_in_one_line():
    with pytest.raises(TrlmError, match=r"the command does not compose: .*hardware/tpu"):
        compose(["hardware=tpu"])


def trlm(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "trlm.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_a_users_blend_prepares_plans_trains_and_sweeps(user_conf, tmp_path):
    root = f"paths.output_root={tmp_path / 'outputs'}"
    use = ["--config-dir", str(user_conf), root, "experiment=demo", "stage=sft", "data=mine/sft"]
    prepared = trlm("prepare", "--config-dir", str(user_conf), "data=mine/sft", root, cwd=tmp_path)
    assert prepared.returncode == 0 and "my-org/my-sft: " in prepared.stdout, prepared.stderr[-2000:]
    planned = trlm("plan", *use, cwd=tmp_path)
    assert planned.returncode == 0 and "data my-org/my-sft" in planned.stdout and "training rows" in planned.stdout

    trained = trlm("train", *use, *QUICK, "stage.evaluation.generate=false", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    assert RunRecord.load(run_dir / "run.json").data["name"] == "my-org/my-sft"
    assert Summary.load(run_dir / "summary.json").global_step == 4

    sweep = ["sweep=lr", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=null", "hardware.cpu_threads=1"]
    swept = trlm("train", "-m", *use, *QUICK, "stage.evaluation.generate=false", *sweep, cwd=tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    trials = tmp_path / "outputs" / "demo" / "sweeps" / "lr" / "sft"
    for number in ("0", "1"):
        assert RunRecord.load(trials / number / "run.json").data["name"] == "my-org/my-sft"


@pytest.mark.slow
def test_an_unknown_blend_lists_the_users_too(user_conf, tmp_path):
    result = trlm("train", "--config-dir", str(user_conf), "experiment=demo", "data=mine/dpo", cwd=tmp_path)
    assert_one_line_refusal(result, "data=mine/dpo is not a blend; choose one of: demo/dpo")
    assert "mine/sft" in result.stderr

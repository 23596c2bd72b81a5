"""Which model a stage starts from."""

from __future__ import annotations

import json

import pytest

from tests.helpers import finish_run
from trlm import layout
from trlm.errors import TrlmError
from trlm.stage_plan import plan_stage


def resolve_start(cfg):
    """The start the stage's plan decides (lineage runs as part of planning)."""
    return plan_stage(cfg).start


def finish(run_dir):
    finish_run(run_dir)


def stage_dir(cfg, stage):
    return layout.run_dir(cfg.paths.output_root, cfg.run.name, stage)


@pytest.fixture
def cfg_for(compose_cfg, tmp_path):
    return lambda *overrides: compose_cfg(f"paths.output_root={tmp_path}", *overrides)


def test_first_stage_starts_from_the_base_model(cfg_for):
    start = resolve_start(cfg_for("stage=sft"))
    assert (start.kind, start.source) == ("base", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_start(cfg_for("stage=sft", "experiment=demo")).source == "tiny:tiny_llama"


def test_later_stages_start_from_the_previous_finished_run(cfg_for):
    cfg = cfg_for("stage=dpo", "experiment=demo")
    finish(stage_dir(cfg, "sft_think"))
    start = resolve_start(cfg)
    assert start.kind == "previous_stage" and start.stage == "sft_think"
    assert start.source == str(stage_dir(cfg, "sft_think") / "final")


def test_unfinished_previous_run_is_not_a_start(cfg_for):
    cfg = cfg_for("stage=sft_think", "experiment=demo")
    previous = stage_dir(cfg, "sft")
    (previous / "final").mkdir(parents=True)  # a crash after saving, before the summary
    (previous / "final" / "config.json").write_text("{}")
    with pytest.raises(TrlmError, match=r"finished 'sft' run .* run\.init_from"):
        resolve_start(cfg)


def test_the_rerun_hint_carries_the_users_experiment_and_run_name(cfg_for):
    with pytest.raises(TrlmError, match=r"run `python train\.py stage=sft experiment=demo run\.name=mine` first"):
        resolve_start(cfg_for("stage=sft_think", "experiment=demo", "run.name=mine"))
    with pytest.raises(TrlmError, match=r"run `python train\.py stage=sft_think` first"):
        resolve_start(cfg_for("stage=dpo"))


def test_a_stage_can_start_from_a_trial_of_a_sweep(cfg_for):
    cfg = cfg_for("stage=dpo", "experiment=demo", "run.previous_trial=lr-v2/7")
    trial = layout.trial_dir(cfg.paths.output_root, "demo", "sft_think", "lr-v2", 7)
    with pytest.raises(TrlmError, match=r"finished 'sft_think' trial lr-v2/7"):
        resolve_start(cfg)
    finish(trial)
    (trial / "run.json").write_text(json.dumps({"fingerprint": "abc"}))  # an older record: not a RunRecord
    start = resolve_start(cfg)
    assert start.source == str(trial / "final") and start.stage == "sft_think"


def test_a_malformed_previous_trial_is_refused(cfg_for):
    with pytest.raises(TrlmError, match="<sweep>/<trial>"):
        resolve_start(cfg_for("stage=dpo", "run.previous_trial=7"))


def test_runs_of_another_experiment_are_not_used(cfg_for):
    finish(stage_dir(cfg_for("experiment=demo"), "sft"))
    with pytest.raises(TrlmError):
        resolve_start(cfg_for("stage=sft_think", "experiment=demo", "run.name=other"))


def test_explicit_start_overrides_lineage(cfg_for):
    start = resolve_start(cfg_for("stage=dpo", "run.init_from=/models/mine"))
    assert (start.kind, start.source) == ("explicit", "/models/mine")

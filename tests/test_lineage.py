"""Which model a stage starts from."""

from __future__ import annotations

import json

import pytest

from trlm.errors import TrlmError
from trlm.lineage import resolve_start, stage_dir


def finish(run_dir):
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.json").write_text("{}")
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed"}))


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


def test_runs_of_another_experiment_are_not_used(cfg_for):
    finish(stage_dir(cfg_for("experiment=demo"), "sft"))
    with pytest.raises(TrlmError):
        resolve_start(cfg_for("stage=sft_think", "experiment=demo", "run.name=other"))


def test_explicit_start_overrides_lineage(cfg_for):
    start = resolve_start(cfg_for("stage=dpo", "run.init_from=/models/mine"))
    assert (start.kind, start.source) == ("explicit", "/models/mine")

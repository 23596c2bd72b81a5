"""`trlm compare`: a real demo sweep (its trials are the runs) beside a DPO run, read back from the files it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.helpers import assert_one_line_refusal
from trlm.compare import compare, compare_command, differing
from trlm.errors import TrlmError
from trlm.paths import PROJECT_ROOT
from trlm.records import Summary
from trlm.runs import find_runs

# Two SFT trials of 8 steps, logged every 2; the sampler draws their learning rates.
SWEEP = ("-m", "experiment=demo", "stage=sft", "sweep=lr", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=null",
         "stage.recipe.max_steps=8", "stage.recipe.save_steps=8", "stage.recipe.logging_steps=2",
         "stage.evaluation.generate=false")  # fmt: skip
DPO_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *SWEEP, f"paths.output_root={root}/outputs"],
        cwd=root, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "outputs" / "demo" / "sweeps" / "lr" / "sft"


def dpo_run(folder, steps=(1, 5, 10)):
    """A DPO run directory as trlm writes one: its config, logged metrics and summary."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save({"stage": {"name": "dpo", "trainer": "dpo", "recipe": {"beta": 0.1}}}, folder / ".hydra/config.yaml")
    rows = [{"step": s, **{key: 0.1 * s for key in DPO_KEYS}} for s in steps]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Summary(stage="dpo", run_name="x", final_model="", metrics_file="", data_sha256="", global_step=steps[-1],
            metrics={"eval_rewards/accuracies": 0.75}, objective={}).save(folder / "summary.json")  # fmt: skip
    return folder


GRPO_KEYS = (
    "reward",
    "reward_std",
    "kl",
    "completions/mean_length",
    "clip_ratio/region_mean",
    "loss",
    *(f"rewards/{name}/{stat}" for name in ("answer_correct", "think_format") for stat in ("mean", "std")),
)


def grpo_run(folder, steps=(10, 20, 30)):
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save({"stage": {"name": "grpo", "trainer": "grpo"}}, folder / ".hydra/config.yaml")
    rows = [{"step": s, **{key: 0.01 * s for key in GRPO_KEYS}} for s in steps]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_grpo_runs_get_the_reward_each_named_reward_kl_length_and_clipping_figures(tmp_path, capsys):
    page = compare([str(grpo_run(tmp_path / "grpo_run"))], out=str(tmp_path / "report"))
    figures = {p.name: drawn(p) for p in page.parent.glob("*.png")}
    assert {"grpo-reward.png", "grpo-kl.png", "grpo-completions_mean_length.png", "grpo-clip_ratio_region_mean.png",
            "grpo-reward_std.png", "grpo-loss.png"} <= set(figures)  # fmt: skip
    means = figures["grpo-rewards_answer_correct_mean-rewards_think_format_mean.png"]
    assert [line["label"] for line in means if line["alpha"] is None] == [
        "grpo_run answer_correct", "grpo_run think_format"]  # fmt: skip
    assert all(line["points"] == 3 for line in means)
    assert "Stage 4 GRPO: each reward&#x27;s std" in page.read_text()  # HTML-escaped


def drawn(png) -> list[dict]:
    """What a figure drew, from the text chunk trlm writes into the PNG (labels and points of its lines)."""
    return json.loads(Image.open(png).text["trlm"])


@pytest.mark.slow
def test_a_sweep_and_a_run_of_another_stage_side_by_side(sweep, tmp_path, capsys):
    dpo = dpo_run(tmp_path / "dpo_run")
    page = compare([str(sweep), str(dpo)], out=str(tmp_path / "report"))
    printed = capsys.readouterr().out
    assert "== sft (2 runs)" in printed and "== dpo (1 run)" in printed  # grouped by stage, not refused
    assert "learning_rate" in printed.split("== dpo")[0]  # the swept parameter is the column that differs
    figures = {p.name: p for p in page.parent.glob("*.png")}
    for name in ("sft-loss.png", "sft-mean_token_accuracy.png", "sft-entropy.png"):
        lines = drawn(figures[name])
        smoothed = [line for line in lines if not line["label"].startswith("_")]
        assert sorted(line["label"] for line in smoothed) == ["0", "1"]  # one line per trial
        assert len(lines) == 2 * len(smoothed)  # each with its raw values behind it
        assert all(line["points"] == 5 for line in lines)  # steps 1, 2, 4, 6, 8
    chosen_rejected = drawn(figures["dpo-rewards_chosen-rewards_rejected.png"])
    assert [line["label"] for line in chosen_rejected if line["alpha"] is None] == [
        "dpo_run chosen",
        "dpo_run rejected",
    ]
    assert {"dpo-loss.png", "dpo-rewards_accuracies.png", "dpo-rewards_margins.png"} <= set(figures)
    optuna_plots = [name for name in figures if name.startswith("lr-")]
    assert "lr-optimization_history.png" in optuna_plots and "lr-parallel_coordinates.png" in optuna_plots
    assert drawn(figures["lr-optimization_history.png"]) == {"trials": 2}
    html = page.read_text()
    assert html.count("data:image/png;base64,") == len(figures)  # self-contained: every image embedded
    assert "Figure 2: Stage 1 SFT training loss" in html and "Figure 10: Stage 3 DPO reward margins" in html


@pytest.mark.slow
def test_without_out_the_report_lands_beside_the_input(sweep):
    page = compare([str(sweep)])
    assert page == sweep / "compare" / "compare.html" and page.exists()
    runs = find_runs([sweep])  # and a second compare does not take the report for a run
    assert sorted(run.name for run in runs) == ["0", "1"]


def test_a_preset_that_differs_is_named_not_detailed(tmp_path):
    runs = []
    for name, hidden in (("tiny_llama", 128), ("smollm2_135m", 576)):
        folder = dpo_run(tmp_path / name)
        OmegaConf.save({"model": {"name": name, "tiny": {"hidden_size": hidden}}, "stage": {"name": "dpo"},
                        "data": {"fill": True} if hidden == 576 else {}}, folder / ".hydra/config.yaml")  # fmt: skip
        runs.append(folder)
    assert differing(find_runs(runs)) == ["model.name"]  # data.fill: only a newer run has it, no difference


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "missing", "missing: no such directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no run: no metrics.jsonl"),
    ],
    ids=["missing", "no-metrics"],
)
def test_bad_input_is_one_clear_line(tmp_path, make, needle):
    with pytest.raises(TrlmError, match=needle):
        compare_command([str(make(tmp_path))])


def test_the_cli_refuses_without_a_directory():
    result = subprocess.run([sys.executable, "-m", "trlm.cli", "compare", "--out"], capture_output=True, text=True)
    assert_one_line_refusal(result, "usage: trlm compare DIR")


def test_a_comparison_that_cannot_be_written_is_one_clear_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (tmp_path / "a_file").write_text("")
    with pytest.raises(TrlmError, match=r"cannot write the comparison to .*a_file.*give --out DIR"):
        compare_command([str(run), "--out", str(tmp_path / "a_file")])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root writes anywhere: a read-only folder cannot be shown there
        return
    with pytest.raises(TrlmError, match="cannot write the comparison"):
        compare_command([str(run), "--out", str(locked / "out")])

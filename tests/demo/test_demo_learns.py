"""The demo as `make demo` runs it learns what each stage teaches: its figures as lower bounds (GRPO's,
`python train.py experiment=demo stage=grpo` after the three, as well).

The figures vary a little between machines (thread count changes float summation order, which a
few hundred steps amplify), so the bounds sit below every figure seen (docs/evaluation.md: the range).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from trlm.harness import LOCAL_TASKS
from trlm.records import Summary

pytestmark = pytest.mark.slow

# stage -> {metric: lower bound}; docs/evaluation.md shows what was measured.
LOWER_BOUNDS = {
    "sft": {"answer_accuracy": 0.2},
    "sft_think": {"think_format_rate": 0.9, "answer_accuracy": 0.6},
    "dpo": {"think_format_rate": 0.9, "eval_rewards/accuracies": 0.7, "answer_accuracy": 0.5},
    # the fourth stage (GRPO from DPO's model): above the DPO model on the same held-out prompts (acc@start)
    "grpo": {"think_format_rate": 0.9, "answer_accuracy": 0.6},
}


def test_the_demo_learns(run_cli, tmp_path):
    for stage, bounds in LOWER_BOUNDS.items():
        result = run_cli("experiment=demo", f"stage={stage}", timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        metrics = Summary.load(tmp_path / "outputs" / "demo" / stage / "summary.json").metrics
        for metric, bound in bounds.items():
            assert metrics[metric] >= bound, (stage, metric, metrics[metric])
        if "answer_accuracy" in bounds and "start_answer_accuracy" in metrics and stage != "dpo":
            assert metrics["answer_accuracy"] > metrics["start_answer_accuracy"]  # the stage itself taught it

    # lm-eval's trlm_demo task holds the stage-2 blend's held-out rows: the harness, prompting through the
    # chat template and scoring with the same module, finds what the stage's own evaluation found.
    stage2 = tmp_path / "outputs" / "demo" / "sft_think"
    task_rows = [json.loads(line) for line in (LOCAL_TASKS / "trlm_demo" / "trlm_demo.jsonl").read_text().splitlines()]
    stage_rows = [json.loads(line) for line in (stage2 / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in task_rows] == [r["prompt"] for r in stage_rows]  # the same rows
    result = subprocess.run([sys.executable, "-m", "trlm.cli", "eval", str(stage2), "tasks=trlm_demo", "batch_size=64"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    harness = json.loads((stage2 / "lm_eval" / "results.json").read_text())["results"]["trlm_demo"]
    stage = Summary.load(stage2 / "summary.json").metrics
    for metric in ("answer_accuracy", "answer_accuracy_stripped", "think_format_rate", "think_leak_rate"):
        assert harness[f"{metric},none"] == pytest.approx(stage[metric]), metric

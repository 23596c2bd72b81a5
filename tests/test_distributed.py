"""Multi-rank runs: rank 0 prepares and writes, the others wait and train alongside (gloo, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import QUICK
from trlm.records import RunRecord, Summary

pytestmark = pytest.mark.slow


def test_two_ranks_on_a_fresh_output_root(run_cli, tmp_path):
    torchrun = (str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2")
    result = run_cli(
        *QUICK, "stage=sft", "hardware.devices_per_node=2", "stage.recipe.per_device_train_batch_size=8",
        launcher=torchrun, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("blend trlm-demo-sft: preparing") == 1  # rank 0 prepared; rank 1 reused it
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    record = RunRecord.load(run_dir / "run.json")
    assert record.world_size == 2 and record.global_batch == 16
    summary = Summary.load(run_dir / "summary.json")
    assert summary.global_step == 4 and "answer_accuracy" in summary.metrics  # rank 0 generated
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]  # one writer: no step logged twice
    assert len(list((tmp_path / "outputs" / "blends").glob("trlm-demo-sft-*[!k]"))) == 1
    assert len(set(final_weights(output).values())) == 1  # DDP: both ranks end with the same weights


def final_weights(log: str) -> dict[int, str]:
    """{rank: digest} from each rank's `rank r/w: final weights sha256 <digest>` line."""
    lines = [line.split("rank ", 1)[1] for line in log.splitlines() if "final weights sha256" in line]
    weights = {int(line.split("/")[0]): line.split()[-1] for line in lines}
    assert len(weights) == int(lines[0].split("/")[1].split(":")[0])  # every rank said it
    return weights

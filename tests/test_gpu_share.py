"""Several trials per GPU: Slurm's gres shards pack k single-GPU trials on a card, each held to 1/k of it."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

import pytest
import torch

from tests.helpers import QUICK, assert_one_line_refusal, requires_cluster
from trlm.errors import TrlmError
from trlm.machine import gpu_share
from trlm.plan import describe_launch, plan_for
from trlm.records import RunRecord
from trlm.slurm import megabytes, sbatch_request, shared_gpu_request


def launcher_options(*args):
    plan = plan_for(["experiment=demo", "launcher=mi300x", "hardware=mi300x", *args])
    return plan.launch.options, plan.hardware


def test_a_trial_asks_a_share_of_one_gpu_and_of_its_cores_and_memory():
    whole, hardware = launcher_options()
    assert shared_gpu_request(whole, hardware) == whole and whole["gpus_per_node"] == 1  # k = 1: a whole GPU
    shared, _ = launcher_options("hardware.trials_per_gpu=4")  # the plan's job is the launcher's
    assert "gpus_per_node" not in shared and "mem_per_gpu" not in shared
    assert shared["gres"] == "shard:2"  # 8 shards a GPU / 4 trials
    assert shared["cpus_per_task"] == whole["cpus_per_task"] // 4
    assert megabytes(shared["additional_parameters"]["mem"]) == megabytes(whole["mem_per_gpu"]) // 4
    assert "--gres=shard:2" in sbatch_request(shared) and not any("gpus" in o for o in sbatch_request(shared))


@pytest.mark.parametrize(("size", "mb"), [("200G", 204800), ("512M", 512), (4096, 4096), ("1T", 1048576)])
def test_slurm_memory_sizes_in_megabytes(size, mb):
    assert megabytes(size) == mb


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["hardware=mi300x", "hardware.trials_per_gpu=3"], "hardware.trials_per_gpu=3 must divide "
                                                           "hardware.shards_per_gpu=8"),
        (["hardware=mi300x_node", "hardware.trials_per_gpu=2"], "shares one GPU between single-GPU trials"),
    ],
)  # fmt: skip
def test_a_share_that_cannot_be_is_refused_before_anything_runs(train_in_process, args, needle):
    assert_one_line_refusal(train_in_process(*args, "experiment=demo"), needle)


def test_a_trial_out_of_its_share_fails_in_one_line_naming_the_share_and_the_fix():
    with pytest.raises(TrlmError) as raised, gpu_share(4, device_bytes=192 * 2**30):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = str(raised.value)
    assert "48.0 GiB (1/4 of the card, hardware.trials_per_gpu=4)" in message
    assert "lower hardware.trials_per_gpu" in message and "\n" not in message
    with pytest.raises(torch.cuda.OutOfMemoryError), gpu_share(1):  # a whole GPU: the allocator's own error
        raise torch.cuda.OutOfMemoryError("out of memory")


def test_the_plan_shows_the_packing():
    plan = plan_for(["-m", "experiment=demo", "sweep=lr", "launcher=mi300x", "hardware=mi300x",
                     "hardware.trials_per_gpu=4", "hydra.sweeper.n_jobs=40", "hydra.sweeper.n_trials=40"])  # fmt: skip
    text = "\n".join(describe_launch(plan))
    assert "4 trials per GPU (gres shard:2 of 8 shards a GPU)" in text
    assert "each trial 48 of an MI300x's 192 GB of GPU memory, 4 CPU(s)" in text
    assert "nodes x 8 GPUs x 4 = 32 a node; this sweep 40 at once, on 10 GPU(s) of 2 node(s)" in text


@pytest.mark.slow
@requires_cluster
def test_slurm_packs_k_trials_on_each_fake_gpu_and_binds_each_to_its_device(tmp_path):
    k = 4
    options, _ = launcher_options("launcher=local_slurm", f"hardware.trials_per_gpu={k}")
    request = sbatch_request(options)  # what each trial of such a sweep asks
    script = f'echo "$SLURMD_NODENAME ${{CUDA_VISIBLE_DEVICES:-none}}" > {tmp_path}/$SLURM_JOB_ID; sleep 12'
    ids = [subprocess.run(["sbatch", "--parsable", *request, "--output=/dev/null", f"--wrap={script}"],
                          capture_output=True, text=True, check=True).stdout.strip()
           for _ in range(2 * 8 * k + 1)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.iterdir())) < 2 * 8 * k and time.monotonic() < deadline:
            time.sleep(0.5)
        states = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T"], capture_output=True,
                                text=True).stdout.split()  # fmt: skip
        running = Counter(states[1::2])
        assert running["RUNNING"] == 2 * 8 * k and running["PENDING"] == 1  # nodes x GPUs x k, not one more
        seen = Counter(path.read_text().strip() for path in tmp_path.iterdir())
        assert len(seen) == 2 * 8 and set(seen.values()) == {k}  # k on every device, each job sees one
        assert all(len(entry.split()[1].split(",")) == 1 for entry in seen)
    finally:
        subprocess.run(["scancel", *ids], check=False)


@pytest.mark.slow
@requires_cluster
def test_a_sweep_runs_its_trials_on_one_shared_fake_gpu_at_once(run_cli, tmp_path):
    result = run_cli("-m", *QUICK, "stage=sft", "stage.evaluation.generate=false", "sweep=lr", "launcher=local_slurm",
                     "hardware.trials_per_gpu=4", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=4",
                     "hydra.sweeper.pruner=null")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "outputs" / "demo" / "sweeps" / "lr" / "sft"
    records = [RunRecord.load(sweep / str(n) / "run.json") for n in range(4)]
    jobs = [r.slurm_job_id for r in records]
    assert len(set(jobs)) == 4 and None not in jobs  # each trial its own Slurm job
    assert (sweep / "optimization_results.yaml").exists()
    assert [line.split(",")[1] for line in (sweep / "trials.csv").read_text().splitlines()[1:]] == ["COMPLETE"] * 4
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "JobID,Start,End,AllocTRES"],
                         capture_output=True, text=True).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    assert all("gres/shard=2" in row[3] and "gres/gpu" not in row[3] for row in rows)
    latest_start, earliest_end = max(row[1] for row in rows), min(row[2] for row in rows)
    assert latest_start < earliest_end  # all four ran at once
    devices = Counter((r.slurm_node, r.devices) for r in records)
    assert max(devices.values()) >= 2 and all(len(str(d).split(",")) == 1 for _, d in devices)  # sharing one card
    assert all(json.loads((sweep / str(n) / "summary.json").read_text())["metrics"] for n in range(4))

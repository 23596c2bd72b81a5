"""Bad input through the real entry point: one clear line, a non-zero exit, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import QUICK, assert_one_line_refusal
from trlm.paths import PROJECT_ROOT
from trlm.records import Summary

pytestmark = pytest.mark.slow  # most cases start a Python process (a few seconds); refusals run in this one


def snapshot(root):
    """Every file under `root` with its bytes: what a refused command must leave as it was."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def assert_refused(result, root, needle, before=None):
    assert_one_line_refusal(result, needle)
    assert snapshot(root) == (before or {})  # nothing written: no run directory, no .hydra/, no log


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stage=pretrain"], "Could not find 'stage/pretrain'"),
        (["hardware=tpu"], "Available options in 'hardware'"),
        (["experiment=paper"], "Could not find 'experiment/paper'"),
        (["stage.recipe.lerning_rate=1e-4"], "Key 'lerning_rate' not in 'RecipeConfig'"),
        (["stage.recipe.learning_rate=fast"], "stage.recipe.learning_rate"),
    ],
)
def test_composition_errors(train_in_process, tmp_path, args, needle):
    result = train_in_process(*args)
    assert result.returncode != 0 and needle in result.stderr
    assert snapshot(tmp_path / "outputs") == {}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["+stage.learning_rate=1e-4"], "stage.learning_rate is not a trlm setting, so it would be ignored; did you"),
        (["stage.recipe.max_steps=-5"], "stage.recipe.max_steps=-5 is out of range"),
        (["stage.recipe.learning_rate=-1"], "stage.recipe.learning_rate=-1.0 is out of range"),
        (["data.sources.0.entries=-3"], "data.sources.0.entries=-3 is out of range"),
        (["stage.system_prompt=???"], "stage.system_prompt must be set"),
        (["data=nope"], "data=nope is not a blend; choose one of: demo/dpo, demo/grpo, demo/sft"),
        (["hardware=mi300x"], "needs a CUDA/ROCm GPU"),
        (["hardware.precision=bf16"], "bf16 on CPU"),
        (["model.path=/no/such/model", "model.tiny=null"], "model directory /no/such/model does not exist"),
        (["stage=dpo"], "run `python train.py stage=sft_think experiment=demo` first"),
    ],
)
def test_refused_before_anything_is_written(train_in_process, tmp_path, args, needle):
    assert_refused(train_in_process("experiment=demo", *args), tmp_path / "outputs", needle)


def test_divergence_is_a_failure_the_next_stage_will_not_start_from(run_cli, train_in_process, tmp_path):
    result = run_cli("experiment=demo", "stage=sft", "stage.recipe.max_steps=20", "stage.recipe.learning_rate=1e9",
                     "stage.evaluation.generate=false")  # fmt: skip
    assert_one_line_refusal(result, "training diverged at step 10: loss is nan")
    assert "last finite loss" in result.stderr and "learning rate" in result.stderr
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    assert not (run_dir / "summary.json").exists() and (run_dir / "run.json").exists()
    after = train_in_process("experiment=demo", "stage=sft_think")
    assert_one_line_refusal(after, "starts from a finished 'sft' run 'demo'")


def test_every_problem_of_a_command_is_named_at_once(train_in_process, tmp_path):
    result = train_in_process("stage=sft", "stage.recipe.learning_rate=-1", "stage.recipe.max_steps=0", "data.seed=-3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "trlm: error: stage.recipe.max_steps=0 is out of range: it must be -1 (unset: epochs decide) or >= 1",
        "trlm: error: stage.recipe.learning_rate=-1.0 is out of range: it must be > 0",
        "trlm: error: data.seed=-3 is out of range: it must be >= 0",
        "trlm: error: 3 problems; nothing was run or written",
    ]
    assert snapshot(tmp_path / "outputs") == {}


@pytest.mark.parametrize("multirun", [[], ["-m", "sweep=lr"]], ids=["run", "sweep"])
@pytest.mark.parametrize("name", ["../escaped", "nested/run", ".hidden"])
def test_a_run_name_that_is_not_one_folder_is_refused(train_in_process, tmp_path, name, multirun):
    before = snapshot(tmp_path)  # "../escaped" would land beside outputs/
    result = train_in_process(*multirun, "experiment=demo", f"run.name={name}")
    assert_refused(result, tmp_path, f"run.name={name!r} must be one folder name", before)


def test_an_init_from_that_is_not_a_model(train_in_process, tmp_path):
    (tmp_path / "notes").mkdir()
    result = train_in_process("experiment=demo", f"run.init_from={tmp_path / 'notes'}")
    assert_refused(result, tmp_path / "outputs", f"{tmp_path / 'notes'} is not a model directory (no config.json")


def test_an_init_from_whose_config_is_garbage(train_in_process, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(b"\x00\xffnot json")
    result = train_in_process("experiment=demo", f"run.init_from={model}")
    assert_refused(result, tmp_path / "outputs", f"{model / 'config.json'} is not a JSON object")


@pytest.mark.slow
def test_an_init_from_whose_weights_are_cut_short(train_in_process, compose_cfg, tmp_path):
    from trlm.modeling import tiny_model_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir(compose_cfg("experiment=demo").model.tiny, tmp_path / "cache"), model)
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:4096])
    result = train_in_process("experiment=demo", f"run.init_from={model}", "stage.evaluation.generate=false")
    assert_one_line_refusal(result, f"{model}: its model does not load")
    assert not (tmp_path / "outputs" / "demo" / "sft" / "run.json").exists()


def test_an_unwritable_output_root(train_in_process, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = train_in_process("experiment=demo", root=tmp_path / "a_file" / "outputs")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trlm: error: cannot create" in result.stderr and "is not a writable folder" in result.stderr


def test_base_model_offline_and_uncached(run_cli, tmp_path):
    result = run_cli("stage=sft", env={"HF_HOME": str(tmp_path / "hf")})
    assert_refused(result, tmp_path / "outputs", "not in the local Hugging Face cache and the Hub is unreachable")


def test_empty_dataset(train_in_process, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = train_in_process("experiment=demo", "stage=sft", f"data.sources=[{{name:{empty}}}]")
    assert result.returncode == 2 and "is empty" in result.stderr
    assert not (tmp_path / "outputs" / "demo").exists()


def test_dpo_cfg_job_on_mi300x_shows_the_report_recipe(run_cli):
    result = run_cli("stage=dpo", "hardware=mi300x", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "loss_type: apo_zero" in result.stdout and "learning_rate: 1.0e-05" in result.stdout
    assert "max_prompt_length: 1048" in result.stdout and "precision: bf16" in result.stdout


def test_help_introduces_trlm_and_its_first_commands(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0 and result.stdout.startswith("trlm: post-train tiny language models")
    assert "make demo" in result.stdout and "make test" in result.stdout
    # every setting, as this command composes it, with what it does and the range it admits (from the schema)
    assert "stage.recipe.learning_rate=0.0003" in result.stdout and "peak learning rate (> 0)" in result.stdout


def test_the_trlm_command(tmp_path):
    trlm = [sys.executable, "-m", "trlm.cli"]
    helped = subprocess.run([*trlm, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and all(f"trlm {name}" in helped.stdout for name in ("train", "results", "sweep"))
    missing = subprocess.run([*trlm, "results", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and f"{tmp_path / 'nope'} does not exist" in missing.stderr


@pytest.fixture
def finished_sft(run_cli, tmp_path):
    """A finished demo stage 1 (4 steps) under a temporary root, on a copy of the demo source."""
    source = tmp_path / "sft.jsonl"
    shutil.copy(PROJECT_ROOT / "trlm" / "demo" / "data" / "sft.jsonl", source)
    args = (*QUICK, "stage=sft", f"data.sources.0.name={source}")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "outputs" / "demo" / "sft", args, source


def test_a_refused_command_leaves_a_finished_run_untouched(train_in_process, tmp_path, finished_sft):
    run_dir, args, _ = finished_sft
    before = snapshot(tmp_path / "outputs")
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    assert_refused(train_in_process(*args, "hardware=cuda"), tmp_path / "outputs", "needs a CUDA/ROCm GPU", before)


def test_a_finished_run_rereads_another_objective_and_refuses_another_recipe(
    run_cli, train_in_process, tmp_path, finished_sft
):
    _, args, _ = finished_sft
    before = snapshot(tmp_path / "outputs")
    rescored = run_cli(*args, "stage.objective.metric=train_loss")  # not a different run: re-read
    assert rescored.returncode == 0 and "already finished" in rescored.stdout + rescored.stderr
    other = train_in_process(*args, "stage.recipe.learning_rate=1e-5")
    assert_refused(other, tmp_path / "outputs", "holds a run of a different recipe (recipe changed", before)


def test_a_resume_on_changed_data_is_refused_naming_both_hashes(train_in_process, tmp_path, finished_sft):
    run_dir, args, source = finished_sft
    recorded = Summary.load(run_dir / "summary.json").data_sha256
    (run_dir / "summary.json").unlink()  # interrupted after its checkpoints
    shutil.rmtree(run_dir / "final")
    source.write_text("".join(source.read_text().splitlines(keepends=True)[:-5]))  # the source changed
    result = train_in_process(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"trained on blend sha256 {recorded[:16]}" in result.stderr and "restore the original" in result.stderr
    assert "another run.name" in result.stderr


def test_a_run_that_failed_before_its_first_step_does_not_lock_its_directory(run_cli, tmp_path):
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text('{"fingerprint": "stale", "fingerprint_parts": {}}')  # no checkpoint yet
    result = run_cli(*QUICK, "stage=sft")
    assert result.returncode == 0, result.stderr[-3000:]
    assert Summary.load(run_dir / "summary.json").global_step == 4


def test_one_writer_per_run_directory(run_cli, tmp_path):
    args = [sys.executable, str(PROJECT_ROOT / "train.py"), f"paths.output_root={tmp_path / 'outputs'}",
            *QUICK, "stage=sft", "stage.recipe.max_steps=40", "stage.recipe.save_steps=20"]  # fmt: skip
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    second = run_cli(*QUICK, "stage=sft", "stage.recipe.max_steps=40", "stage.recipe.save_steps=20")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert second.returncode == 2 and f"{run_dir} is in use" in second.stderr and "pid" in second.stderr
    steps = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps))  # no line written twice


def test_ctrl_c_ends_a_run_in_one_line_releasing_its_lock_and_the_run_resumes(tmp_path):
    import signal

    recipe = ["stage.recipe.max_steps=40", "stage.recipe.save_steps=4", "stage.evaluation.generate=false"]
    args = [sys.executable, str(PROJECT_ROOT / "train.py"), f"paths.output_root={tmp_path / 'outputs'}", *QUICK,
            "stage=sft", *recipe]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    training = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list(run_dir.glob("checkpoints/checkpoint-*/trlm_complete")) and time.monotonic() < deadline:
        time.sleep(0.1)
    training.send_signal(signal.SIGINT)
    _, stderr = training.communicate(timeout=120)
    assert training.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("trlm: interrupted")
    assert not (run_dir / ".lock").exists() and not (run_dir / "summary.json").exists()
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)  # the same command resumes
    assert again.returncode == 0 and "resuming from" in again.stdout + again.stderr, again.stderr[-3000:]
    assert Summary.load(run_dir / "summary.json").global_step == 40


def test_two_preparations_of_one_new_blend(tmp_path):
    prepare = [sys.executable, "-m", "trlm.cli", "prepare", "data=demo/dpo", f"paths.output_root={tmp_path}"]
    runs = [subprocess.Popen(prepare, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    blends = [p for p in (tmp_path / "blends").iterdir() if not p.name.endswith(".lock")]
    assert len(blends) == 1 and (blends[0] / "metadata.json").exists()
    assert sum("preparing 1 source(s)" in out for out in outputs) == 1  # built once, the other reused it


def test_a_preparation_checks_the_data_ranges_training_would(tmp_path):
    prepare = [sys.executable, "-m", "trlm.cli", "prepare", "data=demo/sft", "data.seed=-1",
               f"paths.output_root={tmp_path}"]  # fmt: skip
    result = subprocess.run(prepare, capture_output=True, text=True, timeout=300)
    assert_refused(result, tmp_path, "data.seed=-1 is out of range: it must be >= 0")

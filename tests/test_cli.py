"""Bad input through the real entry point: one clear line, a non-zero exit, no finished-looking run."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # each case starts a Python process (a few seconds)


def assert_refused(result, root, needle):
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(root.rglob("summary.json")) if root.exists() else True


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
def test_composition_errors(run_cli, tmp_path, args, needle):
    assert_refused(run_cli(*args), tmp_path / "outputs", needle)


def test_dpo_without_a_finished_stage_two(run_cli, tmp_path):
    result = run_cli("stage=dpo", "experiment=demo")
    assert_refused(result, tmp_path / "outputs", "trlm: error: stage=dpo starts from a finished 'sft_think' run")
    assert result.stderr.count("\n") == 1


def test_base_model_offline_and_uncached(run_cli, tmp_path):
    result = run_cli("stage=sft", env={"HF_HOME": str(tmp_path / "hf")})
    assert_refused(result, tmp_path / "outputs", "not in the local Hugging Face cache and the Hub is unreachable")


def test_gpu_preset_on_this_cpu_machine(run_cli, tmp_path):
    assert_refused(run_cli("experiment=demo", "hardware=mi300x"), tmp_path / "outputs", "needs a CUDA/ROCm GPU")


def test_bf16_preset_without_bf16(run_cli, tmp_path):
    result = run_cli("experiment=demo", "hardware.precision=bf16")
    assert_refused(result, tmp_path / "outputs", "bf16 on CPU")


def test_empty_dataset(run_cli, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli("experiment=demo", "stage=sft", f"data.sources=[{{name:{empty}}}]")
    assert_refused(result, tmp_path / "outputs", "is empty")


def test_dpo_cfg_job_on_mi300x_shows_the_report_recipe(run_cli):
    result = run_cli("stage=dpo", "hardware=mi300x", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "loss_type: apo_zero" in result.stdout and "learning_rate: 1.0e-05" in result.stdout
    assert "max_prompt_length: 1048" in result.stdout and "precision: bf16" in result.stdout


def test_a_recorded_run_of_another_recipe_is_not_continued(run_cli, tmp_path):
    run_dir = tmp_path / "outputs" / "demo" / "sft"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"recipe_fingerprint": "0000"}))
    assert_refused(run_cli("experiment=demo", "stage=sft"), tmp_path / "outputs", "holds a run of a different recipe")

"""`trlm plan`: what a command would launch, without launching it."""

from __future__ import annotations

import pytest

from trlm.plan import describe_launch, plan_command, plan_for


def training_tokenizer(plan):
    """The stage's tokenizer as training loads it (transformers; the tiny model built): the reference for
    the plan's own light count."""
    from trlm.modeling import load_tokenizer, start_model_dir

    return load_tokenizer(start_model_dir(plan.model, plan.start, plan.cache_dir), plan.stage)


def test_a_sweep_on_the_mi300x_preset_packs_eight_single_gpu_trials_on_a_node(capsys):
    plan_command(["-m", "stage=dpo", "sweep=dpo_beta", "hardware=mi300x", "launcher=mi300x", "hydra.sweeper.n_jobs=8"])
    out = capsys.readouterr().out
    assert "sweep dpo_beta: 12 trial jobs, 8 at once" in out
    assert "each job 1 node(s) x 1 task(s), 1 GPU(s); at most 8 GPUs on 1 node(s)" in out
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=report-dpo", "export HSA_XNACK=0", "-m submitit.core._submit"):  # fmt: skip
        assert line in out


def test_a_whole_node_run_asks_eight_tasks_and_eight_gpus(capsys):
    plan_command(["stage=sft", "hardware=mi300x_node", "launcher=mi300x", "hydra.launcher.partition=gpu"])
    out = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=8" in out and "#SBATCH --gpus-per-node=8" in out
    assert "#SBATCH --partition=gpu" in out and "one job" in out


def test_two_trials_of_a_node_each_need_two_nodes_at_once():
    plan = plan_for(["stage=sft", "sweep=lr", "hardware=mi300x_node", "launcher=mi300x", "hydra.sweeper.n_jobs=2"])
    assert "at most 16 GPUs on 2 node(s)" in describe_launch(plan)[-1]


def test_a_local_command_has_no_sbatch_script(capsys):
    plan_command(["experiment=demo"])
    out = capsys.readouterr().out
    assert "stage sft of run demo" in out and "jobs run on this machine" in out and "#SBATCH" not in out


def test_a_command_that_does_not_compose_is_one_line():
    from trlm.errors import TrlmError

    with pytest.raises(TrlmError, match="does not compose"):
        plan_for(["hardware=nope"])


@pytest.mark.slow
def test_the_plan_counts_the_prepared_blends_rows_tokens_and_steps(tmp_path, capsys):
    from trlm.data.blend import load_prepared
    from trlm.data.prepare import prepare_blend
    from trlm.plan import workload

    overrides = ["experiment=demo", "stage=sft_think", f"paths.output_root={tmp_path}"]
    plan = plan_for(overrides)
    assert workload(plan) is None  # not prepared: nothing is guessed
    rows = load_prepared(prepare_blend(plan.data, tmp_path / "blends"))
    work = workload(plan)  # counted before the tiny model exists: its tokenizer trained in memory
    train = rows.select(range(len(rows) - plan.data.eval_size))
    tokenizer = training_tokenizer(plan_for([*overrides, "stage.previous=null"]))  # the base model's, + think tokens
    lengths = [
        len(tokenizer.apply_chat_template(r, tokenize=True, return_dict=True)["input_ids"]) for r in train["messages"]
    ]
    assert (work.rows, work.steps) == (len(train), plan.stage.recipe.max_steps)
    assert work.tokens == sum(min(n, plan.stage.recipe.max_length) for n in lengths)
    assert "<think>" in tokenizer.get_vocab()  # stage 2's tokens, as training adds them
    assert workload(plan).tokens == work.tokens  # and the same from the built model's tokenizer
    plan_command(overrides)
    assert (
        f"{work.rows:,} training rows, {work.tokens:,} tokens; {work.steps:,} optimizer steps"
        in capsys.readouterr().out
    )


@pytest.mark.slow
def test_a_dpo_plan_counts_both_sides_of_each_pair_and_the_reference_pass(tmp_path):
    from trlm.data.blend import load_prepared
    from trlm.data.prepare import prepare_blend
    from trlm.plan import REFERENCE_PASS, describe_workload, recorded_throughput, workload

    overrides = ["experiment=demo", "stage=dpo", f"paths.output_root={tmp_path}"]
    plan = plan_for(overrides)
    rows = load_prepared(prepare_blend(plan.data, tmp_path / "blends"))
    train = rows.select(range(len(rows) - plan.data.eval_size))
    tokenizer = training_tokenizer(plan_for([*overrides, "stage.previous=null"]))  # the base model's, + think tokens
    sides = [
        [len(tokenizer.apply_chat_template(p + reply, tokenize=True, return_dict=True)["input_ids"]) for reply in pair]
        for p, *pair in zip(train["prompt"], train["chosen"], train["rejected"], strict=True)
    ]
    cap = min(min(pair) for pair in sides)  # each side capped at max_length on its own
    assert any(max(pair) > cap for pair in sides)
    plan = plan_for([*overrides, f"stage.recipe.max_length={cap}"])
    work = workload(plan)
    assert work.tokens == sum(min(n, cap) for pair in sides for n in pair)
    lines, estimate = describe_workload(plan)
    assert "(chosen + rejected)" in lines[0] and "+ the reference forward" in lines[1]
    assert estimate.seconds == pytest.approx(
        work.trained_tokens * REFERENCE_PASS / recorded_throughput(plan).tokens_per_s
    )


def test_a_sweep_plan_adds_up_its_trials_in_waves_of_n_jobs():
    from trlm.plan import Estimate, describe_sweep

    plan = plan_for(["-m", "stage=dpo", "sweep=dpo_beta", "hardware=mi300x", "hydra.sweeper.n_trials=5",
                     "hydra.sweeper.n_jobs=2"])  # fmt: skip
    (line,) = describe_sweep(plan, Estimate(seconds=600, ranks=1))
    assert line.startswith("sweep: 5 trials, ~30.0 min wall, 0.83 GPU-hours in all")  # 3 waves; 5 x 10 min
    cpu = plan_for(["-m", "stage=dpo", "sweep=dpo_beta", "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2"])
    assert describe_sweep(cpu, Estimate(600, 1))[0].startswith("sweep: 5 trials, ~50.0 min wall")  # cores shared


def test_a_sweep_plan_refuses_what_the_sweep_would_refuse():
    from trlm.errors import TrlmError

    with pytest.raises(TrlmError, match=r"hydra.sweeper.n_jobs=0 is out of range"):
        plan_for(["-m", "stage=dpo", "sweep=dpo_beta", "hydra.sweeper.n_jobs=0"])


def test_a_pipeline_plan_lists_the_stages_in_lineage_order_and_what_it_cannot_estimate(tmp_path, capsys):
    plan_command(["pipeline", "experiment=demo", f"paths.output_root={tmp_path}"])  # no blend prepared there
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("== ")] == [
        "== sft", "== sft_think", "== dpo", "== grpo",
        "== pipeline: one stage after the other on this machine; training time unknown"]  # fmt: skip
    assert out.count("is not prepared yet") == 4


@pytest.mark.slow
def test_a_pipeline_plan_adds_up_the_stages_it_can_estimate(tmp_path, capsys):
    from trlm.data.prepare import prepare_blend
    from trlm.plan import describe_workload, minutes

    overrides = ["experiment=demo", f"paths.output_root={tmp_path}"]
    estimates = []
    for stage in ("sft", "dpo"):
        plan = plan_for([*overrides, f"stage={stage}"])
        prepare_blend(plan.data, tmp_path / "blends")
        estimates.append(describe_workload(plan)[1].seconds)
    plan_command(["pipeline", *overrides])
    total = capsys.readouterr().out.splitlines()[-1]
    assert (
        total == f"== pipeline: one stage after the other on this machine; ~{minutes(sum(estimates))} of training "
        "(and sft_think, grpo: unknown)"
    )


def test_the_time_estimate_reads_the_benchmark_figure_for_the_hardware_and_model(tmp_path):
    import json

    from trlm.plan import recorded_throughput

    (tmp_path / "train.json").write_text(json.dumps({"throughput_tokens_per_s": {"cpu/smollm2_135m": 120}}))
    card = {"card": "Some GPU", "padded@2048": {"effective_tokens_per_s": 5}, "padding_free@2048": {
        "effective_tokens_per_s": 2000}, "padding_free@4096": {"effective_tokens_per_s": 4000},
        "padding_free+liger@4096": {"effective_tokens_per_s": 1}, "padding_free@8192": {"error": "OOM"}}  # fmt: skip
    (tmp_path / "gpu-some-gpu.json").write_text(json.dumps(card))

    def figure(*overrides):
        return recorded_throughput(plan_for(list(overrides)), tmp_path)

    # CPU: bench-train's figure, shared by the local copy of the same model; none for another model
    assert figure("stage=sft", "hardware=cpu").tokens_per_s == 120
    assert figure("stage=sft", "hardware=cpu", "model=smollm2_135m_local").source == "bench-train"
    assert figure("stage=sft", "hardware=cpu", "model=tiny_llama") is None
    # CUDA: the GPU check's row length closest to the stage's max_length, padded when padding-free is off
    assert figure("stage=sft_think", "hardware=cuda").tokens_per_s == 4000  # max_length 4096
    assert figure("stage=dpo", "hardware=cuda").tokens_per_s == 2000  # max_length 2048
    assert "Some GPU" in figure("stage=dpo", "hardware=cuda").source
    assert figure("stage=dpo", "hardware=cuda", "hardware.padding_free=false").tokens_per_s == 5
    assert figure("stage=dpo", "hardware=mi300x") is None  # no MI300x figure: unknown, not borrowed
    card["card"] = "AMD Instinct MI300X"
    (tmp_path / "gpu-some-gpu.json").write_text(json.dumps(card))
    assert figure("stage=dpo", "hardware=mi300x").tokens_per_s == 2000
    assert figure("stage=dpo", "hardware=cuda") is None

"""`trlm plan [overrides]`: what a command would launch, before it launches anything.

Takes the overrides of `python train.py -m ...`, plans the stage as training would
(`trlm/stage_plan.py`: the same checks, the same decisions) and prints it: the stage, blend,
hardware and launcher, how many jobs a sweep makes and what each asks of the cluster, for a Slurm
launcher the exact sbatch script submitit would submit for one job, the TRL arguments the run will
receive; then the stage's rows, tokens and steps on its prepared blend and the time they take at
the throughput `docs/bench` recorded (a sweep: all its trials). `trlm plan pipeline [overrides]`:
the same for each stage of `trlm pipeline`. Light: tokens are counted with the `tokenizers` library
and trlm's own chat template, without transformers or torch, and nothing is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trlm.chat_template import THINK_TOKENS, chatml_template
from trlm.compose import compose
from trlm.config import DataKind
from trlm.errors import TrlmError
from trlm.paths import project_path
from trlm.stage_plan import StagePlan, plan_stage

GPUS_PER_MI300X_NODE = 8
MI300X_MEMORY_GB = 192


def plan_for(args: list[str] | tuple[str, ...], lineage_pending: bool = True) -> StagePlan:
    """The plan of `python train.py [-m] ARGS`, composed with Hydra's section as the command would be.
    `lineage_pending`: a previous stage not trained yet is taken as one that will have been."""
    return plan_stage(compose(args, hydra_section=True), lineage_pending=lineage_pending)


def is_sweep(plan: StagePlan) -> bool:
    return plan.launch is not None and plan.launch.sweep is not None


def describe_launch(plan: StagePlan) -> list[str]:
    hardware, launch = plan.hardware, plan.launch
    lines = [
        f"stage {plan.stage.name} of run {plan.run.name}: data {plan.data.name}, model {plan.model.name}",
        f"hardware {hardware.name}: {hardware.num_nodes} node(s) x {hardware.devices_per_node} device(s), "
        f"{hardware.precision.value}",
    ]
    if not plan.start_ready:
        lines.append(f"starts from {plan.start.source} (stage {plan.start.stage}, not trained yet)")
    if is_sweep(plan):
        sweep = launch.sweep
        jobs, at_once = sweep["n_trials"], min(sweep["n_jobs"], sweep["n_trials"])
        lines.append(f"sweep {plan.run.sweep}: {jobs} trial jobs, {at_once} at once")
    else:
        at_once = 1
        lines.append("one job (a basic-sweeper -m with list overrides makes one per combination)")
    if launch.slurm and hardware.trials_per_gpu > 1:
        return [*lines, *describe_gpu_share(plan, at_once)]
    if launch.slurm:
        gpus = plan.ranks
        nodes = max(hardware.num_nodes, math.ceil(at_once * gpus / GPUS_PER_MI300X_NODE))
        lines.append(
            f"Slurm, partition {launch.options.get('partition')}: each job {hardware.num_nodes} node(s) x "
            f"{launch.options.get('tasks_per_node')} task(s), {gpus} GPU(s); at most {at_once * gpus} GPUs on "
            f"{nodes} node(s) of {GPUS_PER_MI300X_NODE} at once"
        )
    else:
        lines.append(f"launcher {launch.launcher}: jobs run on this machine")
    return lines


def describe_gpu_share(plan: StagePlan, at_once: int) -> list[str]:
    """k trials to a GPU: what each gets, and how many fit the partition at once (nodes x GPUs x k)."""
    hardware, options, k = plan.hardware, plan.launch.options, plan.hardware.trials_per_gpu
    mi300x = "mi300x" in hardware.name
    memory = f"{MI300X_MEMORY_GB / k:.0f} of an MI300x's {MI300X_MEMORY_GB} GB" if mi300x else f"1/{k}"
    nodes = max(1, math.ceil(at_once / (GPUS_PER_MI300X_NODE * k)))
    return [
        f"Slurm, partition {options.get('partition')}: {k} trials per GPU (gres {options.get('gres')} of "
        f"{hardware.shards_per_gpu} shards a GPU); each trial {memory} of GPU memory, {options.get('cpus_per_task')} "
        f"CPU(s), {(options.get('additional_parameters') or {}).get('mem', '?')} host memory",
        f"trials at once: nodes x {GPUS_PER_MI300X_NODE} GPUs x {k} = {GPUS_PER_MI300X_NODE * k} a node; this sweep "
        f"{at_once} at once, on {math.ceil(at_once / k)} GPU(s) of {nodes} node(s)",
    ]


def describe_arguments(plan: StagePlan) -> list[str]:
    """The TRL arguments the run will receive (what `trlm plan` prints is what training does)."""
    shown = {k: v for k, v in plan.training_args.items() if k not in ("output_dir", "run_name")}
    text = ", ".join(f"{key}={value!r}" for key, value in sorted(shown.items()))
    return [f"TRL arguments ({plan.trainer.config_class}): {text}"]


@dataclass
class Workload:
    rows: int  # training rows of the prepared blend
    tokens: int | None  # their tokens as the stage renders them (a pair: both sides), each capped at max_length
    steps: int  # optimizer steps
    trained_tokens: int | None  # tokens the steps go through (a max_steps run may not read every row)
    generated_tokens: int = 0  # GRPO: completion tokens sampled before the steps train on them (at most)


@dataclass(frozen=True)
class Estimate:
    seconds: float  # wall time of one run on its ranks
    ranks: int

    @property
    def device_hours(self) -> float:
        return self.seconds * self.ranks / 3600


def base_tokenizer(plan: StagePlan) -> Any:
    """The stage's tokenizer (a `tokenizers.Tokenizer`) from the base model, with stage 2's think tokens as
    training adds them: the tiny demo model's (built, or trained here in memory), or a model directory's."""
    from tokenizers import Tokenizer

    from trlm.lineage import StartPoint
    from trlm.model_source import pretrained_dir, tiny_model_path

    tiny = plan.model.tiny
    if tiny is not None:
        built = tiny_model_path(tiny, plan.cache_dir) / "tokenizer.json"
        if built.exists():
            tokenizer = Tokenizer.from_file(str(built))
        else:
            from trlm.demo.tokenizer import train_demo_bpe

            tokenizer = train_demo_bpe(tiny.vocab_size, list(tiny.tokenizer_texts))
    else:
        source = pretrained_dir(plan.model, StartPoint("base", plan.model.path))
        tokenizer = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
    if plan.stage.think_tokens:
        tokenizer.add_special_tokens([token for token in THINK_TOKENS if tokenizer.token_to_id(token) is None])
    return tokenizer


def render(conversations: list[list[dict[str, str]]], system_prompt: str) -> list[str]:
    """Conversations as the stage's chat template renders them (transformers' own Jinja settings)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        chatml_template(system_prompt, generation_markers=False)
    )
    return [template.render(messages=messages, add_generation_prompt=False) for messages in conversations]


def token_counts(rows: list[dict[str, Any]], kind: DataKind, tokenizer: Any, system_prompt: str, cap: int) -> list[int]:
    """Each row's tokens as the stage renders it, capped at `cap`; a pair: both sides, each capped."""

    def counted(conversations: list[list[dict[str, str]]]) -> list[int]:
        encoded = tokenizer.encode_batch(render(conversations, system_prompt), add_special_tokens=False)
        return [min(len(e.ids), cap) for e in encoded]

    if kind == DataKind.conversation:
        return counted([row["messages"] for row in rows])
    if kind == DataKind.verifiable:  # the prompt only: the completions are sampled (Workload.generated_tokens)
        return counted([row["prompt"] for row in rows])
    sides = [counted([row["prompt"] + row[side] for row in rows]) for side in ("chosen", "rejected")]
    return [chosen + rejected for chosen, rejected in zip(*sides, strict=True)]


def prepared_rows(plan: StagePlan) -> list[dict[str, Any]] | None:
    """The prepared blend's training rows (held-out ones left out, as training does), or None."""
    from trlm.data.prepare import prepared_blend, verify_prepared

    prepared = prepared_blend(plan.data, plan.blends_dir)
    if prepared is None:
        return None
    verify_prepared(prepared)
    rows: list[dict[str, Any]] = []
    for file in prepared.files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows += pq.read_table(file).to_pylist()
        else:
            rows += [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not plan.data.eval_sources and plan.data.eval_size:
        rows = rows[: len(rows) - plan.data.eval_size]
    return rows


def workload(plan: StagePlan) -> Workload | None:
    """Rows, tokens and steps of a stage on its prepared blend; None when the blend is not prepared.

    A GRPO step trains on `global_batch` completions, `num_generations` for each of its prompts: each
    prompt is sampled that many times, and every completion is up to `max_completion_length` tokens.
    """
    rows = prepared_rows(plan)
    if rows is None:
        return None
    recipe, batch = plan.stage.recipe, plan.global_batch
    group = recipe.num_generations if plan.data.kind == DataKind.verifiable else 1
    steps = recipe.max_steps if recipe.max_steps > 0 else math.ceil(len(rows) * group / batch * recipe.num_train_epochs)
    completion = recipe.max_completion_length if group > 1 else 0
    generated = steps * batch * completion
    try:
        tokenizer = base_tokenizer(plan)
    except TrlmError:  # the base model is not here (the Hub): rows and steps still stand
        return Workload(len(rows), None, steps, None, generated)
    lengths = token_counts(rows, plan.data.kind, tokenizer, plan.stage.system_prompt, recipe.max_length)
    per_row = sum(lengths) / len(lengths) + completion
    return Workload(len(rows), sum(lengths), steps, round(steps * batch * per_row), generated)


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # effective (non-padding) tokens/s per device
    source: str  # what measured it


def recorded_throughput(plan: StagePlan, bench_dir: Path | None = None) -> Throughput | None:
    """What the benchmarks in docs/bench measured for this hardware and model, or None.

    `make bench-train` records CPU presets; on a GPU preset the SmolLM2 shape's figure comes from a
    `bench/gpu_check.py` run on that kind of card (MI300x for mi300x*, any other for cuda), at the
    row length closest to the stage's max_length. The local copy's preset (smollm2_135m_local) shares
    its model's figure.
    """
    bench = bench_dir or project_path("docs/bench")
    model, hardware = plan.model.name, plan.hardware
    train = bench / "train.json"
    if train.exists():
        for preset, value in json.loads(train.read_text()).get("throughput_tokens_per_s", {}).items():
            recorded_hardware, _, recorded_model = preset.partition("/")
            if recorded_hardware == hardware.name and model in (recorded_model, f"{recorded_model}_local"):
                return Throughput(value, "bench-train")
    if hardware.accelerator.value != "cuda" or not model.startswith("smollm2_135m"):
        return None
    mode = "padding_free" if hardware.padding_free else "padded"
    for path in sorted(bench.glob("gpu-*.json")):
        figures = json.loads(path.read_text())
        if ("MI300" in figures.get("card", "")) != hardware.name.startswith("mi300x"):
            continue  # an NVIDIA card's figure says nothing of an MI300x, and the other way round
        measured = {
            int(key.rpartition("@")[2]): value["effective_tokens_per_s"]
            for key, value in figures.items()
            if key.startswith(f"{mode}@") and isinstance(value, dict) and "effective_tokens_per_s" in value
        }
        if measured:
            length = min(measured, key=lambda n: abs(n - plan.stage.recipe.max_length))
            return Throughput(measured[length], f"gpu_check on {figures['card']}, {mode} rows up to {length}")
    return None


# A DPO step runs chosen and rejected rows forward and backward, as SFT does its rows, plus the reference
# model's forward over them (at each step, or once before training): ~1/3 of a training pass more.
# GRPO with a KL term (beta > 0) runs the reference over its completions the same way.
REFERENCE_PASS = 4 / 3
# A sampled token costs a forward pass of its own (one token per sequence at a time): a third of a trained
# token's arithmetic, but memory-bound rather than compute-bound, so counted here at a trained token's time.
GENERATED_TOKEN_COST = 1.0


def reference_pass(plan: StagePlan) -> float:
    trainer = plan.stage.trainer.value
    return REFERENCE_PASS if trainer == "dpo" or (trainer == "grpo" and plan.stage.recipe.beta > 0) else 1.0


def describe_workload(plan: StagePlan) -> tuple[list[str], Estimate | None]:
    """Lines on the stage's rows, tokens and steps, and its time from the recorded throughput (None: unknown)."""
    work = workload(plan)
    if work is None:
        return [f"blend {plan.data.name} is not prepared yet (`trlm prepare data={plan.data_choice}`): rows, "
                "tokens, time unknown"], None  # fmt: skip
    tokens = "tokens unknown (the base model is not here)" if work.tokens is None else f"{work.tokens:,} tokens"
    sides = {DataKind.preference: " (chosen + rejected)", DataKind.verifiable: " (prompts)"}.get(plan.data.kind, "")
    lines = [f"{work.rows:,} training rows, {tokens}{sides if work.tokens is not None else ''}; "
             f"{work.steps:,} optimizer steps"]  # fmt: skip
    if work.generated_tokens:
        recipe = plan.stage.recipe
        lines.append(f"generation: {work.steps * plan.global_batch:,} completions ({recipe.num_generations} a prompt) "
                     f"of up to {recipe.max_completion_length} tokens: {work.generated_tokens:,} sampled tokens "
                     "at most, then trained on with their prompts")  # fmt: skip
    throughput, ranks = recorded_throughput(plan), plan.ranks
    if work.trained_tokens is None or throughput is None:
        lines.append(f"time: unknown (no benchmark figure for {plan.hardware.name}/{plan.model.name} in docs/bench)")
        return lines, None
    reference = reference_pass(plan)
    cost = work.trained_tokens * reference + work.generated_tokens * GENERATED_TOKEN_COST
    estimate = Estimate(cost / (throughput.tokens_per_s * ranks), ranks)
    hours = f", {estimate.device_hours:.2f} GPU-hours" if plan.hardware.accelerator.value != "cpu" else ""
    extra = " + the reference forward" if reference != 1.0 else ""
    extra += " + sampling, a token at a trained token's time" if work.generated_tokens else ""
    lines.append(f"time: ~{minutes(estimate.seconds)} of training on {ranks} device(s){hours} "
                 f"(at {throughput.tokens_per_s:,.0f} tokens/s per device, {throughput.source}{extra})")  # fmt: skip
    return lines, estimate


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe_sweep(plan: StagePlan, trial: Estimate) -> list[str]:
    """A sweep's wall time and device-hours: its trials in waves of n_jobs (at most: pruned trials stop early)."""
    sweep, gpu = plan.launch.sweep, plan.hardware.accelerator.value != "cpu"
    n_trials, n_jobs = sweep["n_trials"], sweep["n_jobs"]
    # Trials at once on one CPU share its cores (each gets its share of the threads): no faster in all.
    waves = math.ceil(n_trials / min(n_jobs, n_trials)) if gpu else n_trials
    unit = "GPU" if gpu else "device"
    hours = n_trials * trial.device_hours
    return [f"sweep: {n_trials} trials, ~{minutes(waves * trial.seconds)} wall, {hours:.2f} {unit}-hours "
            "in all (at most: pruned trials stop early)"]  # fmt: skip


def plan_command(args: list[str]) -> int:
    """`trlm plan [pipeline] [-m] [--config-dir DIR] key=value ...`."""
    if args[:1] == ["pipeline"]:
        return print_pipeline_plan(args[1:])
    plan = plan_for(args)
    lines, estimate = describe_workload(plan)
    if estimate is not None and is_sweep(plan):
        lines += describe_sweep(plan, estimate)
    print("\n".join([*describe_launch(plan), *lines, *describe_arguments(plan)]))
    if plan.launch.slurm:
        from hydra_plugins.trlm_submitit.launcher import sbatch_script

        print("\nsbatch script of one job (submitit writes it beside the job's logs):\n")
        print(sbatch_script(plan.launch.options))
    return 0


def print_pipeline_plan(args: list[str]) -> int:
    """`trlm plan pipeline [overrides]`: each stage `trlm pipeline` would run, in order, and the total."""
    from trlm.pipeline import pipeline_plans

    estimates, unknown = [], []
    plans = pipeline_plans(args)
    for plan in plans:
        lines, estimate = describe_workload(plan)
        print("\n".join([f"== {plan.stage.name}", *describe_launch(plan)[:2], *lines]))
        if estimate is None:
            unknown.append(plan.stage.name)
        else:
            estimates.append(estimate)
    last = plans[-1]
    where = (
        "one Slurm job a stage, chained afterok" if last.launch.slurm else "one stage after the other on this machine"
    )
    seconds, hours = sum(e.seconds for e in estimates), sum(e.device_hours for e in estimates)
    gpu_hours = f", {hours:.2f} GPU-hours" if last.hardware.accelerator.value != "cpu" else ""
    missing = f" (and {', '.join(unknown)}: unknown)" if unknown else ""
    time = f"~{minutes(seconds)} of training{gpu_hours}{missing}" if estimates else "training time unknown"
    print(f"== pipeline: {where}; {time}")
    return 0

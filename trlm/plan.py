"""`trlm plan [overrides]`: what a command would launch, before it launches anything.

Takes the overrides of `python train.py -m ...` and prints the stage, blend, hardware and launcher
it composes to, how many jobs a sweep makes and what each asks of the cluster, and for a Slurm
launcher the exact sbatch script submitit would submit for one job; then the stage's rows, tokens and
steps on its prepared blend and the time they take at the throughput `docs/bench` recorded (a
sweep: all its trials). `trlm plan pipeline [overrides]`: the same for each stage of `trlm pipeline`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from trlm.config import register_configs
from trlm.errors import TrlmError
from trlm.layout import register_resolvers
from trlm.paths import CONF_DIR, project_path

GPUS_PER_MI300X_NODE = 8


def compose_multirun(overrides: list[str]) -> DictConfig:
    """The config `python train.py -m <overrides>` composes, Hydra's own section included."""
    args = [arg for arg in overrides if arg not in ("-m", "--multirun")]
    register_configs()
    register_resolvers()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=args, return_hydra_config=True)
    except Exception as error:  # Hydra's composition errors name the key
        raise TrlmError(f"the command does not compose: {error}") from None
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} in the launcher resolves as in a job
    if is_sweep(cfg):
        from hydra_plugins.trlm_optuna.sweeper import check_settings

        check_settings(cfg.hydra.sweeper)
    return cfg


def describe(cfg: DictConfig) -> list[str]:
    choices = cfg.hydra.runtime.choices
    launcher = choices.get("hydra/launcher")
    hardware = cfg.hardware
    lines = [
        f"stage {cfg.stage.name} of run {cfg.run.name}: data {cfg.data.name}, model {cfg.model.name}",
        f"hardware {hardware.name}: {hardware.num_nodes} node(s) x {hardware.devices_per_node} device(s), "
        f"{getattr(hardware.precision, 'name', hardware.precision)}",
    ]
    sweeper = cfg.hydra.sweeper
    if is_sweep(cfg):
        jobs, at_once = sweeper.n_trials, min(sweeper.n_jobs, sweeper.n_trials)
        lines.append(f"sweep {cfg.run.sweep}: {jobs} trial jobs, {at_once} at once")
    else:
        jobs = at_once = 1
        lines.append("one job (a basic-sweeper -m with list overrides makes one per combination)")
    if launcher == "submitit_slurm":
        gpus = hardware.num_nodes * hardware.devices_per_node
        nodes = max(hardware.num_nodes, math.ceil(at_once * gpus / GPUS_PER_MI300X_NODE))
        lines.append(
            f"Slurm, partition {cfg.hydra.launcher.partition}: each job {hardware.num_nodes} node(s) x "
            f"{cfg.hydra.launcher.tasks_per_node} task(s), {gpus} GPU(s); at most {at_once * gpus} GPUs on "
            f"{nodes} node(s) of {GPUS_PER_MI300X_NODE} at once"
        )
    else:
        lines.append(f"launcher {launcher}: jobs run on this machine")
    return lines


@dataclass
class Workload:
    rows: int  # training rows of the prepared blend
    tokens: int | None  # their tokens as the stage renders them (a pair: both sides), each capped at max_length
    steps: int  # optimizer steps
    trained_tokens: int | None  # tokens the steps go through (a max_steps run may not read every row)


@dataclass(frozen=True)
class Estimate:
    seconds: float  # wall time of one run on its ranks
    ranks: int

    @property
    def device_hours(self) -> float:
        return self.seconds * self.ranks / 3600


def base_tokenizer(cfg: DictConfig):
    """The stage's tokenizer from the base model (stage 2 adds its think tokens as training would)."""
    from trlm.lineage import StartPoint
    from trlm.modeling import load_tokenizer
    from trlm.run import start_model_dir

    source = f"tiny:{cfg.model.name}" if cfg.model.tiny is not None else cfg.model.path
    return load_tokenizer(start_model_dir(cfg, StartPoint("base", source)), cfg.stage)


def workload(cfg: DictConfig) -> Workload | None:
    """Rows, tokens and steps of a stage on its prepared blend; None when the blend is not prepared."""
    from trlm.data.blend import load_prepared, token_lengths
    from trlm.data.prepare import prepared_blend
    from trlm.fingerprint import global_batch

    prepared = prepared_blend(cfg.data, project_path(cfg.paths.blends_dir))
    if prepared is None:
        return None
    train = load_prepared(prepared)
    if not cfg.data.eval_sources and cfg.data.eval_size:
        train = train.select(range(len(train) - cfg.data.eval_size))  # as training holds them out
    recipe, batch = cfg.stage.recipe, global_batch(cfg)
    steps = recipe.max_steps if recipe.max_steps > 0 else math.ceil(len(train) / batch * recipe.num_train_epochs)
    try:
        lengths = token_lengths(train, cfg.data.kind, base_tokenizer(cfg), combine=sum, cap=recipe.max_length)
    except TrlmError:  # the base model is not here (the Hub): rows and steps still stand
        return Workload(len(train), None, steps, None)
    per_row = sum(lengths) / len(lengths)
    return Workload(len(train), sum(lengths), steps, round(steps * batch * per_row))


@dataclass(frozen=True)
class Throughput:
    tokens_per_s: float  # effective (non-padding) tokens/s per device
    source: str  # what measured it


def recorded_throughput(cfg: DictConfig, bench_dir: Path | None = None) -> Throughput | None:
    """What the benchmarks in docs/bench measured for this hardware and model, or None.

    `make bench-train` records CPU presets; on a GPU preset the SmolLM2 shape's figure comes from a
    `bench/gpu_check.py` run on that kind of card (MI300x for mi300x*, any other for cuda), at the
    row length closest to the stage's max_length. The local copy's preset (smollm2_135m_local) shares
    its model's figure.
    """
    bench = bench_dir or project_path("docs/bench")
    model, hardware = cfg.model.name, cfg.hardware
    train = bench / "train.json"
    if train.exists():
        for preset, value in json.loads(train.read_text()).get("throughput_tokens_per_s", {}).items():
            recorded_hardware, _, recorded_model = preset.partition("/")
            if recorded_hardware == hardware.name and model in (recorded_model, f"{recorded_model}_local"):
                return Throughput(value, "bench-train")
    if hardware.accelerator != "cuda" or not model.startswith("smollm2_135m"):
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
            length = min(measured, key=lambda n: abs(n - cfg.stage.recipe.max_length))
            return Throughput(measured[length], f"gpu_check on {figures['card']}, {mode} rows up to {length}")
    return None


# A DPO step runs chosen and rejected rows forward and backward, as SFT does its rows, plus the reference
# model's forward over them (at each step, or once before training): ~1/3 of a training pass more.
REFERENCE_PASS = 4 / 3


def describe_workload(cfg: DictConfig) -> tuple[list[str], Estimate | None]:
    """Lines on the stage's rows, tokens and steps, and its time from the recorded throughput (None: unknown)."""
    work = workload(cfg)
    if work is None:
        choice = cfg.hydra.runtime.choices.get("data")
        return [
            f"blend {cfg.data.name} is not prepared yet (`trlm prepare data={choice}`): rows, tokens, time unknown"
        ], None
    tokens = "tokens unknown (the base model is not here)" if work.tokens is None else f"{work.tokens:,} tokens"
    sides = " (chosen + rejected)" if cfg.data.kind == "preference" and work.tokens is not None else ""
    lines = [f"{work.rows:,} training rows, {tokens}{sides}; {work.steps:,} optimizer steps"]
    throughput, ranks = recorded_throughput(cfg), cfg.hardware.devices_per_node * cfg.hardware.num_nodes
    if work.trained_tokens is None or throughput is None:
        lines.append(f"time: unknown (no benchmark figure for {cfg.hardware.name}/{cfg.model.name} in docs/bench)")
        return lines, None
    reference = REFERENCE_PASS if cfg.stage.trainer == "dpo" else 1.0
    estimate = Estimate(work.trained_tokens * reference / (throughput.tokens_per_s * ranks), ranks)
    hours = f", {estimate.device_hours:.2f} GPU-hours" if cfg.hardware.accelerator != "cpu" else ""
    extra = " + the reference forward" if reference != 1.0 else ""
    lines.append(f"time: ~{minutes(estimate.seconds)} of training on {ranks} device(s){hours} "
                 f"(at {throughput.tokens_per_s:,.0f} tokens/s per device, {throughput.source}{extra})")  # fmt: skip
    return lines, estimate


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def describe_sweep(cfg: DictConfig, trial: Estimate) -> list[str]:
    """A sweep's wall time and device-hours: its trials in waves of n_jobs (at most: pruned trials stop early)."""
    sweeper, gpu = cfg.hydra.sweeper, cfg.hardware.accelerator != "cpu"
    # Trials at once on one CPU share its cores (each gets its share of the threads): no faster in all.
    waves = math.ceil(sweeper.n_trials / min(sweeper.n_jobs, sweeper.n_trials)) if gpu else sweeper.n_trials
    unit = "GPU" if gpu else "device"
    hours = sweeper.n_trials * trial.device_hours
    return [f"sweep: {sweeper.n_trials} trials, ~{minutes(waves * trial.seconds)} wall, {hours:.2f} {unit}-hours "
            "in all (at most: pruned trials stop early)"]  # fmt: skip


def is_sweep(cfg: DictConfig) -> bool:
    return cfg.hydra.runtime.choices.get("hydra/sweeper") == "trlm_optuna"


def print_plan(overrides: list[str]) -> int:
    if overrides[:1] == ["pipeline"]:
        return print_pipeline_plan(overrides[1:])
    cfg = compose_multirun(overrides)
    lines, estimate = describe_workload(cfg)
    if estimate is not None and is_sweep(cfg):
        lines += describe_sweep(cfg, estimate)
    print("\n".join([*describe(cfg), *lines]))
    if cfg.hydra.runtime.choices.get("hydra/launcher") == "submitit_slurm":
        from hydra_plugins.trlm_submitit.launcher import sbatch_script

        print("\nsbatch script of one job (submitit writes it beside the job's logs):\n")
        print(sbatch_script(OmegaConf.to_container(cfg.hydra.launcher, resolve=True)))
    return 0


def print_pipeline_plan(overrides: list[str]) -> int:
    """`trlm plan pipeline [overrides]`: each stage `trlm pipeline` would run, in order, and the total."""
    from trlm.pipeline import check_pipeline_overrides, stage_order

    check_pipeline_overrides(overrides)
    estimates, unknown = [], []
    for stage in stage_order(overrides):
        cfg = compose_multirun([*overrides, f"stage={stage}"])
        lines, estimate = describe_workload(cfg)
        print("\n".join([f"== {stage}", *describe(cfg)[:2], *lines]))
        if estimate is None:
            unknown.append(stage)
        else:
            estimates.append(estimate)
    slurm = cfg.hydra.runtime.choices.get("hydra/launcher") == "submitit_slurm"
    where = "one Slurm job a stage, chained afterok" if slurm else "one stage after the other on this machine"
    seconds, hours = sum(e.seconds for e in estimates), sum(e.device_hours for e in estimates)
    gpu_hours = f", {hours:.2f} GPU-hours" if cfg.hardware.accelerator != "cpu" else ""
    missing = f" (and {', '.join(unknown)}: unknown)" if unknown else ""
    time = f"~{minutes(seconds)} of training{gpu_hours}{missing}" if estimates else "training time unknown"
    print(f"== pipeline: {where}; {time}")
    return 0

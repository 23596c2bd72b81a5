"""Deciding a stage before doing it: `plan_stage(cfg)` turns a composed config into a `StagePlan`.

    compose (@hydra.main, trlm/compose.py) -> plan_stage: check, decide -> execute (trlm/run.py) -> StageOutcome

A `StagePlan` is a frozen, typed record of everything decided before any weight is loaded: the run
directory and the model it starts from (lineage), the blend, the trainer kind and its TRL arguments
as plain data, the fingerprint's parts, the objective and evaluation, the Optuna trial it reports
to, how it is tracked and, composed for a launcher, what it asks of the cluster. `trlm plan`,
`trlm pipeline`, the sweeper's preflight and `train.py` all go through here, so what `trlm plan`
prints is what training does. Every problem of the config is found here at once and raised
together (`Problems`). Below this module nothing reads the Hydra config: execution takes the plan's
typed parts. Light: no torch, no transformers, no TRL; the plan pickles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trlm import layout, tracking
from trlm.checks import MUST_BE_SET, problems, sweeper_problems
from trlm.config import (
    Accelerator,
    DataConfig,
    HardwareConfig,
    ModelConfig,
    PeftConfig,
    PeftMethod,
    Precision,
    RunConfig,
    StageConfig,
    TrainConfig,
)
from trlm.errors import Problem, Problems
from trlm.fingerprint import base_parts, global_batch
from trlm.library_facts import library_facts
from trlm.lineage import StartPoint, resolve_start
from trlm.paths import project_path
from trlm.run_dir import CHECKPOINTS, is_finished
from trlm.slurm import shared_gpu_request
from trlm.study import TrialLink
from trlm.trainer_kinds import TRAINERS, TrainerSpec


@dataclass(frozen=True)
class LaunchSpec:
    """Where the command's jobs run and what each asks for (a plan composed with Hydra's section)."""

    launcher: str  # Hydra's launcher plugin: basic, submitit_local, submitit_slurm
    preset: str | None  # conf/launcher/<preset>
    options: dict[str, Any]  # hydra.launcher, resolved (Slurm: partition, nodes, tasks_per_node, ...)
    sweeper: str  # Hydra's sweeper plugin: basic or trlm_optuna
    sweep: dict[str, Any] | None  # trlm_optuna's settings (n_trials, n_jobs, ...)

    @property
    def slurm(self) -> bool:
        return self.launcher == "submitit_slurm"


@dataclass(frozen=True)
class StagePlan:
    stage: StageConfig
    data: DataConfig
    data_choice: str  # the data= option it came from (`trlm prepare data=<it>`)
    model: ModelConfig
    hardware: HardwareConfig
    peft: PeftConfig | None  # LoRA's settings; None: every weight trains
    run: RunConfig
    experiment: str | None
    run_dir: Path
    output_root: Path
    blends_dir: Path
    cache_dir: Path
    start: StartPoint
    start_ready: bool  # False: a previous stage this plan expects to have run by then has not yet
    training_args: dict[str, Any]  # the TRL config's arguments, as the run passes them
    trainer_args: dict[str, Any]  # the trainer's own (DPO: max_prompt_length)
    global_batch: int
    fingerprint_parts: dict[str, str]  # the parts the data does not decide (trlm/fingerprint.py)
    tracking: tracking.TrackingSpec
    trial: TrialLink | None
    overrides: tuple[str, ...]  # the command's, as .hydra/overrides.yaml records them
    config_yaml: str  # the composed config, as .hydra/config.yaml records it
    config: dict[str, Any] = field(repr=False)  # resolved, for W&B
    launch: LaunchSpec | None = None

    @property
    def trainer(self) -> TrainerSpec:
        return TRAINERS[self.stage.trainer]

    @property
    def name(self) -> str:
        return f"{self.run.name}/{self.stage.name}"

    @property
    def ranks(self) -> int:
        return self.hardware.devices_per_node * self.hardware.num_nodes


def hardware_arguments(hardware: HardwareConfig) -> dict[str, Any]:
    return {
        "use_cpu": hardware.accelerator == Accelerator.cpu,
        # Explicit on both: TRL defaults bf16 to True, which a CPU run must not inherit.
        "bf16": hardware.precision == Precision.bf16,
        "fp16": hardware.precision == Precision.fp16,
        "dataloader_num_workers": hardware.dataloader_num_workers,
        # torch refuses persistent workers where there are none (a preset's workers overridden to 0)
        "dataloader_persistent_workers": hardware.dataloader_persistent_workers and hardware.dataloader_num_workers > 0,
        "optim": hardware.optim,
        "torch_empty_cache_steps": hardware.torch_empty_cache_steps,
        "torch_compile": hardware.torch_compile,
        "use_liger_kernel": hardware.liger_kernel,
    }


def trl_arguments(stage: StageConfig, hardware: HardwareConfig, run_dir: Path, run_name: str,
                  report_to: list[str], evaluate_every: float | None) -> dict[str, Any]:  # fmt: skip
    """TRL's config for the stage as plain data: the recipe as written, the hardware's knobs, trlm's conventions.

    `evaluate_every` (steps; < 1: a share of the run) evaluates during training, for a pruner.
    """
    fields = library_facts().config_fields[stage.trainer.value]
    recipe = dataclasses.asdict(stage.recipe)
    arguments: dict[str, Any] = {
        **{k: v for k, v in recipe.items() if v is not None and k in fields},
        **{k: getattr(stage, k) for k, goes in TRAINERS[stage.trainer].stage_keys.items() if goes == "config"},
        **TRAINERS[stage.trainer].derived(stage),
        **hardware_arguments(hardware),
        "output_dir": str(run_dir / CHECKPOINTS),
        "run_name": run_name,
        "report_to": report_to,
        "save_strategy": "steps",
        "logging_first_step": True,
        "save_total_limit": 2,
        "ddp_find_unused_parameters": False,  # every parameter takes part: skip DDP's extra graph walk
        "logging_nan_inf_filter": False,  # a nan/inf step shows in its logged loss: a divergence fails the run
    }
    if evaluate_every:
        arguments.update(eval_strategy="steps", eval_steps=evaluate_every)
    arguments.update(stage.extra_args)
    return arguments


def typed(cfg: DictConfig) -> TrainConfig:
    """The config as trlm's dataclasses (no DictConfig below this module); Hydra's own section left out."""
    values = {field.name: cfg[field.name] for field in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: OmegaConf.to_object(v) if OmegaConf.is_config(v) else v for k, v in values.items()})


def trial_link(cfg: DictConfig) -> TrialLink | None:
    optuna = cfg.optuna
    if optuna.storage is None or optuna.number is None or not optuna.pruner:
        return None
    pruner = OmegaConf.to_container(optuna.pruner, resolve=True)
    return TrialLink(optuna.storage, optuna.study, optuna.number, pruner, optuna.report_every,
                     cfg.stage.objective.metric)  # fmt: skip


def launch_spec(cfg: DictConfig) -> LaunchSpec | None:
    """What the command's Hydra section says of its jobs (None: composed without it, as in a job)."""
    if "hydra" not in cfg:
        return None
    choices = cfg.hydra.runtime.choices
    sweeper = choices.get("hydra/sweeper") or "basic"
    return LaunchSpec(
        launcher=choices.get("hydra/launcher") or "basic",
        preset=choices.get("launcher"),
        options=shared_gpu_request(OmegaConf.to_container(cfg.hydra.launcher, resolve=True), cfg.hardware),
        sweeper=sweeper,
        sweep=OmegaConf.to_container(cfg.hydra.sweeper, resolve=True) if sweeper == "trlm_optuna" else None,
    )


def default_run_dir(cfg: DictConfig) -> Path:
    """Where Hydra puts the job: its single run's directory, or its trial's in a sweep."""
    run, paths, stage = cfg.run, cfg.paths, cfg.stage.name
    if run.trial is not None:
        return layout.trial_dir(paths.output_root, run.name, stage, run.sweep, run.trial)
    return layout.run_dir(paths.output_root, run.name, stage)


def plan_stage(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | tuple[str, ...] = (),
               lineage_pending: bool = False) -> StagePlan:  # fmt: skip
    """Checks the config (every problem at once) and decides the stage, or raises `Problems`.

    `lineage_pending`: a previous stage that has not run yet is planned as the start it will be
    (`trlm plan`, `trlm pipeline`); training itself needs it finished.
    """
    found = problems(cfg)
    launch = launch_spec(cfg)
    if launch is not None and launch.sweep is not None:
        from hydra_plugins.trlm_optuna.config import TrlmOptunaSweeperConf

        found += sweeper_problems(launch.sweep, TrlmOptunaSweeperConf)
    if any(problem.rule == MUST_BE_SET for problem in found):
        raise Problems(found)
    train = typed_or_problems(cfg, found)
    start = None
    if not any(p.key.startswith(("run.", "stage.name", "stage.previous")) for p in found):
        try:
            start = resolve_start(train.stage, train.run, train.model, train.experiment, cfg.paths.output_root,
                                  pending=lineage_pending)  # fmt: skip
        except Problems as problems_of_lineage:
            found += problems_of_lineage.problems
    link = trial_link(cfg)
    spec = tracking.tracking_spec(train.tracking, train.run, train.stage.name, train.data.name, train.hardware.name)
    found += tracking.problems(spec)
    if found:
        raise Problems(found)
    run_dir = run_dir or default_run_dir(cfg)
    stage, hardware = train.stage, train.hardware
    arguments = trl_arguments(stage, hardware, run_dir, f"{train.run.name}/{stage.name}", list(spec.report_to),
                              link.report_every if link else None)  # fmt: skip
    own = {key: getattr(stage, key) for key, goes in TRAINERS[stage.trainer].stage_keys.items() if goes == "trainer"}
    config = without_hydra(cfg)
    return StagePlan(
        stage=stage,
        data=train.data,
        data_choice=cfg_choice(cfg, "data") or train.data.name,
        model=train.model,
        hardware=hardware,
        peft=train.peft if train.peft.method != PeftMethod.none else None,
        run=train.run,
        experiment=train.experiment,
        run_dir=run_dir,
        output_root=layout.output_root(train.paths.output_root),
        blends_dir=project_path(train.paths.blends_dir),
        cache_dir=project_path(train.paths.cache_dir),
        start=start,
        start_ready=start.kind != "previous_stage" or is_finished(Path(start.source).parent),
        training_args=arguments,
        trainer_args=own,
        global_batch=global_batch(stage.recipe, hardware),
        fingerprint_parts=base_parts(stage, train.model, hardware, start, train.peft),
        tracking=spec,
        trial=link,
        overrides=tuple(overrides),
        config_yaml=OmegaConf.to_yaml(config),
        config=OmegaConf.to_container(config, resolve=True),
        launch=launch,
    )


def typed_or_problems(cfg: DictConfig, found: list[Problem]) -> TrainConfig:
    try:
        return typed(cfg)
    except Exception as error:  # an added key (already a problem) leaves no dataclass to fill
        raise Problems(found or [Problem("config", f"does not fit trlm's schema ({error})")]) from None


def without_hydra(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]) if "hydra" in cfg else cfg


def cfg_choice(cfg: DictConfig, group: str) -> str | None:
    if "hydra" in cfg:
        return cfg.hydra.runtime.choices.get(group)
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # no Hydra config set (a test's compose)
        return None


class StageOutcome(float):
    """What a stage returns: its objective (a float, as a Hydra task function returns it), and
    whether its trial was pruned. The launcher hands it back to the sweeper as it is (it pickles)."""

    pruned: bool

    def __new__(cls, objective: float, pruned: bool = False) -> StageOutcome:
        outcome = super().__new__(cls, objective)
        outcome.pruned = pruned
        return outcome

    def __reduce__(self) -> tuple:
        return StageOutcome, (float(self), self.pruned)

    def __repr__(self) -> str:
        return f"StageOutcome({float(self)!r}, pruned={self.pruned})"

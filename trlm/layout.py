"""Where a run's directory is: the one definition of the layout, used by Hydra and by lineage.

    <output_root>/<run.name>/<stage>                             a single run (`python train.py ...`)
    <output_root>/<run.name>/sweeps/<sweep>/<stage>/<trial>      a multirun job (`python train.py -m ...`)

A trial is named by what makes it a trial, never by a counter that restarts with each sweep: the
Optuna sweeper names it by its trial number (`run.trial`), Hydra's basic sweeper by the job's
overrides (less those that only say where: conf/train.yaml's `override_dirname.exclude_keys`).
So the same command always lands in the same directory, and a re-run resumes it.

Hydra reads the layout through resolvers (`conf/train.yaml`, registered by trlm/compose.py); lineage
and the CLI call the same functions. Light on purpose: no torch, no transformers.
"""

from __future__ import annotations

import re
from pathlib import Path

from trlm.errors import TrlmError
from trlm.paths import project_path

SWEEPS = "sweeps"
SINGLE_TRIAL = "base"  # a multirun job without swept parameters (e.g. one Slurm job)
# run.name is one folder: a path ("a/b", "../x") would nest runs or leave the outputs folder.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RUN_NAME_RULE = (
    "must be one folder name (letters, digits, '.', '_', '+', '-'): a run lives in <output_root>/<run.name>/<stage>"
)


def check_run_name(name: str) -> None:
    if not RUN_NAME.fullmatch(name):
        raise TrlmError(f"run.name={name!r} {RUN_NAME_RULE}")


def output_root(root: str | Path) -> Path:
    return project_path(root).resolve()


def run_dir(root: str | Path, run_name: str, stage: str) -> Path:
    return output_root(root) / run_name / stage


def sweep_dir(root: str | Path, run_name: str, stage: str, sweep: str) -> Path:
    return output_root(root) / run_name / SWEEPS / safe_name(sweep) / stage


def trial_name(trial: str | int | None, override_dirname: str = "") -> str:
    """The trial's directory name: its number when a sweeper gives one, else its overrides."""
    if trial is not None and str(trial) != "":
        return safe_name(str(trial))
    return safe_name(override_dirname) or SINGLE_TRIAL


def trial_dir(root: str | Path, run_name: str, stage: str, sweep: str, trial: str | int) -> Path:
    return sweep_dir(root, run_name, stage, sweep) / trial_name(trial)


def safe_name(text: str) -> str:
    """A single path component that an override value takes unquoted: anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.:+-]+", "_", text).strip("_.")[:200]

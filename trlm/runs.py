"""Run directories read back: each run's resolved config, its per-step metrics and its final figures.

`trlm compare` tabulates and draws them (trlm/compare.py, trlm/compare_plots.py); a run is any
directory with a `metrics.jsonl`, finished or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trlm.errors import TrlmError
from trlm.records import RunRecord, Summary, read_jsonl
from trlm.run_dir import METRICS, RUN_RECORD, SUMMARY

IGNORED_KEYS = ("paths.",)  # where things are, not what the run did


@dataclass
class Run:
    name: str
    path: Path
    stage: str
    trainer: str
    params: dict[str, Any]  # the resolved config, flattened ("stage.recipe.learning_rate": 2e-3)
    history: list[dict[str, Any]]  # metrics.jsonl: one row per logging step
    final: dict[str, float]  # summary.json's metrics ({} while running or after a failure)
    status: str  # completed | running or failed


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        items: dict[str, Any] = {}
        for key, value in tree.items():
            items.update(flatten(value, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): tree}


def load_run(path: Path, name: str) -> Run:
    config_file = path / ".hydra" / "config.yaml"
    config = resolved(OmegaConf.load(config_file)) if config_file.exists() else {}
    params = {k: v for k, v in flatten(config).items() if not k.startswith(IGNORED_KEYS)}
    summary = Summary.load(path / SUMMARY)
    record = RunRecord.load(path / RUN_RECORD)
    known = summary or record
    stage = params.get("stage.name") or (known.stage if known else "unknown")
    return Run(
        name=name,
        path=path,
        stage=str(stage),
        trainer=str(params.get("stage.trainer", stage if stage in ("dpo", "grpo") else "sft")),
        params=params,
        history=[row for row in read_jsonl(path / METRICS) if "step" in row],
        final=dict(summary.metrics) if summary else {},
        status=summary.status if summary else "running or failed",
    )


def resolved(config: Any) -> dict:
    """The saved config with its interpolations resolved where they can be (one that cannot stays as written)."""
    from trlm.compose import register_resolvers

    register_resolvers()
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception:  # an interpolation naming what this checkout no longer has: show it unresolved
        return OmegaConf.to_container(config, resolve=False)


def find_runs(folders: list[Path]) -> list[Run]:
    """Every run (a directory with metrics.jsonl) under the folders, named by its path inside the folder it was
    found in (a run given itself: its own name); names two folders share are prefixed by the folder's name."""
    found: dict[Path, tuple[str, str]] = {}  # run path: (name inside its folder, that name prefixed)
    for folder in folders:
        paths = sorted(p.parent for p in folder.rglob(METRICS) if "checkpoints" not in p.relative_to(folder).parts)
        if not paths:
            raise TrlmError(f"{folder} holds no run: no {METRICS} in it or below it (is it a run directory?)")
        for path in paths:
            inside = str(path.relative_to(folder)) if path != folder else folder.name
            found.setdefault(path, (inside, f"{folder.name}/{inside}" if path != folder else inside))
    names = [inside for inside, _ in found.values()]
    unique = len(set(names)) == len(names)
    return [load_run(path, inside if unique else prefixed) for path, (inside, prefixed) in found.items()]

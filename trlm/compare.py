"""`trlm compare DIR... [--out DIR]`: runs side by side — a table, the report's figures, sweep plots, one HTML page.

DIR is a run, an experiment or a sweep directory (globs allowed); every run below it (a directory
with `metrics.jsonl`) takes part. Runs are grouped by stage: each stage gets a table of the
hyperparameters that differ between its runs and their final metrics, and the report's figures for
its trainer (SFT: loss, mean token accuracy, entropy — Figures 2-4 for stage 1, 5-7 for stage 2;
DPO: loss, reward accuracies, margins, chosen / rejected rewards — Figures 8-10), one line per run,
smoothed, with the raw values faint behind. A sweep directory (with its Optuna journal) adds
Optuna's optimisation history, parameter importances and parallel coordinates. All of it lands in
`compare.html` (images embedded) beside the inputs, or in `--out`.
"""

from __future__ import annotations

import glob
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trlm.errors import TrlmError
from trlm.paths import project_path
from trlm.records import RunRecord, Summary, read_jsonl
from trlm.results import COLUMNS
from trlm.run_dir import METRICS, RUN_RECORD, SUMMARY
from trlm.study import JOURNAL

IGNORED_KEYS = ("paths.",)  # where things are, not what the run did
PRESET_NAMES = ("model.name", "hardware.name", "data.name")
WIDEST_CELL = 40
USAGE = "usage: trlm compare DIR [DIR ...] [--out DIR]   (run, experiment or sweep directories; globs allowed)"


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
        trainer=str(params.get("stage.trainer", "dpo" if stage == "dpo" else "sft")),
        params=params,
        history=[row for row in read_jsonl(path / METRICS) if "step" in row],
        final=dict(summary.metrics) if summary else {},
        status=summary.status if summary else "running or failed",
    )


def resolved(config: Any) -> dict:
    """The saved config with its interpolations resolved where they can be (one that cannot stays as written)."""
    from trlm.layout import register_resolvers

    register_resolvers()
    try:
        return OmegaConf.to_container(config, resolve=True)
    except Exception:  # an interpolation naming what this checkout no longer has: show it unresolved
        return OmegaConf.to_container(config, resolve=False)


def expand(patterns: list[str]) -> list[Path]:
    """The folders the arguments name, globs expanded; a name that matches nothing is refused."""
    folders: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(project_path(pattern)))) if glob.has_magic(pattern) else [project_path(pattern)]
        matches = [Path(m) for m in matches if Path(m).is_dir()]
        if not matches:
            raise TrlmError(f"{pattern}: no such directory")
        folders.extend(m.resolve() for m in matches)
    return list(dict.fromkeys(folders))


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


def common_parent(paths: list[Path]) -> Path:
    parts = [p.parts for p in paths]
    shared = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        shared.append(pieces[0])
    root = Path(*shared) if shared else Path("/")
    return root.parent if len(paths) == 1 or root in paths else root


def differing(runs: list[Run]) -> list[str]:
    """The hyperparameters whose values differ between the runs that have them (a key an older run lacks is
    no difference); where a whole preset differs (model.name), its name stands for its details."""
    keys = sorted({key for run in runs for key in run.params})
    changed = [key for key in keys if len({repr(run.params[key]) for run in runs if key in run.params}) > 1]
    presets = [key.removesuffix("name") for key in changed if key in PRESET_NAMES]
    return [key for key in changed if key in PRESET_NAMES or not key.startswith(tuple(presets))]


def stage_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: run, the differing hyperparameters, steps, then the final metrics any run has."""
    params = differing(runs)
    metrics = [(title, key) for title, key in COLUMNS if key and any(key in run.final for run in runs)]
    header = ["run", *(p.removeprefix("stage.recipe.").removeprefix("stage.") for p in params), "steps",
              *(title for title, _ in metrics)]  # fmt: skip
    rows = []
    for run in runs:
        step = run.history[-1]["step"] if run.history else "-"
        cells = [run.name, *(cell(run.params.get(p)) for p in params), str(step)]
        cells += [cell(run.final.get(key)) for _, key in metrics]
        rows.append(cells)
    return header, rows


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= WIDEST_CELL else text[: WIDEST_CELL - 1] + "…"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [header, *rows])  # fmt: skip


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def natural(name: str) -> list:
    """Sort key that puts trial 2 before trial 10."""
    return [(0, int(piece), "") if piece.isdigit() else (1, 0, piece) for piece in re.split(r"(\d+)", name)]


def by_stage(runs: list[Run]) -> dict[str, list[Run]]:
    order = {"sft": 0, "sft_think": 1, "dpo": 2}
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (order.get(r.stage, 3), r.stage, natural(r.name))):
        groups.setdefault(run.stage, []).append(run)
    return groups


def sweep_folders(folders: list[Path]) -> list[Path]:
    return sorted({journal.parent for folder in folders for journal in folder.rglob(JOURNAL)})


def out_dir(folders: list[Path], out: str | None) -> Path:
    if out:
        return project_path(out)
    return (folders[0] if len(folders) == 1 else common_parent(folders)) / "compare"


def compare(patterns: list[str], out: str | None = None) -> Path:
    from trlm.compare_plots import stage_figures, sweep_figures, write_page

    folders = expand(patterns)
    runs = find_runs(folders)
    target = out_dir(folders, out)
    target.mkdir(parents=True, exist_ok=True)
    sections = []
    for stage, group in by_stage(runs).items():
        header, rows = stage_table(group)
        print(f"\n== {stage} ({len(group)} run{'s' * (len(group) > 1)})\n{text_table(header, rows)}")
        sections.append((stage, html_table(header, rows), stage_figures(stage, group, target)))
    for sweep in sweep_folders(folders):
        name = str(sweep.relative_to(common_parent([*folders, sweep]))) if len(folders) > 1 else sweep.name
        sections.append((f"sweep {name}", "", sweep_figures(sweep, target)))
    page = write_page(target, patterns, sections)
    print(f"\nwrote {page} ({sum(len(s[2]) for s in sections)} figures)")
    return page


def compare_command(args: list[str]) -> int:
    out = None
    if "--out" in args:
        at = args.index("--out")
        if at + 1 >= len(args):
            raise TrlmError(USAGE)
        out, args = args[at + 1], args[:at] + args[at + 2 :]
    if not args or any(a.startswith("-") for a in args):
        raise TrlmError(USAGE)
    compare(args, out)
    return 0

"""`trlm compare DIR... [--out DIR]`: runs side by side — a table, the report's figures, sweep plots, one HTML page.

DIR is a run, an experiment or a sweep directory (globs allowed); every run below it (a directory
with `metrics.jsonl`) takes part. Runs are grouped by stage: each stage gets a table of the
hyperparameters that differ between its runs and their final metrics, and the report's figures for
its trainer (SFT: loss, mean token accuracy, entropy — Figures 2-4 for stage 1, 5-7 for stage 2;
DPO: loss, reward accuracies, margins, chosen / rejected rewards — Figures 8-10; GRPO: reward, each
reward's mean and std, KL, completion length, clip ratio), one line per run,
smoothed, with the raw values faint behind. A sweep directory (with its Optuna journal) adds
Optuna's optimisation history, parameter importances and parallel coordinates, and each study's best
trial; where two studies swept the same parameter (a full fine-tuning and a LoRA learning-rate sweep),
the ratio of their best values. All of it lands in
`compare.html` (images embedded) beside the inputs, or in `--out`.
"""

from __future__ import annotations

import glob
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trlm.errors import TrlmError
from trlm.paths import project_path
from trlm.results import STAGE_ORDER, columns_for
from trlm.runs import Run, find_runs
from trlm.study import JOURNAL, STUDY

PRESET_NAMES = ("model.name", "hardware.name", "data.name")
WIDEST_CELL = 40
USAGE = "usage: trlm compare DIR [DIR ...] [--out DIR]   (run, experiment or sweep directories; globs allowed)"


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
    metrics = columns_for([run.final for run in runs])
    header = ["run", *(p.removeprefix("stage.recipe.").removeprefix("stage.") for p in params), "steps",
              *(column.title for column in metrics)]  # fmt: skip
    rows = []
    for run in runs:
        step = run.history[-1]["step"] if run.history else "-"
        cells = [run.name, *(cell(run.params.get(p)) for p in params), str(step)]
        cells += [column.cell(run.final) or "-" for column in metrics]
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
    order = {stage: index for index, stage in enumerate(STAGE_ORDER)}
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (order.get(r.stage, len(order)), r.stage, natural(r.name))):
        groups.setdefault(run.stage, []).append(run)
    return groups


def sweep_folders(folders: list[Path]) -> list[Path]:
    """Sweep folders below the given ones, in the order given (the first is the baseline of `ratio_lines`)."""
    found = [path for folder in folders for path in sorted({f.parent for name in (STUDY, JOURNAL)
                                                            for f in folder.rglob(name)})]  # fmt: skip
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class StudyBest:
    name: str  # the sweep folder, as compare names it
    study: str
    trial: int
    value: float
    params: dict[str, Any]


def best_of_studies(sweeps: dict[str, Path]) -> list[StudyBest]:
    """Each study's best finished trial (a study without one yet is left out)."""
    import optuna

    from trlm.study import sweep_storage

    found = []
    for name, sweep in sweeps.items():
        storage, studies = sweep_storage(sweep)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        for summary in optuna.study.get_all_study_summaries(storage):
            if summary.study_name in studies and summary.best_trial is not None:
                best = summary.best_trial
                found.append(StudyBest(name, summary.study_name, best.number, best.value, dict(best.params)))
    return found


def ratio_lines(bests: list[StudyBest]) -> list[str]:
    """For each numeric parameter two or more studies swept: each one's best, and the ratio to the first's.
    (A full fine-tuning and a LoRA sweep of one stage: LoRA's best learning rate over full fine-tuning's.)"""
    lines = []
    shared = sorted({key for best in bests for key in best.params})
    for key in shared:
        having = [b for b in bests if isinstance(b.params.get(key), int | float) and b.params[key] > 0]
        if len(having) < 2:
            continue
        first = having[0]
        lines.append(f"best {key}: " + ", ".join(f"{b.name} {b.params[key]:.3g}" for b in having))
        lines += [f"  {b.name} / {first.name} = {b.params[key] / first.params[key]:.2f}x" for b in having[1:]]
    return lines


def sweep_summary(sweeps: dict[str, Path]) -> str:
    """A table of each study's best trial, then the ratios of the parameters they share."""
    bests = best_of_studies(sweeps)
    if not bests:
        return ""
    header = ["sweep", "study", "best trial", "value", "parameters"]
    rows = [[b.name, b.study, str(b.trial), f"{b.value:.4g}", ", ".join(f"{k}={cell(v)}" for k, v in b.params.items())]
            for b in bests]  # fmt: skip
    return "\n".join([text_table(header, rows), *ratio_lines(bests)])


def out_dir(folders: list[Path], out: str | None) -> Path:
    if out:
        return project_path(out)
    return (folders[0] if len(folders) == 1 else common_parent(folders)) / "compare"


def compare(patterns: list[str], out: str | None = None) -> Path:
    from trlm.compare_plots import stage_figures, sweep_figures, write_page

    folders = expand(patterns)
    runs = find_runs(folders)
    target = out_dir(folders, out)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".trlm-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:  # a file in the way, a read-only folder
        raise TrlmError(f"cannot write the comparison to {target} ({error.strerror}): give --out DIR, a folder "
                        "trlm can write") from None  # fmt: skip
    sections = []
    for stage, group in by_stage(runs).items():
        header, rows = stage_table(group)
        print(f"\n== {stage} ({len(group)} run{'s' * (len(group) > 1)})\n{text_table(header, rows)}")
        sections.append((stage, html_table(header, rows), stage_figures(stage, group, target)))
    sweeps = {}
    for sweep in sweep_folders(folders):
        name = str(sweep.relative_to(common_parent([*folders, sweep]))) if len(folders) > 1 else sweep.name
        sweeps[name] = sweep
        sections.append((f"sweep {name}", "", sweep_figures(sweep, target)))
    if summary := sweep_summary(sweeps):
        print(f"\n== sweeps: each study's best trial\n{summary}")
        sections.append(("sweeps: each study's best trial", f"<pre>{html.escape(summary)}</pre>", []))
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

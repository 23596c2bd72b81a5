"""`trlm results DIR`: every finished run under DIR (stages, sweep trials, at any depth) and its figures."""

from __future__ import annotations

from pathlib import Path

from trlm.errors import TrlmError
from trlm.paths import project_path
from trlm.records import Summary
from trlm.run_dir import SUMMARY

STAGE_ORDER = ("sft", "sft_think", "dpo")
COLUMNS = (  # (header, summary metric)
    ("steps", None),
    ("train loss", "train_loss"),
    ("eval loss", "eval_loss"),
    ("acc@start", "start_answer_accuracy"),  # the stage's start model on the same held-out prompts
    ("acc", "answer_accuracy"),
    ("format@start", "start_think_format_rate"),
    ("format", "think_format_rate"),
    ("reward acc", "eval_rewards/accuracies"),
    ("reward margin", "eval_rewards/margins"),
)
LEGEND = (
    "acc: exact-match answer accuracy; format: share of well-formed <think>...</think> + answer replies "
    "(both greedy, on held-out prompts); @start: the stage's start model on the same prompts; "
    "reward acc / margin: DPO implicit reward on held-out pairs; -: not measured by that stage"
)


def run_name(path: Path, root: Path) -> str:
    return str(path.parent.relative_to(root)) if path.parent != root else root.name


def unreadable_runs(root: Path) -> list[str]:
    """Runs below `root` whose summary.json cannot be read (cut short, not UTF-8, not trlm's)."""
    return sorted(run_name(path, root) for path in root.rglob(SUMMARY) if Summary.load(path) is None)


def finished_runs(root: Path) -> list[tuple[str, Summary]]:
    """(name relative to `root`, summary) of each finished run below it, in pipeline order."""
    found = []
    for path in root.rglob(SUMMARY):
        summary = Summary.load(path)
        if summary is not None and summary.status == "completed":
            found.append((run_name(path, root), summary))

    def order(item: tuple[str, Summary]) -> tuple:
        name, summary = item
        stage = STAGE_ORDER.index(summary.stage) if summary.stage in STAGE_ORDER else len(STAGE_ORDER)
        return ("/" in name, stage, name)  # single runs first, then sweep trials

    return sorted(found, key=order)


def format_table(rows: list[tuple[str, Summary]]) -> str:
    header = ["run", *(title for title, _ in COLUMNS)]
    lines = [header]
    for name, summary in rows:
        cells = [name, str(summary.global_step)]
        for _, key in COLUMNS[1:]:
            cells.append(f"{summary.metrics[key]:.3f}" if key in summary.metrics else "-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def results_command(args: list[str]) -> int:
    """`trlm results DIR`."""
    if len(args) != 1:
        raise TrlmError("usage: trlm results DIR")
    folder = project_path(args[0])
    if not folder.is_dir():
        raise TrlmError(f"{args[0]} does not exist (or is not a folder)")
    return print_results(folder)


def print_results(root: Path) -> int:
    rows, unreadable = finished_runs(root), unreadable_runs(root)
    for name in unreadable:  # listed, not hidden: the run's command finishes it again from its checkpoints
        print(f"{name}: {SUMMARY} is unreadable; run that stage's command again to finish the run from its "
              "last checkpoint (no step is trained again)")  # fmt: skip
    if not rows:
        print(f"no finished run under {root} (a finished run has {SUMMARY})")
        return 1
    for name, summary in rows:
        print(f"{name}: checkpoint {summary.final_model}")
        print(f"{' ' * len(name)}  metrics    {summary.metrics_file}")
    print()
    print(format_table(rows))
    print()
    print(LEGEND)
    return 0

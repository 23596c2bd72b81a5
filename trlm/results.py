"""`trlm results DIR`: every finished run under DIR (stages, sweep trials, at any depth) and its figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trlm.errors import TrlmError
from trlm.paths import project_path
from trlm.records import Summary
from trlm.run_dir import SUMMARY

STAGE_ORDER = ("sft", "sft_think", "dpo", "grpo")


@dataclass(frozen=True)
class Column:
    title: str
    keys: tuple[str, ...]  # the summary metric it shows: the first of these a run has
    std: tuple[str, ...] = ()  # its spread, shown as mean±std (GRPO's rewards)

    def cell(self, metrics: dict[str, float]) -> str | None:
        key = next((k for k in self.keys if k in metrics), None)
        if key is None:
            return None
        spread = next((metrics[k] for k in self.std if k in metrics), None)
        return f"{metrics[key]:.3f}" + (f"±{spread:.2f}" if spread is not None else "")


COLUMNS = (
    Column("train loss", ("train_loss",)),
    Column("eval loss", ("eval_loss",)),
    Column("acc@start", ("start_answer_accuracy",)),  # the stage's start model on the same held-out prompts
    Column("acc", ("answer_accuracy",)),
    Column("format@start", ("start_think_format_rate",)),
    Column("format", ("think_format_rate",)),
    Column("reward acc", ("eval_rewards/accuracies",)),
    Column("reward margin", ("eval_rewards/margins",)),
    # GRPO: sampled on the held-out prompts at the end (eval_), else at the last logged step
    Column("reward", ("eval_reward", "reward"), ("eval_reward_std", "reward_std")),
    Column("kl", ("eval_kl", "kl")),
    Column("length", ("eval_completions/mean_length", "completions/mean_length")),
    Column("clipped", ("eval_clip_ratio/region_mean", "clip_ratio/region_mean")),
)
LEGEND = (
    "acc: exact-match answer accuracy; format: share of well-formed <think>...</think> + answer replies "
    "(both greedy, on held-out prompts); @start: the stage's start model on the same prompts; "
    "reward acc / margin: DPO implicit reward on held-out pairs; reward (mean±std), each named reward, kl, "
    "length (completion tokens), clipped (ratio clipped): GRPO's samples on held-out prompts; "
    "-: not measured by that stage"
)


def reward_columns(metrics: list[dict[str, float]]) -> list[Column]:
    """One column per GRPO reward function the runs logged (`rewards/<name>/mean`), as mean±std."""
    names = sorted({key.split("/")[1] for m in metrics for key in m if key.startswith(("rewards/", "eval_rewards/"))
                    and key.endswith("/mean") and key.count("/") == 2})  # fmt: skip
    return [Column(name, (f"eval_rewards/{name}/mean", f"rewards/{name}/mean"),
                   (f"eval_rewards/{name}/std", f"rewards/{name}/std")) for name in names]  # fmt: skip


def columns_for(metrics: list[dict[str, float]]) -> list[Column]:
    """The columns some run has a figure for (GRPO's only where a GRPO run is shown)."""
    every = [*COLUMNS[:9], *reward_columns(metrics), *COLUMNS[9:]]
    return [column for column in every if any(column.cell(m) is not None for m in metrics)]


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
    columns = columns_for([summary.metrics for _, summary in rows])
    lines = [["run", "steps", *(column.title for column in columns)]]
    for name, summary in rows:
        lines.append([name, str(summary.global_step), *(column.cell(summary.metrics) or "-" for column in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
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
